"""Payment methods as a buyer knows them: 支付宝, 微信, QQ, USDT — not channel codes.

One Epay channel (V1 `epay` or V2 `epay2`) offers several pay types (its
`pay_types` option, e.g. `alipay,wxpay,qqpay`): the buyer picks the method,
the order keeps the type it will be paid with, and its pay URL (V2: the
payment created for it) says that type to the gateway. A
channel without the option offers its one `pay_type` (default alipay), as
before. A leaf module: checkout, the storefront, the panel and the CLI all
read a channel's methods here.
"""
from __future__ import annotations

import re

from ..errors import InvalidRequest

# Epay `type` values most gateways take -> (zh, en, icon). The icon is a
# glyph on the method's colour (static/shop.css), never a trademark image.
KNOWN = {
    "alipay": ("支付宝", "Alipay", "alipay"),
    "wxpay": ("微信支付", "WeChat Pay", "wxpay"),
    "qqpay": ("QQ 钱包", "QQ Wallet", "qqpay"),
    "usdt": ("USDT", "USDT", "usdt"),
    "bank": ("网银", "Online banking", "bank"),
    "jdpay": ("京东支付", "JD Pay", "jdpay"),
    "card": ("银行卡", "Card", "card"),
    "paypal": ("PayPal", "PayPal", "paypal"),
    "balance": ("余额", "Balance", "balance"),
    "points": ("积分", "Points", "points"),
}
# The one method of each channel type without pay types (Epay's kind offers its
# pay_types): channels of one method stand in for each other when routing fails over.
TYPE_METHOD = {"alipay": "alipay", "wechatpay": "wxpay", "epusdt": "usdt", "stripe": "card",
               "paypal": "paypal", "balance": "balance", "points": "points",
               "sandbox": "sandbox"}
DEFAULT = "alipay"
TYPE_RE = re.compile(r"^[a-z0-9_]{1,16}$")
MAX_TYPES = 8
# The channel types whose buyers choose among the channel's pay types.
WITH_PAY_TYPES = ("epay", "epay2")


def parse_pay_types(text: str) -> list[str]:
    """`alipay, wxpay` -> ["alipay", "wxpay"]; InvalidRequest names what is wrong."""
    types = [part.strip().lower() for part in text.replace("，", ",").split(",") if part.strip()]
    for value in types:
        if not TYPE_RE.match(value):
            raise InvalidRequest("%(value)r is not a pay type (lower-case letters, digits or _, e.g. %(known)s)",
                                 value=value[:20], known=", ".join(KNOWN))
    if len(set(types)) != len(types):
        raise InvalidRequest("a pay type is listed twice")
    if len(types) > MAX_TYPES:
        raise InvalidRequest("at most %(limit)s pay types", limit=MAX_TYPES)
    return types


def pay_types(channel_type: str, options: dict) -> list[str]:
    """The pay types a channel offers, first = the default; [] for a channel that has none."""
    if channel_type not in WITH_PAY_TYPES:
        return []
    listed = options.get("pay_types", "")
    if listed:
        try:
            found = parse_pay_types(listed)
        except InvalidRequest:   # refused when stored; an older row falls back to its single type
            found = []
        if found:
            return found
    return [options.get("pay_type") or DEFAULT]


def choose(channel_type: str, options: dict, wanted: str | None) -> str | None:
    """The pay type an order will use: the buyer's choice when the channel offers it,
    else the channel's first; InvalidRequest when the buyer asked for one it does not offer."""
    offered = pay_types(channel_type, options)
    if not wanted:
        return offered[0] if offered else None
    if wanted not in offered:
        raise InvalidRequest("pay_type: %(wanted)r is not offered by this channel (offered: %(offered)s)",
                             wanted=wanted[:20], offered=", ".join(offered) or "none")
    return wanted


def offered(channel_type: str, options: dict) -> list[str]:
    """The methods a channel takes payments by: an Epay channel's pay types, another's one."""
    if channel_type in WITH_PAY_TYPES:
        return pay_types(channel_type, options)
    return [TYPE_METHOD.get(channel_type, channel_type)]


def label(pay_type: str | None, lang: str) -> str | None:
    """What a buyer calls the method; None for a type we do not know (the channel's name serves)."""
    known = KNOWN.get(pay_type or "")
    if known is None:
        return None
    return known[1] if lang == "en" else known[0]


def icon(pay_type: str | None) -> str:
    known = KNOWN.get(pay_type or "")
    return known[2] if known else "other"

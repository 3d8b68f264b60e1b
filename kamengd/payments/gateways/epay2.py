"""彩虹易支付 (Rainbow Epay) V2: the merchant API signed with RSA both ways.

The protocol by hand, as the V2 documentation (签名规则, 统一下单接口, 订单查询,
订单退款, 支付结果通知, 查询商户信息) and its PHP SDK (EpayCore) describe it:

- Requests are POSTed as a form to `<gateway>/api/...` with `pid`, `timestamp`
  (unix seconds), `sign_type=RSA` and `sign`: SHA256withRSA (PKCS#1 v1.5) with
  the MERCHANT's private key over every non-empty parameter but `sign` and
  `sign_type` (no arrays), sorted by name, joined as k=v&k=v, base64.
- Answers are JSON, `code` 0 for success; a successful answer is believed
  only when its `sign` verifies the same way with the PLATFORM's public key
  and its `timestamp` is within 300 s of ours (the SDK's verify()).
- Notifications come by GET (a POSTed form is taken too) with pid, trade_no,
  out_trade_no, type, name, money, trade_status, timestamp, sign,
  sign_type=RSA: verified with the platform's key, the same 300 s window,
  then `pid` must be ours. The platform wants the text `success`.

The buyer's pay page: `method=web`, `device=pc`; a `qrcode` answer is shown
as a QR code on this shop's page, `jump` sends the buyer to the platform's
page, `urlscheme` (a mini program link) is shown as a QR code with the link.
Other answers (`html` and the in-app kinds) are refused: this shop renders no
third party's HTML. Amounts are yuan with two places: CNY only.
"""
from __future__ import annotations

import datetime as dt
import hmac
import http.client
import json
import time
import urllib.error
import urllib.request
from urllib.parse import urlencode, urlsplit

from ...errors import N_
from ...money import format_cents, parse_gateway_money
from ...validation import has_control_characters
from .alipay_f2f import load_private_key, load_public_key, rsa2_sign, rsa2_verify
from .base import (Channel, Gateway, GatewayError, Inbound, NotForThisOrder, Notice, OrderToPay, Refused, Started,
                   Urls)

TIMEOUT_SECONDS = 15
TOLERANCE_SECONDS = 300
MAX_ANSWER = 256 * 1024
MAX_PAY_INFO = 2048
MAX_NAME_BYTES = 127   # the platform cuts a longer name; cut here, so what it checks is what was signed
PAID = "TRADE_SUCCESS"
# The schemes a pay link may have on the page (a mini program's or a wallet's, or the web).
LINK_SCHEMES = ("https", "http", "weixin", "alipays", "alipay", "mqqapi", "mqqwallet", "upwrp")


def _text(value) -> str | None:
    """A parameter's value as the platform's PHP signs it; None for what it leaves out
    (arrays, objects, null, empty or blank text)."""
    if isinstance(value, bool):
        value = "1" if value else ""
    if isinstance(value, (dict, list)) or value is None:
        return None
    value = str(value)
    return value if value.strip() else None


def signing_string(params: dict) -> str:
    items = [(k, _text(v)) for k, v in params.items() if k not in ("sign", "sign_type")]
    return "&".join(f"{k}={v}" for k, v in sorted(items) if v is not None)


def _fresh(timestamp, now: float) -> bool:
    text = str(timestamp or "")
    return text.isascii() and text.isdigit() and len(text) <= 12 and abs(now - int(text)) <= TOLERANCE_SECONDS


def _epoch(now: dt.datetime) -> float:
    return now.replace(tzinfo=dt.timezone.utc).timestamp()


def _name(text: str) -> str:
    return text.encode("utf-8")[:MAX_NAME_BYTES].decode("utf-8", "ignore").strip()


def _link(text: str) -> str | None:
    """`text` when it is a link the page may offer, else None."""
    scheme = urlsplit(text).scheme.lower()
    if scheme not in LINK_SCHEMES or (scheme in ("http", "https") and not urlsplit(text).netloc):
        return None
    return text


class RainbowEpayV2(Gateway):
    type = "epay2"
    options = ("gateway", "pid", "merchant_private_key", "platform_public_key", "pay_types")
    required = ("gateway", "pid", "merchant_private_key", "platform_public_key")
    secret = ("merchant_private_key",)

    def currencies(self, options: dict) -> frozenset[str]:
        return frozenset({"CNY"})

    def check_options(self, options: dict) -> list[tuple[str, str]]:
        problems = []
        if options.get("merchant_private_key"):
            try:
                load_private_key(options["merchant_private_key"])
            except ValueError:
                problems.append(("merchant_private_key", N_("the merchant's RSA private key (PKCS#8 or PKCS#1, "
                                                         "PEM or base64), from the platform's API page")))
        if options.get("platform_public_key"):
            try:
                load_public_key(options["platform_public_key"])
            except ValueError:
                problems.append(("platform_public_key", N_("the platform's RSA public key (PEM or base64), from its "
                                                        "API page")))
        pid = options.get("pid", "")
        if pid and not (pid.isascii() and pid.isdigit() and len(pid) <= 20):
            problems.append(("pid", N_("the merchant ID: digits")))
        base = options.get("gateway", "")
        parts = urlsplit(base)
        if base and (parts.scheme not in ("http", "https") or not parts.netloc or parts.query
                     or any(c.isspace() for c in base) or has_control_characters(base)):
            problems.append(("gateway", N_("the platform's http(s) base URL such as https://pay.example.com/")))
        return problems

    # --- calls ---------------------------------------------------------------

    def _call(self, channel: Channel, path: str, params: dict) -> dict:
        """The platform's verified answer to a signed request; GatewayError otherwise."""
        options = channel.options
        fields = {k: v for k, v in params.items() if v not in (None, "")}
        fields.update(pid=options["pid"], timestamp=str(int(time.time())))
        fields["sign"] = rsa2_sign(signing_string(fields), load_private_key(channel.secrets["merchant_private_key"]))
        fields["sign_type"] = "RSA"
        url = options["gateway"].rstrip("/") + "/" + path
        request = urllib.request.Request(url, data=urlencode(fields).encode(),
                                         headers={"Content-Type": "application/x-www-form-urlencoded;charset=utf-8"})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as resp:
                body = resp.read(MAX_ANSWER).decode("utf-8")
        except urllib.error.HTTPError as exc:
            raise GatewayError(f"Epay answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError, ValueError, UnicodeDecodeError, http.client.HTTPException) as exc:
            raise GatewayError(f"Epay unreachable: {exc.__class__.__name__}") from None
        try:
            # Numbers kept as written (what the platform signed), never floats.
            answer = json.loads(body, parse_float=str, parse_int=str)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise GatewayError("Epay answered something that is not its JSON")
        if str(answer.get("code")) != "0":
            words = " ".join(str(answer.get(k, "")) for k in ("code", "msg")).strip()
            raise GatewayError(f"Epay refused: {' '.join(words.split())[:200]}")
        signature = answer.get("sign")
        if not isinstance(signature, str) or not rsa2_verify(signing_string(answer), signature,
                                                             load_public_key(options["platform_public_key"])):
            raise GatewayError("Epay's answer does not verify with the platform's public key")
        if not _fresh(answer.get("timestamp"), time.time()):
            raise GatewayError("Epay's answer is not of now (its timestamp is more than 300 s away)")
        return answer

    def start(self, channel: Channel, order: OrderToPay, urls: Urls, now: dt.datetime) -> Started:
        if order.currency != "CNY":
            raise NotForThisOrder(f"Epay takes CNY only, not {order.currency}")
        answer = self._call(channel, "api/pay/create", {
            "method": "web", "device": "pc", "type": order.pay_type or "alipay", "out_trade_no": order.order_no,
            "notify_url": urls.notify, "return_url": urls.back, "name": _name(order.product_name) or order.order_no,
            "money": format_cents(order.amount_cents), "clientip": order.client_ip or "127.0.0.1"})
        kind, info, trade_no = answer.get("pay_type"), answer.get("pay_info"), answer.get("trade_no")
        if answer.get("out_trade_no") not in (None, order.order_no):
            raise GatewayError("Epay answered about another order")
        if not isinstance(info, str) or not info or len(info) > MAX_PAY_INFO or has_control_characters(info):
            raise GatewayError("Epay's answer has no usable pay_info")
        details = {"trade_no": str(trade_no or "")[:64], "pay_type": str(kind)[:16]}
        if kind == "qrcode":
            return Started(ref=order.order_no, qr=info, pay_url=_link(info), expires_at=order.expires_at,
                           details=details)
        if kind == "jump" and urlsplit(info).scheme in ("http", "https") and urlsplit(info).netloc:
            return Started(ref=order.order_no, pay_url=info, expires_at=order.expires_at, details=details)
        if kind == "urlscheme":
            return Started(ref=order.order_no, qr=info, pay_url=_link(info), expires_at=order.expires_at,
                           details=details)
        raise GatewayError(f"Epay answered pay_type {str(kind)[:16]!r}: this shop shows QR codes and links only "
                           "(qrcode, jump, urlscheme)")

    def verify(self, channel: Channel, inbound: Inbound, now: dt.datetime) -> Notice:
        params = {k: v for k, v in inbound.params.items() if isinstance(v, str)}
        signature = params.get("sign", "")
        if params.get("sign_type") != "RSA" or not signature or not rsa2_verify(
                signing_string(params), signature, load_public_key(channel.options["platform_public_key"])):
            raise Refused("bad signature", forged=True)
        if not hmac.compare_digest(params.get("pid", "").encode(), str(channel.options["pid"]).encode()):
            raise Refused("foreign pid", forged=True)
        if not _fresh(params.get("timestamp"), _epoch(now)):
            # A copy of an old notification: the platform's own retries are signed afresh.
            raise Refused("timestamp more than 300 s away", forged=True)
        status = params.get("trade_status")
        if status != PAID:
            raise Refused(f"trade_status {str(status)[:30]!r} is not a payment")
        return Notice(order_no=params.get("out_trade_no", "")[:32], trade_no=params.get("trade_no", ""),
                      amount_cents=parse_gateway_money(params.get("money")), currency="CNY", paid=True,
                      raw={k: v for k, v in params.items() if k != "sign"})

    def query(self, channel: Channel, order_no: str, ref: str, now: dt.datetime) -> Notice | None:
        answer = self._call(channel, "api/pay/query", {"out_trade_no": order_no})
        if answer.get("out_trade_no") != order_no:
            raise GatewayError("Epay answered about another order")
        if str(answer.get("status")) != "1":   # 0: not paid yet
            return None
        trade_no = answer.get("trade_no")
        if not isinstance(trade_no, str) or not trade_no:
            raise GatewayError("Epay reported the order paid without its trade_no")
        money = answer.get("money")
        return Notice(order_no=order_no, trade_no=trade_no, amount_cents=parse_gateway_money(money), currency="CNY",
                      paid=True, raw={k: str(answer.get(k)) for k in ("trade_no", "out_trade_no", "api_trade_no",
                                                                       "type", "money", "status", "endtime")
                                      if answer.get(k) is not None})

    def refund(self, channel: Channel, *, trade_no: str, amount_cents: int, currency: str,
               refund_no: str) -> str:
        if currency != "CNY":
            raise GatewayError(f"Epay takes CNY only, not {currency}")
        answer = self._call(channel, "api/pay/refund", {"trade_no": trade_no, "money": format_cents(amount_cents),
                                                        "out_refund_no": refund_no})
        if answer.get("money") is not None and parse_gateway_money(answer["money"]) != amount_cents:
            raise GatewayError(f"Epay refunded {str(answer.get('money'))[:20]}, not {format_cents(amount_cents)}")
        return str(answer.get("refund_no") or f"{trade_no}:{refund_no}")

    def probe(self, channel: Channel) -> str:
        # 查询商户信息: a signed answer proves the pid, our key (the platform checked our
        # signature) and the platform's key (we checked its).
        answer = self._call(channel, "api/merchant/info", {})
        if str(answer.get("pid")) != str(channel.options["pid"]):
            raise GatewayError("Epay answered about another merchant")
        if str(answer.get("status", "1")) != "1" or str(answer.get("pay_status", "1")) != "1":
            raise GatewayError("Epay accepts the key but reports the merchant or its payments as disabled")
        return "Epay accepts the merchant's key, and its answer verifies with the platform's public key"

"""The sandbox channel: a pretend gateway for trying a shop on this machine.

Its pay page (/pay/<code>/sandbox) lets the buyer press "pay"; that press
signs a callback as a gateway would and hands it to the same callback path
as every other channel, so a sandbox payment is recorded, delivered and
repeated exactly as a real one. Anyone who can reach the page can pay for
nothing: the channel takes orders only while site.url is a loopback address,
unless its `force` option says otherwise (and the panel then shows a red
banner on every page).

The callback is the Epay callback's fields signed with HMAC-SHA256 under the
channel's own secret (generated when the channel is added, sealed like every
channel secret): `pid` is the channel's code.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Mapping
from urllib.parse import urlencode, urlsplit

from ..money import format_cents
from .epay import signing_string

SECRET_BYTES = 32
FORCE_VALUES = ("", "yes")


def new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def sign(params: Mapping[str, str], secret: str) -> str:
    return hmac.new(secret.encode(), signing_string(params).encode("utf-8"), hashlib.sha256).hexdigest()


def verify(params: Mapping[str, str], secret: str) -> bool:
    """Constant-time check of `sign`; an empty secret never verifies anything."""
    given = str(params.get("sign", "")).lower().encode("utf-8", "replace")
    if not secret or len(given) != 64:
        return False
    return hmac.compare_digest(sign(params, secret).encode(), given)


def is_loopback_url(url: str) -> bool:
    """Whether buyers reach the shop at `url` only from this machine (localhost, 127/8, ::1)."""
    try:
        host = urlsplit(url or "").hostname or ""
    except ValueError:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def forced(options: Mapping[str, str]) -> bool:
    return options.get("force", "") == "yes"


def takes_orders(options: Mapping[str, str], site_url: str) -> bool:
    """A sandbox channel takes orders (and callbacks) on a loopback site, or when forced."""
    return forced(options) or is_loopback_url(site_url)


def pay_url(*, site_url: str, code: str, order_no: str, token: str) -> str:
    return f"{site_url.rstrip('/')}/pay/{code}/sandbox?{urlencode({'order_no': order_no, 'token': token})}"


def callback(*, code: str, secret: str, order_no: str, amount_cents: int, trade_no: str) -> dict[str, str]:
    """The signed callback the pretend gateway sends for a paid order."""
    params = {"pid": code, "trade_no": trade_no, "out_trade_no": order_no, "type": "sandbox",
              "name": "sandbox", "money": format_cents(amount_cents), "trade_status": "TRADE_SUCCESS"}
    params["sign"] = sign(params, secret)
    params["sign_type"] = "HMAC-SHA256"
    return params

"""The Epay (易支付) merchant protocol: MD5 signatures, pay URLs, callbacks.

Sign: every parameter but `sign`, `sign_type` and empty ones, sorted by name
(byte order), joined as a=1&b=2, the merchant key appended, MD5, lower-case
hex (CONTRACT.md §3).
"""
from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import urlencode

UNSIGNED = ("sign", "sign_type")


def signing_string(params: Mapping[str, str]) -> str:
    items = [(k, str(v)) for k, v in params.items() if k not in UNSIGNED and str(v) != ""]
    return "&".join(f"{k}={v}" for k, v in sorted(items, key=lambda kv: kv[0].encode()))


def sign(params: Mapping[str, str], key: str) -> str:
    return hashlib.md5((signing_string(params) + key).encode("utf-8")).hexdigest()


def verify(params: Mapping[str, str], key: str) -> bool:
    """Constant-time check of `sign`; an empty key never verifies anything."""
    given = str(params.get("sign", "")).lower().encode("utf-8", "replace")
    if not key or len(given) != 32:
        return False
    return hmac.compare_digest(sign(params, key).encode(), given)


def pay_url(*, gateway: str, pid: str, key: str, pay_type: str, order_no: str, name: str, money: str,
            notify_url: str, return_url: str) -> str:
    params = {"pid": pid, "type": pay_type, "out_trade_no": order_no, "notify_url": notify_url,
              "return_url": return_url, "name": name, "money": money}
    params["sign"] = sign(params, key)
    params["sign_type"] = "MD5"
    return f"{gateway.rstrip('/')}/submit.php?{urlencode(params)}"

"""Alipay 当面付 (face-to-face payment) on Alipay's open platform: precreate → a QR code.

The protocol by hand, as Alipay documents it (the official Python SDK is an
Aliyun-style code generator of thousands of modules; the calls kamengd needs
are four, and their signing rules are short):

- Requests: the common parameters (app_id, method, format=JSON,
  charset=utf-8, sign_type=RSA2, timestamp in Beijing time, version=1.0,
  notify_url, biz_content as JSON) signed RSA2 = SHA256withRSA (PKCS#1 v1.5)
  with the app's private key over every non-empty parameter but `sign`,
  sorted by name, joined as k=v&k=v, base64. POSTed as a form.
- Answers: `{"<method>_response": {...}, "sign": "..."}`; the signature
  covers the exact text of the `_response` object and is checked with
  Alipay's public key before the answer is believed.
- Notifications: a POSTed form; every non-empty field but `sign` and
  `sign_type`, sorted and joined the same way, verified with Alipay's
  public key; then `app_id` (and `seller_id` when configured) must be ours.
  Alipay wants the text `success`.

Amounts are yuan with two places (`total_amount`): CNY only.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import http.client
import json
import re
import urllib.error
import urllib.request
from urllib.parse import urlencode, urlsplit
from zoneinfo import ZoneInfo

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ...errors import N_
from ...money import format_cents, parse_gateway_money
from .base import (Channel, Gateway, GatewayError, Inbound, NotForThisOrder, Notice, OrderToPay, Refused, Started,
                   Urls)

GATEWAY = "https://openapi.alipay.com/gateway.do"
BEIJING = ZoneInfo("Asia/Shanghai")
TIMEOUT_SECONDS = 15
PAID = ("TRADE_SUCCESS", "TRADE_FINISHED")
MAX_ANSWER = 256 * 1024


def signing_string(params: dict, *, leave_out: tuple[str, ...]) -> str:
    items = [(k, str(v)) for k, v in params.items() if k not in leave_out and v is not None and str(v) != ""]
    return "&".join(f"{k}={v}" for k, v in sorted(items))


def _pem(text: str, kind: str) -> bytes:
    """A key as Alipay's console shows it (bare base64) or as a PEM file holds it, its line
    breaks kept or lost (a one-line form field takes them out)."""
    found = re.fullmatch(r"\s*-----BEGIN ([A-Z ]+)-----(.*?)-----END \1-----\s*", text, re.S)
    if found:
        kind, text = found.group(1), found.group(2)
    body = "".join(text.split())
    lines = "\n".join(body[i:i + 64] for i in range(0, len(body), 64))
    return f"-----BEGIN {kind}-----\n{lines}\n-----END {kind}-----\n".encode()


def load_private_key(text: str) -> rsa.RSAPrivateKey:
    for kind in ("PRIVATE KEY", "RSA PRIVATE KEY"):
        try:
            key = serialization.load_pem_private_key(_pem(text, kind), password=None)
        except (ValueError, TypeError):
            continue
        if isinstance(key, rsa.RSAPrivateKey):
            return key
    raise ValueError("not an RSA private key")


def load_public_key(text: str) -> rsa.RSAPublicKey:
    for kind in ("PUBLIC KEY", "RSA PUBLIC KEY"):
        try:
            key = serialization.load_pem_public_key(_pem(text, kind))
        except (ValueError, TypeError):
            continue
        if isinstance(key, rsa.RSAPublicKey):
            return key
    raise ValueError("not an RSA public key")


def rsa2_sign(text: str, private_key: rsa.RSAPrivateKey) -> str:
    return base64.b64encode(private_key.sign(text.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())).decode()


def rsa2_verify(text: str, signature: str, public_key: rsa.RSAPublicKey) -> bool:
    try:
        raw = base64.b64decode(signature, validate=True)
        public_key.verify(raw, text.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def _response_text(body: str, key: str) -> str | None:
    """The exact text of the `key` object in Alipay's answer (what its signature covers)."""
    marker = f'"{key}"'
    at = body.find(marker)
    if at < 0:
        return None
    start = body.find(":", at + len(marker)) + 1
    while start < len(body) and body[start] in " \t\r\n":
        start += 1
    try:
        _value, end = json.JSONDecoder().raw_decode(body, start)
    except ValueError:
        return None
    return body[start:end]


class AlipayFaceToFace(Gateway):
    type = "alipay"
    options = ("app_id", "private_key", "alipay_public_key", "seller_id", "gateway")
    required = ("app_id", "private_key", "alipay_public_key")
    secret = ("private_key",)

    def currencies(self, options: dict) -> frozenset[str]:
        return frozenset({"CNY"})

    def check_options(self, options: dict) -> list[tuple[str, str]]:
        problems = []
        if options.get("private_key"):
            try:
                load_private_key(options["private_key"])
            except ValueError:
                problems.append(("private_key", N_("the app's RSA private key (PKCS#8 or PKCS#1, PEM or base64)")))
        if options.get("alipay_public_key"):
            try:
                load_public_key(options["alipay_public_key"])
            except ValueError:
                problems.append(("alipay_public_key", N_("Alipay's RSA public key (PEM or base64), from the console")))
        if options.get("app_id") and not options["app_id"].isdigit():
            problems.append(("app_id", N_("the app's APPID: digits")))
        base = options.get("gateway", "")
        if base and (urlsplit(base).scheme not in ("http", "https") or not urlsplit(base).netloc):
            problems.append(("gateway", N_("an http(s) URL such as https://openapi.alipay.com/gateway.do")))
        return problems

    # --- calls ---------------------------------------------------------------

    def _call(self, channel: Channel, method: str, biz: dict, *, notify_url: str | None = None) -> dict:
        options = channel.options
        params = {"app_id": options["app_id"], "method": method, "format": "JSON", "charset": "utf-8",
                  "sign_type": "RSA2", "version": "1.0",
                  "timestamp": dt.datetime.now(BEIJING).strftime("%Y-%m-%d %H:%M:%S"),
                  "notify_url": notify_url, "biz_content": json.dumps(biz, ensure_ascii=False, separators=(",", ":"))}
        params = {k: v for k, v in params.items() if v}
        params["sign"] = rsa2_sign(signing_string(params, leave_out=("sign",)),
                                   load_private_key(channel.secrets["private_key"]))
        request = urllib.request.Request(options.get("gateway") or GATEWAY, data=urlencode(params).encode(),
                                         headers={"Content-Type": "application/x-www-form-urlencoded;charset=utf-8"})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as resp:
                body = resp.read(MAX_ANSWER).decode("utf-8")
        except urllib.error.HTTPError as exc:
            raise GatewayError(f"Alipay answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError, ValueError, UnicodeDecodeError, http.client.HTTPException) as exc:
            raise GatewayError(f"Alipay unreachable: {exc.__class__.__name__}") from None
        key = method.replace(".", "_") + "_response"
        text = _response_text(body, key)
        try:
            whole = json.loads(body)
        except ValueError:
            whole = None
        if text is None or not isinstance(whole, dict):
            raise GatewayError("Alipay answered something that is not its JSON")
        answer = json.loads(text)
        signature = whole.get("sign")
        if isinstance(signature, str) and signature:
            if not rsa2_verify(text, signature, load_public_key(options["alipay_public_key"])):
                raise GatewayError("Alipay's answer does not verify with Alipay's public key")
        elif answer.get("code") == "10000":
            raise GatewayError("Alipay's answer is not signed")
        return answer

    @staticmethod
    def _refusal(answer: dict) -> GatewayError:
        words = " ".join(str(answer.get(k, "")) for k in ("code", "msg", "sub_code", "sub_msg")).strip()
        return GatewayError(f"Alipay refused: {words[:200]}")

    def start(self, channel: Channel, order: OrderToPay, urls: Urls, now: dt.datetime) -> Started:
        if order.currency != "CNY":
            raise NotForThisOrder(f"Alipay takes CNY only, not {order.currency}")
        minutes = max(1, int((order.expires_at - now).total_seconds() // 60))
        answer = self._call(channel, "alipay.trade.precreate", {
            "out_trade_no": order.order_no, "total_amount": format_cents(order.amount_cents),
            "subject": order.product_name[:128] or order.order_no, "timeout_express": f"{minutes}m"},
            notify_url=urls.notify)
        if answer.get("code") != "10000" or not answer.get("qr_code"):
            raise self._refusal(answer)
        if answer.get("out_trade_no") not in (None, order.order_no):
            raise GatewayError("Alipay answered about another order")
        return Started(ref=order.order_no, qr=str(answer["qr_code"]), pay_url=str(answer["qr_code"]),
                       expires_at=order.expires_at)

    def verify(self, channel: Channel, inbound: Inbound, now: dt.datetime) -> Notice:
        params = {k: v for k, v in inbound.params.items() if isinstance(v, str)}
        signature = params.get("sign", "")
        text = signing_string(params, leave_out=("sign", "sign_type"))
        if not signature or not rsa2_verify(text, signature, load_public_key(channel.options["alipay_public_key"])):
            raise Refused("bad signature", forged=True)
        if params.get("app_id") != channel.options["app_id"]:
            raise Refused("foreign app_id", forged=True)
        seller = channel.options.get("seller_id")
        if seller and params.get("seller_id") != seller:
            raise Refused("foreign seller_id", forged=True)
        return self._notice(params)

    @staticmethod
    def _notice(fields: dict) -> Notice:
        status = fields.get("trade_status")
        if status not in PAID:
            raise Refused(f"trade_status {str(status)[:30]!r} is not a payment")
        return Notice(order_no=str(fields.get("out_trade_no", ""))[:32], trade_no=str(fields.get("trade_no", "")),
                      amount_cents=parse_gateway_money(fields.get("total_amount")), currency="CNY", paid=True,
                      raw={k: v for k, v in fields.items() if k != "sign"})

    def query(self, channel: Channel, order_no: str, ref: str, now: dt.datetime) -> Notice | None:
        answer = self._call(channel, "alipay.trade.query", {"out_trade_no": order_no})
        if answer.get("code") != "10000":
            if answer.get("sub_code") == "ACQ.TRADE_NOT_EXIST":   # not scanned yet
                return None
            raise self._refusal(answer)
        if answer.get("out_trade_no") != order_no:
            raise GatewayError("Alipay answered about another order")
        try:
            return self._notice(answer)
        except Refused:
            return None

    def refund(self, channel: Channel, *, trade_no: str, amount_cents: int, currency: str,
               refund_no: str) -> str:
        answer = self._call(channel, "alipay.trade.refund", {
            "trade_no": trade_no, "refund_amount": format_cents(amount_cents), "out_request_no": refund_no})
        if answer.get("code") != "10000":
            raise self._refusal(answer)
        return str(answer.get("trade_no") or trade_no) + ":" + refund_no

    def probe(self, channel: Channel) -> str:
        # A query for an order that cannot exist: a signed "trade not found" proves the app id,
        # our key (Alipay checked our signature) and Alipay's key (we checked its).
        answer = self._call(channel, "alipay.trade.query", {"out_trade_no": "KAMENGD-PROBE-0"})
        if answer.get("code") == "10000" or answer.get("sub_code") == "ACQ.TRADE_NOT_EXIST":
            return "Alipay accepts the app's key, and its answer verifies with Alipay's public key"
        raise self._refusal(answer)

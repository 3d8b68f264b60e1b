"""WeChat Pay API v3, Native (扫码支付): a Native order → its `code_url` shown as a QR code.

The protocol by hand with `cryptography`, as WeChat Pay documents it (there is
no official Python SDK; the community `wechatpayv3` package brings its own
HTTP client and configuration for four calls whose rules are short):

- Requests carry `Authorization: WECHATPAY2-SHA256-RSA2048 mchid="..",
  nonce_str="..",signature="..",timestamp="..",serial_no=".."`: SHA256withRSA
  (PKCS#1 v1.5) with the merchant's API private key over
  "METHOD\\nPATH_WITH_QUERY\\nTIMESTAMP\\nNONCE\\nBODY\\n", base64; `serial_no`
  is the merchant's API certificate serial. `Wechatpay-Serial` names the
  platform key we check answers with (so a merchant moving to the 微信支付公钥
  is answered with it).
- Answers and notifications are checked with the platform's key (its
  certificate, or the newer 微信支付公钥): headers Wechatpay-Timestamp,
  -Nonce, -Signature and -Serial; the signature covers
  "TIMESTAMP\\nNONCE\\nBODY\\n" over the exact body. A serial we do not know,
  or a timestamp more than 5 minutes off, is refused before the signature.
- A notification's `resource` is AEAD_AES_256_GCM ciphertext under the
  APIv3 key (32 bytes), its `nonce` and `associated_data` as given; the
  plaintext names mchid and appid (ours, or refused), out_trade_no,
  transaction_id, trade_state (SUCCESS is paid) and amount {total, currency}
  in fen. WeChat wants HTTP 200/204 when recorded, else 4xx/5xx with
  {"code": "FAIL", "message": ..} (it sends again).

CNY only; amounts in fen, which are our cents.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import hmac
import http.client
import json
import re
import secrets
import time
import urllib.error
import urllib.request
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ...errors import N_
from ...money import from_minor_units
from .alipay_f2f import _pem, load_private_key, load_public_key
from .base import (Channel, Gateway, GatewayError, Inbound, NotForThisOrder, Notice, OrderToPay, Refused, Reply,
                   Started, Urls)

API_BASE = "https://api.mch.weixin.qq.com"
BEIJING = ZoneInfo("Asia/Shanghai")
TIMEOUT_SECONDS = 15
MAX_ANSWER = 256 * 1024
TOLERANCE_SECONDS = 300
CODE_URL_LIFE = dt.timedelta(hours=2)     # WeChat: a code_url can be scanned for two hours
SHORTEST_EXPIRY = dt.timedelta(minutes=5)  # time_expire no sooner than this from now
PROBE_ORDER = "KAMENGDPROBE0"
SERIAL_RE = re.compile(r"[0-9A-Fa-f]{8,64}")
PLATFORM_SERIAL_RE = re.compile(r"PUB_KEY_ID_[0-9A-Za-z_]{1,64}|[0-9A-Fa-f]{8,64}")
REFUNDED = ("SUCCESS", "PROCESSING")


@functools.lru_cache(maxsize=16)
def load_platform_key(text: str) -> tuple[rsa.RSAPublicKey, str | None]:
    """The platform's RSA public key from its certificate or from the 微信支付公钥 (PEM, its
    line breaks kept or lost, or bare base64), and the certificate's serial (upper-case hex)."""
    if "CERTIFICATE" in text:
        try:
            cert = x509.load_pem_x509_certificate(_pem(text, "CERTIFICATE"))
        except ValueError:
            raise ValueError("not a certificate") from None
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError("not an RSA certificate")
        return key, format(cert.serial_number, "X")
    return load_public_key(text), None


def sign(message: bytes, private_key: rsa.RSAPrivateKey) -> str:
    return base64.b64encode(private_key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()


def verify(message: bytes, signature: str, public_key: rsa.RSAPublicKey) -> bool:
    try:
        public_key.verify(base64.b64decode(signature, validate=True), message, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def authorization(*, method: str, path: str, body: bytes, mchid: str, serial_no: str,
                  private_key: rsa.RSAPrivateKey, timestamp: int, nonce: str) -> str:
    message = f"{method}\n{path}\n{timestamp}\n{nonce}\n".encode() + body + b"\n"
    return (f'WECHATPAY2-SHA256-RSA2048 mchid="{mchid}",nonce_str="{nonce}",signature="{sign(message, private_key)}",'
            f'timestamp="{timestamp}",serial_no="{serial_no}"')


def decrypt_resource(resource: dict, apiv3_key: str) -> bytes:
    """The plaintext of a notification's AEAD_AES_256_GCM resource; ValueError if it is not one
    made with this key."""
    if not isinstance(resource, dict) or resource.get("algorithm") != "AEAD_AES_256_GCM":
        raise ValueError("not AEAD_AES_256_GCM")
    fields = [resource.get(k) for k in ("ciphertext", "nonce")]
    associated = resource.get("associated_data") or ""
    if not all(isinstance(f, str) and f for f in fields) or not isinstance(associated, str):
        raise ValueError("no ciphertext or nonce")
    ciphertext, nonce = fields
    try:
        return AESGCM(apiv3_key.encode()).decrypt(nonce.encode(), base64.b64decode(ciphertext, validate=True),
                                                  associated.encode())
    except (InvalidTag, binascii.Error, ValueError, OverflowError):
        raise ValueError("does not decrypt with the APIv3 key") from None


def _same(given, expected: str) -> bool:
    return isinstance(given, str) and hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode())


def _seconds(ts: str) -> int | None:
    return int(ts) if isinstance(ts, str) and ts.isascii() and ts.isdigit() and len(ts) <= 12 else None


def _signed_by_platform(channel: Channel, headers: dict, body: bytes, now_seconds: float) -> str | None:
    """Why the headers and body are not the platform's (None: they are)."""
    given = headers.get("wechatpay-serial")
    # (A certificate's serial is hex, upper-case in WeChat's headers, perhaps not as typed in.)
    if not isinstance(given, str) or not _same(given.upper(), channel.options["platform_serial"].upper()):
        return "a Wechatpay-Serial that is not the channel's platform key"
    sent = _seconds(headers.get("wechatpay-timestamp"))
    if sent is None or abs(now_seconds - sent) > TOLERANCE_SECONDS:
        return "a Wechatpay-Timestamp more than 5 minutes off"
    nonce, signature = headers.get("wechatpay-nonce"), headers.get("wechatpay-signature")
    if not isinstance(nonce, str) or not nonce or not isinstance(signature, str) or not signature:
        return "no Wechatpay-Nonce or Wechatpay-Signature"
    key, _serial = load_platform_key(channel.options["platform_public_key"])
    if not verify(f"{sent}\n{nonce}\n".encode() + body + b"\n", signature, key):
        return "a Wechatpay-Signature that does not verify with the platform key"
    return None


def _cut(text: str, limit: int) -> str:
    """At most `limit` UTF-8 bytes, never half a character (WeChat counts bytes)."""
    return text.encode("utf-8")[:limit].decode("utf-8", "ignore")


class WeChatPayNative(Gateway):
    type = "wechatpay"
    options = ("mchid", "appid", "merchant_serial_no", "private_key", "apiv3_key", "platform_public_key",
               "platform_serial", "api_base")
    required = ("mchid", "appid", "merchant_serial_no", "private_key", "apiv3_key", "platform_public_key",
                "platform_serial")
    secret = ("private_key", "apiv3_key")
    json_callbacks = True

    def currencies(self, options: dict) -> frozenset[str]:
        return frozenset({"CNY"})

    def check_options(self, options: dict) -> list[tuple[str, str]]:
        problems = []
        if options.get("mchid") and not re.fullmatch(r"[0-9]{1,32}", options["mchid"]):
            problems.append(("mchid", N_("the merchant id (商户号): digits")))
        if options.get("appid") and not re.fullmatch(r"[A-Za-z0-9_]{1,32}", options["appid"]):
            problems.append(("appid", N_("the APPID bound to the merchant id (wx…)")))
        if options.get("merchant_serial_no") and not SERIAL_RE.fullmatch(options["merchant_serial_no"]):
            problems.append(("merchant_serial_no", N_("the merchant API certificate's serial number (hex)")))
        if options.get("private_key"):
            try:
                load_private_key(options["private_key"])
            except ValueError:
                problems.append(("private_key", N_("the merchant API private key (apiclient_key.pem)")))
        key = options.get("apiv3_key", "")
        if key and (not key.isascii() or len(key) != 32):
            problems.append(("apiv3_key", N_("the APIv3 key: 32 characters, as set in the merchant platform")))
        serial = options.get("platform_serial", "")
        if serial and not PLATFORM_SERIAL_RE.fullmatch(serial):
            problems.append(("platform_serial", N_("the platform certificate's serial (hex) or the public key's "
                                                "id (PUB_KEY_ID_…)")))
        if options.get("platform_public_key"):
            try:
                _key, cert_serial = load_platform_key(options["platform_public_key"])
            except ValueError:
                problems.append(("platform_public_key", N_("the WeChat Pay public key (pub_key.pem) or the "
                                                        "platform certificate, PEM")))
            else:
                if (cert_serial and serial and PLATFORM_SERIAL_RE.fullmatch(serial)
                        and cert_serial.lstrip("0") != serial.upper().lstrip("0")):
                    problems.append(("platform_serial", f"the certificate given has the serial {cert_serial}"))
        base = options.get("api_base", "")
        if base and (urlsplit(base).scheme not in ("http", "https") or not urlsplit(base).netloc
                     or urlsplit(base).query):
            problems.append(("api_base", N_("an http(s) base URL such as https://api.mch.weixin.qq.com")))
        return problems

    # --- calls ---------------------------------------------------------------

    def _call(self, channel: Channel, method: str, path: str,
              payload: dict | None = None) -> tuple[int, dict, bool]:
        """(HTTP status, JSON answer, whether it was signed) of a signed request: a 2xx answer only
        once it verifies with the platform key; a refusal is checked when signed."""
        options = channel.options
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() if payload is not None else b""
        base = (options.get("api_base") or API_BASE).rstrip("/")
        url = base + path
        target = urlsplit(url)
        signed_path = target.path + (f"?{target.query}" if target.query else "")
        headers = {"Accept": "application/json", "User-Agent": "kamengd",
                   "Wechatpay-Serial": options["platform_serial"],
                   "Authorization": authorization(method=method, path=signed_path, body=body, mchid=options["mchid"],
                                                  serial_no=options["merchant_serial_no"],
                                                  private_key=load_private_key(channel.secrets["private_key"]),
                                                  timestamp=int(time.time()), nonce=secrets.token_hex(16))}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=body if payload is not None else None, method=method,
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as resp:
                status, answer_headers, raw = resp.status, resp.headers, resp.read(MAX_ANSWER + 1)
        except urllib.error.HTTPError as exc:
            try:
                status, answer_headers, raw = exc.code, exc.headers, exc.read(MAX_ANSWER + 1)
            except (OSError, http.client.HTTPException):
                raise GatewayError(f"WeChat Pay answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
            raise GatewayError(f"WeChat Pay unreachable: {exc.__class__.__name__}") from None
        if len(raw) > MAX_ANSWER:
            raise GatewayError("WeChat Pay answered more than any answer holds")
        lowered = {k.lower(): v for k, v in (answer_headers or {}).items()}
        signed = "wechatpay-signature" in lowered
        if 200 <= status < 300 or signed:
            problem = _signed_by_platform(channel, lowered, raw, time.time())
            if problem:
                raise GatewayError(f"WeChat Pay's answer (HTTP {status}) has {problem}")
        try:
            answer = json.loads(raw) if raw else {}
        except (ValueError, UnicodeDecodeError):
            answer = None
        if not isinstance(answer, dict):
            raise GatewayError(f"WeChat Pay answered HTTP {status} with something that is not its JSON")
        return status, answer, signed

    @staticmethod
    def _refusal(status: int, answer: dict) -> GatewayError:
        words = " ".join(str(answer.get(k, "")) for k in ("code", "message")).strip()
        return GatewayError(f"WeChat Pay refused (HTTP {status}): {' '.join(words.split())[:200]}")

    def start(self, channel: Channel, order: OrderToPay, urls: Urls, now: dt.datetime) -> Started:
        if order.currency != "CNY":
            raise NotForThisOrder(f"WeChat Pay takes CNY only, not {order.currency}")
        expires = max(order.expires_at, now + SHORTEST_EXPIRY)
        until = expires.replace(tzinfo=dt.timezone.utc).astimezone(BEIJING).isoformat(timespec="seconds")
        status, answer, _signed = self._call(channel, "POST", "/v3/pay/transactions/native", {
            "appid": channel.options["appid"], "mchid": channel.options["mchid"],
            "description": _cut(order.product_name, 127) or order.order_no, "out_trade_no": order.order_no,
            "time_expire": until, "notify_url": urls.notify,
            "amount": {"total": order.amount_cents, "currency": "CNY"}})
        code_url = answer.get("code_url")
        if status != 200 or not isinstance(code_url, str) or not code_url or len(code_url) > 512:
            raise self._refusal(status, answer)
        return Started(ref=order.order_no, qr=code_url, expires_at=min(expires, now + CODE_URL_LIFE))

    def verify(self, channel: Channel, inbound: Inbound, now: dt.datetime) -> Notice:
        problem = _signed_by_platform(channel, inbound.headers, inbound.body,
                                      now.replace(tzinfo=dt.timezone.utc).timestamp())
        if problem:
            raise Refused(problem, forged=True)
        try:
            event = json.loads(inbound.body)
            resource = event["resource"]
            plain = json.loads(decrypt_resource(resource, channel.secrets["apiv3_key"]))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            # Signed by WeChat, yet not readable with our APIv3 key: not answered as received,
            # so WeChat sends it again once the key is right (reconciliation asks meanwhile).
            raise Refused(f"a notification whose resource cannot be read: {str(exc)[:60]}", reread=True) from None
        if not isinstance(plain, dict):
            raise Refused("a notification whose resource is not an object", forged=True)
        if not _same(plain.get("mchid"), channel.options["mchid"]):
            raise Refused("foreign mchid", forged=True)
        if not _same(plain.get("appid"), channel.options["appid"]):
            raise Refused("foreign appid", forged=True)
        return self._notice(plain, {"id": event.get("id"), "event_type": event.get("event_type")})

    @staticmethod
    def _notice(fields: dict, extra: dict) -> Notice:
        state = fields.get("trade_state")
        if state != "SUCCESS":
            raise Refused(f"trade_state {str(state)[:30]!r} is not a payment")
        amount = fields.get("amount") if isinstance(fields.get("amount"), dict) else {}
        currency = amount.get("currency")
        currency = currency.upper()[:8] if isinstance(currency, str) else ""
        transaction = fields.get("transaction_id")
        return Notice(order_no=str(fields.get("out_trade_no", ""))[:32],
                      trade_no=transaction[:128] if isinstance(transaction, str) else "",
                      amount_cents=from_minor_units(amount.get("total"), "CNY") if currency else None,
                      currency=currency, paid=True,
                      raw={**extra, **{k: fields.get(k) for k in ("out_trade_no", "transaction_id", "trade_state",
                                                                  "trade_type", "success_time")},
                           "amount": {k: amount.get(k) for k in ("total", "payer_total", "currency")}})

    def reply(self, recorded: bool) -> Reply:
        if recorded:
            return Reply("", 204)
        return Reply(json.dumps({"code": "FAIL", "message": "not recorded"}), 400, "application/json")

    def _query(self, channel: Channel, order_no: str) -> tuple[Notice | None, bool]:
        status, answer, signed = self._call(
            channel, "GET", f"/v3/pay/transactions/out-trade-no/{quote(order_no, safe='')}"
                            f"?mchid={quote(channel.options['mchid'], safe='')}")
        if status == 404 and answer.get("code") == "ORDER_NOT_EXIST":   # not scanned yet
            return None, signed
        if status != 200:
            raise self._refusal(status, answer)
        if answer.get("out_trade_no") != order_no:
            raise GatewayError("WeChat Pay answered about another order")
        if (not _same(answer.get("mchid"), channel.options["mchid"])
                or not _same(answer.get("appid"), channel.options["appid"])):
            raise GatewayError("WeChat Pay answered about another merchant's order")
        try:
            return self._notice(answer, {"source": "query"}), signed
        except Refused:
            return None, signed

    def query(self, channel: Channel, order_no: str, ref: str, now: dt.datetime) -> Notice | None:
        return self._query(channel, order_no)[0]

    def refund(self, channel: Channel, *, trade_no: str, amount_cents: int, currency: str,
               refund_no: str) -> str:
        if currency != "CNY":
            raise GatewayError(f"WeChat Pay refunds CNY only, not {currency}")
        status, answer, _signed = self._call(channel, "POST", "/v3/refund/domestic/refunds", {
            "transaction_id": trade_no, "out_refund_no": refund_no,
            "amount": {"refund": amount_cents, "total": amount_cents, "currency": "CNY"}})
        if status != 200:
            raise self._refusal(status, answer)
        if answer.get("out_refund_no") != refund_no or answer.get("status") not in REFUNDED:
            raise GatewayError(f"WeChat Pay: the refund is {str(answer.get('status'))[:20]}")
        return str(answer.get("refund_id") or refund_no)

    def probe(self, channel: Channel) -> str:
        # A query for an order that cannot exist: ORDER_NOT_EXIST proves the merchant id, our key
        # and serial (WeChat checked our signature); signed, the platform key too (we checked it).
        notice, signed = self._query(channel, PROBE_ORDER)
        if notice is not None:
            raise GatewayError("WeChat Pay reports a payment for the probe's order number")
        if signed:
            return "WeChat Pay accepts the merchant's key, and its answer verifies with the platform key"
        return ("WeChat Pay accepts the merchant's key (its answer was not signed: the platform key is "
                "checked with the first payment)")

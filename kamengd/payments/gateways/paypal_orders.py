"""PayPal Checkout: Orders v2 (create → the buyer approves at PayPal → capture), its webhooks, refunds.

The REST calls by hand, as PayPal documents them (its `paypal-server-sdk` is
generated code whose address is a two-value enum, sandbox or live, with no
way to point it at another host, and it has no call for webhook
verification, which kamengd needs most):

- OAuth2 client credentials: POST {api_base}/v1/oauth2/token with HTTP Basic
  client_id:client_secret and grant_type=client_credentials; the access token
  is kept per channel (and per credentials) until a minute before it expires,
  and fetched again once when PayPal answers 401.
- Create: POST /v2/checkout/orders, intent CAPTURE, one purchase unit whose
  reference_id, custom_id and invoice_id are the order number and whose
  amount is the order's (a decimal string; JPY, HUF and TWD have no decimals),
  payment_source.paypal.experience_context with the return and cancel URLs;
  PayPal-Request-Id makes it one PayPal order per kamengd order and channel.
  The buyer goes to the `payer-action` (or `approve`) link.
- An approved order is only a promise: the money moves on capture, POST
  /v2/checkout/orders/{id}/capture with PayPal-Request-Id
  `kamengd-capture-{id}`, so the webhook, reconciliation and the buyer's
  return may each ask and PayPal captures once. Captured already (a request
  id PayPal forgot): the order is read instead.
- Webhooks are believed only when PayPal says so: POST
  /v1/notifications/verify-webhook-signature with the five transmission
  headers, the channel's webhook_id and the event exactly as received →
  verification_status SUCCESS. CHECKOUT.ORDER.APPROVED is captured;
  PAYMENT.CAPTURE.COMPLETED is the payment. The payee's merchant id must be
  the channel's when `merchant_id` is set.
- Refund: POST /v2/payments/captures/{capture id}/refund, PayPal-Request-Id
  the refund's number.

A payment is recorded under its capture id (what a refund names), whichever
way it arrives.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import http.client
import json
import re
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import quote, urlencode, urlsplit

from ...errors import N_
from ...money import MAX_CENTS, THREE_DECIMAL, format_cents, parse_gateway_money
from .base import (Channel, Gateway, GatewayError, Inbound, NotForThisOrder, Notice, OrderToPay, Refused, Reply,
                   Started, Urls)

API_BASE = "https://api-m.paypal.com"
TIMEOUT_SECONDS = 15
MAX_ANSWER = 512 * 1024
# PayPal's own currencies; these three take no decimals at PayPal.
CURRENCIES = frozenset({"AUD", "BRL", "CAD", "CNY", "CZK", "DKK", "EUR", "HKD", "HUF", "ILS", "JPY", "MYR", "MXN",
                        "TWD", "NZD", "NOK", "PHP", "PLN", "GBP", "SGD", "SEK", "CHF", "THB", "USD"})
NO_DECIMALS = frozenset({"JPY", "HUF", "TWD"})
APPROVAL_WINDOW = dt.timedelta(hours=3)   # how long PayPal keeps an order payable by default
APPROVED, CAPTURED = "CHECKOUT.ORDER.APPROVED", "PAYMENT.CAPTURE.COMPLETED"
HEADERS = ("paypal-transmission-id", "paypal-transmission-time", "paypal-transmission-sig", "paypal-cert-url",
           "paypal-auth-algo")
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

_tokens: dict[tuple, tuple[str, float]] = {}
_tokens_lock = threading.Lock()


def paypal_value(cents: int, currency: str) -> str | None:
    """Our cents as PayPal's amount value; None when PayPal cannot be sent it."""
    currency = currency.upper()
    if currency in THREE_DECIMAL:
        return None
    if currency in NO_DECIMALS:
        return str(cents // 100) if cents % 100 == 0 else None
    return format_cents(cents)


def cents_of(value, currency: str) -> int | None:
    """PayPal's amount value as our cents; None for anything that is not one."""
    if not isinstance(value, str):
        return None
    if currency.upper() in NO_DECIMALS:
        if not re.fullmatch(r"[0-9]{1,11}", value):
            return None
        cents = int(value) * 100
        return cents if 0 < cents < MAX_CENTS else None
    return parse_gateway_money(value)


def _base(channel: Channel) -> str:
    return (channel.options.get("api_base") or API_BASE).rstrip("/")


def _cache_key(channel: Channel) -> tuple:
    secret = channel.secrets.get("client_secret", "")
    return (channel.code, _base(channel), channel.options.get("client_id", ""),
            hashlib.sha256(secret.encode()).hexdigest())


def _problem(answer) -> str:
    """PayPal's words from an error answer (its `name`/`message`/`details`, or OAuth's)."""
    if not isinstance(answer, dict):
        return "no message"
    parts = [answer.get("name"), answer.get("error"), answer.get("message"), answer.get("error_description")]
    details = answer.get("details")
    if isinstance(details, list):
        parts += [d.get("issue") for d in details[:3] if isinstance(d, dict)]
    return " ".join(" ".join(str(p) for p in parts if p).split())[:200] or "no message"


def _issues(answer) -> set[str]:
    details = answer.get("details") if isinstance(answer, dict) else None
    return {str(d.get("issue")) for d in details if isinstance(d, dict)} if isinstance(details, list) else set()


def _send(url: str, *, method: str, body: bytes | None, headers: dict) -> tuple[int, object]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as resp:
            status, raw = resp.status, resp.read(MAX_ANSWER)
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read(MAX_ANSWER)
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        raise GatewayError(f"PayPal unreachable: {exc.__class__.__name__}") from None
    try:
        answer = json.loads(raw) if raw.strip() else {}
    except (ValueError, UnicodeDecodeError):
        if status >= 500:
            raise GatewayError(f"PayPal answered HTTP {status}") from None
        raise GatewayError(f"PayPal answered HTTP {status} with something that is not JSON") from None
    return status, answer


def _token(channel: Channel, *, fresh: bool = False) -> str:
    key = _cache_key(channel)
    now = time.monotonic()
    if not fresh:
        found = _tokens.get(key)
        if found is not None and found[1] > now:
            return found[0]
    basic = base64.b64encode(f"{channel.options.get('client_id', '')}:"
                             f"{channel.secrets.get('client_secret', '')}".encode()).decode()
    status, answer = _send(f"{_base(channel)}/v1/oauth2/token", method="POST",
                           body=urlencode({"grant_type": "client_credentials"}).encode(),
                           headers={"Authorization": f"Basic {basic}", "Accept": "application/json",
                                    "Content-Type": "application/x-www-form-urlencoded"})
    token = answer.get("access_token") if isinstance(answer, dict) else None
    if status != 200 or not isinstance(token, str) or not token:
        raise GatewayError(f"PayPal refused the client credentials: HTTP {status} {_problem(answer)}")
    lifetime = answer.get("expires_in")
    lifetime = lifetime if isinstance(lifetime, int) and not isinstance(lifetime, bool) else 300
    with _tokens_lock:
        if len(_tokens) > 256:
            _tokens.clear()
        _tokens[key] = (token, now + max(0, lifetime - 60))
    return token


def _call(channel: Channel, method: str, path: str, payload=None, *, request_id: str | None = None,
          raw_body: bytes | None = None) -> tuple[int, object]:
    """(HTTP status, JSON answer) of an API call with the channel's bearer token."""
    body = raw_body if raw_body is not None else (json.dumps(payload).encode() if payload is not None else None)
    for fresh in (False, True):
        headers = {"Authorization": f"Bearer {_token(channel, fresh=fresh)}", "Accept": "application/json",
                   "Prefer": "return=representation"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if request_id:
            headers["PayPal-Request-Id"] = request_id
        status, answer = _send(_base(channel) + path, method=method, body=body, headers=headers)
        if status != 401:
            break
    if status >= 500:
        raise GatewayError(f"PayPal answered HTTP {status}: {_problem(answer)}")
    if not isinstance(answer, dict):
        raise GatewayError("PayPal answered something that is not a JSON object")
    return status, answer


def _unit(order: dict) -> dict:
    units = order.get("purchase_units")
    return units[0] if isinstance(units, list) and units and isinstance(units[0], dict) else {}


def _order_no_of(*objects: dict) -> str:
    for obj in objects:
        for name in ("custom_id", "invoice_id", "reference_id"):
            value = obj.get(name)
            if isinstance(value, str) and value:
                return value[:32]
    return ""


def _capture_of(order: dict) -> dict | None:
    payments = _unit(order).get("payments")
    captures = payments.get("captures") if isinstance(payments, dict) else None
    if isinstance(captures, list):
        for capture in captures:
            if isinstance(capture, dict) and capture.get("id"):
                return capture
    return None


def _merchant_of(obj: dict) -> str:
    payee = obj.get("payee")
    return str(payee.get("merchant_id") or "") if isinstance(payee, dict) else ""



# PayPal retries a webhook for up to three days; a transmission older than that, or from the
# future, was never PayPal's.
TRANSMISSION_WINDOW = (dt.timedelta(days=4), dt.timedelta(hours=1))


def _paypal_cert_url(url: str, api_base: str) -> bool:
    """PayPal's signing certificate is on one of its own hosts (https://api.paypal.com/…), or,
    for a channel pointed at another API base (a test double), on that base's host."""
    try:
        parts, base = urlsplit(url), urlsplit(api_base)
    except ValueError:
        return False
    host = (parts.hostname or "").lower()
    if parts.scheme == "https" and (host == "paypal.com" or host.endswith(".paypal.com")):
        return True
    return (parts.scheme, parts.netloc.lower()) == (base.scheme, base.netloc.lower()) and bool(host)


def _recent(text: str, now: dt.datetime) -> bool:
    try:
        sent = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return False
    if sent.tzinfo is None:
        return False
    age = now.replace(tzinfo=dt.timezone.utc) - sent
    older, newer = TRANSMISSION_WINDOW
    return -newer <= age <= older


class PayPalOrders(Gateway):
    type = "paypal"
    options = ("client_id", "client_secret", "webhook_id", "api_base", "merchant_id")
    required = ("client_id", "client_secret", "webhook_id")
    secret = ("client_secret",)
    json_callbacks = True
    asks_on_return = True   # the money moves on capture: the buyer's return is a moment to ask

    def currencies(self, options: dict) -> frozenset[str]:
        return CURRENCIES

    def check_options(self, options: dict) -> list[tuple[str, str]]:
        problems = []
        if options.get("client_id") and not re.fullmatch(r"[A-Za-z0-9_-]{16,128}", options["client_id"]):
            problems.append(("client_id", N_("the REST app's client ID (letters, digits, - and _), from PayPal's "
                                          "developer dashboard")))
        if options.get("webhook_id") and not re.fullmatch(r"[A-Za-z0-9]{1,64}", options["webhook_id"]):
            problems.append(("webhook_id", N_("the webhook's ID as the developer dashboard shows it (letters and "
                                           "digits)")))
        if options.get("merchant_id") and not re.fullmatch(r"[A-Za-z0-9]{1,64}", options["merchant_id"]):
            problems.append(("merchant_id", N_("the account's PayPal merchant ID (letters and digits)")))
        base = options.get("api_base", "")
        if base and (urlsplit(base).scheme not in ("http", "https") or not urlsplit(base).netloc
                     or urlsplit(base).query):
            problems.append(("api_base", N_("an http(s) base URL such as https://api-m.sandbox.paypal.com")))
        return problems

    # --- paying -----------------------------------------------------------------

    def start(self, channel: Channel, order: OrderToPay, urls: Urls, now: dt.datetime) -> Started:
        currency = order.currency.upper()
        value = paypal_value(order.amount_cents, currency) if currency in CURRENCIES else None
        if value is None:
            raise NotForThisOrder(f"PayPal cannot charge {format_cents(order.amount_cents)} {currency}")
        payload = {
            "intent": "CAPTURE",
            "purchase_units": [{
                "reference_id": order.order_no, "custom_id": order.order_no, "invoice_id": order.order_no,
                "description": (order.product_name or order.order_no)[:127],
                "amount": {"currency_code": currency, "value": value}}],
            "payment_source": {"paypal": {"experience_context": {
                "return_url": urls.back, "cancel_url": urls.back, "user_action": "PAY_NOW",
                "shipping_preference": "NO_SHIPPING"}}},
        }
        # One PayPal order per kamengd order and channel, however often the buyer opens the page.
        status, answer = _call(channel, "POST", "/v2/checkout/orders", payload,
                               request_id=f"kamengd-{channel.code}-{order.order_no}")
        if status not in (200, 201):
            raise GatewayError(f"PayPal refused the order: HTTP {status} {_problem(answer)}")
        links = answer.get("links") if isinstance(answer.get("links"), list) else []
        found = {link.get("rel"): link.get("href") for link in links if isinstance(link, dict)}
        pay_url = found.get("payer-action") or found.get("approve")
        ref = answer.get("id")
        if not isinstance(ref, str) or not _ID.fullmatch(ref) or not isinstance(pay_url, str) \
                or urlsplit(pay_url).scheme not in ("http", "https"):
            raise GatewayError("PayPal: the order has no id or no approval link")
        if _order_no_of(_unit(answer)) not in ("", order.order_no):
            raise GatewayError("PayPal answered about another order")
        return Started(ref=ref, pay_url=pay_url, expires_at=min(order.expires_at, now + APPROVAL_WINDOW))

    def _capture(self, channel: Channel, ref: str) -> dict:
        """The PayPal order `ref` captured (once, whoever asks): its state after the capture."""
        path = f"/v2/checkout/orders/{quote(ref, safe='')}"
        status, answer = _call(channel, "POST", f"{path}/capture", {}, request_id=f"kamengd-capture-{ref}")
        if status in (200, 201):
            return answer
        if status == 422 and "ORDER_ALREADY_CAPTURED" in _issues(answer):
            return self._order(channel, ref)
        raise GatewayError(f"PayPal did not capture: HTTP {status} {_problem(answer)}")

    def _order(self, channel: Channel, ref: str) -> dict:
        status, answer = _call(channel, "GET", f"/v2/checkout/orders/{quote(ref, safe='')}")
        if status != 200:
            raise GatewayError(f"PayPal: order {ref[:40]}: HTTP {status} {_problem(answer)}")
        return answer

    @staticmethod
    def _notice(capture: dict, order: dict | None, raw: dict) -> Notice:
        amount = capture.get("amount") if isinstance(capture.get("amount"), dict) else {}
        currency = str(amount.get("currency_code") or "").upper()[:8]
        order_no = _order_no_of(capture, _unit(order)) if order is not None else _order_no_of(capture)
        return Notice(order_no=order_no, trade_no=str(capture.get("id") or "")[:128],
                      amount_cents=cents_of(amount.get("value"), currency) if currency else None,
                      currency=currency, paid=capture.get("status") == "COMPLETED",
                      raw={**raw, "capture": capture.get("id"), "status": capture.get("status"),
                           "amount": amount.get("value"), "currency": amount.get("currency_code"),
                           "paypal_order": (order or {}).get("id")})

    # --- webhooks ---------------------------------------------------------------

    def verify(self, channel: Channel, inbound: Inbound, now: dt.datetime) -> Notice:
        headers = {name: inbound.headers.get(name, "") for name in HEADERS}
        if not all(headers.values()):
            raise Refused("no PayPal transmission headers", forged=True)
        try:
            event = json.loads(inbound.body)
        except (ValueError, UnicodeDecodeError):
            raise Refused("not a PayPal event", forged=True) from None
        if not isinstance(event, dict):
            raise Refused("not a PayPal event", forged=True)
        # What needs no call to PayPal first: the verification call is not spent on anything else.
        if event.get("event_type") not in (APPROVED, CAPTURED):
            raise Refused(f"event {str(event.get('event_type'))[:60]!r} is not a payment")   # changes nothing
        if not _paypal_cert_url(headers["paypal-cert-url"], channel.options.get("api_base") or API_BASE):
            raise Refused("a certificate URL that is not PayPal's", forged=True)
        if not _recent(headers["paypal-transmission-time"], now):
            raise Refused("a transmission time far from now", forged=True)
        # The event goes back exactly as it came (its bytes, not a re-encoding of them).
        head = json.dumps({"auth_algo": headers["paypal-auth-algo"], "cert_url": headers["paypal-cert-url"],
                           "transmission_id": headers["paypal-transmission-id"],
                           "transmission_sig": headers["paypal-transmission-sig"],
                           "transmission_time": headers["paypal-transmission-time"],
                           "webhook_id": channel.options.get("webhook_id", "")})
        body = head[:-1].encode() + b', "webhook_event": ' + inbound.body.strip() + b"}"
        try:
            status, answer = _call(channel, "POST", "/v1/notifications/verify-webhook-signature", raw_body=body)
        except GatewayError as exc:   # not known genuine, nor forged: PayPal sends it again (a non-2xx answer)
            raise Refused(f"the webhook could not be verified now: {exc}", retry=True) from None
        if status != 200 or answer.get("verification_status") != "SUCCESS":
            raise Refused("PayPal does not verify the webhook", forged=True)
        kind, resource = event.get("event_type"), event.get("resource")
        if kind not in (APPROVED, CAPTURED) or not isinstance(resource, dict):
            raise Refused(f"event {str(kind)[:60]!r} is not a payment")
        merchant = channel.options.get("merchant_id", "")
        payee = _merchant_of(_unit(resource) if kind == APPROVED else resource)
        if merchant and not hmac.compare_digest(payee.encode(), merchant.encode()):
            raise Refused("a payment to another merchant", forged=True)
        raw = {"event": event.get("id"), "type": kind}
        if kind == CAPTURED:
            related = resource.get("supplementary_data", {}).get("related_ids", {}) \
                if isinstance(resource.get("supplementary_data"), dict) else {}
            raw["paypal_order"] = related.get("order_id") if isinstance(related, dict) else None
            return self._notice(resource, None, raw)
        # Approved: take the money now (the same capture as reconciliation's or the return's).
        ref = resource.get("id")
        if not isinstance(ref, str) or not _ID.fullmatch(ref):
            raise Refused("an approved order without an id")
        try:
            order = self._capture(channel, ref)
        except GatewayError as exc:   # reconciliation asks again; the buyer may pay another way
            raise Refused(f"approved, not captured: {exc}") from None
        capture = _capture_of(order)
        if capture is None:
            raise Refused("approved, PayPal made no capture")
        return self._notice(capture, order, raw)

    def reply(self, recorded: bool) -> Reply:
        # A 2xx stops PayPal's retries: only for what is recorded (or refused for good, see the view).
        return Reply(json.dumps({"received": recorded}), 200 if recorded else 400, "application/json")

    # --- reconciliation, refunds, the panel's test -------------------------------

    def query(self, channel: Channel, order_no: str, ref: str, now: dt.datetime) -> Notice | None:
        return self._read(channel, order_no, ref, capture=True)

    def look(self, channel: Channel, order_no: str, ref: str, now: dt.datetime) -> Notice | None:
        # Approved but not captured is no payment yet: the settlement never captures.
        return self._read(channel, order_no, ref, capture=False)

    def _read(self, channel: Channel, order_no: str, ref: str, *, capture: bool) -> Notice | None:
        if not _ID.fullmatch(ref or ""):
            raise GatewayError("PayPal: the attempt names no PayPal order")
        status, order = _call(channel, "GET", f"/v2/checkout/orders/{quote(ref, safe='')}")
        if status == 404:   # never approved, and gone
            return None
        if status != 200:
            raise GatewayError(f"PayPal: order {ref[:40]}: HTTP {status} {_problem(order)}")
        if _order_no_of(_unit(order)) != order_no:
            raise GatewayError("PayPal: the order belongs to another order of this shop")
        if order.get("status") == "APPROVED" and capture:
            order = self._capture(channel, ref)
        if order.get("status") != "COMPLETED":
            return None
        capture = _capture_of(order)
        if capture is None:
            return None
        notice = self._notice(capture, order, {"event": None, "type": "query"})
        return notice if notice.paid else None

    def refund(self, channel: Channel, *, trade_no: str, amount_cents: int, currency: str,
               refund_no: str) -> str:
        value = paypal_value(amount_cents, currency)
        if value is None or not _ID.fullmatch(trade_no):
            raise GatewayError("PayPal: this payment cannot be refunded through the API")
        status, answer = _call(channel, "POST", f"/v2/payments/captures/{quote(trade_no, safe='')}/refund",
                               {"amount": {"value": value, "currency_code": currency.upper()}},
                               request_id=refund_no)
        if status not in (200, 201):
            raise GatewayError(f"PayPal refused the refund: HTTP {status} {_problem(answer)}")
        if answer.get("status") not in ("COMPLETED", "PENDING") or not answer.get("id"):
            raise GatewayError(f"PayPal: the refund is {str(answer.get('status'))[:20]}")
        return str(answer["id"])

    def probe(self, channel: Channel) -> str:
        webhook = channel.options.get("webhook_id", "")
        status, answer = _call(channel, "GET", f"/v1/notifications/webhooks/{quote(webhook, safe='')}")
        if status != 200:
            raise GatewayError(f"PayPal accepts the client credentials but not the webhook ID: HTTP {status} "
                               f"{_problem(answer)}")
        return "PayPal accepts the client credentials and knows the webhook"

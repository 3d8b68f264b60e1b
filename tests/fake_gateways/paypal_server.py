"""A local PayPal, in its own process: the part of PayPal's REST API kamengd uses, and its webhooks.

Speaks what api-m.paypal.com does for these calls:

- POST /v1/oauth2/token: HTTP Basic client_id:secret, grant_type=client_credentials → a bearer
  token (expires_in); every other call wants `Authorization: Bearer <a token it issued>` (401
  otherwise, also once /_test/expire_tokens has dropped them).
- Orders v2: create (CREATED → PAYER_ACTION_REQUIRED with a `payer-action` link), get, capture
  (only an APPROVED order; COMPLETED with one capture; again: 422 ORDER_ALREADY_CAPTURED).
  `PayPal-Request-Id` makes a create, a capture or a refund answer the same object again.
- Payments v2: refund a capture (never more than it captured).
- Notifications: verify-webhook-signature answers SUCCESS only for an event this process sent,
  unchanged, to the webhook ID asked about (the calling app's): its transmission signature is an
  HMAC, under a key only this process knows, of "<transmission id>|<time>|<webhook id>|<crc32 of
  the event>", the shape of PayPal's own signing string. GET /v1/notifications/webhooks/<id>.

What the test does through /_test/... is what a buyer or PayPal would: approve an order (the
buyer, sent back to the return URL with token and PayerID), capture it on PayPal's side, send a
webhook (or keep it to replay, or forge it), make the next create fail, read what it saw.

    python paypal_server.py PORT CLIENT_ID CLIENT_SECRET WEBHOOK_ID MERCHANT_ID NOTIFY_URL
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import re
import secrets
import sys
import threading
import urllib.error
import urllib.request
import uuid
import zlib
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

NO_DECIMALS = {"JPY", "HUF", "TWD"}
ALGO = "SHA256withRSA"


class State:
    def __init__(self, client_id: str, client_secret: str, webhook_id: str, merchant_id: str, notify_url: str):
        self.client_id, self.client_secret, self.webhook_id = client_id, client_secret, webhook_id
        self.merchant_id, self.notify_url = merchant_id, notify_url
        self.signing_key = secrets.token_bytes(32)   # PayPal's private key, in effect: never leaves here
        self.tokens: set[str] = set()
        self.tokens_issued = 0
        self.orders: dict[str, dict] = {}
        self.refunds: dict[str, dict] = {}
        self.idempotent: dict[tuple[str, str], tuple[int, dict]] = {}
        self.sent: set[str] = set()                  # transmission ids of the webhooks sent
        self.captures_made = 0
        self.fail_creates = 0
        self.requests: list[str] = []
        self.lock = threading.RLock()


def now_text() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def canonical(event: dict) -> bytes:
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def signature(key: bytes, transmission_id: str, when: str, webhook_id: str, event: dict) -> str:
    text = f"{transmission_id}|{when}|{webhook_id}|{zlib.crc32(canonical(event))}"
    return base64.b64encode(hmac.new(key, text.encode(), hashlib.sha256).digest()).decode()


def error(name: str, message: str, issue: str | None = None) -> dict:
    answer = {"name": name, "message": message, "debug_id": secrets.token_hex(6)}
    if issue:
        answer["details"] = [{"issue": issue, "description": message}]
    return answer


def make_handler(state: State):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, status: int, payload) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _bearer(self) -> bool:
            auth = self.headers.get("Authorization", "")
            if not auth.startswith("Bearer ") or auth[7:] not in state.tokens:
                self._send(401, {"error": "invalid_token", "error_description": "Token signature verification "
                                                                                 "failed"})
                return False
            return True

        def do_GET(self):
            url = urlsplit(self.path)
            path = url.path
            if path == "/_test/state":
                with state.lock:
                    return self._send(200, {"orders": state.orders, "refunds": state.refunds,
                                            "requests": state.requests, "tokens_issued": state.tokens_issued,
                                            "captures_made": state.captures_made})
            if path == "/checkoutnow":   # the page a buyer would see
                return self._send(200, {"page": "checkout", "token": dict(parse_qsl(url.query)).get("token")})
            with state.lock:
                state.requests.append(f"GET {path}")
            if not self._bearer():
                return None
            found = re.fullmatch(r"/v2/checkout/orders/([A-Z0-9]+)", path)
            if found:
                order = state.orders.get(found.group(1))
                if order is None:
                    return self._send(404, error("RESOURCE_NOT_FOUND", "The specified resource does not exist.",
                                                 "INVALID_RESOURCE_ID"))
                return self._send(200, order)
            found = re.fullmatch(r"/v1/notifications/webhooks/([A-Za-z0-9]+)", path)
            if found:
                if found.group(1) != state.webhook_id:
                    return self._send(404, error("INVALID_RESOURCE_ID", "Resource id is invalid"))
                return self._send(200, {"id": state.webhook_id, "url": state.notify_url, "event_types": [
                    {"name": "CHECKOUT.ORDER.APPROVED"}, {"name": "PAYMENT.CAPTURE.COMPLETED"}]})
            return self._send(404, error("NOT_FOUND", "no such URL"))

        def do_POST(self):
            path = urlsplit(self.path).path
            body = self._body()
            if path.startswith("/_test/"):
                return self._test(path, json.loads(body or b"{}"))
            with state.lock:
                state.requests.append(f"POST {path}")
            if path == "/v1/oauth2/token":
                return self._token(body)
            if not self._bearer():
                return None
            try:
                payload = json.loads(body) if body else {}
            except ValueError:
                return self._send(400, error("INVALID_REQUEST", "MALFORMED_REQUEST_JSON"))
            key = self.headers.get("PayPal-Request-Id")
            with state.lock:
                if key and (path, key) in state.idempotent:
                    return self._send(*state.idempotent[(path, key)])
                if path == "/v2/checkout/orders":
                    status, answer = self._create(payload)
                elif re.fullmatch(r"/v2/checkout/orders/[A-Z0-9]+/capture", path):
                    status, answer = capture(state, path.split("/")[4])
                elif re.fullmatch(r"/v2/payments/captures/[A-Z0-9]+/refund", path):
                    status, answer = self._refund(path.split("/")[4], payload)
                elif path == "/v1/notifications/verify-webhook-signature":
                    status, answer = self._verify(payload)
                else:
                    status, answer = 404, error("NOT_FOUND", "no such URL")
                if key and status < 500:
                    state.idempotent[(path, key)] = (status, answer)
            return self._send(status, answer)

        def _token(self, body: bytes) -> None:
            expected = "Basic " + base64.b64encode(f"{state.client_id}:{state.client_secret}".encode()).decode()
            if not hmac.compare_digest(self.headers.get("Authorization", ""), expected):
                return self._send(401, {"error": "invalid_client", "error_description": "Client Authentication "
                                                                                       "failed"})
            if dict(parse_qsl(body.decode())).get("grant_type") != "client_credentials":
                return self._send(400, {"error": "unsupported_grant_type", "error_description": "grant_type"})
            token = f"A21AA{secrets.token_urlsafe(40)}"
            with state.lock:
                state.tokens.add(token)
                state.tokens_issued += 1
            return self._send(200, {"scope": "https://uri.paypal.com/services/payments/payment",
                                    "access_token": token, "token_type": "Bearer", "app_id": "APP-80W284485P519543T",
                                    "expires_in": 32400, "nonce": f"{now_text()}{secrets.token_hex(8)}"})

        def _create(self, payload: dict) -> tuple[int, dict]:
            if state.fail_creates:
                state.fail_creates -= 1
                return 500, error("INTERNAL_SERVER_ERROR", "An internal server error has occurred.")
            try:
                unit = payload["purchase_units"][0]
                currency, value = unit["amount"]["currency_code"], unit["amount"]["value"]
                context = payload["payment_source"]["paypal"]["experience_context"]
                return_url, cancel_url = context["return_url"], context["cancel_url"]
            except (KeyError, IndexError, TypeError):
                return 400, error("INVALID_REQUEST", "Request is not well-formed", "MISSING_REQUIRED_PARAMETER")
            pattern = r"[0-9]{1,10}" if currency in NO_DECIMALS else r"[0-9]{1,10}\.[0-9]{2}"
            if payload.get("intent") != "CAPTURE" or not isinstance(value, str) or not re.fullmatch(pattern, value):
                return 422, error("UNPROCESSABLE_ENTITY", "The requested action could not be performed",
                                  "DECIMAL_PRECISION")
            oid = "".join(secrets.choice("0123456789ABCDEFGHJKLMNPRSTUVWXY") for _ in range(17))
            base = f"http://{self.headers.get('Host')}"
            order = {"id": oid, "intent": "CAPTURE", "status": "PAYER_ACTION_REQUIRED", "create_time": now_text(),
                     "payment_source": {"paypal": {}},
                     "purchase_units": [{**{k: unit.get(k) for k in ("reference_id", "custom_id", "invoice_id",
                                                                      "description")},
                                         "amount": {"currency_code": currency, "value": value},
                                         "payee": {"email_address": "shop@example.com",
                                                   "merchant_id": state.merchant_id}}],
                     "links": [{"href": f"{base}/v2/checkout/orders/{oid}", "rel": "self", "method": "GET"},
                               {"href": f"{base}/checkoutnow?token={oid}", "rel": "payer-action", "method": "GET"}],
                     "_return_url": return_url, "_cancel_url": cancel_url}
            state.orders[oid] = order
            return 200, order

        def _refund(self, capture_id: str, payload: dict) -> tuple[int, dict]:
            found = [(o, c) for o in state.orders.values() for c in captures(o) if c["id"] == capture_id]
            if not found:
                return 404, error("RESOURCE_NOT_FOUND", "The specified resource does not exist.",
                                  "INVALID_RESOURCE_ID")
            _order, captured = found[0]
            amount = payload.get("amount") or captured["amount"]
            given = sum(Decimal(r["amount"]["value"]) for r in state.refunds.values() if r["capture"] == capture_id)
            if amount.get("currency_code") != captured["amount"]["currency_code"] or \
                    given + Decimal(amount["value"]) > Decimal(captured["amount"]["value"]):
                return 422, error("UNPROCESSABLE_ENTITY", "The requested action could not be performed",
                                  "REFUND_AMOUNT_EXCEEDED")
            rid = "".join(secrets.choice("0123456789ABCDEFGHJKLMNPRSTUVWXY") for _ in range(17))
            state.refunds[rid] = {"id": rid, "status": "COMPLETED", "amount": amount, "capture": capture_id,
                                  "request_id": self.headers.get("PayPal-Request-Id")}
            return 201, state.refunds[rid]

        def _verify(self, payload: dict) -> tuple[int, dict]:
            fields = ("auth_algo", "cert_url", "transmission_id", "transmission_sig", "transmission_time",
                      "webhook_id", "webhook_event")
            if any(not payload.get(name) for name in fields) or not isinstance(payload["webhook_event"], dict):
                return 400, error("VALIDATION_ERROR", "Invalid request - see details", "MISSING_REQUIRED_PARAMETER")
            if payload["webhook_id"] != state.webhook_id:   # not a webhook of the calling app
                return 200, {"verification_status": "FAILURE"}
            expected = signature(state.signing_key, payload["transmission_id"], payload["transmission_time"],
                                 payload["webhook_id"], payload["webhook_event"])
            good = (payload["transmission_id"] in state.sent and payload["auth_algo"] == ALGO
                    and hmac.compare_digest(str(payload["transmission_sig"]), expected))
            return 200, {"verification_status": "SUCCESS" if good else "FAILURE"}

        def _test(self, path: str, ask: dict) -> None:
            if path == "/_test/fail_creates":
                state.fail_creates = int(ask.get("count", 1))
                return self._send(200, {"ok": True})
            if path == "/_test/expire_tokens":
                with state.lock:
                    state.tokens.clear()
                return self._send(200, {"ok": True})
            if path == "/_test/approve":
                return self._send(200, approve(state, ask))
            if path == "/_test/capture":
                with state.lock:
                    return self._send(*capture(state, ask["order"]))
            if path == "/_test/webhook":
                return self._send(200, webhook(state, ask, f"http://{self.headers.get('Host')}"))
            return self._send(404, {"error": "no such test call"})

    return Handler


def captures(order: dict) -> list[dict]:
    return order["purchase_units"][0].get("payments", {}).get("captures", [])


def approve(state: State, ask: dict) -> dict:
    """The buyer approves order `order` at PayPal; `capture_amount`/`capture_currency` make the
    capture that follows one of another amount. Where PayPal sends the buyer back."""
    with state.lock:
        order = state.orders[ask["order"]]
        order["status"] = "APPROVED"
        order["payer"] = {"payer_id": "QYR5Z8XDVJNXQ", "email_address": "buyer@example.com"}
        order["_capture_amount"] = {"currency_code": ask.get("capture_currency",
                                                             order["purchase_units"][0]["amount"]["currency_code"]),
                                    "value": ask.get("capture_amount", order["purchase_units"][0]["amount"]["value"])}
        back = order["_return_url"]
    return {"return_url": back + ("&" if "?" in back else "?") + f"token={order['id']}&PayerID=QYR5Z8XDVJNXQ"}


def capture(state: State, oid: str) -> tuple[int, dict]:
    order = state.orders.get(oid)
    if order is None:
        return 404, error("RESOURCE_NOT_FOUND", "The specified resource does not exist.", "INVALID_RESOURCE_ID")
    if order["status"] == "COMPLETED":
        return 422, error("UNPROCESSABLE_ENTITY", "The requested action could not be performed",
                          "ORDER_ALREADY_CAPTURED")
    if order["status"] != "APPROVED":
        return 422, error("UNPROCESSABLE_ENTITY", "The requested action could not be performed",
                          "ORDER_NOT_APPROVED")
    unit = order["purchase_units"][0]
    captured = {"id": "".join(secrets.choice("0123456789ABCDEFGHJKLMNPRSTUVWXY") for _ in range(17)),
                "status": "COMPLETED", "amount": order["_capture_amount"], "final_capture": True,
                "custom_id": unit.get("custom_id"), "invoice_id": unit.get("invoice_id"),
                "seller_protection": {"status": "ELIGIBLE"}, "payee": unit["payee"],
                "supplementary_data": {"related_ids": {"order_id": oid}},
                "create_time": now_text(), "update_time": now_text()}
    unit["payments"] = {"captures": [captured]}
    order["status"] = "COMPLETED"
    state.captures_made += 1
    return 201, order


def webhook(state: State, ask: dict, base: str) -> dict:
    """PayPal sends a webhook about order `order`: `event_type` (CHECKOUT.ORDER.APPROVED, or
    PAYMENT.CAPTURE.COMPLETED/... about its capture), to `notify` (else the endpoint it knows),
    `times` times, unless `deliver` is false (then the test sends the returned body and headers
    itself). `forge`: "key" (signed with another key), "webhook" (signed for another webhook),
    "tampered" (the body changed after signing), "unsigned" (no transmission headers).
    `merchant_id` names another payee in the resource."""
    with state.lock:
        order = json.loads(json.dumps(state.orders[ask["order"]]))
    kind = ask.get("event_type", "CHECKOUT.ORDER.APPROVED")
    if kind.startswith("CHECKOUT.ORDER."):
        resource = {k: v for k, v in order.items() if not k.startswith("_")}
        resource_type = "checkout-order"
        if ask.get("merchant_id"):
            resource["purchase_units"][0]["payee"]["merchant_id"] = ask["merchant_id"]
    else:
        resource = dict(captures(order)[0]) if captures(order) else {}
        resource_type = "capture"
        if "status" in ask:
            resource["status"] = ask["status"]
        if ask.get("merchant_id"):
            resource["payee"] = {**resource.get("payee", {}), "merchant_id": ask["merchant_id"]}
    event = {"id": f"WH-{secrets.token_hex(8).upper()}", "event_version": "1.0", "create_time": now_text(),
             "resource_type": resource_type, "resource_version": "2.0", "event_type": kind,
             "summary": f"{kind} for {order['id']}", "resource": resource,
             "links": [{"href": f"{base}/v1/notifications/webhooks-events/x", "rel": "self", "method": "GET"}]}
    transmission, when = str(uuid.uuid4()), now_text()
    forge = ask.get("forge")
    key = secrets.token_bytes(32) if forge == "key" else state.signing_key
    target = "9XL90610J3647323C" if forge == "webhook" else state.webhook_id
    sig = signature(key, transmission, when, target, event)
    with state.lock:
        state.sent.add(transmission)
    if forge == "tampered":
        unit = event["resource"].get("purchase_units", [{}])[0] if resource_type == "checkout-order" else \
            event["resource"]
        unit["custom_id"] = "someone-else"
        event["summary"] = "changed"
    headers = {"Content-Type": "application/json", "User-Agent": "PayPal/AUHD-214.0-58375386",
               "PAYPAL-TRANSMISSION-ID": transmission, "PAYPAL-TRANSMISSION-TIME": when,
               "PAYPAL-TRANSMISSION-SIG": sig, "PAYPAL-AUTH-ALGO": ALGO,
               "PAYPAL-CERT-URL": f"{base}/v1/notifications/certs/CERT-360caa42-fca2a594-{secrets.token_hex(4)}"}
    if forge == "unsigned":
        headers = {"Content-Type": "application/json"}
    # PayPal's own spacing (not ours): the receiver must pass on these bytes, not its own encoding.
    body = json.dumps(event, indent=1).encode()
    if not ask.get("deliver", True):
        return {"delivered": False, "body": body.decode(), "headers": headers, "event": event}
    answers = []
    for _ in range(int(ask.get("times", 1))):
        request = urllib.request.Request(ask.get("notify") or state.notify_url, data=body, method="POST",
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as resp:
                answers.append([resp.status, resp.read().decode()])
        except urllib.error.HTTPError as exc:
            answers.append([exc.code, exc.read().decode()])
    return {"delivered": True, "answers": answers, "event": event}


def main() -> None:
    port, client_id, client_secret, webhook_id, merchant_id, notify_url = sys.argv[1:7]
    server = ThreadingHTTPServer(("127.0.0.1", int(port)), make_handler(State(client_id, client_secret, webhook_id,
                                                                               merchant_id, notify_url)))
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

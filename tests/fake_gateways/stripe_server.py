"""A local Stripe, in its own process: the part of Stripe's API kamengd uses, and its webhooks.

Speaks what api.stripe.com does for these calls: Bearer secret-key auth,
form-encoded bodies with bracketed keys (line_items[0][price_data][currency]),
`Idempotency-Key` (the same key answers the same object), JSON objects and
Stripe's error shape. Its webhooks are signed as Stripe signs them:
`Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>" under the
endpoint secret>`.

What the test does through /_test/... is what a buyer or Stripe's dashboard
would: pay a session (the webhook follows, or is dropped, or is forged),
make the next create fail, read what it saw.

    python stripe_server.py PORT SECRET_KEY WEBHOOK_SECRET NOTIFY_URL
"""
from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit


class State:
    def __init__(self, secret_key: str, webhook_secret: str, notify_url: str):
        self.secret_key, self.webhook_secret, self.notify_url = secret_key, webhook_secret, notify_url
        self.sessions: dict[str, dict] = {}
        self.refunds: dict[str, dict] = {}
        self.idempotent: dict[str, tuple[int, dict]] = {}
        self.fail_creates = 0          # the next N creates answer 500
        self.requests: list[str] = []  # "METHOD path" of every API call
        self.lock = threading.Lock()


def sign(body: bytes, secret: str, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


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

        def _error(self, status: int, kind: str, message: str) -> None:
            self._send(status, {"error": {"type": kind, "message": message}})

        def _form(self) -> dict:
            length = int(self.headers.get("Content-Length") or 0)
            return dict(parse_qsl(self.rfile.read(length).decode(), keep_blank_values=True))

        def _authorised(self) -> bool:
            if self.headers.get("Authorization") != f"Bearer {state.secret_key}":
                self._error(401, "invalid_request_error", "Invalid API Key provided: sk_****")
                return False
            return True

        def do_GET(self):
            path = urlsplit(self.path).path
            if path == "/_test/state":
                with state.lock:
                    return self._send(200, {"sessions": state.sessions, "refunds": state.refunds,
                                            "requests": state.requests})
            if path.startswith("/checkout/"):   # the hosted page a buyer would see
                return self._send(200, {"page": "checkout", "session": path.rsplit("/", 1)[-1]})
            state.requests.append(f"GET {path}")
            if not self._authorised():
                return None
            if path == "/v1/balance":
                return self._send(200, {"object": "balance", "available": [], "livemode": False})
            if path.startswith("/v1/checkout/sessions/"):
                found = state.sessions.get(path.rsplit("/", 1)[-1])
                if found is None:
                    return self._error(404, "invalid_request_error", "No such checkout.session")
                return self._send(200, found)
            return self._error(404, "invalid_request_error", "Unrecognized request URL")

        def do_POST(self):
            path = urlsplit(self.path).path
            if path.startswith("/_test/"):
                return self._test(path, json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0))
                                                   or b"{}"))
            state.requests.append(f"POST {path}")
            form = self._form()
            if not self._authorised():
                return None
            key = self.headers.get("Idempotency-Key")
            with state.lock:
                if key and key in state.idempotent:
                    status, payload = state.idempotent[key]
                    return self._send(status, payload)
                if path == "/v1/checkout/sessions":
                    status, payload = self._create_session(form)
                elif path == "/v1/refunds":
                    status, payload = self._refund(form)
                else:
                    status, payload = 404, {"error": {"type": "invalid_request_error", "message": "no such URL"}}
                if key and status < 500:
                    state.idempotent[key] = (status, payload)
            return self._send(status, payload)

        def _create_session(self, form: dict) -> tuple[int, dict]:
            if state.fail_creates:
                state.fail_creates -= 1
                return 500, {"error": {"type": "api_error", "message": "An unknown error occurred"}}
            try:
                amount = int(form["line_items[0][price_data][unit_amount]"]) * int(form["line_items[0][quantity]"])
                currency = form["line_items[0][price_data][currency]"]
            except (KeyError, ValueError):
                return 400, {"error": {"type": "invalid_request_error", "message": "line_items: missing"}}
            if form.get("mode") != "payment" or not form.get("success_url"):
                return 400, {"error": {"type": "invalid_request_error", "message": "mode/success_url"}}
            sid = f"cs_test_{secrets.token_hex(12)}"
            base = f"http://{self.headers.get('Host')}"
            session = {"id": sid, "object": "checkout.session", "url": f"{base}/checkout/{sid}",
                       "client_reference_id": form.get("client_reference_id"), "amount_total": amount,
                       "currency": currency, "payment_status": "unpaid", "status": "open",
                       "payment_intent": None, "livemode": False, "expires_at": int(time.time()) + 86400,
                       "metadata": {"order_no": form.get("metadata[order_no]")}}
            state.sessions[sid] = session
            return 200, session

        def _refund(self, form: dict) -> tuple[int, dict]:
            intent = form.get("payment_intent", "")
            paid = [s for s in state.sessions.values() if s["payment_intent"] == intent]
            if not paid:
                return 400, {"error": {"type": "invalid_request_error", "message": "No such payment_intent"}}
            amount = int(form.get("amount") or paid[0]["amount_total"])
            given = sum(r["amount"] for r in state.refunds.values() if r["payment_intent"] == intent)
            if given + amount > paid[0]["amount_total"]:
                return 400, {"error": {"type": "invalid_request_error", "message": "Refund exceeds the charge"}}
            rid = f"re_{secrets.token_hex(10)}"
            state.refunds[rid] = {"id": rid, "object": "refund", "payment_intent": intent, "amount": amount,
                                  "status": "succeeded"}
            return 200, state.refunds[rid]

        def _test(self, path: str, ask: dict) -> None:
            if path == "/_test/fail_creates":
                state.fail_creates = int(ask.get("count", 1))
                return self._send(200, {"ok": True})
            if path == "/_test/pay":
                return self._send(200, pay(state, ask))
            return self._send(404, {"error": "no such test call"})

    return Handler


def pay(state: State, ask: dict) -> dict:
    """The buyer pays session `session` (amount/currency as asked, or the session's); Stripe then
    calls the webhook (`notify`, else the endpoint it was started with), unless `deliver` is false; `secret`, `livemode`, `age`, `event_type`,
    `payment_status` and `body` make the event what the test needs."""
    with state.lock:
        session = state.sessions[ask["session"]]
        if session["payment_intent"] is None:
            session["payment_intent"] = f"pi_{secrets.token_hex(12)}"
        if ask.get("payment_status", "paid") == "paid" and ask.get("mark_paid", True):
            session["payment_status"], session["status"] = "paid", "complete"
        shown = {**session, "amount_total": ask.get("amount", session["amount_total"]),
                 "currency": ask.get("currency", session["currency"]),
                 "payment_status": ask.get("payment_status", "paid")}
    event = {"id": f"evt_{secrets.token_hex(12)}", "object": "event", "api_version": "2024-06-20",
             "type": ask.get("event_type", "checkout.session.completed"), "livemode": ask.get("livemode", False),
             "created": int(time.time()), "data": {"object": shown}}
    body = json.dumps(event).encode()
    if not ask.get("deliver", True):
        return {"delivered": False, "event": event["id"]}
    header = sign(body, ask.get("secret", state.webhook_secret), int(time.time()) - int(ask.get("age", 0)))
    results = []
    for _ in range(int(ask.get("times", 1))):
        request = urllib.request.Request(ask.get("notify") or state.notify_url, data=body, method="POST", headers={
            "Content-Type": "application/json; charset=utf-8", "Stripe-Signature": header,
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)"})
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                results.append([resp.status, resp.read().decode()])
        except urllib.error.HTTPError as exc:
            results.append([exc.code, exc.read().decode()])
    return {"delivered": True, "event": event["id"], "answers": results}


def main() -> None:
    port, secret_key, webhook_secret, notify_url = sys.argv[1:5]
    server = ThreadingHTTPServer(("127.0.0.1", int(port)), make_handler(State(secret_key, webhook_secret,
                                                                               notify_url)))
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

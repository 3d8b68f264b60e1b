"""A local Alipay open platform, in its own process: gateway.do for precreate, query and
refund, and the asynchronous notifications, signed RSA2 as Alipay signs them.

It checks the merchant's request as Alipay does (app_id, then SHA256withRSA over the sorted
parameters but `sign`, with the app's public key) and signs its answers (the exact text of
the `..._response` object) and its notifications (every field but `sign` and `sign_type`)
with its own private key. Its signing code is its own, not kamengd's.

    python alipay_server.py PORT APP_ID APP_PUBLIC_KEY_PEM_FILE ALIPAY_PRIVATE_KEY_PEM_FILE SELLER_ID
"""
from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding


def content(params: dict, leave_out: tuple[str, ...]) -> str:
    return "&".join(f"{k}={params[k]}" for k in sorted(params) if k not in leave_out and params[k] != "")


class State:
    def __init__(self, app_id, app_public, alipay_private, seller_id):
        self.app_id, self.app_public, self.alipay_private, self.seller_id = app_id, app_public, alipay_private, seller_id
        self.trades: dict[str, dict] = {}
        self.refunds: list[dict] = []
        self.calls: list[str] = []
        self.fail_creates = 0
        self.fail_refunds = 0   # the next refunds refused (ACQ.SYSTEM_ERROR), nothing given back
        self.lock = threading.Lock()

    def sign(self, text: str, key=None) -> str:
        return base64.b64encode((key or self.alipay_private).sign(text.encode(), padding.PKCS1v15(),
                                                                   hashes.SHA256())).decode()

    def checks(self, params: dict) -> bool:
        try:
            self.app_public.verify(base64.b64decode(params.get("sign", "")), content(params, ("sign",)).encode(),
                                   padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError):
            return False
        return params.get("app_id") == self.app_id


def make_handler(state: State):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _raw(self, status: int, text: str, kind="application/json;charset=utf-8"):
            body = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _answer(self, method: str, payload: dict):
            inner = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
            key = method.replace(".", "_") + "_response"
            self._raw(200, f'{{"{key}":{inner},"sign":"{state.sign(inner)}"}}')

        def do_GET(self):
            if urlsplit(self.path).path == "/_test/state":
                with state.lock:
                    return self._raw(200, json.dumps({"trades": state.trades, "refunds": state.refunds,
                                                      "calls": state.calls}))
            return self._raw(404, "{}")

        def do_POST(self):
            path = urlsplit(self.path).path
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if path.startswith("/_test/"):
                ask = json.loads(raw or b"{}")
                if path == "/_test/pay":
                    return self._raw(200, json.dumps(pay(state, ask)))
                if path == "/_test/fail_creates":
                    state.fail_creates = int(ask.get("count", 1))
                    return self._raw(200, "{}")
                if path == "/_test/fail_refunds":
                    state.fail_refunds = int(ask.get("count", 1))
                    return self._raw(200, "{}")
                return self._raw(404, "{}")
            if path != "/gateway.do":
                return self._raw(404, "{}")
            params = dict(parse_qsl(raw.decode(), keep_blank_values=True))
            method = params.get("method", "")
            state.calls.append(method)
            if not state.checks(params):
                return self._answer(method, {"code": "40002", "msg": "Invalid Arguments",
                                             "sub_code": "isv.invalid-signature", "sub_msg": "验签出错"})
            biz = json.loads(params.get("biz_content") or "{}")
            with state.lock:
                if method == "alipay.trade.precreate":
                    return self._precreate(method, params, biz)
                if method == "alipay.trade.query":
                    trade = state.trades.get(biz.get("out_trade_no"))
                    if trade is None:
                        return self._answer(method, {"code": "40004", "msg": "Business Failed",
                                                     "sub_code": "ACQ.TRADE_NOT_EXIST", "sub_msg": "交易不存在"})
                    return self._answer(method, {"code": "10000", "msg": "Success", "trade_no": trade["trade_no"],
                                                 "out_trade_no": trade["out_trade_no"],
                                                 "trade_status": trade["status"],
                                                 "total_amount": trade["total_amount"]})
                if method == "alipay.trade.refund":
                    if state.fail_refunds:
                        state.fail_refunds -= 1
                        return self._answer(method, {"code": "20000", "msg": "Service Currently Unavailable",
                                                     "sub_code": "ACQ.SYSTEM_ERROR", "sub_msg": "系统错误"})
                    trade = next((t for t in state.trades.values() if t["trade_no"] == biz.get("trade_no")), None)
                    if trade is None or trade["status"] != "TRADE_SUCCESS":
                        return self._answer(method, {"code": "40004", "msg": "Business Failed",
                                                     "sub_code": "ACQ.TRADE_NOT_EXIST"})
                    done = [r for r in state.refunds if r["out_request_no"] == biz["out_request_no"]]
                    if not done:
                        state.refunds.append({"trade_no": trade["trade_no"], "amount": biz["refund_amount"],
                                              "out_request_no": biz["out_request_no"]})
                    return self._answer(method, {"code": "10000", "msg": "Success", "trade_no": trade["trade_no"],
                                                 "out_trade_no": trade["out_trade_no"], "fund_change": "Y" if
                                                 not done else "N", "refund_fee": biz["refund_amount"]})
            return self._answer(method, {"code": "40004", "msg": "Business Failed", "sub_code": "ACQ.NO_METHOD"})

        def _precreate(self, method: str, params: dict, biz: dict):
            if state.fail_creates:
                state.fail_creates -= 1
                return self._raw(502, "<html>bad gateway</html>", "text/html")
            order_no = biz.get("out_trade_no")
            trade = state.trades.setdefault(order_no, {
                "out_trade_no": order_no, "total_amount": biz.get("total_amount"), "status": "WAIT_BUYER_PAY",
                "trade_no": dt.datetime.now().strftime("%Y%m%d") + secrets.token_hex(10),
                "notify_url": params.get("notify_url"), "subject": biz.get("subject"),
                "qr_code": f"https://qr.alipay.com/bax0{secrets.token_hex(10)}"})
            return self._answer(method, {"code": "10000", "msg": "Success", "out_trade_no": order_no,
                                         "qr_code": trade["qr_code"]})

    return Handler


def pay(state: State, ask: dict) -> dict:
    """The buyer scans and pays; Alipay notifies (unless `deliver` is false). `amount`, `status`,
    `app_id`, `seller_id`, `forge` (sign with another key) shape the notification."""
    with state.lock:
        trade = state.trades[ask["out_trade_no"]]
        status = ask.get("status", "TRADE_SUCCESS")
        if status == "TRADE_SUCCESS":
            trade["status"] = "TRADE_SUCCESS"
    now = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    fields = {"notify_time": now, "notify_type": "trade_status_sync", "notify_id": secrets.token_hex(16),
              "app_id": ask.get("app_id", state.app_id), "charset": "utf-8", "version": "1.0",
              "sign_type": "RSA2", "trade_no": trade["trade_no"], "out_trade_no": trade["out_trade_no"],
              "total_amount": ask.get("amount", trade["total_amount"]),
              "receipt_amount": ask.get("amount", trade["total_amount"]), "trade_status": status,
              "seller_id": ask.get("seller_id", state.seller_id), "buyer_id": "2088102177846880",
              "gmt_create": now, "gmt_payment": now, "subject": trade["subject"]}
    key = None
    if ask.get("forge"):
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    fields["sign"] = state.sign(content(fields, ("sign", "sign_type")), key)
    if not ask.get("deliver", True):
        return {"delivered": False, "fields": fields}
    answers = []
    for _ in range(int(ask.get("times", 1))):
        request = urllib.request.Request(ask.get("notify") or trade["notify_url"], data=urlencode(fields).encode(),
                                         headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                answers.append([resp.status, resp.read().decode()])
        except urllib.error.HTTPError as exc:
            answers.append([exc.code, exc.read().decode()])
    return {"delivered": True, "answers": answers, "fields": fields}


def main() -> None:
    port, app_id, app_public_file, alipay_private_file, seller_id = sys.argv[1:6]
    app_public = serialization.load_pem_public_key(Path(app_public_file).read_bytes())
    alipay_private = serialization.load_pem_private_key(Path(alipay_private_file).read_bytes(), password=None)
    server = ThreadingHTTPServer(("127.0.0.1", int(port)),
                                 make_handler(State(app_id, app_public, alipay_private, seller_id)))
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

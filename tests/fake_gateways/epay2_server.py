"""A local 彩虹易支付 V2 platform, in its own process: api/pay/create, api/pay/query,
api/pay/refund and api/merchant/info, and the payment notifications, signed RSA as the V2
documentation says.

It checks the merchant's request as the platform does (sign_type=RSA, the pid, a timestamp
within 300 s, then SHA256withRSA over every non-empty parameter but `sign` and `sign_type`,
sorted and joined k=v&k=v, with the merchant's public key) and signs its answers and its
notifications the same way with its own private key. Its signing code is its own, not
kamengd's. Orders are kept by out_trade_no (a create repeated with the same amount answers
the same trade); refunds are made once per out_refund_no.

    python epay2_server.py PORT PID MERCHANT_PUBLIC_KEY_PEM_FILE PLATFORM_PRIVATE_KEY_PEM_FILE

/_test/ endpoints: pay (the buyer pays; the platform notifies by GET, shaped by the ask),
notify (send an order's last notification again, as it was), config (what pay_type create
answers), fail_creates, state.
"""
from __future__ import annotations

import base64
import datetime as dt
import json
import re
import secrets
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

MONEY = re.compile(r"^[0-9]{1,10}(\.[0-9]{1,2})?$")
NEEDS = {"api/pay/create": ("method", "type", "out_trade_no", "notify_url", "return_url", "name", "money",
                            "clientip"),
         "api/pay/query": (), "api/pay/refund": ("out_refund_no",), "api/merchant/info": ()}


def content(params: dict) -> str:
    return "&".join(f"{k}={params[k]}" for k in sorted(params)
                    if k not in ("sign", "sign_type") and str(params[k]).strip() != "")


def cents(money: str) -> int:
    whole, _, frac = money.partition(".")
    return int(whole) * 100 + int(frac.ljust(2, "0") or 0)


class State:
    def __init__(self, pid, merchant_public, platform_private):
        self.pid, self.merchant_public, self.platform_private = pid, merchant_public, platform_private
        self.orders: dict[str, dict] = {}
        self.refunds: dict[str, dict] = {}   # by out_refund_no
        self.calls: list[str] = []
        self.requests: list[dict] = []
        self.notified: dict[str, dict] = {}  # the last notification of each order
        self.pay_type = "qrcode"
        self.fail_creates = 0
        self.lock = threading.Lock()

    def sign(self, fields: dict, key=None) -> str:
        return base64.b64encode((key or self.platform_private).sign(content(fields).encode(), padding.PKCS1v15(),
                                                                     hashes.SHA256())).decode()

    def refusal(self, params: dict) -> str | None:
        """Why the request is not the merchant's, or None."""
        if params.get("sign_type") != "RSA":
            return "sign_type"
        if params.get("pid") != self.pid:
            return "商户不存在"
        stamp = params.get("timestamp", "")
        if not stamp.isdigit() or abs(time.time() - int(stamp)) > 300:
            return "时间戳过期"
        try:
            self.merchant_public.verify(base64.b64decode(params.get("sign", "")), content(params).encode(),
                                        padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError):
            return "签名校验失败"
        return None


def make_handler(state: State):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _raw(self, status: int, text: str, kind="application/json; charset=utf-8"):
            body = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _signed(self, payload: dict):
            # As the platform's PHP answers: code and the ids as JSON numbers, money as text.
            answer = {"code": 0, "msg": "succ", **payload, "timestamp": str(int(time.time()))}
            answer["sign"] = state.sign(answer)
            answer["sign_type"] = "RSA"
            self._raw(200, json.dumps(answer, ensure_ascii=False))

        def _error(self, code: int, msg: str):
            self._raw(200, json.dumps({"code": code, "msg": msg}, ensure_ascii=False))

        def do_GET(self):
            if urlsplit(self.path).path == "/_test/state":
                with state.lock:
                    return self._raw(200, json.dumps({"orders": state.orders, "refunds": state.refunds,
                                                      "calls": state.calls, "requests": state.requests}))
            return self._raw(404, "{}")

        def do_POST(self):
            path = urlsplit(self.path).path.lstrip("/")
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if path.startswith("_test/"):
                return self._test(path, json.loads(raw or b"{}"))
            if path not in NEEDS:
                return self._raw(404, "{}")
            params = dict(parse_qsl(raw.decode(), keep_blank_values=True))
            with state.lock:
                state.calls.append(path)
                state.requests.append({k: v for k, v in params.items() if k != "sign"})
            refused = state.refusal(params)
            if refused:
                return self._error(-1, refused)
            missing = [name for name in NEEDS[path] if not params.get(name)]
            if missing:
                return self._error(-3, f"缺少参数 {missing[0]}")
            with state.lock:
                return getattr(self, "_" + path.replace("api/", "").replace("/", "_"))(params)

        def _pay_create(self, params: dict):
            if state.fail_creates:
                state.fail_creates -= 1
                return self._raw(502, "<html>bad gateway</html>", "text/html")
            if not MONEY.match(params["money"]) or cents(params["money"]) <= 0:
                return self._error(-5, "金额不合法")
            order = state.orders.get(params["out_trade_no"])
            if order is not None and order["money"] != params["money"]:
                return self._error(-4, "订单号重复")
            if order is None:
                trade_no = dt.datetime.now().strftime("%Y%m%d%H%M%S") + str(secrets.randbelow(10 ** 6)).zfill(6)
                order = state.orders[params["out_trade_no"]] = {
                    "trade_no": trade_no, "out_trade_no": params["out_trade_no"], "type": params["type"],
                    "name": params["name"], "money": params["money"], "status": 0, "refunded": 0,
                    "notify_url": params["notify_url"], "return_url": params["return_url"],
                    "clientip": params["clientip"], "method": params["method"], "device": params.get("device"),
                    "addtime": dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S"), "endtime": "",
                    "qrcode": f"https://qr.alipay.com/bax0{secrets.token_hex(10)}"}
            info = {"qrcode": order["qrcode"], "jump": f"http://127.0.0.1:{self.server.server_port}/pay/"
                                                      f"{order['trade_no']}",
                    "urlscheme": f"weixin://dl/business/?t={order['trade_no']}",
                    "html": "<form action='x'></form><script>document.forms[0].submit()</script>"}[state.pay_type]
            return self._signed({"trade_no": order["trade_no"], "pay_type": state.pay_type, "pay_info": info})

        def _find(self, params: dict):
            if params.get("trade_no"):
                return next((o for o in state.orders.values() if o["trade_no"] == params["trade_no"]), None)
            return state.orders.get(params.get("out_trade_no", ""))

        def _pay_query(self, params: dict):
            order = self._find(params)
            if order is None:
                return self._error(-1, "订单不存在")
            return self._signed({"trade_no": order["trade_no"], "out_trade_no": order["out_trade_no"],
                                 "api_trade_no": "4200" + order["trade_no"], "type": order["type"],
                                 "pid": int(state.pid), "addtime": order["addtime"], "endtime": order["endtime"],
                                 "name": order["name"], "money": order["money"], "status": order["status"],
                                 "param": "", "buyer": ""})

        def _pay_refund(self, params: dict):
            done = state.refunds.get(params["out_refund_no"])
            if done is not None:   # the same refund asked again: its answer again, no money moves
                return self._signed(done["answer"])
            order = self._find(params)
            if order is None or order["status"] != 1:
                return self._error(-1, "订单不存在或未支付")
            money = params.get("money") or order["money"]
            if getattr(state, "refund_only", None):
                money, state.refund_only = state.refund_only, None
            if not MONEY.match(money) or cents(money) <= 0 or cents(money) > cents(order["money"]) - order["refunded"]:
                return self._error(-5, "退款金额不合法")
            order["refunded"] += cents(money)
            answer = {"refund_no": "R" + order["trade_no"] + str(len(state.refunds)), "out_refund_no":
                      params["out_refund_no"], "trade_no": order["trade_no"], "money": money, "reducemoney": money}
            state.refunds[params["out_refund_no"]] = {"trade_no": order["trade_no"], "money": money,
                                                      "answer": answer}
            return self._signed(answer)

        def _merchant_info(self, params: dict):
            return self._signed({"pid": int(state.pid), "status": 1, "pay_status": 1, "settle_status": 1,
                                 "money": "0.00", "settle_type": 1, "settle_account": "alipay@example.com",
                                 "settle_name": "张三", "order_num": len(state.orders)})

        def _test(self, path: str, ask: dict):
            if path == "_test/pay":
                return self._raw(200, json.dumps(pay(state, ask)))
            if path == "_test/notify":   # the order's last notification again, exactly as it was
                fields = state.notified[ask["out_trade_no"]]
                return self._raw(200, json.dumps({"answers": send(ask.get("notify") or state.orders[
                    ask["out_trade_no"]]["notify_url"], fields, int(ask.get("times", 1)))}))
            if path == "_test/config":
                state.pay_type = ask.get("pay_type", state.pay_type)
                return self._raw(200, "{}")
            if path == "_test/fail_creates":
                state.fail_creates = int(ask.get("count", 1))
                return self._raw(200, "{}")
            if path == "_test/refund_only":   # the next refund gives back this much, whatever was asked
                state.refund_only = ask.get("money")
                return self._raw(200, "{}")
            return self._raw(404, "{}")

    return Handler


def send(url: str, fields: dict, times: int) -> list:
    """The platform's notification: a GET of notify_url with the fields in its query."""
    answers = []
    for _ in range(times):
        target = url + ("&" if "?" in url else "?") + urlencode(fields)
        try:
            with urllib.request.urlopen(target, timeout=30) as resp:
                answers.append([resp.status, resp.read().decode()])
        except urllib.error.HTTPError as exc:
            answers.append([exc.code, exc.read().decode()])
    return answers


def pay(state: State, ask: dict) -> dict:
    """The buyer pays; the platform notifies (unless `deliver` is false). `money`, `status`,
    `pid`, `age` (seconds the timestamp lies in the past), `forge` (sign with another key),
    `notify` (another address), `times` shape the notification."""
    with state.lock:
        order = state.orders[ask["out_trade_no"]]
        status = ask.get("status", "TRADE_SUCCESS")
        if status == "TRADE_SUCCESS":
            order["status"] = 1
            order["endtime"] = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    fields = {"pid": ask.get("pid", state.pid), "trade_no": order["trade_no"], "out_trade_no": order["out_trade_no"],
              "api_trade_no": "4200" + order["trade_no"], "type": order["type"], "name": order["name"],
              "money": ask.get("money", order["money"]), "trade_status": status, "param": "",
              "buyer": "2088102177846880", "addtime": order["addtime"], "endtime": order["endtime"],
              "timestamp": str(int(time.time()) - int(ask.get("age", 0))), "sign_type": "RSA"}
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048) if ask.get("forge") else None
    fields["sign"] = state.sign(fields, key)
    if "sign_type" in ask:
        fields["sign_type"] = ask["sign_type"]
    state.notified[order["out_trade_no"]] = fields
    if not ask.get("deliver", True):
        return {"delivered": False, "fields": fields}
    return {"delivered": True, "fields": fields,
            "answers": send(ask.get("notify") or order["notify_url"], fields, int(ask.get("times", 1)))}


def main() -> None:
    port, pid, merchant_public_file, platform_private_file = sys.argv[1:5]
    merchant_public = serialization.load_pem_public_key(Path(merchant_public_file).read_bytes())
    platform_private = serialization.load_pem_private_key(Path(platform_private_file).read_bytes(), password=None)
    server = ThreadingHTTPServer(("127.0.0.1", int(port)), make_handler(State(pid, merchant_public, platform_private)))
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

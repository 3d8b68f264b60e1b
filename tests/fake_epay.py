"""A local Epay gateway that speaks the merchant query API (api.php?act=order)
and the merchant info query (api.php?act=query)."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class FakeEpay:
    def __init__(self, pid: str, key: str):
        self.pid, self.key = pid, key
        self.paid: dict[str, str] = {}      # out_trade_no -> money
        self.unpaid: set[str] = set()       # orders the gateway knows, not paid (status 0)
        self.failing: set[str] = set()      # orders it answers with HTTP 500
        self.mode = "normal"                # normal | error | garbage | slow
        # "slow" answers only once released (the test ends): the client's own
        # timeout decides how long a test waits, not a sleep here.
        self.released = threading.Event()
        self.queries: list[str] = []
        # out_trade_no -> the trade_no its act=order answer names; None: the answer names none
        # (some gateways), a value: that one (by default GW<order_no>).
        self.trade_no_for: dict[str, str | None] = {}
        self.active = 1                     # the merchant account, as act=query reports it
        self.merchant_queries = 0           # act=query requests received
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                url = urlsplit(self.path)
                q = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path == "/api.php" and q.get("act") == "query":
                    return self._merchant(q)
                gateway.queries.append(q.get("out_trade_no", ""))
                if gateway.mode == "slow":
                    gateway.released.wait(30)
                if gateway.mode == "error" or q.get("out_trade_no") in gateway.failing:
                    return self._send(500, b"internal error")
                if gateway.mode == "garbage":
                    return self._send(200, b"<html>maintenance</html>")
                if url.path != "/api.php" or q.get("act") != "order":
                    return self._send(404, b"not found")
                if q.get("pid") != gateway.pid or q.get("key") != gateway.key:
                    return self._json({"code": -1, "msg": "KEY校验失败"})
                order_no = q.get("out_trade_no", "")
                if order_no in gateway.unpaid:
                    return self._json({"code": 1, "msg": "查询订单号成功！", "trade_no": f"GW{order_no}",
                                       "out_trade_no": order_no, "money": "0.01", "status": 0})
                if order_no not in gateway.paid:
                    return self._json({"code": -1, "msg": "订单号不存在"})
                answer = {"code": 1, "msg": "查询订单号成功！", "trade_no": f"GW{order_no}",
                          "out_trade_no": order_no, "type": "alipay", "pid": gateway.pid,
                          "name": "x", "money": gateway.paid[order_no], "status": 1}
                if order_no in gateway.trade_no_for:
                    answer["trade_no"] = gateway.trade_no_for[order_no]
                    if answer["trade_no"] is None:
                        del answer["trade_no"]
                self._json(answer)

            def _merchant(self, q):
                gateway.merchant_queries += 1
                if gateway.mode == "slow":
                    gateway.released.wait(30)
                if gateway.mode == "error":
                    return self._send(500, b"internal error")
                if gateway.mode == "garbage":
                    return self._send(200, b"<html>maintenance</html>")
                if q.get("pid") != gateway.pid or q.get("key") != gateway.key:
                    return self._json({"code": -1, "msg": "KEY校验失败"})
                # Like real gateways, the answer echoes the key: the client must never show it.
                self._json({"code": 1, "pid": gateway.pid, "key": gateway.key, "type": 1, "active": gateway.active,
                            "money": "12.34", "account": "merchant@example.com", "username": "merchant"})

            def _json(self, data):
                self._send(200, json.dumps(data, ensure_ascii=False).encode())

            def _send(self, status, body):
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.released.set()
        self.server.shutdown()
        self.server.server_close()

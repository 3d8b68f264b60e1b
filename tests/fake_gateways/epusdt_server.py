"""A local Epusdt (or BEpusdt), in its own process: create-transaction, check-status, and the
signed JSON callbacks, as the Go servers do them.

It checks the merchant's request as the gateways do: the JSON body read into a map (numbers
as float64), every value but `signature` (and, for BEpusdt, empty ones) written back as Go
writes it, sorted, joined k=v&k=v, the API token appended, MD5. Then the fields (order_id,
amount > 0.01, notify_url; BEpusdt's trade_type), then the order: Epusdt refuses an order_id
it already has, BEpusdt gives back the same trade. The crypto amount is the fiat amount at a
fixed test rate, rounded to 4 places as Epusdt does (%.4f), then 0.0001 more while another
waiting trade to the same wallet has that amount. Its signing code is its own, not kamengd's.

    python epusdt_server.py PORT TOKEN FLAVOUR(epusdt|bepusdt) [RATE]
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
import string
import sys
import threading
import time
import urllib.error
import urllib.request
from decimal import ROUND_HALF_EVEN, Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

WALLETS = ["TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t"]
TRADE_TYPES = ("usdt.trc20", "tron.trx", "usdt.polygon", "usdt.erc20")


def go_float(text_or_number) -> str:
    """strconv.FormatFloat(f, 'f', -1, 64) of the float64 a JSON number is read into: the
    shortest digits that read back as the same float, never an exponent, no '.0'."""
    text = repr(float(text_or_number))
    if "e" in text:
        text = format(Decimal(text), "f")
    return text[:-2] if text.endswith(".0") else text


def go_value(value):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return go_float(value)
    return value if isinstance(value, str) else None


def go_signature(body: dict, token: str, skip_empty: bool) -> str:
    pairs = []
    for key, value in body.items():
        if key == "signature" or value is None:
            continue
        text = go_value(value)
        if text is None or (skip_empty and text == ""):
            continue
        pairs.append(f"{key}={text}")
    return hashlib.md5(("&".join(sorted(pairs)) + token).encode()).hexdigest()


def go_json(fields: list[tuple[str, object]]) -> str:
    """encoding/json's output: floats in their shortest form (42, not 42.0)."""
    out = []
    for key, value in fields:
        if isinstance(value, float):
            text = go_float(value)
        else:
            text = json.dumps(value, ensure_ascii=False)
        out.append(f"{json.dumps(key)}:{text}")
    return "{" + ",".join(out) + "}"


class State:
    def __init__(self, token: str, flavour: str, rate: str):
        self.token, self.flavour, self.rate = token, flavour, Decimal(rate)
        self.trades: dict[str, dict] = {}        # by trade_id
        self.by_order: dict[str, str] = {}
        self.calls: list[str] = []
        self.fail_creates = 0
        self.lock = threading.Lock()

    @property
    def bep(self) -> bool:
        return self.flavour == "bepusdt"

    def new_trade_id(self) -> str:
        if self.bep:   # gonanoid, 18 characters
            return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(18))
        return time.strftime("%Y%m%d") + str(int(time.time() * 1000)) + f"{secrets.randbelow(1000):03d}"

    def crypto_for(self, fiat: Decimal, wallet: str, trade_id: str | None) -> Decimal:
        amount = (fiat / self.rate).quantize(Decimal("0.0001"), rounding=ROUND_HALF_EVEN)
        taken = {t["actual"] for t in self.trades.values()
                 if t["status"] == 1 and t["wallet"] == wallet and t["trade_id"] != trade_id}
        while amount in taken:
            amount += Decimal("0.0001")
        return amount


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

        def _json(self, payload: dict, status: int = 200):
            self._raw(status, json.dumps(payload, ensure_ascii=False))

        def _fail(self, code: int, message: str):
            return self._json({"status_code": code, "message": message, "data": None, "request_id": ""})

        def do_GET(self):
            path = urlsplit(self.path).path
            if path == "/_test/state":
                with state.lock:
                    trades = {t["order_id"]: {k: (str(v) if isinstance(v, Decimal) else v) for k, v in t.items()}
                              for t in state.trades.values()}
                    return self._json({"trades": trades, "calls": state.calls})
            if path.startswith("/pay/check-status/"):
                trade_id = unquote(path.rsplit("/", 1)[-1])
                with state.lock:
                    state.calls.append("check-status")
                    trade = state.trades.get(trade_id)
                    if trade is None:
                        return self._fail(400 if state.bep else 10008, "订单不存在")
                    if state.bep:
                        return self._json({"trade_id": trade_id, "trade_hash": trade["block"] or "",
                                           "status": trade["status"], "return_url": ""})
                    return self._json({"status_code": 200, "message": "success", "request_id": "",
                                       "data": {"trade_id": trade_id, "status": trade["status"]}})
            return self._raw(404, "{}")

        def do_POST(self):
            path = urlsplit(self.path).path
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if path.startswith("/_test/"):
                ask = json.loads(raw or b"{}")
                if path == "/_test/pay":
                    return self._json(pay(state, ask))
                if path == "/_test/fail_creates":
                    state.fail_creates = int(ask.get("count", 1))
                    return self._json({})
                return self._raw(404, "{}")
            if path != "/api/v1/order/create-transaction":
                return self._raw(404, "{}")
            with state.lock:
                try:   # a create without an amount is the shop's health check (probe): told apart
                    probing = "amount" not in json.loads(raw)
                except (ValueError, TypeError, AttributeError, RecursionError):
                    probing = False
                state.calls.append("create-transaction (probe)" if probing else "create-transaction")
                if state.fail_creates and not probing:
                    state.fail_creates -= 1
                    return self._raw(502, "<html>bad gateway</html>", "text/html")
                try:
                    body = json.loads(raw)   # Go: numbers are float64 (kept as written here, read as floats)
                    assert isinstance(body, dict)
                except (ValueError, AssertionError):
                    return self._json({"error": "invalid JSON"}, 400) if state.bep else self._fail(10009, "无法解析请求参数")
                expected = go_signature(body, state.token, skip_empty=state.bep)
                if not isinstance(body.get("signature"), str) or body["signature"] != expected:
                    if state.bep:
                        return self._json({"error": "签名错误"}, 400)
                    return self._fail(401, "签名认证错误")
                return self._create(body)

        def _create(self, body: dict):
            for key in ("order_id", "amount", "notify_url") + (("redirect_url",) if state.bep else ()):
                if body.get(key) in (None, ""):
                    return self._fail(400, f"参数 {key} 不存在" if state.bep else f"{key} 不能为空")
            order_id, amount = str(body["order_id"]), body["amount"]
            if len(order_id) > 32 or isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount <= 0.01:
                return self._fail(400, "支付金额有误" if not state.bep else "订单创建失败：金额有误")
            trade_type = body.get("trade_type", "usdt.trc20")
            if state.bep and trade_type not in TRADE_TYPES:
                return self._fail(400, f"交易类型({trade_type})不支持")
            fiat = Decimal(go_float(amount))
            known = state.by_order.get(order_id)
            if known is not None and not state.bep:
                return self._fail(10002, "支付交易已存在，请勿重复创建")
            trade = state.trades.get(known) if known else None
            wallet = trade["wallet"] if trade else WALLETS[0]   # one wallet: equal amounts get 0.0001 more
            trade_id = trade["trade_id"] if trade else state.new_trade_id()
            seconds = max(60, int(body.get("timeout") or 600)) if state.bep else 600
            trade = {"trade_id": trade_id, "order_id": order_id, "fiat": fiat, "actual": state.crypto_for(
                fiat, wallet, trade_id), "wallet": wallet, "status": 1, "block": None,
                "notify_url": body["notify_url"], "redirect_url": body.get("redirect_url", ""),
                "trade_type": trade_type, "expires": int(time.time()) + seconds, "timeout": body.get("timeout"),
                "signature": body["signature"]}
            state.trades[trade_id], state.by_order[order_id] = trade, trade_id
            data = [("trade_id", trade_id), ("order_id", order_id), ("amount", float(fiat)),
                    ("actual_amount", str(trade["actual"]) if state.bep else float(trade["actual"])),
                    ("token", wallet),
                    ("expiration_time", seconds if state.bep else trade["expires"]),
                    ("payment_url", f"http://{self.headers.get('Host')}/pay/checkout-counter/{trade_id}")]
            if state.bep:
                data.append(("status", 1))
            answer = f'{{"status_code":200,"message":"success","data":{go_json(data)},"request_id":""}}'
            return self._raw(200, answer)

    return Handler


def pay(state: State, ask: dict) -> dict:
    """The buyer sends the crypto; the gateway sees it on chain and calls back (unless `deliver`
    is false). `amount` (fiat), `status`, `token` (sign with another token), `unsigned`,
    `tamper` (change the amount after signing) shape the callback; `times`, `notify` its sending."""
    with state.lock:
        trade = state.trades[state.by_order[ask["order_id"]]]
        status = int(ask.get("status", 2))
        if status == 2 and trade["status"] != 2:
            trade["status"], trade["block"] = 2, secrets.token_hex(32)
        fiat = Decimal(str(ask.get("amount", trade["fiat"])))
        fields = [("trade_id", trade["trade_id"]), ("order_id", trade["order_id"]), ("amount", float(fiat)),
                  ("actual_amount", str(trade["actual"]) if state.bep else float(trade["actual"])),
                  ("token", trade["wallet"]), ("block_transaction_id", trade["block"] or ""),
                  ("status", status)]
    as_map = dict(fields)
    signature = go_signature(json.loads(go_json(fields)), ask.get("token", state.token), skip_empty=state.bep)
    if not ask.get("unsigned"):
        fields.append(("signature", signature))
    if ask.get("tamper"):
        fields = [(k, float(ask["tamper"]) if k == "amount" else v) for k, v in fields]
    body = go_json(fields)
    if not ask.get("deliver", True):
        return {"delivered": False, "body": body, "fields": as_map}
    answers = []
    for _ in range(int(ask.get("times", 1))):
        request = urllib.request.Request(ask.get("notify") or trade["notify_url"], data=body.encode(),
                                         headers={"Content-Type": "application/json",
                                                  "Powered-By": "https://github.com/v03413/bepusdt"})
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                answers.append([resp.status, resp.read().decode()])
        except urllib.error.HTTPError as exc:
            answers.append([exc.code, exc.read().decode()])
    return {"delivered": True, "answers": answers, "body": body,
            "at": dt.datetime.now(dt.timezone.utc).isoformat()}


def main() -> None:
    port, token, flavour = sys.argv[1:4]
    rate = sys.argv[4] if len(sys.argv) > 4 else "7.2"
    server = ThreadingHTTPServer(("127.0.0.1", int(port)), make_handler(State(token, flavour, rate)))
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

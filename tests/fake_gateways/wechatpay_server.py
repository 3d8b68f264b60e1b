"""A local WeChat Pay API v3, in its own process: Native orders, the order query, refunds,
and the payment notifications, signed and encrypted as WeChat Pay does.

It checks each merchant request as WeChat Pay does: `Authorization: WECHATPAY2-SHA256-RSA2048
mchid=..,nonce_str=..,signature=..,timestamp=..,serial_no=..`, the mchid and the merchant
certificate's serial ours, the timestamp within 5 minutes, a nonce never seen before, and the
SHA256withRSA signature over "METHOD\\nPATH?QUERY\\nTIMESTAMP\\nNONCE\\nBODY\\n" with the
merchant's public key (401 SIGN_ERROR otherwise); then the body's appid and mchid. Its answers
and notifications carry Wechatpay-Timestamp/-Nonce/-Signature/-Serial, signed with the platform's
private key over "TIMESTAMP\\nNONCE\\nBODY\\n"; a notification's resource is AEAD_AES_256_GCM under
the APIv3 key. Its code is its own, not kamengd's.

What the test does through /_test/... is what a buyer or WeChat Pay would: pay an order (the
notification follows, or is dropped, or is forged or replayed), make the next creates fail or
answer signed with another key, read what it saw.

    python wechatpay_server.py PORT CONFIG_JSON
    (CONFIG_JSON: mchid, appid, merchant_serial, merchant_public_pem, platform_private_pem,
     platform_serial, apiv3_key)
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
from urllib.parse import parse_qs, unquote, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

BEIJING = dt.timezone(dt.timedelta(hours=8))
AUTH_RE = re.compile(r'WECHATPAY2-SHA256-RSA2048 (.*)')
OUT_TRADE_NO_RE = re.compile(r"[0-9A-Za-z_*-]{6,32}")


def platform_headers(body: bytes, key, serial: str, *, age: int = 0) -> dict:
    """The Wechatpay-* headers of an answer or a notification, signed with `key`."""
    timestamp, nonce = str(int(time.time()) - age), secrets.token_hex(16)
    signature = key.sign(f"{timestamp}\n{nonce}\n".encode() + body + b"\n", padding.PKCS1v15(), hashes.SHA256())
    return {"Wechatpay-Timestamp": timestamp, "Wechatpay-Nonce": nonce, "Wechatpay-Serial": serial,
            "Wechatpay-Signature": base64.b64encode(signature).decode(),
            "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048"}


def encrypt(plaintext: bytes, apiv3_key: str, associated: str = "transaction") -> dict:
    nonce = secrets.token_urlsafe(9)[:12]
    ciphertext = AESGCM(apiv3_key.encode()).encrypt(nonce.encode(), plaintext, associated.encode())
    return {"original_type": "transaction", "algorithm": "AEAD_AES_256_GCM",
            "ciphertext": base64.b64encode(ciphertext).decode(), "associated_data": associated, "nonce": nonce}


class State:
    def __init__(self, config: dict):
        self.mchid, self.appid = config["mchid"], config["appid"]
        self.merchant_serial = config["merchant_serial"]
        self.merchant_public = serialization.load_pem_public_key(config["merchant_public_pem"].encode())
        self.platform_private = serialization.load_pem_private_key(config["platform_private_pem"].encode(), None)
        self.platform_serial, self.apiv3_key = config["platform_serial"], config["apiv3_key"]
        self.trades: dict[str, dict] = {}
        self.refunds: dict[str, dict] = {}
        self.requests: list[str] = []
        self.nonces: set[str] = set()
        self.fail_creates = 0        # the next N creates answer 500
        self.forge_answers = 0       # the next N answers are signed with another key
        self.lock = threading.RLock()   # (an answer is sent while the state is held)

    def authorized(self, method: str, target: str, body: bytes, header: str) -> str | None:
        """Why the merchant's request is refused (None: it is the merchant's)."""
        found = AUTH_RE.fullmatch(header or "")
        if not found:
            return "no WECHATPAY2-SHA256-RSA2048 Authorization"
        fields = dict(re.findall(r'(\w+)="([^"]*)"', found.group(1)))
        if fields.get("mchid") != self.mchid:
            return "mchid"
        if fields.get("serial_no") != self.merchant_serial:
            return "serial_no"
        if not fields.get("timestamp", "").isdigit() or abs(time.time() - int(fields["timestamp"])) > 300:
            return "timestamp"
        nonce = fields.get("nonce_str", "")
        with self.lock:
            if not nonce or nonce in self.nonces:
                return "nonce_str"
            self.nonces.add(nonce)
        message = f"{method}\n{target}\n{fields['timestamp']}\n{nonce}\n".encode() + body + b"\n"
        try:
            self.merchant_public.verify(base64.b64decode(fields.get("signature", "")), message, padding.PKCS1v15(),
                                        hashes.SHA256())
        except (InvalidSignature, ValueError):
            return "signature"
        return None


def make_handler(state: State):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, status: int, payload: dict | None, *, signed: bool = True) -> None:
            body = json.dumps(payload, ensure_ascii=False).encode() if payload is not None else b""
            self.send_response(status)
            if signed:
                key = state.platform_private
                with state.lock:
                    if state.forge_answers:
                        state.forge_answers -= 1
                        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
                for name, value in platform_headers(body, key, state.platform_serial).items():
                    self.send_header(name, value)
            self.send_header("Request-ID", secrets.token_hex(12))
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, code: str, message: str) -> None:
            self._send(status, {"code": code, "message": message})

        def _read(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_GET(self):
            url = urlsplit(self.path)
            if url.path == "/_test/state":
                with state.lock:
                    return self._send(200, {"trades": state.trades, "refunds": state.refunds,
                                            "requests": state.requests}, signed=False)
            self._api("GET", b"")

        def do_POST(self):
            raw = self._read()
            path = urlsplit(self.path).path
            if path.startswith("/_test/"):
                ask = json.loads(raw or b"{}")
                if path == "/_test/pay":
                    return self._send(200, pay(state, ask), signed=False)
                if path == "/_test/send":
                    return self._send(200, {"answers": send(ask["notify"], ask["body"].encode(), ask["headers"],
                                                            int(ask.get("times", 1)))}, signed=False)
                if path == "/_test/fail_creates":
                    state.fail_creates = int(ask.get("count", 1))
                    return self._send(200, {}, signed=False)
                if path == "/_test/forge_answers":
                    state.forge_answers = int(ask.get("count", 1))
                    return self._send(200, {}, signed=False)
                return self._send(404, {}, signed=False)
            self._api("POST", raw)

        def _api(self, method: str, raw: bytes) -> None:
            url = urlsplit(self.path)
            with state.lock:
                state.requests.append(f"{method} {url.path}")
            refused = state.authorized(method, self.path, raw, self.headers.get("Authorization", ""))
            if refused:
                return self._error(401, "SIGN_ERROR", f"签名错误 ({refused})")
            if method == "POST":
                try:
                    body = json.loads(raw)
                except ValueError:
                    return self._error(400, "PARAM_ERROR", "body is not JSON")
                if url.path == "/v3/pay/transactions/native":
                    return self._native(body)
                if url.path == "/v3/refund/domestic/refunds":
                    return self._refund(body)
            prefix = "/v3/pay/transactions/out-trade-no/"
            if method == "GET" and url.path.startswith(prefix):
                if parse_qs(url.query).get("mchid") != [state.mchid]:
                    return self._error(400, "PARAM_ERROR", "mchid")
                with state.lock:
                    trade = state.trades.get(unquote(url.path[len(prefix):]))
                    if trade is None:
                        return self._error(404, "ORDER_NOT_EXIST", "订单不存在")
                    return self._send(200, transaction(state, trade))
            return self._error(404, "NOT_FOUND", "no such API")

        def _native(self, body: dict) -> None:
            if body.get("appid") != state.appid or body.get("mchid") != state.mchid:
                return self._error(400, "PARAM_ERROR", "appid和mch_id不匹配")
            amount = body.get("amount") or {}
            total, order_no = amount.get("total"), body.get("out_trade_no", "")
            if (not isinstance(total, int) or isinstance(total, bool) or total <= 0
                    or amount.get("currency", "CNY") != "CNY" or not OUT_TRADE_NO_RE.fullmatch(order_no)
                    or not body.get("notify_url") or not body.get("description")
                    or len(body["description"].encode()) > 127):
                return self._error(400, "PARAM_ERROR", "参数错误")
            try:
                expires = dt.datetime.fromisoformat(body["time_expire"])
            except (KeyError, TypeError, ValueError):
                return self._error(400, "PARAM_ERROR", "time_expire")
            if expires.utcoffset() is None or expires < dt.datetime.now(dt.timezone.utc):
                return self._error(400, "PARAM_ERROR", "time_expire")
            with state.lock:
                if state.fail_creates:
                    state.fail_creates -= 1
                    return self._error(500, "SYSTEM_ERROR", "系统错误")
                trade = state.trades.get(order_no)
                if trade is not None and trade["total"] != total:
                    return self._error(400, "INVALID_REQUEST", "201 商户订单号重复")
                if trade is None:
                    trade = state.trades[order_no] = {
                        "out_trade_no": order_no, "total": total, "trade_state": "NOTPAY",
                        "transaction_id": "42000" + "".join(str(secrets.randbelow(10)) for _ in range(23)),
                        "notify_url": body["notify_url"], "description": body["description"],
                        "time_expire": body["time_expire"],
                        "code_url": f"weixin://wxpay/bizpayurl?pr={secrets.token_urlsafe(6)}"}
                self._send(200, {"code_url": trade["code_url"]})

        def _refund(self, body: dict) -> None:
            amount = body.get("amount") or {}
            with state.lock:
                trade = next((t for t in state.trades.values() if t["trade_state"] in ("SUCCESS", "REFUND") and (
                    t["transaction_id"] == body.get("transaction_id") or t["out_trade_no"] == body.get("out_trade_no"))),
                    None)
                if trade is None:
                    return self._error(404, "RESOURCE_NOT_EXISTS", "订单不存在")
                done = state.refunds.get(body.get("out_refund_no", ""))
                if done is None:   # one refund per out_refund_no, however often asked
                    given = sum(r["amount"]["refund"] for r in state.refunds.values()
                                if r["transaction_id"] == trade["transaction_id"])
                    if (amount.get("currency") != "CNY" or amount.get("total") != trade["total"]
                            or not isinstance(amount.get("refund"), int) or amount["refund"] <= 0
                            or amount["refund"] + given > trade["total"]):
                        return self._error(400, "PARAM_ERROR", "退款金额错误")
                    done = state.refunds[body["out_refund_no"]] = {
                        "refund_id": "50" + "".join(str(secrets.randbelow(10)) for _ in range(27)),
                        "out_refund_no": body["out_refund_no"], "transaction_id": trade["transaction_id"],
                        "out_trade_no": trade["out_trade_no"], "channel": "ORIGINAL",
                        "user_received_account": "支付用户零钱", "status": "PROCESSING",
                        "create_time": dt.datetime.now(BEIJING).isoformat(timespec="seconds"),
                        "amount": {"total": trade["total"], "refund": amount["refund"], "payer_total": trade["total"],
                                   "payer_refund": amount["refund"], "currency": "CNY"}}
                    trade["trade_state"] = "REFUND"
                self._send(200, done)

    return Handler


def transaction(state: State, trade: dict, **override) -> dict:
    """The transaction as the query answers it and a notification's resource holds it."""
    paid = trade["trade_state"] in ("SUCCESS", "REFUND")
    found = {"appid": state.appid, "mchid": state.mchid, "out_trade_no": trade["out_trade_no"],
             "trade_type": "NATIVE", "trade_state": trade["trade_state"],
             "trade_state_desc": "支付成功" if paid else "订单未支付", "attach": "",
             "amount": {"total": trade["total"], "payer_total": trade["total"], "currency": "CNY",
                        "payer_currency": "CNY"}}
    if paid:
        found.update({"transaction_id": trade["transaction_id"], "bank_type": "OTHERS",
                      "success_time": trade.get("success_time"), "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"}})
    for key, value in override.items():
        if key in ("total", "currency"):
            found["amount"][key] = value
            found["amount"]["payer_" + key] = value
        else:
            found[key] = value
    return found


def send(url: str, body: bytes, headers: dict, times: int) -> list:
    answers = []
    for _ in range(times):
        request = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Content-Type": "application/json", **headers})
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                answers.append([resp.status, resp.read().decode()])
        except urllib.error.HTTPError as exc:
            answers.append([exc.code, exc.read().decode()])
    return answers


def pay(state: State, ask: dict) -> dict:
    """The buyer scans and pays (or not: `status`); WeChat Pay notifies unless `deliver` is false.
    `amount`, `currency`, `mchid`, `appid` shape the transaction told; `forge` signs with another
    key, `serial` names another, `age` dates the signature back, `apiv3_key` encrypts with another
    key, `unsigned` sends no Wechatpay-* headers."""
    status = ask.get("status", "SUCCESS")
    with state.lock:
        trade = state.trades[ask["out_trade_no"]]
        if status == "SUCCESS" and trade["trade_state"] == "NOTPAY":
            trade["trade_state"] = "SUCCESS"
            trade["success_time"] = dt.datetime.now(BEIJING).isoformat(timespec="seconds")
        override = {k: ask[k] for k in ("mchid", "appid", "currency") if k in ask}
        if "amount" in ask:
            override["total"] = ask["amount"]
        told = transaction(state, {**trade, "trade_state": status}, **override)
    plaintext = json.dumps(told, ensure_ascii=False).encode()
    event = {"id": secrets.token_hex(18), "create_time": dt.datetime.now(BEIJING).isoformat(timespec="seconds"),
             "resource_type": "encrypt-resource",
             "event_type": "TRANSACTION.SUCCESS" if status == "SUCCESS" else "TRANSACTION." + status,
             "summary": "支付成功", "resource": encrypt(plaintext, ask.get("apiv3_key", state.apiv3_key))}
    body = json.dumps(event, ensure_ascii=False).encode()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048) if ask.get("forge") else state.platform_private
    headers = {} if ask.get("unsigned") else platform_headers(body, key, ask.get("serial", state.platform_serial),
                                                               age=int(ask.get("age", 0)))
    if not ask.get("deliver", True):
        return {"delivered": False, "body": body.decode(), "headers": headers, "transaction": told}
    answers = send(ask.get("notify") or trade["notify_url"], body, headers, int(ask.get("times", 1)))
    return {"delivered": True, "answers": answers, "body": body.decode(), "headers": headers, "transaction": told}


def main() -> None:
    port, config_file = sys.argv[1:3]
    state = State(json.loads(Path(config_file).read_text()))
    server = ThreadingHTTPServer(("127.0.0.1", int(port)), make_handler(state))
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

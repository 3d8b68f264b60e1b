"""Upstream docking (kamengd.suppliers): the rules, on both databases, against a real local
fake upstream.

The fake upstream is an HTTP server on 127.0.0.1 in a thread. Each test scripts its
answers (a status and a JSON body, a dropped connection, or an answer that comes only
after the client's timeout); it records every request it gets and checks each one's
signature with kamengd.agents.signing, as a real kamengd would (a request signed wrongly
is answered 401 and fails the test). Nothing of ours is mocked: the shop's database, its
buyer and agent APIs, its payment callback and the forwarder run for real; time is moved
on by passing `now` to forward_due.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import secrets
import subprocess
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from conftest import assert_one_line_error, run_cli
from kamengd.agents import signing
from kamengd.errors import Conflict, InvalidRequest, NotFound
from kamengd.suppliers import client as supplier_client
from kamengd.suppliers import forwarding
from kamengd.suppliers import services as suppliers
from kamengd.suppliers.models import Supplier, SupplierOrder, SupplierProduct
from test_agent_api import signed

CLIENT_TIMEOUT = 0.5     # the supplier client's timeout in these tests (seconds)
STALL_SECONDS = 3.0      # a stalled answer comes this late (long after the client gave up)
EPAY_PID, EPAY_KEY = "4004", "supplier-test-merchant-key"
CLOSE = "close"          # an answer: the connection is closed without a word


class Stall:
    """An answer that comes only after the client's timeout (if the client still listens)."""

    def __init__(self, then=(500, {})):
        self.then = then


# --- the fake upstream -----------------------------------------------------------------------

class FakeUpstream:
    """Another kamengd's agent API as far as the scripted answers go. Routes are
    (method, path under /api/v1/agent); each holds answers used in turn, the last one again
    and again. An answer is (status, dict | bytes), CLOSE, a Stall, or a callable taking
    the recorded request and returning one of those."""

    def __init__(self, key_id: str, secret: str):
        self.key_id, self.secret = key_id, secret
        self.requests: list[dict] = []
        self.refused: list[tuple[dict, str]] = []   # requests whose signature did not check out
        self.expect_refused = False
        self.routes: dict[tuple[str, str], deque] = {}
        self.nonces: set[str] = set()
        self.lock = threading.Lock()
        self.release = threading.Event()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                upstream._handle(self)

            do_POST = do_DELETE = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def script(self, method: str, path: str, *answers) -> None:
        with self.lock:
            self.routes[(method, path)] = deque(answers)

    def calls(self, method: str | None = None, path: str | None = None) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if (method is None or r["method"] == method)
                    and (path is None or r["path"] == "/api/v1/agent" + path)]

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    # The server's side.

    def _check(self, handler, body: bytes) -> str | None:
        """Why the request's signature does not check out (as kamengd.agents.auth would say), or None."""
        headers = handler.headers
        timestamp = headers.get("X-Kamengd-Timestamp", "")
        nonce = headers.get("X-Kamengd-Nonce", "")
        signature = headers.get("X-Kamengd-Signature", "")
        if headers.get("X-Kamengd-Key") != self.key_id:
            return "unknown key"
        if not signing.TIMESTAMP_RE.fullmatch(timestamp) or abs(time.time() - int(timestamp)) > signing.WINDOW_SECONDS:
            return "timestamp"
        with self.lock:
            if not signing.NONCE_RE.fullmatch(nonce) or nonce in self.nonces:
                return "nonce used before"
            self.nonces.add(nonce)
        # What is signed is the path and query as sent (kamengd.agents.views.signed_caller).
        if not signing.SIGNATURE_RE.fullmatch(signature) or not signing.signature_matches(
                self.secret, signature, handler.command, handler.path, timestamp, nonce, body):
            return "signature"
        return None

    def _handle(self, handler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        url = urlsplit(handler.path)
        request = {"method": handler.command, "path": url.path, "target": handler.path,
                   "query": {k: v[0] for k, v in parse_qs(url.query).items()},
                   "headers": {k.lower(): v for k, v in handler.headers.items()},
                   "idempotency_key": handler.headers.get("Idempotency-Key"), "raw": raw,
                   "body": json.loads(raw) if raw else None}
        problem = self._check(handler, raw)
        with self.lock:
            self.requests.append(request)
            if problem:
                self.refused.append((request, problem))
            queue = self.routes.get((handler.command, url.path.removeprefix("/api/v1/agent")))
            answer = (queue.popleft() if len(queue) > 1 else queue[0]) if queue else \
                (404, {"error": {"code": "not_found", "message": "not scripted"}})
        if problem:
            answer = (401, {"error": {"code": "unauthorized", "message": f"the request is not signed right: "
                                                                         f"{problem}"}})
        if callable(answer):
            answer = answer(request)
        if answer == CLOSE:
            handler.close_connection = True
            return
        if isinstance(answer, Stall):
            self.release.wait(STALL_SECONDS)
            answer = answer.then
        status, payload = answer
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except OSError:   # the client gave up waiting
            pass


def item(remote_id: int, price: str = "0.80", stock: int = 10, **extra) -> dict:
    """One product as a kamengd's GET /api/v1/agent/products shows it."""
    return {"id": remote_id, "name": f"上游点卡 {remote_id}", "price": price, "shop_price": "1.00", "currency": "CNY",
            "stock": stock, "delivery": "auto", "min_quantity": 1, "max_quantity": 10, **extra}


def delivered(keys: list[str], order_no: str | None = None, amount: str | None = None):
    """An upstream order answer (201 delivered) for the request it answers."""
    def answer(request):
        body = request["body"]
        return 201, {"order_no": order_no or f"UP{secrets.token_hex(4)}", "status": "delivered",
                     "amount": amount or "0.80", "currency": "CNY", "quantity": body["quantity"],
                     "product_id": body["product_id"], "ref": body["ref"], "keys": keys,
                     "created_at": "2026-01-01T00:00:00Z"}
    return answer


def refused(status: int, code: str, message: str = "no"):
    return status, {"error": {"code": code, "message": message}}


# --- the shop docked to it -------------------------------------------------------------------

class Dock:
    """This shop (the shared app) with a supplier at the fake upstream, and helpers that go
    through the shop's own services and HTTP APIs, each in its own app context."""

    def __init__(self, app, upstream: FakeUpstream):
        self.app, self.up = app, upstream
        self.tag = secrets.token_hex(3)
        self.name = f"up-{self.tag}"
        self.names: list[str] = []
        self.channel = f"sup{self.tag}"
        with self.ctx() as (db, vault):
            from kamengd.payments.services import add_channel

            add_channel(db.session, vault, channel_type="epay", code=self.channel, actor="t",
                        options={"gateway": "https://pay.example.com", "pid": EPAY_PID, "key": EPAY_KEY})
            db.session.commit()

    def ctx(self):
        dock = self

        class _Ctx:
            def __enter__(self):
                from kamengd.context import get_vault
                from kamengd.extensions import db

                self.app_ctx = dock.app.app_context()
                self.app_ctx.push()
                return db, get_vault()

            def __exit__(self, *exc):
                from kamengd.extensions import db

                db.session.rollback()
                db.session.remove()
                self.app_ctx.pop()
        return _Ctx()

    # Suppliers and their products.

    def add(self, name: str | None = None, secret: str | None = None, low_balance=None, url=None) -> str:
        name = name or self.name
        with self.ctx() as (db, vault):
            suppliers.add_supplier(db.session, vault, name=name, url=url or self.up.base, key_id=self.up.key_id,
                                   secret=secret or self.up.secret, low_balance=low_balance, actor="test")
            db.session.commit()
        self.names.append(name)
        return name

    def offer(self, *items, balance: str = "100.00") -> None:
        self.up.script("GET", "/products", (200, {"products": list(items)}))
        self.up.script("GET", "/balance", (200, {"balance": balance, "pending": "0.00", "held": "0.00",
                                                 "debt": "0.00", "currency": "CNY"}))

    def sync(self, name: str | None = None) -> dict:
        with self.ctx() as (db, vault):
            return suppliers.sync_supplier(db.session, vault, suppliers.get_supplier(db.session, name or self.name))

    def supplier(self, name: str | None = None) -> dict:
        with self.ctx() as (db, _vault):
            s = suppliers.get_supplier(db.session, name or self.name)
            return {c.name: getattr(s, c.name) for c in Supplier.__table__.columns}

    def rows(self, name: str | None = None) -> dict[int, dict]:
        with self.ctx() as (db, _vault):
            s = suppliers.get_supplier(db.session, name or self.name)
            return {p.remote_id: {c.name: getattr(p, c.name) for c in SupplierProduct.__table__.columns}
                    for p in suppliers.supplier_products(db.session, s)}

    def map(self, remote_id: int, *, product_id=None, create=None, fixed=None, percent=None,
            name: str | None = None) -> int:
        with self.ctx() as (db, _vault):
            row = suppliers.map_product(db.session, suppliers.get_supplier(db.session, name or self.name),
                                        remote_id=remote_id, product_id=product_id, create_name=create,
                                        fixed=fixed, percent=percent, actor="test")
            db.session.commit()
            return row.product_id

    def new_product(self, price_cents: int = 100, **kwargs) -> int:
        from kamengd.catalog.services import create_product

        with self.ctx() as (db, _vault):
            product = create_product(db.session, name=f"我们的 {self.tag} {secrets.token_hex(2)}",
                                     price_cents=price_cents, actor="test", **kwargs)
            db.session.commit()
            return product.id

    def product(self, product_id: int) -> dict:
        from kamengd.catalog.models import Product

        with self.ctx() as (db, _vault):
            p = db.session.get(Product, product_id)
            return {"price": p.price_cents, "cost": p.cost_price_cents, "mode": p.delivery_mode,
                    "currency": p.currency, "min": p.min_quantity, "max": p.max_quantity, "name": p.name}

    def import_keys(self, product_id: int, keys: list[str]) -> None:
        from kamengd.inventory.services import import_keys

        with self.ctx() as (db, vault):
            import_keys(db.session, vault, product_id=product_id, fh=io.BytesIO("\n".join(keys).encode()),
                        actor="test")
            db.session.commit()

    def stock_keys(self, product_id: int) -> dict[str, str]:
        """{key: status} of every key this shop holds for the product."""
        from kamengd.inventory.models import CardKey

        with self.ctx() as (db, vault):
            return {vault.decrypt_card_key(k.product_id, k.fingerprint, k.nonce, k.ciphertext, k.key_version)
                    .decode(): k.status
                    for k in db.session.scalars(sa.select(CardKey).where(CardKey.product_id == product_id))}

    def events(self, event_type: str, **match) -> list[dict]:
        from kamengd.notifications.models import Event

        with self.ctx() as (db, _vault):
            payloads = [json.loads(e.payload) for e in db.session.scalars(
                sa.select(Event).where(Event.type == event_type).order_by(Event.id))]
        return [p for p in payloads if all(p.get(k) == v for k, v in match.items())]

    # Orders.

    def buy(self, product_id: int, quantity: int = 1) -> dict:
        """A buyer's order through the buyer API, paid through the Epay callback."""
        from kamengd.payments import epay

        client = self.app.test_client()
        made = client.post("/api/v1/orders", json={"product_id": product_id, "quantity": quantity,
                                                   "email": "buyer@example.com", "channel": self.channel})
        assert made.status_code == 201, made.get_json()
        order = made.get_json()
        params = {"pid": EPAY_PID, "trade_no": f"T{order['order_no']}", "out_trade_no": order["order_no"],
                  "type": "alipay", "name": "x", "money": order["amount"], "trade_status": "TRADE_SUCCESS"}
        params["sign"] = hashlib.md5((epay.signing_string(params) + EPAY_KEY).encode()).hexdigest()
        params["sign_type"] = "MD5"
        assert client.get(f"/pay/{self.channel}/notify", query_string=params).get_data(as_text=True) == "success"
        assert self.order(order["order_no"])["status"] == "paid"
        return order

    def buyer_view(self, order: dict) -> dict:
        answer = self.app.test_client().get(f"/api/v1/orders/{order['order_no']}?token={order['token']}")
        assert answer.status_code == 200, answer.get_json()
        return answer.get_json()

    def order(self, order_no: str) -> dict:
        from kamengd.orders.models import Order
        from kamengd.orders.services import order_keys

        with self.ctx() as (db, vault):
            o = db.session.scalars(sa.select(Order).where(Order.order_no == order_no)).one()
            return {"status": o.status, "flagged_at": o.flagged_at, "flag_reason": o.flag_reason,
                    "keys": order_keys(db.session, vault, o)}

    def refund(self, order_no: str) -> None:
        from kamengd.orders.staff import refund_order

        with self.ctx() as (db, _vault):
            refund_order(db.session, order_no=order_no, reason="the supplier has none", actor="test")
            db.session.commit()

    def forward(self, now: dt.datetime) -> dict:
        with self.ctx() as (db, vault):
            return forwarding.forward_due(db.session, vault, now=now)

    def forward_of(self, order_no: str) -> dict | None:
        from kamengd.orders.models import Order

        with self.ctx() as (db, _vault):
            f = db.session.scalars(sa.select(SupplierOrder).join(Order, Order.id == SupplierOrder.order_id)
                                   .where(Order.order_no == order_no)).first()
            return None if f is None else {c.name: getattr(f, c.name) for c in SupplierOrder.__table__.columns}

    def close(self) -> None:
        """This test's suppliers are switched off: no later test's forwarder calls them."""
        with self.ctx() as (db, _vault):
            db.session.execute(sa.update(Supplier).where(Supplier.name.in_(self.names)).values(is_active=False))
            db.session.commit()


@pytest.fixture
def upstream(monkeypatch):
    monkeypatch.setattr(supplier_client, "TIMEOUT_SECONDS", CLIENT_TIMEOUT)
    up = FakeUpstream(key_id=f"ak_{secrets.token_hex(6)}", secret=secrets.token_urlsafe(32))
    yield up
    up.stop()
    if not up.expect_refused:
        assert up.refused == [], f"requests the upstream refused (signed wrongly): {up.refused}"


@pytest.fixture
def dock(backend, app, upstream):
    made = Dock(app, upstream)
    yield made
    made.close()


def mapped(dock: Dock, *, stock: int = 10, price: str = "0.80", percent: str = "25", remote_id: int = 1) -> int:
    """The supplier offers `remote_id`; ours is a new product at cost + `percent`."""
    dock.offer(item(remote_id, price=price, stock=stock))
    dock.add()
    assert "error" not in dock.sync()
    return dock.map(remote_id, create=f"转售 {dock.tag}", percent=percent)


def start() -> dt.datetime:
    from kamengd.database import utcnow

    return utcnow()


def seconds(t: dt.datetime, n: float) -> dt.datetime:
    return t + dt.timedelta(seconds=n)


# --- 1. price rules --------------------------------------------------------------------------

@pytest.mark.parametrize("cost, kind, value, price", [
    (99, "percent", 1250, 112),        # 0.99 × 1.125 = 1.11375 → 1.12 (up, never down)
    (80, "percent", 2500, 100),        # exact: 0.80 × 1.25 = 1.00
    (1, "percent", 1, 2),              # 0.01 × 1.0001: the smallest markup still costs a cent
    (100, "percent", 0, 100),
    (1000, "percent", 100_000, 11_000),  # 1000 %
    (99, "fixed", 150, 249),
    (99, "fixed", 0, 99),
])
def test_price_for_rounds_up_to_the_cent(cost, kind, value, price):
    assert suppliers.price_for(cost, kind, value) == price


@pytest.mark.parametrize("given, parsed", [
    ({"percent": "12.5"}, ("percent", 1250)), ({"percent": " 12.50 "}, ("percent", 1250)),
    ({"percent": "0"}, ("percent", 0)), ({"percent": "1000"}, ("percent", 100_000)),
    ({"percent": "0.01"}, ("percent", 1)),
    ({"fixed": "1.5"}, ("fixed", 150)), ({"fixed": "0"}, ("fixed", 0)), ({"fixed": "12.34"}, ("fixed", 1234)),
])
def test_parse_markup(given, parsed):
    assert suppliers.parse_markup(**given) == parsed


@pytest.mark.parametrize("given, fragment", [
    ({}, "either a fixed amount or a percentage"),
    ({"fixed": "1", "percent": "5"}, "either a fixed amount or a percentage"),
    ({"percent": "abc"}, "a percentage such as 12.5"),
    ({"percent": "-5"}, "a percentage such as 12.5"),
    ({"percent": "1e3"}, "a percentage such as 12.5"),
    ({"percent": "12.345"}, "a percentage such as 12.5"),
    ({"percent": ""}, "a percentage such as 12.5"),
    ({"percent": "1000.01"}, "at most 1000 %"),
    ({"percent": "5000"}, "at most 1000 %"),
    ({"fixed": "-1"}, "not an amount"),
    ({"fixed": "1.234"}, "not an amount"),
    ({"fixed": "junk"}, "not an amount"),
])
def test_parse_markup_errors(given, fragment):
    with pytest.raises(InvalidRequest) as caught:
        suppliers.parse_markup(**given)
    assert fragment in caught.value.message and "%%" not in caught.value.message, caught.value.message


def test_format_markup():
    assert suppliers.format_markup("percent", 1250) == "+12.50 %"
    assert suppliers.format_markup("fixed", 150) == "+1.50"
    assert suppliers.format_markup(None, None) == ""


# --- 2. adding a supplier --------------------------------------------------------------------

@pytest.mark.parametrize("change, error, fragment", [
    ({"name": "Bad Name!"}, InvalidRequest, "name:"),
    ({"name": ""}, InvalidRequest, "name:"),
    ({"name": "x" * 33}, InvalidRequest, "name:"),
    ({"url": "https://user:pass@up.example.com"}, InvalidRequest, "url:"),
    ({"url": "https://user@up.example.com"}, InvalidRequest, "url:"),
    ({"url": "https://up.example.com/?shop=1"}, InvalidRequest, "url:"),
    ({"url": "https://up.example.com/#top"}, InvalidRequest, "url:"),
    ({"url": "ftp://up.example.com"}, InvalidRequest, "url:"),
    ({"url": "up.example.com"}, InvalidRequest, "url:"),
    ({"url": "https://"}, InvalidRequest, "url:"),
    ({"url": "https://up.example.com/" + "a" * 500}, InvalidRequest, "url:"),
    ({"key_id": ""}, InvalidRequest, "key id:"),
    ({"key_id": "has space"}, InvalidRequest, "key id:"),
    ({"secret": "short"}, InvalidRequest, "secret:"),
    ({"secret": "sixteen chars but spaced"}, InvalidRequest, "secret:"),
    ({"secret": "x" * 201}, InvalidRequest, "secret:"),
    ({"low_balance": "lots"}, InvalidRequest, "low balance"),
    ({"low_balance": "-5"}, InvalidRequest, "low balance"),
])
def test_add_supplier_refuses_bad_input_and_stores_nothing(dock, change, error, fragment):
    from kamengd.audit.models import AuditEntry

    fields = {"name": dock.name, "url": "https://up.example.com", "key_id": "ak_1", "secret": "s" * 32,
              **change}
    with dock.ctx() as (db, vault):
        before = (db.session.scalar(sa.select(sa.func.count()).select_from(Supplier)),
                  db.session.scalar(sa.select(sa.func.max(AuditEntry.seq))))
        with pytest.raises(error) as caught:
            suppliers.add_supplier(db.session, vault, actor="test", **fields)
        assert fragment in caught.value.message
        db.session.commit()
        assert (db.session.scalar(sa.select(sa.func.count()).select_from(Supplier)),
                db.session.scalar(sa.select(sa.func.max(AuditEntry.seq)))) == before


def test_a_duplicate_name_is_refused(dock):
    dock.add(name=dock.name)
    with dock.ctx() as (db, vault):
        with pytest.raises(Conflict, match="exists"):
            # The name is kept in lower case: upper case is the same supplier.
            suppliers.add_supplier(db.session, vault, name=dock.name.upper(), url="https://other.example.com",
                                   key_id="ak_2", secret="t" * 32, actor="test")
        db.session.commit()
    assert dock.supplier()["base_url"] == dock.up.base     # the first one, untouched


def test_the_secret_is_stored_sealed(dock, installed, backend):
    from kamengd.audit.models import AuditEntry

    secret = "SeCrEt-" + secrets.token_hex(20)
    dock.add(secret=secret, low_balance="12.5", url=dock.up.base + "/")
    with dock.ctx() as (db, vault):
        raw = db.session.execute(sa.text("SELECT * FROM suppliers WHERE name = :n"), {"n": dock.name}).one()
        cells = b"".join(bytes(v) if isinstance(v, (bytes, bytearray, memoryview)) else str(v).encode()
                         for v in raw)
        assert secret.encode() not in cells and secret[7:].encode() not in cells
        audit = " ".join(db.session.scalars(sa.select(AuditEntry.details)
                                            .where(AuditEntry.target == f"supplier:{dock.name}")))
        assert secret not in audit and '"key_id"' in audit
        supplier = suppliers.get_supplier(db.session, dock.name)
        # The URL without its trailing slash; the threshold in cents; the secret comes back only sealed.
        assert (supplier.base_url, supplier.low_balance_cents) == (dock.up.base, 1250)
        assert suppliers.client_for(supplier, vault).secret == secret
        # Sealed for this supplier's name: another name cannot open it.
        with pytest.raises(Exception):
            vault.decrypt_secret(suppliers.secret_context("another"), supplier.secret_nonce,
                                 supplier.secret_ciphertext, supplier.secret_key_version)
    if backend == "sqlite":   # the file and its write-ahead log, as a thief would read them
        database = Path(make_url(installed.database_url).database)
        paths = sorted(database.parent.glob(database.name + "*"))
        assert database in paths
        # grep in another process: opening and closing the live files here would drop this
        # process's SQLite locks on them (POSIX locks are per process), and the next CLI
        # process to close would take the WAL away from under the shared app.
        found = subprocess.run(["grep", "-a", "-c", "-F", secret[7:], *map(str, paths)], capture_output=True,
                               text=True)
        assert found.returncode == 1 and found.stderr == "", (found.stdout, found.stderr)


# --- 3. sync ---------------------------------------------------------------------------------

def test_sync_stores_products_and_the_balance(dock):
    dock.offer(item(1, price="0.80", stock=10), item(2, price="5.00", stock=3, min_quantity=2, max_quantity=4),
               balance="123.45")
    dock.add()
    counts = dock.sync()
    assert counts == {"products": 2, "new": 2, "gone": 0, "repriced": 0}
    rows = dock.rows()
    assert {r: (p["cost_cents"], p["stock"], p["currency"], p["min_quantity"], p["max_quantity"], p["gone"],
                p["product_id"]) for r, p in rows.items()} == {1: (80, 10, "CNY", 1, 10, False, None),
                                                             2: (500, 3, "CNY", 2, 4, False, None)}
    supplier = dock.supplier()
    assert (supplier["balance_cents"], supplier["currency"], supplier["last_error"]) == (12345, "CNY", None)
    assert supplier["synced_at"] is not None
    # Two signed GETs, nothing else.
    assert [(r["method"], r["target"], r["raw"]) for r in dock.up.requests] == [
        ("GET", "/api/v1/agent/products", b""), ("GET", "/api/v1/agent/balance", b"")]
    headers = dock.up.requests[0]["headers"]
    assert headers["x-kamengd-key"] == dock.up.key_id and "idempotency-key" not in headers
    assert headers["user-agent"].startswith("kamengd/")


def test_mapped_products_follow_the_cost(dock):
    dock.offer(item(1, price="0.80"), item(2, price="5.00"))
    dock.add()
    dock.sync()
    by_percent = dock.map(1, create=f"转售 {dock.tag}", percent="25")
    by_fixed = dock.map(2, product_id=dock.new_product(price_cents=999), fixed="1.50")
    assert (dock.product(by_percent)["price"], dock.product(by_fixed)["price"]) == (100, 650)

    dock.offer(item(1, price="0.99"), item(2, price="5.20"))
    assert dock.sync() == {"products": 2, "new": 0, "gone": 0, "repriced": 2}
    assert (dock.product(by_percent)["price"], dock.product(by_percent)["cost"]) == (124, 99)  # 1.2375 → 1.24
    assert (dock.product(by_fixed)["price"], dock.product(by_fixed)["cost"]) == (670, 520)
    moved = dock.events("supplier.cost_changed", supplier=dock.name)
    assert sorted((e["product_id"], e["old_cost"], e["cost"], e["price"]) for e in moved) == sorted([
        (by_percent, "0.80", "0.99", "1.24"), (by_fixed, "5.00", "5.20", "6.70")])
    # The same costs again: nothing moves, nothing is said.
    assert dock.sync()["repriced"] == 0
    assert len(dock.events("supplier.cost_changed", supplier=dock.name)) == 2


def test_products_that_vanish_are_gone(dock):
    dock.offer(item(1, stock=5), item(2, stock=7))
    dock.add()
    dock.sync()
    ours = dock.map(2, create=f"转售 {dock.tag}", percent="10")
    dock.offer(item(1, stock=5))
    assert dock.sync() == {"products": 1, "new": 0, "gone": 1, "repriced": 0}
    rows = dock.rows()
    assert (rows[2]["gone"], rows[2]["stock"], rows[1]["gone"]) == (True, 0, False)
    shown = {p["id"]: p for p in dock.app.test_client().get("/api/v1/products").get_json()["products"]}
    assert shown[ours]["stock"] == 0
    # Gone cannot be mapped; back again, it can be sold again.
    with dock.ctx() as (db, _vault):
        with pytest.raises(NotFound, match="offers no product 2"):
            suppliers.map_product(db.session, suppliers.get_supplier(db.session, dock.name), remote_id=2,
                                  create_name="x", percent="1", actor="test")
    dock.offer(item(1, stock=5), item(2, stock=4))
    assert dock.sync()["gone"] == 0
    assert (dock.rows()[2]["gone"], dock.rows()[2]["stock"]) == (False, 4)


def test_malformed_products_are_skipped_not_guessed(dock):
    good = item(7, price="2.00", stock=3)
    dock.offer(
        "not an object", None, [7],
        {"name": "no id", "price": "1.00"},
        item(8, price=1.5),            # a number, not the API's string
        item(9, price="abc"),
        item(10, price="-1.00"),
        item(11, price="1e3"),
        {**item(12), "price": None},
        {k: v for k, v in item(13).items() if k != "price"},
        item("14"),                    # an id that is not a number
        item(True),
        item(-15),
        item(16, stock=-1),
        item(17, stock="5"),
        item(18, stock=True),
        item(19, min_quantity="1"),
        item(20, max_quantity=None),
        item(2 ** 40),                 # larger than any product id
        item(21, stock=2 ** 40),
        good,
        {**good, "price": "0.01", "stock": 999},   # the same id again: the first one counts
    )
    dock.add()
    counts = dock.sync()
    assert counts == {"products": 1, "new": 1, "gone": 0, "repriced": 0}, counts
    assert {r: (p["cost_cents"], p["stock"]) for r, p in dock.rows().items()} == {7: (200, 3)}
    assert dock.supplier()["last_error"] is None


def test_failures_record_last_error_and_change_nothing_else(dock):
    dock.offer(item(1, price="0.80", stock=10), balance="50.00")
    dock.add()
    dock.sync()
    ours = dock.map(1, create=f"转售 {dock.tag}", percent="25")
    before_rows, before = dock.rows(), dock.supplier()
    changed = [item(1, price="0.90", stock=1)]
    balance = (200, {"balance": "1.00", "currency": "CNY"})

    def fails(products_answer, balance_answer=balance, fragment=""):
        dock.up.script("GET", "/products", products_answer)
        dock.up.script("GET", "/balance", balance_answer)
        result = dock.sync()
        assert "error" in result, result
        after = dock.supplier()
        assert fragment in after["last_error"], after["last_error"]
        assert {k: v for k, v in after.items() if k not in ("last_error", "base_url")} == \
               {k: v for k, v in before.items() if k not in ("last_error", "base_url")}
        assert dock.rows() == before_rows
        assert dock.product(ours)["price"] == 100
        return after["last_error"]

    fails((401, {"error": {"code": "unauthorized", "message": "bad signature"}}), fragment="unauthorized")
    fails((500, b"<html>oops</html>"), fragment="http_500")
    fails(CLOSE, fragment="Remote")
    fails(Stall(then=(200, {"products": changed})), fragment="timed out")
    fails((200, b"<html>a captive portal</html>"), fragment="not JSON")
    fails((200, {"products": changed}), (503, {}), fragment="http_503")     # the balance fails: nothing kept
    fails((200, {"products": "none today"}), fragment="unknown shape")
    fails((200, ["not", "an", "object"]), fragment="unknown shape")
    # Nobody listens at all.
    with dock.ctx() as (db, _vault):
        suppliers.set_supplier(db.session, suppliers.get_supplier(db.session, dock.name), actor="test",
                               url="http://127.0.0.1:9")
        db.session.commit()
    fails((200, {"products": changed}), fragment="Connection refused")
    with dock.ctx() as (db, _vault):
        suppliers.set_supplier(db.session, suppliers.get_supplier(db.session, dock.name), actor="test",
                               url=dock.up.base)
        db.session.commit()
    # Answering again: the error is cleared, the new figures kept.
    dock.offer(*changed, balance="49.00")
    assert "error" not in dock.sync()
    assert dock.supplier()["last_error"] is None and dock.supplier()["balance_cents"] == 4900
    assert dock.product(ours)["price"] == 113   # 0.90 × 1.25 = 1.125 → 1.13


def test_a_key_the_upstream_does_not_accept_is_a_401_recorded(dock):
    """The fake upstream checks every signature: a wrong secret is refused there."""
    dock.up.expect_refused = True
    dock.offer(item(1))
    dock.add(secret="w" * 32)
    result = dock.sync()
    assert "unauthorized" in result["error"] and "unauthorized" in dock.supplier()["last_error"]
    assert [problem for _r, problem in dock.up.refused] == ["signature"]
    assert dock.rows() == {}


def test_one_supplier_failing_stops_no_other(dock, upstream):
    """sync_all goes on past a supplier whose answer cannot be read."""
    dock.offer(item(1))
    broken = dock.add(name=f"bad-{dock.tag}")
    good_up = FakeUpstream(key_id=f"ak_{secrets.token_hex(6)}", secret=secrets.token_urlsafe(32))
    try:
        good_up.script("GET", "/products", (200, {"products": [item(5)]}))
        good_up.script("GET", "/balance", (200, {"balance": "9.00", "currency": "CNY"}))
        good = f"zz-{dock.tag}"
        with dock.ctx() as (db, vault):
            suppliers.add_supplier(db.session, vault, name=good, url=good_up.base, key_id=good_up.key_id,
                                   secret=good_up.secret, actor="test")
            db.session.commit()
        dock.names.append(good)
        dock.up.script("GET", "/products", (200, {"products": {"1": "x"}}))
        with dock.ctx() as (db, vault):
            # Only these two are active among the shared database's suppliers while it runs.
            others = db.session.scalars(sa.select(Supplier.id).where(
                Supplier.name.not_in([broken, good]), Supplier.is_active.is_(True))).all()
            db.session.execute(sa.update(Supplier).where(Supplier.id.in_(others)).values(is_active=False))
            db.session.commit()
            try:
                counts = suppliers.sync_all(db.session, vault)
            finally:
                db.session.rollback()
                db.session.execute(sa.update(Supplier).where(Supplier.id.in_(others)).values(is_active=True))
                db.session.commit()
        assert counts == {"suppliers": 2, "failed": 1}
        assert "unknown shape" in dock.supplier(broken)["last_error"]
        assert set(dock.rows(good)) == {5} and dock.supplier(good)["balance_cents"] == 900
        assert good_up.refused == []
    finally:
        good_up.stop()


def test_a_secret_that_cannot_be_opened_is_recorded(dock):
    dock.offer(item(1))
    dock.add()
    with dock.ctx() as (db, _vault):
        db.session.execute(sa.update(Supplier).where(Supplier.name == dock.name)
                           .values(secret_ciphertext=secrets.token_bytes(48)))
        db.session.commit()
    result = dock.sync()
    assert "cannot be read" in result["error"] and "cannot be read" in dock.supplier()["last_error"]
    assert dock.up.requests == [] and dock.rows() == {}


def test_low_balance_is_said_once_until_it_recovers(dock):
    dock.offer(item(1), balance="100.00")
    dock.add(low_balance="50.00")

    def sync_with(balance):
        dock.offer(item(1), balance=balance)
        assert "error" not in dock.sync()
        return [e["balance"] for e in dock.events("supplier.low_balance", supplier=dock.name)]

    assert sync_with("100.00") == []
    assert sync_with("49.99") == ["49.99"]
    assert sync_with("30.00") == ["49.99"]            # still low: said once
    assert sync_with("50.00") == ["49.99"]            # back at the threshold: not below
    assert dock.supplier()["low_balance_warned"] is False
    assert sync_with("10.00") == ["49.99", "10.00"]   # low again: said again
    event = dock.events("supplier.low_balance", supplier=dock.name)[-1]
    assert (event["threshold"], event["currency"]) == ("50.00", "CNY")


# --- 4. mapping ------------------------------------------------------------------------------

def test_map_an_existing_product_and_unmap_it(dock):
    from kamengd.audit.models import AuditEntry

    dock.offer(item(1, price="0.99", stock=6), item(2, price="3.00"))
    dock.add()
    dock.sync()
    ours = dock.new_product(price_cents=500)
    assert dock.map(1, product_id=ours, percent="12.5") == ours
    assert dock.product(ours) | {"name": None} == {"price": 112, "cost": 99, "mode": "supplier", "currency": "CNY",
                                                 "min": 1, "max": 100, "name": None}
    row = dock.rows()[1]
    assert (row["product_id"], row["markup_kind"], row["markup_value"]) == (ours, "percent", 1250)
    with dock.ctx() as (db, _vault):
        details = json.loads(db.session.scalars(sa.select(AuditEntry.details).where(
            AuditEntry.action == "supplier.map", AuditEntry.target == f"product:{ours}")).one())
    assert (details["supplier"], details["markup"], details["cost"], details["price"]) == \
           (dock.name, "+12.50 %", "0.99", "1.12")
    # A product is bought from one supplier product only.
    with dock.ctx() as (db, _vault):
        with pytest.raises(Conflict, match="mapped to another supplier product"):
            suppliers.map_product(db.session, suppliers.get_supplier(db.session, dock.name), remote_id=2,
                                  product_id=ours, fixed="1", actor="test")
    assert dock.rows()[2]["product_id"] is None
    # The same row mapped again elsewhere: the first product is sold from its own stock again.
    other = dock.new_product()
    dock.map(1, product_id=other, fixed="0.01")
    assert (dock.product(ours)["mode"], dock.product(other)["mode"], dock.product(other)["price"]) == \
           ("auto", "supplier", 100)
    # Unmapped: ours again, at the price it had.
    with dock.ctx() as (db, _vault):
        suppliers.unmap_product(db.session, product_id=other, actor="test")
        db.session.commit()
    assert (dock.product(other)["mode"], dock.product(other)["price"]) == ("auto", 100)
    assert (dock.rows()[1]["product_id"], dock.rows()[1]["markup_kind"]) == (None, None)
    with dock.ctx() as (db, _vault):
        with pytest.raises(NotFound, match="not mapped"):
            suppliers.unmap_product(db.session, product_id=other, actor="test")


def test_map_refusals(dock):
    dock.offer(item(1, price="1.00"), item(2, price="1.00", currency="USD"))
    dock.add()
    dock.sync()
    ours = dock.new_product()
    supplier_name = dock.name

    def refused_with(error, fragment, **kwargs):
        with dock.ctx() as (db, _vault):
            with pytest.raises(error) as caught:
                suppliers.map_product(db.session, suppliers.get_supplier(db.session, supplier_name),
                                      actor="test", **kwargs)
            assert fragment in caught.value.message, caught.value.message

    refused_with(InvalidRequest, "sells in USD", remote_id=2, product_id=ours, percent="10")
    refused_with(InvalidRequest, "either a fixed amount or a percentage", remote_id=1, product_id=ours,
                 percent="10", fixed="1")
    refused_with(InvalidRequest, "either a fixed amount or a percentage", remote_id=1, product_id=ours)
    refused_with(InvalidRequest, "give our product's id, or a name", remote_id=1, percent="10")
    refused_with(InvalidRequest, "give our product's id, or a name", remote_id=1, product_id=ours,
                 create_name="x", percent="10")
    refused_with(NotFound, "offers no product 99", remote_id=99, product_id=ours, percent="10")
    refused_with(NotFound, "product 999999999 not found", remote_id=1, product_id=999999999, percent="10")
    refused_with(InvalidRequest, "remote product", remote_id="1", product_id=ours, percent="10")
    assert dock.product(ours)["mode"] == "auto"
    assert all(r["product_id"] is None for r in dock.rows().values())


def test_map_to_a_new_product(dock):
    dock.offer(item(3, price="4.00", min_quantity=2, max_quantity=6))
    dock.add()
    dock.sync()
    made = dock.map(3, create=f"新商品 {dock.tag}", fixed="0.50")
    assert dock.product(made) == {"price": 450, "cost": 400, "mode": "supplier", "currency": "CNY", "min": 2,
                                  "max": 6, "name": f"新商品 {dock.tag}"}


# --- 5. the storefront's and the APIs' stock ---------------------------------------------------

def test_a_mapped_products_stock_is_the_suppliers(dock):
    ours = mapped(dock, stock=7)
    shop = dock.app.test_client()

    def shown():
        return next(p for p in shop.get("/api/v1/products").get_json()["products"] if p["id"] == ours)

    assert (shown()["stock"], shown()["price"]) == (7, "1.00")
    too_many = shop.post("/api/v1/orders", json={"product_id": ours, "quantity": 8, "email": "b@example.com",
                                                 "channel": dock.channel})
    assert too_many.status_code == 409 and too_many.get_json()["error"]["code"] == "out_of_stock"
    dock.offer(item(1, stock=2))
    dock.sync()
    assert shown()["stock"] == 2
    assert dock.buy(ours, 2)["amount"] == "2.00"
    # Gone upstream, or the supplier switched off: nothing of it is on sale here.
    dock.offer(item(2, stock=5))
    dock.sync()
    assert shown()["stock"] == 0
    dock.offer(item(1, stock=3))
    dock.sync()
    assert shown()["stock"] == 3
    with dock.ctx() as (db, _vault):
        suppliers.set_supplier(db.session, suppliers.get_supplier(db.session, dock.name), actor="test",
                               active=False)
        db.session.commit()
    assert shown()["stock"] == 0


def test_a_cached_offer_does_not_outlive_the_suppliers_stock(dock):
    ours = mapped(dock, stock=7)
    shop = dock.app.test_client()
    body = {"product_id": ours, "email": "b@example.com", "channel": dock.channel}
    assert shop.post("/api/v1/orders", json={**body, "quantity": 1}).status_code == 201   # the offer is cached
    dock.offer(item(1, stock=2))
    dock.sync()
    assert shop.post("/api/v1/orders", json={**body, "quantity": 3}).status_code == 409
    with dock.ctx() as (db, _vault):
        suppliers.set_supplier(db.session, suppliers.get_supplier(db.session, dock.name), actor="test",
                               active=False)
        db.session.commit()
    assert shop.post("/api/v1/orders", json={**body, "quantity": 1}).status_code == 409


def test_an_agents_order_of_a_mapped_product_is_paid_then_forwarded(dock):
    from kamengd.agents import services as agents
    from kamengd.agents.models import Agent

    ours = mapped(dock, stock=3)
    with dock.ctx() as (db, vault):
        level, _ = agents.set_level(db.session, name=f"批发-{dock.tag}", discount="10", actor="t")
        agent = agents.create_agent(db.session, username=f"ag-{dock.tag}", level=level.name, actor="t")
        key_id, secret = agents.issue_api_key(db.session, vault, agent, actor="t")
        agents.credit_balance(db.session, db.session.get(Agent, agent.id), 1000, reason="t", actor="t")
        db.session.commit()
    caller = {"key_id": key_id, "secret": secret}
    shop = dock.app.test_client()
    too_many = signed(shop, caller, "POST", "/api/v1/agent/orders", {"product_id": ours, "quantity": 4},
                      idempotency_key="a-1")
    assert too_many.status_code == 409 and too_many.get_json()["error"]["code"] == "out_of_stock"
    placed = signed(shop, caller, "POST", "/api/v1/agent/orders", {"product_id": ours, "quantity": 2},
                    idempotency_key="a-2")
    assert placed.status_code == 201, placed.get_json()
    order = placed.get_json()
    assert (order["status"], order["amount"], "keys" in order) == ("paid", "1.80", False)

    dock.up.script("POST", "/orders", delivered(["AG-K1", "AG-K2"], order_no="UP-AG", amount="1.60"))
    assert dock.forward(start())["delivered"] == 1
    [sent] = dock.up.calls("POST", "/orders")
    assert sent["body"] == {"product_id": 1, "quantity": 2, "ref": order["order_no"]}
    again = signed(shop, caller, "GET", f"/api/v1/agent/orders/{order['order_no']}").get_json()
    assert (again["status"], again["keys"]) == ("delivered", ["AG-K1", "AG-K2"])


# --- 6. forwarding -----------------------------------------------------------------------------

def test_a_paid_order_is_bought_upstream_and_delivered(dock):
    ours = mapped(dock)
    order = dock.buy(ours, 2)
    dock.up.script("POST", "/orders", delivered(["UP-KEY-1", "UP-KEY-2"], order_no="UP0001", amount="1.60"))
    t0 = start()
    counts = dock.forward(t0)
    assert (counts["queued"], counts["delivered"]) == (1, 1), counts
    [sent] = dock.up.calls("POST", "/orders")
    assert sent["target"] == "/api/v1/agent/orders"
    assert sent["idempotency_key"] == f"kamengd-order:{order['order_no']}"
    assert sent["body"] == {"product_id": 1, "quantity": 2, "ref": order["order_no"]}
    assert sent["headers"]["content-type"] == "application/json"
    view = dock.buyer_view(order)
    assert (view["status"], view["keys"]) == ("delivered", ["UP-KEY-1", "UP-KEY-2"])
    assert dock.order(order["order_no"])["keys"] == ["UP-KEY-1", "UP-KEY-2"]
    forward = dock.forward_of(order["order_no"])
    assert (forward["status"], forward["uncertain"], forward["remote_order_no"], forward["cost_cents"],
            forward["attempts"], forward["last_error"]) == ("delivered", False, "UP0001", 160, 1, None)
    assert dock.stock_keys(ours) == {"UP-KEY-1": "sold", "UP-KEY-2": "sold"}
    # Done: never asked again.
    dock.forward(seconds(t0, 3600))
    assert len(dock.up.requests) == 3   # products, balance, the order


def test_no_answer_is_retried_with_the_same_key_and_bought_once(dock):
    ours = mapped(dock)
    order = dock.buy(ours)
    dock.up.script("POST", "/orders", CLOSE, (502, b"bad gateway"), Stall(),
                   delivered(["ONCE-1"], order_no="UP-R"))
    t0 = start()
    assert dock.forward(t0)["no_answer"] == 1                 # the connection closed without a word
    first = dock.forward_of(order["order_no"])
    assert (first["status"], first["uncertain"], first["attempts"]) == ("pending", True, 1)
    assert dock.forward(seconds(t0, 4))["no_answer"] == 0     # not due yet (5 s)
    assert dock.forward(seconds(t0, 6))["no_answer"] == 1     # a 502
    assert "HTTP 502" in dock.forward_of(order["order_no"])["last_error"]
    assert dock.forward(seconds(t0, 15))["no_answer"] == 0    # 10 s after the last try
    began = time.monotonic()
    assert dock.forward(seconds(t0, 17))["no_answer"] == 1    # the answer came too late
    assert time.monotonic() - began < STALL_SECONDS
    assert "timed out" in dock.forward_of(order["order_no"])["last_error"]
    assert dock.order(order["order_no"])["status"] == "paid"
    assert dock.forward(seconds(t0, 40))["delivered"] == 1
    posts = dock.up.calls("POST", "/orders")
    assert len(posts) == 4
    assert {p["idempotency_key"] for p in posts} == {f"kamengd-order:{order['order_no']}"}
    assert {p["raw"] for p in posts} == {posts[0]["raw"]}
    done = dock.forward_of(order["order_no"])
    assert (done["status"], done["uncertain"], done["attempts"], done["remote_order_no"]) == \
           ("delivered", False, 4, "UP-R")
    assert dock.buyer_view(order)["keys"] == ["ONCE-1"]
    dock.forward(seconds(t0, 4000))
    assert len(dock.up.calls("POST", "/orders")) == 4


def test_refused_orders_wait_paid_flagged_and_are_tried_again(dock):
    ours = mapped(dock)
    order = dock.buy(ours)
    dock.up.script("POST", "/orders", refused(409, "out_of_stock", "not enough stock"),
                   refused(402, "insufficient_balance", "balance too low"),
                   refused(402, "insufficient_balance", "balance too low"),
                   delivered(["LATE-1"]))
    t0 = start()
    assert dock.forward(t0)["refused"] == 1
    state = dock.order(order["order_no"])
    assert state["status"] == "paid" and state["flagged_at"] is not None
    assert "out_of_stock" in state["flag_reason"] and dock.name in state["flag_reason"]
    stuck = dock.events("order.stuck", order_no=order["order_no"])
    assert len(stuck) == 1 and "out_of_stock" in stuck[0]["reason"]
    forward = dock.forward_of(order["order_no"])
    assert (forward["status"], forward["uncertain"]) == ("pending", False)
    assert "out_of_stock" in forward["last_error"]
    retry = forwarding.REFUSED_RETRY_SECONDS
    assert dock.forward(seconds(t0, retry - 1))["refused"] == 0
    assert len(dock.up.calls("POST", "/orders")) == 1
    t1 = seconds(t0, retry + 1)
    assert dock.forward(t1)["refused"] == 1                   # 402: our balance there is low
    assert [e.get("order_no") for e in dock.events("supplier.low_balance", supplier=dock.name)] == \
           [order["order_no"]]
    assert dock.supplier()["low_balance_warned"] is True
    assert len(dock.events("order.stuck", order_no=order["order_no"])) == 1   # flagged once
    assert dock.forward(seconds(t1, retry - 1))["refused"] == 0
    t2 = seconds(t1, retry + 1)
    assert dock.forward(t2)["refused"] == 1
    assert len(dock.events("supplier.low_balance", supplier=dock.name)) == 1  # said once
    assert dock.forward(seconds(t2, retry + 1))["delivered"] == 1
    posts = dock.up.calls("POST", "/orders")
    assert len(posts) == 4 and {p["idempotency_key"] for p in posts} == {f"kamengd-order:{order['order_no']}"}
    state = dock.order(order["order_no"])
    assert (state["status"], state["keys"], state["flagged_at"]) == ("delivered", ["LATE-1"], None)


def test_rate_limited_is_retried_soon_and_not_flagged(dock):
    ours = mapped(dock)
    order = dock.buy(ours)
    dock.up.script("POST", "/orders", refused(429, "rate_limited"), delivered(["RL-1"]))
    t0 = start()
    assert dock.forward(t0)["refused"] == 1
    assert dock.order(order["order_no"])["flagged_at"] is None
    assert dock.forward(seconds(t0, forwarding.BUSY_RETRY_SECONDS + 1))["delivered"] == 1


def test_an_upstream_paid_order_is_polled_until_delivered(dock):
    ours = mapped(dock)
    order = dock.buy(ours)
    dock.up.script("POST", "/orders", (201, {"order_no": "UPW1", "status": "paid", "amount": "0.80",
                                             "quantity": 1, "product_id": 1}))
    dock.up.script("GET", "/orders/UPW1", (200, {"order_no": "UPW1", "status": "paid", "amount": "0.80"}),
                   (200, {"order_no": "UPW1", "status": "delivered", "amount": "0.80", "keys": ["WAITED-1"]}))
    t0 = start()
    assert dock.forward(t0)["waiting"] == 1
    forward = dock.forward_of(order["order_no"])
    assert (forward["status"], forward["remote_order_no"], forward["cost_cents"], forward["uncertain"]) == \
           ("waiting", "UPW1", 80, False)
    poll = forwarding.POLL_SECONDS
    assert dock.forward(seconds(t0, poll - 1))["waiting"] == 0
    assert dock.forward(seconds(t0, poll + 1))["waiting"] == 1
    assert dock.forward(seconds(t0, 2 * poll + 2))["delivered"] == 1
    assert [(r["method"], r["path"]) for r in dock.up.requests[2:]] == [
        ("POST", "/api/v1/agent/orders"), ("GET", "/api/v1/agent/orders/UPW1"), ("GET", "/api/v1/agent/orders/UPW1")]
    assert dock.buyer_view(order)["keys"] == ["WAITED-1"]
    assert dock.forward_of(order["order_no"])["status"] == "delivered"


def test_the_wrong_number_of_keys_delivers_nothing(dock):
    ours = mapped(dock)
    order = dock.buy(ours, 2)
    dock.up.script("POST", "/orders", delivered(["ONLY-ONE"]))
    assert dock.forward(start())["refused"] == 1
    state = dock.order(order["order_no"])
    assert (state["status"], state["keys"]) == ("paid", [])
    assert state["flagged_at"] is not None and "bad_answer" in state["flag_reason"]
    assert dock.stock_keys(ours) == {}


def test_a_key_sold_twice_upstream_is_not_delivered_twice(dock):
    ours = mapped(dock)
    first, second = dock.buy(ours), dock.buy(ours)
    dock.up.script("POST", "/orders", delivered(["TWICE-1"]))
    t0 = start()
    counts = dock.forward(t0)
    assert (counts["delivered"], counts["refused"]) == (1, 1), counts
    states = {o["order_no"]: dock.order(o["order_no"]) for o in (first, second)}
    assert sorted(s["status"] for s in states.values()) == ["delivered", "paid"]
    waiting = next(s for s in states.values() if s["status"] == "paid")
    assert waiting["flagged_at"] is not None and "already in stock or sold" in waiting["flag_reason"]
    assert dock.stock_keys(ours) == {"TWICE-1": "sold"}
    # Its forward is done (the supplier did sell it a key): staff take over; nothing is bought again.
    dock.forward(seconds(t0, 3600))
    assert len(dock.up.calls("POST", "/orders")) == 2


def test_refunded_while_refused_is_cancelled_and_never_sent_again(dock):
    ours = mapped(dock)
    order = dock.buy(ours)
    dock.up.script("POST", "/orders", refused(409, "out_of_stock"), delivered(["NEVER-1"]))
    t0 = start()
    assert dock.forward(t0)["refused"] == 1
    dock.refund(order["order_no"])
    assert dock.forward(seconds(t0, 10_000))["cancelled"] == 1
    forward = dock.forward_of(order["order_no"])
    assert forward["status"] == "cancelled" and "refunded" in forward["last_error"]
    dock.forward(seconds(t0, 20_000))
    assert len(dock.up.calls("POST", "/orders")) == 1 and dock.up.calls("GET", "/orders") == []
    assert dock.order(order["order_no"])["status"] == "refunded"


def test_refunded_while_uncertain_and_the_upstream_holds_nothing(dock):
    ours = mapped(dock)
    order = dock.buy(ours)
    dock.up.script("POST", "/orders", CLOSE)
    dock.up.script("GET", "/orders", (200, {"orders": []}))
    t0 = start()
    assert dock.forward(t0)["no_answer"] == 1
    dock.refund(order["order_no"])
    assert dock.forward(seconds(t0, 1))["cancelled"] == 0     # not due: it is asked, not given up on
    assert dock.forward(seconds(t0, 10))["cancelled"] == 1
    [asked] = dock.up.calls("GET", "/orders")
    assert asked["query"] == {"idempotency_key": f"kamengd-order:{order['order_no']}"}
    assert asked["raw"] == b""
    forward = dock.forward_of(order["order_no"])
    assert forward["status"] == "cancelled" and "holds no order" in forward["last_error"]
    dock.forward(seconds(t0, 10_000))
    assert len(dock.up.calls("POST", "/orders")) == 1 and len(dock.up.calls("GET", "/orders")) == 1


def test_refunded_while_uncertain_and_the_upstream_delivered_keeps_the_keys(dock):
    ours = mapped(dock)
    order = dock.buy(ours, 2)
    dock.up.script("POST", "/orders", Stall(then=delivered(["KEPT-1", "KEPT-2"], order_no="UPK")))
    dock.up.script("GET", "/orders", (200, {"orders": [
        {"order_no": "UPK", "status": "delivered", "amount": "1.60", "quantity": 2, "product_id": 1,
         "keys": ["KEPT-1", "KEPT-2"], "ref": order["order_no"]}]}))
    t0 = start()
    assert dock.forward(t0)["no_answer"] == 1
    dock.refund(order["order_no"])
    assert dock.forward(seconds(t0, 10))["delivered"] == 1
    assert dock.stock_keys(ours) == {"KEPT-1": "available", "KEPT-2": "available"}
    assert dock.order(order["order_no"])["status"] == "refunded"
    forward = dock.forward_of(order["order_no"])
    assert (forward["status"], forward["remote_order_no"], forward["cost_cents"], forward["uncertain"]) == \
           ("delivered", "UPK", 160, False)
    assert "kept as stock" in forward["last_error"]
    assert len(dock.up.calls("POST", "/orders")) == 1


def test_an_uncertain_forward_stays_uncertain_through_a_rate_limit(dock):
    """A 429 (or 401) says nothing of whether the first try placed the order: a refund must
    still ask the upstream before giving up on it."""
    ours = mapped(dock)
    order = dock.buy(ours)
    dock.up.script("POST", "/orders", CLOSE, refused(429, "rate_limited"))
    dock.up.script("GET", "/orders", (200, {"orders": [
        {"order_no": "UPL", "status": "delivered", "amount": "0.80", "keys": ["LIMITED-1"]}]}))
    t0 = start()
    assert dock.forward(t0)["no_answer"] == 1
    assert dock.forward(seconds(t0, 6))["refused"] == 1
    assert dock.forward_of(order["order_no"])["uncertain"] is True
    dock.refund(order["order_no"])
    assert dock.forward(seconds(t0, 600))["delivered"] == 1
    assert len(dock.up.calls("GET", "/orders")) == 1
    assert dock.stock_keys(ours) == {"LIMITED-1": "available"}


# --- 7. the commands ---------------------------------------------------------------------------

def test_supplier_commands(dock, installed, tmp_path):
    config = installed.path

    def cli(*args):
        proc = run_cli("supplier", *args, "--json", config=config)
        assert proc.returncode == 0, proc.err
        return json.loads(proc.out)

    # A secret file that is not there: one line, nothing stored.
    proc = run_cli("supplier", "add", "--url", dock.up.base, "--key-id", dock.up.key_id, "--secret-file",
                   tmp_path / "missing", "--name", dock.name, config=config)
    assert_one_line_error(proc, "cannot read password file")
    with dock.ctx() as (db, _vault):
        assert db.session.scalar(sa.select(Supplier.id).where(Supplier.name == dock.name)) is None
    assert dock.up.requests == []

    # Added and synced by a real process, signing as the upstream expects.
    secret_file = tmp_path / "secret"
    secret_file.write_text(dock.up.secret + "\n")
    dock.offer(item(1, price="0.80", stock=4), balance="20.00")
    dock.names.append(dock.name)
    added = cli("add", "--url", dock.up.base, "--key-id", dock.up.key_id, "--secret-file", secret_file,
                "--name", dock.name, "--low-balance", "5")
    assert added["sync"] == {"products": 1, "new": 1, "gone": 0, "repriced": 0}
    assert (added["name"], added["url"], added["balance"], added["low_balance"], added["active"]) == \
           (dock.name, dock.up.base, "20.00", "5.00", True)

    listed = {s["name"]: s for s in cli("list")["suppliers"]}
    assert set(listed[dock.name]) == {"id", "name", "url", "key_id", "active", "balance", "currency",
                                      "low_balance", "synced_at", "last_error"}
    mine = listed[dock.name]
    assert (mine["key_id"], mine["currency"], mine["last_error"]) == (dock.up.key_id, "CNY", None)
    assert mine["synced_at"].endswith("Z")
    assert dock.up.secret not in json.dumps(listed) and dock.up.secret not in json.dumps(added)

    proc = run_cli("supplier", "map", "--name", dock.name, "--remote-product", "1", "--create", "x",
                   "--markup-fixed", "1", "--markup-percent", "5", config=config)
    assert_one_line_error(proc, "either a fixed amount or a percentage")
    assert dock.rows()[1]["product_id"] is None

    mapped_ = cli("map", "--name", dock.name, "--remote-product", "1", "--create", f"转售 {dock.tag}",
                  "--markup-percent", "12.5")
    assert (mapped_["cost"], mapped_["price"], mapped_["stock"], mapped_["markup"]) == ("0.80", "0.90", 4,
                                                                                       "+12.50 %")
    order = dock.buy(mapped_["product_id"])
    dock.up.script("POST", "/orders", delivered(["CLI-1"], order_no="UPC", amount="0.80"))
    assert dock.forward(start())["delivered"] == 1
    rows = cli("orders", "--name", dock.name)["orders"]
    assert rows == [{"order_no": order["order_no"], "order_status": "delivered", "status": "delivered",
                     "attempts": 1, "uncertain": False, "remote_order_no": "UPC", "cost": "0.80",
                     "last_error": None, "next_attempt_at": rows[0]["next_attempt_at"]}]
    assert rows[0]["next_attempt_at"].endswith("Z")
    assert cli("orders", "--name", dock.name, "--problems")["orders"] == []


def test_suppliers_keys_and_agents_2fa_follow_a_key_rotation(backend, make_install):
    """A supplier's sealed key and an agent's 2FA secret keep their key version in use, are
    sealed again by the rotation, and still open once the old version is retired (else the
    retire job would leave every supplier order unsendable and the agent locked out)."""
    from kamengd.accounts import auth
    from kamengd.agents import services as agent_services
    from kamengd.agents.models import Agent
    from kamengd.app import create_app
    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.operations.rotation import retire_unused, rotate, versions_in_use
    from kamengd.suppliers import services as suppliers_services
    from kamengd.suppliers.models import Supplier

    cfg = make_install(backend)
    application = create_app(cfg)
    key_file = cfg.security.data_key_file
    secret = "upstream-secret-" + "x" * 20
    with application.app_context():
        supplier = suppliers_services.add_supplier(db.session, get_vault(), name="rotated", url="http://127.0.0.1:9",
                                                   key_id="ak_rot", secret=secret, actor="t")
        level, _ = agent_services.set_level(db.session, name="rot", discount="1", actor="t")
        agent = agent_services.create_agent(db.session, username="rot-agent", level=level.name, actor="t")
        totp = auth.start_enrolment(db.session, get_vault(), agent)
        db.session.commit()
        used = versions_in_use(db.session)[1]
        db.session.execute(sa.delete(Supplier))
        assert versions_in_use(db.session)[1] == used - 1          # the supplier's key counts
        db.session.rollback()
        rotate(db.session, key_file)
        db.session.commit()
        assert retire_unused(db.session, key_file)[0] == [1]
        row = db.session.get(Supplier, supplier.id)
        assert row.secret_key_version == 2
        assert suppliers_services.client_for(row, get_vault()).secret == secret
        stored = db.session.get(Agent, agent.id)
        assert stored.totp_key_version == 2 and auth.totp_secret(get_vault(), stored) == totp
        db.session.remove()
        db.engine.dispose()


def test_an_order_the_supplier_never_answers_for_is_flagged_after_the_stock_wait(dock):
    """The supplier down for good (no answer, never a refusal that flags): the sweep that flags
    stuck orders flags it after orders.stock_wait_alert_minutes, with the supplier's words."""
    from kamengd.orders.attention import flag_stuck_orders
    from kamengd.settings.services import get_setting

    ours = mapped(dock)
    order = dock.buy(ours)
    dock.up.script("POST", "/orders", CLOSE)
    t0 = start()
    assert dock.forward(t0)["no_answer"] == 1
    with dock.ctx() as (db, _vault):
        wait = get_setting(db.session, "orders.stock_wait_alert_minutes")
        flag_stuck_orders(db.session, now=seconds(t0, 60 * wait + 60))
        db.session.commit()
    view = dock.order(order["order_no"])
    assert view["status"] == "paid"
    with dock.ctx() as (db, _vault):
        from kamengd.orders.models import Order
        row = db.session.scalars(sa.select(Order).where(Order.order_no == order["order_no"])).one()
        assert row.flag_reason.startswith("paid and not bought from the supplier for over")

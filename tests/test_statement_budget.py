"""Statements per request on the purchase path: each of its three requests has a budget.

Counted with SQLAlchemy's before_cursor_execute on the app's engine (BEGIN
IMMEDIATE is a statement too; COMMIT is not sent through a cursor). A change
that makes the hot path read a row twice, or slips the ORM's reload back in,
fails here — not in a timed test.
"""
import hashlib
import secrets
from contextlib import contextmanager
from urllib.parse import urlencode

import pytest
from sqlalchemy import event

from conftest import epay_shop
from kamengd.payments import epay

KEY = "budget-merchant-key-0123456789"
# The product and channel are read once per process (the offer), then checked by the INSERT itself.
# SQLite: BEGIN IMMEDIATE, INSERT ... SELECT, UPDATE. MySQL: no BEGIN statement; INSERT ... SELECT,
# SELECT ... FOR UPDATE SKIP LOCKED, UPDATE.
ORDER_BUDGET = {"sqlite": 3, "mysql": 3}
# SQLite: BEGIN and SELECT (order, channel nonce, product, payment of the trade) in a snapshot; then
# BEGIN IMMEDIATE, sell the keys, UPDATE order, INSERT payment, INSERT events, INSERT mail.
# MySQL: SELECT ... FOR UPDATE (the order), SELECT (the rest), the same five writes.
CALLBACK_BUDGET = {"sqlite": 8, "mysql": 7}
# BEGIN (a snapshot, no write lock), SELECT the order with its keys.
LOOKUP_BUDGET = {"sqlite": 2, "mysql": 1}


@pytest.fixture
def shop(app):
    return epay_shop(app, name="budget", price_cents=500, keys=[f"B-{secrets.token_hex(8)}" for _ in range(10)],
                     pid="4004", key=KEY, prefix="bud")


@contextmanager
def counted(app):
    from kamengd.extensions import db

    statements = []
    with app.app_context():
        engine = db.engine

    def count(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement.split()[0].upper() + " " + statement[:120].replace("\n", " "))
    event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", count)


def callback(order, code_pid="4004"):
    params = {"pid": code_pid, "trade_no": f"T{order['order_no']}", "out_trade_no": order["order_no"],
              "type": "alipay", "name": "budget", "money": order["amount"], "trade_status": "TRADE_SUCCESS"}
    params["sign"] = hashlib.md5((epay.signing_string(params) + KEY).encode()).hexdigest()
    params["sign_type"] = "MD5"
    return params


def purchase(client, shop, i):
    order = client.post("/api/v1/orders", json={"product_id": shop["id"], "quantity": 1,
                                               "email": f"b{i}@example.com", "channel": shop["channel"]})
    assert order.status_code == 201, order.get_json()
    return order.get_json()


def assert_writes_only_under_the_lock(statements, backend):
    """SQLite: the write lock is held for writes alone, every read came before BEGIN IMMEDIATE."""
    if backend != "sqlite":
        return
    begin = next(i for i, s in enumerate(statements) if "BEGIN IMMEDIATE" in s)
    assert not [s for s in statements[begin:] if s.split()[0] == "SELECT"], statements


def test_purchase_path_statement_budgets(app, client, shop, backend):
    # The first purchase of a process fills its caches (the channel's key): not counted.
    first = purchase(client, shop, 0)
    assert client.get(f"/pay/{shop['channel']}/notify?{urlencode(callback(first))}").data == b"success"

    with counted(app) as statements:
        order = purchase(client, shop, 1)
    assert len(statements) <= ORDER_BUDGET[backend], statements
    assert_writes_only_under_the_lock(statements, backend)

    with counted(app) as statements:
        answer = client.get(f"/pay/{shop['channel']}/notify?{urlencode(callback(order))}")
    assert answer.data == b"success"
    assert len(statements) <= CALLBACK_BUDGET[backend], statements

    assert_writes_only_under_the_lock(statements, backend)

    with counted(app) as statements:
        view = client.get(f"/api/v1/orders/{order['order_no']}?token={order['token']}").get_json()
    assert view["status"] == "delivered" and len(view["keys"]) == 1
    assert len(statements) <= LOOKUP_BUDGET[backend], statements


def test_forged_callback_writes_nothing(app, client, shop, backend):
    """A bad signature is refused before any write transaction: no BEGIN IMMEDIATE, no lock."""
    first = purchase(client, shop, 0)
    assert client.get(f"/pay/{shop['channel']}/notify?{urlencode(callback(first))}").data == b"success"
    order = purchase(client, shop, 1)
    forged = {**callback(order), "sign": "0" * 32}
    with counted(app) as statements:
        assert client.get(f"/pay/{shop['channel']}/notify?{urlencode(forged)}").data != b"success"
    assert statements == [], statements


def test_order_without_query_password_hashes_nothing_under_the_lock(app, client, shop, backend, monkeypatch):
    """The query password is hashed before the write transaction begins."""
    import kamengd.orders.checkout as checkout
    from kamengd.extensions import db

    seen = []
    real_hash = checkout.hash_password

    def spying_hash(password):   # runs inside the request: db.session is the request's session
        seen.append(db.session().in_transaction())
        return real_hash(password)
    monkeypatch.setattr(checkout, "hash_password", spying_hash)
    body = {"product_id": shop["id"], "quantity": 1, "email": "pw@example.com", "channel": shop["channel"],
            "query_password": "secret-pw"}
    assert client.post("/api/v1/orders", json=body).status_code == 201
    assert seen == [False]

"""Missed callbacks (掉单): the job asks a (local, fake) Epay gateway and completes paid orders once."""
import datetime as dt
import functools
import secrets

import pytest
import sqlalchemy as sa

from fake_epay import FakeEpay
from kamengd.inventory.models import CardKey
from kamengd.orders.services import create_order, order_keys
from kamengd.payments.models import Payment
from kamengd.payments.reconcile import query_epay_order, reconcile_pending
from kamengd.payments.callbacks import handle_epay_notify
from kamengd.payments.services import add_channel
from test_orders import callback

PID, KEY = "1001", "merchant-key-123"


@pytest.fixture
def gateway():
    with FakeEpay(PID, KEY) as gw:
        yield gw


@pytest.fixture
def shop(session, vault, make_product, make_keys, gateway):
    p = make_product(price_cents=990)
    make_keys(p, 3)
    ch = add_channel(session, vault, channel_type="epay", code=f"rc{secrets.token_hex(3)}", actor="t",
                     options={"gateway": gateway.url, "pid": PID, "key": KEY})
    return p, ch


def place(session, shop, minutes_ago=2):
    p, ch = shop
    created = dt.datetime.utcnow() - dt.timedelta(minutes=minutes_ago)
    return create_order(session, product_id=p.id, quantity=1, email="b@example.com", channel_code=ch.code,
                        now=created).order


def reconcile(session, vault, **kw):
    kw.setdefault("query", functools.partial(query_epay_order, timeout=1))
    return reconcile_pending(session, vault, **kw)


def test_a_missed_callback_is_completed_once(backend, session, vault, shop, gateway):
    order = place(session, shop)
    young = place(session, shop, minutes_ago=0)
    gateway.paid[order.order_no] = "9.90"
    gateway.paid[young.order_no] = "9.90"
    counts = reconcile(session, vault)
    assert counts["completed"] >= 1 and young.order_no not in gateway.queries  # too young to ask
    session.refresh(order)
    assert order.status == "delivered" and len(order_keys(session, vault, order)) == 1
    # The late callback for the same trade answers success and delivers nothing more.
    late = callback(order, trade_no=f"GW{order.order_no}")
    assert handle_epay_notify(session, vault, shop[1].code, late).recorded
    assert session.scalar(sa.select(sa.func.count()).select_from(Payment).where(Payment.order_id == order.id)) == 1
    assert session.scalar(sa.select(sa.func.count()).select_from(CardKey).where(CardKey.order_id == order.id)) == 1
    gateway.queries.clear()
    reconcile(session, vault)
    assert order.order_no not in gateway.queries  # delivered: never asked again


def test_unpaid_orders_are_asked_again_with_backoff(backend, session, vault, shop, gateway):
    order = place(session, shop, minutes_ago=4)
    now = dt.datetime.utcnow()
    reconcile(session, vault, now=now)
    session.refresh(order)
    assert order.status == "pending" and order.next_check_at >= now + dt.timedelta(minutes=2)
    gateway.queries.clear()
    reconcile(session, vault, now=now + dt.timedelta(minutes=1))
    assert order.order_no not in gateway.queries
    reconcile(session, vault, now=now + dt.timedelta(minutes=3))
    assert order.order_no in gateway.queries


@pytest.mark.parametrize("mode", ["error", "garbage", "slow", "down"])
def test_gateway_trouble_changes_nothing(backend, session, vault, shop, gateway, mode):
    order = place(session, shop)
    gateway.paid[order.order_no] = "9.90"
    if mode == "down":
        gateway.server.shutdown()
        gateway.server.server_close()
    else:
        gateway.mode = mode
    counts = reconcile(session, vault)
    session.refresh(order)
    assert counts["errors"] >= 1 and order.status == "pending" and order.next_check_at is not None


def test_wrong_amount_or_foreign_answer_does_not_complete(backend, session, vault, shop, gateway):
    order = place(session, shop)
    gateway.paid[order.order_no] = "0.01"
    reconcile(session, vault)
    session.refresh(order)
    assert order.status == "pending"


def test_a_late_payment_on_an_expired_order_is_found(backend, session, vault, shop, gateway):
    from kamengd.orders.services import expire_orders

    order = place(session, shop, minutes_ago=15)
    expire_orders(session)
    session.refresh(order)
    assert order.status == "expired"
    gateway.paid[order.order_no] = "9.90"
    reconcile(session, vault)
    session.refresh(order)
    assert order.status == "delivered"

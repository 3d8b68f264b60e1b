"""Paid orders that wait: retried with backoff, flagged for staff once; low-stock warnings once per crossing."""
import dataclasses
import datetime as dt
import json
import secrets

import pytest
import sqlalchemy as sa

from conftest import run_cli
from kamengd.inventory.warnings import check_low_stock
from kamengd.notifications.email import MAX_ATTEMPTS, send_due_emails
from kamengd.notifications.models import Event
from kamengd.orders.attention import DELIVERY_BACKOFF_SECONDS, flag_stuck_orders, retry_waiting_deliveries
from kamengd.orders.models import Order
from kamengd.orders.services import create_order, deliver_manually, expire_orders
from kamengd.payments.callbacks import handle_epay_notify
from kamengd.payments.services import add_channel
from kamengd.settings.services import set_setting
from test_orders import KEY, callback


@pytest.fixture
def channel(session, vault):
    return add_channel(session, vault, channel_type="epay", code=f"a{secrets.token_hex(3)}", actor="t",
                       options={"gateway": "http://g", "pid": "1001", "key": KEY})


def events(session, event_type, since=0):
    return [json.loads(e.payload) for e in session.scalars(
        sa.select(Event).where(Event.type == event_type, Event.id > since).order_by(Event.id))]


def last_event_id(session):
    return session.scalar(sa.select(sa.func.max(Event.id))) or 0


def paid_and_waiting(session, vault, product, channel, now):
    """An order paid after its reservation lapsed and the stock went elsewhere: it waits."""
    order = create_order(session, product_id=product.id, quantity=1, email="w@example.com",
                         channel_code=channel.code, now=now).order
    expire_orders(session, now=order.expires_at + dt.timedelta(seconds=1))
    session.execute(sa.text("UPDATE card_keys SET status = 'void' WHERE product_id = :p AND status = 'available'"),
                    {"p": product.id})
    assert handle_epay_notify(session, vault, channel.code, callback(order), now=now).recorded
    session.refresh(order)
    assert order.status == "paid"
    return order


def test_waiting_orders_back_off_then_deliver_when_stock_comes(backend, session, vault, make_product, make_keys,
                                                               channel):
    p = make_product()
    make_keys(p, 1)
    now = dt.datetime.utcnow()
    order = paid_and_waiting(session, vault, p, channel, now)
    tries = []
    for step in range(len(DELIVERY_BACKOFF_SECONDS) + 1):
        counts = retry_waiting_deliveries(session, now=now)
        session.refresh(order)
        assert counts["waiting"] >= 1 and order.status == "paid"
        tries.append((order.next_delivery_at - now).total_seconds())
        # Not due before its time: the sweep leaves it alone.
        assert retry_waiting_deliveries(session, now=now + dt.timedelta(seconds=tries[-1] - 1))["waiting"] == 0
        now = order.next_delivery_at
    assert tries == [*DELIVERY_BACKOFF_SECONDS, DELIVERY_BACKOFF_SECONDS[-1]]
    assert order.delivery_attempts == len(DELIVERY_BACKOFF_SECONDS) + 1
    # An import serves it at once, whatever the backoff says; the flag and the backoff are cleared.
    make_keys(p, ["NEW-KEY-1"])
    session.refresh(order)
    assert order.status == "delivered" and order.next_delivery_at is None


def test_the_sweep_delivers_when_stock_appears_without_an_import(backend, session, vault, make_product,
                                                                 make_keys, channel):
    p = make_product()
    make_keys(p, 1)
    now = dt.datetime.utcnow()
    order = paid_and_waiting(session, vault, p, channel, now)
    retry_waiting_deliveries(session, now=now)
    session.execute(sa.text("UPDATE card_keys SET status = 'available' WHERE product_id = :p AND status = 'void'"),
                    {"p": p.id})
    assert retry_waiting_deliveries(session, now=now + dt.timedelta(seconds=1))["delivered"] == 0  # backing off
    assert retry_waiting_deliveries(session, now=order.next_delivery_at)["delivered"] == 1
    session.refresh(order)
    assert order.status == "delivered"


def test_one_failing_product_does_not_stop_the_sweep(backend, session, vault, make_product, make_keys, channel,
                                                     monkeypatch):
    import kamengd.orders.attention as attention

    broken, fine = make_product(name="broken"), make_product(name="fine")
    make_keys(broken, 1)
    make_keys(fine, 1)
    now = dt.datetime.utcnow()
    a = paid_and_waiting(session, vault, broken, channel, now)
    b = paid_and_waiting(session, vault, fine, channel, now)
    session.execute(sa.text("UPDATE card_keys SET status = 'available' WHERE product_id IN (:a, :b) "
                            "AND status = 'void'"), {"a": broken.id, "b": fine.id})
    real = attention.deliver_waiting_orders

    def deliver(session_, product_id, limit=1000):   # fault injection: one product's delivery raises
        if product_id == broken.id:
            raise RuntimeError("disk on fire")
        return real(session_, product_id, limit)
    monkeypatch.setattr(attention, "deliver_waiting_orders", deliver)
    counts = retry_waiting_deliveries(session, now=now)
    assert counts["errors"] == 1 and counts["delivered"] == 1
    session.refresh(a)
    session.refresh(b)
    assert (a.status, b.status) == ("paid", "delivered")


def test_stuck_orders_are_flagged_once_and_cleared_by_delivery(backend, session, vault, make_product, make_keys,
                                                               channel):
    set_setting(session, "orders.stock_wait_alert_minutes", "20", actor="t")
    set_setting(session, "orders.manual_sla_minutes", "45", actor="t")
    auto = make_product(name="auto")
    make_keys(auto, 1)
    manual = make_product(name="manual", delivery_mode="manual")
    now = dt.datetime.utcnow()
    waiting = paid_and_waiting(session, vault, auto, channel, now)
    by_hand = create_order(session, product_id=manual.id, quantity=1, email="m@example.com",
                           channel_code=channel.code, now=now).order
    handle_epay_notify(session, vault, channel.code, callback(by_hand), now=now)
    since = last_event_id(session)
    nothing = {"waiting_for_stock": 0, "manual_past_sla": 0, "supplier_not_bought": 0}
    assert flag_stuck_orders(session, now=now + dt.timedelta(minutes=19)) == nothing
    counts = flag_stuck_orders(session, now=now + dt.timedelta(minutes=21))
    assert counts == {"waiting_for_stock": 1, "manual_past_sla": 0, "supplier_not_bought": 0}
    counts = flag_stuck_orders(session, now=now + dt.timedelta(minutes=46))
    assert counts == {"waiting_for_stock": 0, "manual_past_sla": 1,    # each order flagged once
                      "supplier_not_bought": 0}
    assert flag_stuck_orders(session, now=now + dt.timedelta(hours=5)) == nothing
    stuck = events(session, "order.stuck", since)
    assert [e["order_no"] for e in stuck] == [waiting.order_no, by_hand.order_no]
    assert "20 minutes" in stuck[0]["reason"] and "45 minutes" in stuck[1]["reason"]
    session.refresh(waiting)
    assert waiting.flagged_at is not None and "waiting for stock" in waiting.flag_reason
    deliver_manually(session, vault, order_no=by_hand.order_no, keys=["HAND-1"], actor="t")
    session.refresh(by_hand)
    assert by_hand.status == "delivered" and by_hand.flagged_at is None and by_hand.flag_reason is None


def test_a_mail_that_never_goes_out_flags_the_order(backend, session, vault, installed, make_product, make_keys,
                                                    channel):
    p = make_product()
    make_keys(p, 1)
    order = create_order(session, product_id=p.id, quantity=1, email="lost@example.com",
                         channel_code=channel.code).order
    handle_epay_notify(session, vault, channel.code, callback(order))
    config = dataclasses.replace(installed, smtp=dataclasses.replace(installed.smtp, host="127.0.0.1", port=1,
                                                                     security="none", timeout_seconds=1))
    since = last_event_id(session)
    now = dt.datetime.utcnow()
    for _ in range(MAX_ATTEMPTS):
        send_due_emails(session, vault, config, now=now)
        now += dt.timedelta(days=1)
    session.refresh(order)
    assert order.status == "delivered" and order.flag_reason.startswith(f"delivery mail failed {MAX_ATTEMPTS} times")
    # Other tests' committed orders may have pending mails too: look at this order's events.
    mine = [e["order_no"] for e in events(session, "order.stuck", since) if e["order_no"] == order.order_no]
    assert mine == [order.order_no]


def test_low_stock_warns_once_per_crossing(backend, session, vault, make_product, make_keys, channel):
    p = make_product(low_stock_threshold=3)
    quiet = make_product(name="no threshold")
    make_keys(quiet, 1)
    make_keys(p, 4)
    since = last_event_id(session)

    def buy():
        create_order(session, product_id=p.id, quantity=1, email="s@example.com", channel_code=channel.code)

    assert check_low_stock(session)["low"] == 0          # 4 >= 3
    buy()                                                  # 3 left: at the threshold, not below
    assert check_low_stock(session)["low"] == 0
    buy()                                                  # 2 left: below
    assert check_low_stock(session)["low"] == 1
    buy()                                                  # 1 left: still below, no repeat
    assert check_low_stock(session)["low"] == 0 and check_low_stock(session)["low"] == 0
    make_keys(p, ["R1", "R2"])                             # 3: restocked
    assert check_low_stock(session)["restocked"] == 1
    buy()                                                  # 2: below again, a new warning
    assert check_low_stock(session)["low"] == 1
    low = events(session, "stock.low", since)
    assert [(e["product_id"], e["available"], e["threshold"]) for e in low] == [(p.id, 2, 3), (p.id, 2, 3)]
    assert [e["available"] for e in events(session, "stock.restocked", since)] == [3]
    session.refresh(p)
    assert p.low_stock_alerted


def test_flagged_orders_command(backend, make_install):
    cfg = make_install(backend)
    assert json.loads(run_cli("order", "flagged", "--json", config=cfg.path, check=True).out) == {"orders": []}
    assert run_cli("order", "flagged", config=cfg.path, check=True).out.strip() == "no flagged orders"

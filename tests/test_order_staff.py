"""Staff actions on orders (kamengd.orders.staff) as plain functions, on every backend."""
import datetime as dt
import json
import secrets
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from kamengd.audit.models import AuditEntry
from kamengd.errors import Conflict, InvalidRequest, NotFound
from kamengd.notifications.models import EmailOutbox, Event
from kamengd.orders import staff
from kamengd.orders.models import Order
from kamengd.orders.services import create_order, expire_orders, order_keys
from kamengd.payments.models import Payment
from kamengd.payments.callbacks import handle_epay_notify
from kamengd.payments.services import add_channel
from test_orders import KEY, callback, key_statuses

ACTOR = "staff:tester"


@pytest.fixture
def channel(session, vault):
    return add_channel(session, vault, channel_type="epay", code=f"s{secrets.token_hex(3)}", actor="t",
                       options={"gateway": "http://127.0.0.1:9", "pid": "1001", "key": KEY})


def new_order(session, product, channel, quantity=1, email=None, now=None):
    return create_order(session, product_id=product.id, quantity=quantity, channel_code=channel.code,
                        email=email or f"b{secrets.token_hex(3)}@example.com", now=now).order


def pay(session, vault, order, channel, money=None, now=None):
    assert handle_epay_notify(session, vault, channel.code, callback(order, money=money), now=now).recorded
    session.refresh(order)
    return order


def held_order(session, vault, product, channel, quantity=1):
    order = pay(session, vault, new_order(session, product, channel, quantity), channel, money="0.01")
    assert order.status == "held" and order.flagged_at is not None
    return order


def audit_of(session, order, action=None):
    q = sa.select(AuditEntry).where(AuditEntry.target == f"order:{order.order_no}")
    if action:
        q = q.where(AuditEntry.action == action)
    return [(a.action, a.actor, json.loads(a.details)) for a in session.scalars(q.order_by(AuditEntry.id))]


def event_types(session, order):
    return [e.type for e in session.scalars(sa.select(Event).where(
        Event.payload.contains(f'"order_no": "{order.order_no}"')).order_by(Event.id))]


def mails(session, order):
    return session.scalars(sa.select(EmailOutbox).where(EmailOutbox.order_id == order.id)
                           .order_by(EmailOutbox.id)).all()


# --- release --------------------------------------------------------------

def test_release_delivers_a_held_order_from_its_reserved_keys(backend, session, vault, make_product, make_keys,
                                                             channel):
    p = make_product()
    keys = make_keys(p, 3)
    order = held_order(session, vault, p, channel, quantity=2)
    assert key_statuses(session, p) == {"available": 1, "reserved": 2}

    outcome = staff.release_held(session, order_no=order.order_no, reason="buyer paid 0.01, agreed",
                                 actor=ACTOR, source_ip="10.0.0.1")
    assert outcome == staff.RELEASED_DELIVERED
    assert order.status == "delivered" and order.flagged_at is None and order.flag_reason is None
    assert order_keys(session, vault, order) == keys[:2]
    assert key_statuses(session, p) == {"available": 1, "sold": 2}
    assert event_types(session, order) == ["order.held", "order.paid", "order.delivered"]
    assert [m.status for m in mails(session, order)] == ["pending"]
    [(action, who, details)] = audit_of(session, order)
    assert (action, who) == ("order.release", ACTOR)
    assert details == {"reason": "buyer paid 0.01, agreed", "paid": "0.01", "amount": "19.80",
                       "currency": "CNY", "outcome": "delivered"}
    # The payment stays as it came in (reconciliation compares it with the gateway).
    assert session.scalar(sa.select(Payment.status).where(Payment.order_id == order.id)) == "held"

    with pytest.raises(Conflict, match="is delivered; only a held order"):
        staff.release_held(session, order_no=order.order_no, reason="again", actor=ACTOR)
    assert len(audit_of(session, order)) == 1


def test_release_of_a_manual_order_waits_for_staff(backend, session, vault, make_product, channel):
    p = make_product(delivery_mode="manual")
    order = held_order(session, vault, p, channel)
    assert staff.release_held(session, order_no=order.order_no, reason="ok", actor=ACTOR) == staff.RELEASED_MANUAL
    assert order.status == "paid" and order.flagged_at is None


def test_release_without_stock_leaves_the_order_waiting(backend, session, vault, make_product, make_keys, channel):
    p = make_product()
    make_keys(p, 1)
    order = new_order(session, p, channel)
    expire_orders(session, now=order.expires_at + dt.timedelta(seconds=1))   # its key goes back on sale
    new_order(session, p, channel)                                            # and someone else takes it
    order = pay(session, vault, order, channel, money="1.00")
    assert order.status == "held" and key_statuses(session, p) == {"reserved": 1}
    assert staff.release_held(session, order_no=order.order_no, reason="ok",
                              actor=ACTOR) == staff.RELEASED_WAITING
    assert order.status == "paid" and order.flagged_at is None


@pytest.mark.parametrize("reason, message", [("", "reason: required"), ("   ", "reason: required"),
                                             ("x" * 501, "at most 500")])
def test_release_needs_a_reason(backend, session, vault, make_product, make_keys, channel, reason, message):
    p = make_product()
    make_keys(p, 1)
    order = held_order(session, vault, p, channel)
    with pytest.raises(InvalidRequest, match=message):
        staff.release_held(session, order_no=order.order_no, reason=reason, actor=ACTOR)
    session.refresh(order)
    assert order.status == "held" and order.flagged_at is not None and audit_of(session, order) == []


def test_only_held_orders_are_released(backend, session, vault, make_product, make_keys, channel):
    p = make_product()
    make_keys(p, 2)
    pending = new_order(session, p, channel)
    with pytest.raises(Conflict, match="is pending"):
        staff.release_held(session, order_no=pending.order_no, reason="x", actor=ACTOR)
    with pytest.raises(NotFound):
        staff.release_held(session, order_no="20260101" + "9" * 20, reason="x", actor=ACTOR)
    with pytest.raises(NotFound):
        staff.release_held(session, order_no="x" * 40, reason="x", actor=ACTOR)
    assert key_statuses(session, p) == {"available": 1, "reserved": 1}


# --- refund ---------------------------------------------------------------

def test_refund_of_a_held_order_puts_its_keys_back_for_a_waiting_buyer(backend, session, vault, make_product,
                                                                       make_keys, channel):
    p = make_product()
    make_keys(p, 2)
    now = dt.datetime.utcnow()
    waiting = new_order(session, p, channel, now=now - dt.timedelta(hours=2))
    held = new_order(session, p, channel, now=now)
    expire_orders(session, now=waiting.expires_at + dt.timedelta(seconds=1))   # only the older one expires
    session.execute(sa.text("UPDATE card_keys SET status = 'void' WHERE product_id = :p AND status = 'available'"),
                    {"p": p.id})
    assert pay(session, vault, waiting, channel).status == "paid"                # paid late: waits for stock
    assert pay(session, vault, held, channel, money="0.50").status == "held"

    result = staff.refund_order(session, order_no=held.order_no, reason="buyer asked", actor=ACTOR,
                                source_ip="10.0.0.2")
    assert (result.previous_status, result.keys_released, result.keys_sold) == ("held", 1, 0)
    assert held.status == "refunded" and held.flagged_at is None
    session.refresh(waiting)
    assert waiting.status == "delivered"           # the released key went to the buyer who already paid
    assert key_statuses(session, p) == {"void": 1, "sold": 1}
    [(action, _, details)] = audit_of(session, held)
    assert action == "order.refund"
    assert details == {"reason": "buyer asked", "previous_status": "held", "amount": "9.90", "currency": "CNY",
                       "keys_released": 1, "keys_kept_sold": 0}


def test_refund_of_a_delivered_order_keeps_its_keys_sold(backend, session, vault, make_product, make_keys,
                                                         channel):
    p = make_product()
    keys = make_keys(p, 3)
    order = pay(session, vault, new_order(session, p, channel, quantity=2), channel)
    assert order.status == "delivered"
    result = staff.refund_order(session, order_no=order.order_no, reason="not as described", actor=ACTOR)
    assert (order.status, result.keys_released, result.keys_sold) == ("refunded", 0, 2)
    assert key_statuses(session, p) == {"available": 1, "sold": 2}
    assert order_keys(session, vault, order) == keys[:2]
    assert audit_of(session, order)[0][2]["previous_status"] == "delivered"
    with pytest.raises(Conflict, match="is refunded"):
        staff.refund_order(session, order_no=order.order_no, reason="twice", actor=ACTOR)
    assert len(audit_of(session, order)) == 1


def test_refund_of_a_paid_order_waiting_for_manual_delivery(backend, session, vault, make_product, channel):
    p = make_product(delivery_mode="manual")
    order = pay(session, vault, new_order(session, p, channel), channel)
    assert order.status == "paid"
    assert staff.refund_order(session, order_no=order.order_no, reason="r", actor=ACTOR).previous_status == "paid"
    assert order.status == "refunded"


def test_unpaid_orders_are_not_refunded(backend, session, vault, make_product, make_keys, channel):
    p = make_product()
    make_keys(p, 2)
    pending = new_order(session, p, channel)
    expired = new_order(session, p, channel, now=dt.datetime.utcnow() - dt.timedelta(hours=3))
    expire_orders(session, now=expired.expires_at + dt.timedelta(seconds=1))
    for order, status in ((pending, "pending"), (expired, "expired")):
        with pytest.raises(Conflict, match=f"is {status}; only paid, held or delivered"):
            staff.refund_order(session, order_no=order.order_no, reason="r", actor=ACTOR)
        session.refresh(order)
        assert order.status == status and audit_of(session, order) == []
    assert key_statuses(session, p) == {"available": 1, "reserved": 1}
    with pytest.raises(InvalidRequest, match="reason"):
        staff.refund_order(session, order_no=pending.order_no, reason="", actor=ACTOR)


# --- keys, delivery by hand, mail, flags --------------------------------------

def test_reveal_keys_is_audited_and_only_for_delivered_orders(backend, session, vault, make_product, make_keys,
                                                              channel):
    p = make_product()
    keys = make_keys(p, 2)
    order = pay(session, vault, new_order(session, p, channel), channel)
    assert staff.reveal_keys(session, vault, order_no=order.order_no, actor=ACTOR,
                             source_ip="10.0.0.3") == (order, keys[:1])
    assert audit_of(session, order) == [("order.keys_view", ACTOR, {"keys": 1})]
    pending = new_order(session, p, channel)
    with pytest.raises(Conflict, match="no delivered keys"):
        staff.reveal_keys(session, vault, order_no=pending.order_no, actor=ACTOR)
    assert audit_of(session, pending) == []


def test_deliver_pasted_keys(backend, session, vault, make_product, channel):
    p = make_product(delivery_mode="manual")
    order = pay(session, vault, new_order(session, p, channel, quantity=2), channel)
    for text, error, message in (("", InvalidRequest, "paste the order's keys"),
                                 ("ONE\n", InvalidRequest, "needs 2 keys, 1 pasted"),
                                 ("A\nA\n", InvalidRequest, "twice"),
                                 ("A\nB\x01\n", InvalidRequest, "line 2: the key contains control"),
                                 ("A\n" + "B" * 600, InvalidRequest, "line 2: the key is 600 characters")):
        with pytest.raises(error, match=message):
            staff.deliver_pasted_keys(session, vault, order_no=order.order_no, text=text, max_key_length=512,
                                      actor=ACTOR)
        session.refresh(order)
        assert order.status == "paid"
    delivered = staff.deliver_pasted_keys(session, vault, order_no=order.order_no,
                                          text="  KEY-ONE \r\n\r\nKEY-TWO\n", max_key_length=512, actor=ACTOR)
    assert delivered.status == "delivered" and order_keys(session, vault, order) == ["KEY-ONE", "KEY-TWO"]
    assert [a[0] for a in audit_of(session, order)] == ["order.deliver"]
    with pytest.raises(Conflict, match="only paid orders"):
        staff.deliver_pasted_keys(session, vault, order_no=order.order_no, text="C\nD", max_key_length=512,
                                  actor=ACTOR)


def test_resend_delivery_email(backend, session, vault, make_product, make_keys, channel):
    p = make_product()
    make_keys(p, 2)
    order = pay(session, vault, new_order(session, p, channel), channel)
    kwargs = {"order_no": order.order_no, "actor": ACTOR}
    with pytest.raises(Conflict, match="no SMTP server"):
        staff.resend_delivery_email(session, smtp_configured=False, **kwargs)
    with pytest.raises(Conflict, match="already waiting to be sent"):   # the first mail is still queued
        staff.resend_delivery_email(session, smtp_configured=True, **kwargs)
    [first] = mails(session, order)
    first.status, first.last_error = "failed", "550 no such user"
    session.flush()
    mail = staff.resend_delivery_email(session, smtp_configured=True, source_ip="10.0.0.4", **kwargs)
    assert [m.status for m in mails(session, order)] == ["failed", "pending"]
    assert (mail.order_id, mail.to_address) == (order.id, order.email)
    assert audit_of(session, order) == [("order.resend_email", ACTOR, {"mail_id": mail.id, "to": order.email})]
    pending = new_order(session, p, channel)
    with pytest.raises(Conflict, match="is pending; only a delivered"):
        staff.resend_delivery_email(session, smtp_configured=True, order_no=pending.order_no, actor=ACTOR)


def test_acknowledge_clears_the_flag_only(backend, session, vault, make_product, make_keys, channel):
    p = make_product()
    make_keys(p, 1)
    order = held_order(session, vault, p, channel)
    reason = order.flag_reason
    assert staff.acknowledge_flag(session, order_no=order.order_no, note="calling the buyer",
                                  actor=ACTOR) == reason
    assert order.flagged_at is None and order.flag_reason is None and order.status == "held"
    assert audit_of(session, order) == [("order.acknowledge", ACTOR, {"reason": reason,
                                                                      "note": "calling the buyer"})]
    with pytest.raises(Conflict, match="is not flagged"):
        staff.acknowledge_flag(session, order_no=order.order_no, actor=ACTOR)
    with pytest.raises(InvalidRequest, match="note"):
        staff.acknowledge_flag(session, order_no=order.order_no, note="n" * 501, actor=ACTOR)


# --- finding orders -------------------------------------------------------

def test_search_filters_combine(backend, session, vault, make_product, make_keys, channel):
    p = make_product()
    make_keys(p, 10)
    email = f"Find.{secrets.token_hex(3)}@Example.com"
    day = dt.datetime(2031, 5, 10, 4, 0)
    a = new_order(session, p, channel, email=email, now=day)
    b = pay(session, vault, new_order(session, p, channel, email=email, now=day + dt.timedelta(days=1)), channel,
            money="0.02")
    c = new_order(session, p, channel, now=day + dt.timedelta(days=1))

    def found(**kw):
        rows, total = staff.search_orders(session, staff.OrderSearch(**kw))
        assert total == len(rows)
        return [o.order_no for o, _ in rows]

    assert found(email=email.lower()) == [b.order_no, a.order_no]          # newest first, any letter case
    assert found(email=email, status="held") == [b.order_no]
    assert found(email=email, flagged=True) == [b.order_no]
    assert found(order_no=a.order_no) == [a.order_no]
    assert found(order_no=c.order_no[:-1], email=email) == []
    assert found(order_no="2031051", created_from=day + dt.timedelta(hours=12)) == [c.order_no, b.order_no]
    assert found(order_no="2031051", created_to=day + dt.timedelta(hours=12)) == [a.order_no]
    assert found(order_no="%") == [] and found(order_no="2031051", status="nonsense")[-1] == a.order_no
    rows, total = staff.search_orders(session, staff.OrderSearch(order_no="2031051"), page=2, page_size=2)
    assert total >= 3 and len(rows) == min(2, total - 2)


def test_order_detail_gathers_the_history(backend, session, vault, make_product, make_keys, channel):
    p = make_product()
    make_keys(p, 2)
    order = held_order(session, vault, p, channel)
    staff.release_held(session, order_no=order.order_no, reason="fine", actor=ACTOR)
    d = staff.order_detail(session, order.order_no)
    assert d.product.id == p.id and d.channel.id == channel.id
    assert [(pm.trade_no, code, pm.status) for pm, code in d.payments] == [(f"T{order.order_no}", channel.code,
                                                                             "held")]
    assert [e.type for e, _ in d.events] == ["order.held", "order.paid", "order.delivered"]
    assert [a.action for a in d.audit] == ["order.release"] and len(d.mails) == 1
    assert d.keys == {"sold": 1}
    with pytest.raises(NotFound):
        staff.order_detail(session, "")


# --- two staff at once ----------------------------------------------------

def quiet(app, *product_ids):
    """Committed test orders of these products: nothing is left for another test's sweep
    (mail sender, stuck-order flags, expiry) to find in the worker's shared database."""
    from kamengd.extensions import db

    with app.app_context():
        ours = sa.select(Order.id).where(Order.product_id.in_(product_ids))
        db.session.execute(sa.update(EmailOutbox).where(EmailOutbox.order_id.in_(ours),
                                                        EmailOutbox.status == "pending").values(status="skipped"))
        db.session.execute(sa.update(Order).where(Order.id.in_(ours), Order.status.in_(("pending", "paid", "held")))
                           .values(status="cancelled", flagged_at=None, flag_reason=None)
                           .execution_options(synchronize_session=False))
        db.session.commit()


@pytest.mark.parametrize("action", ["release", "refund", "acknowledge"])
def test_two_staff_acting_at_once_one_wins(backend, app, vault, action):
    import io
    import threading

    from conftest import run_concurrently
    from kamengd.catalog.services import create_product
    from kamengd.extensions import db
    from kamengd.inventory.services import import_keys

    with app.app_context():
        p = create_product(db.session, name=f"race {secrets.token_hex(3)}", price_cents=500, actor="t")
        import_keys(db.session, vault, product_id=p.id, fh=io.BytesIO(b"RACE-A\nRACE-B"), actor="t")
        ch = add_channel(db.session, vault, channel_type="epay", code=f"r{secrets.token_hex(3)}", actor="t",
                         options={"gateway": "http://127.0.0.1:9", "pid": "1001", "key": KEY})
        order = held_order(db.session, vault, p, ch)
        db.session.commit()
        order_no, product_id = order.order_no, p.id

    calls = {"release": lambda s, who: staff.release_held(s, order_no=order_no, reason="ok", actor=who),
             "refund": lambda s, who: staff.refund_order(s, order_no=order_no, reason="ok", actor=who),
             "acknowledge": lambda s, who: staff.acknowledge_flag(s, order_no=order_no, actor=who)}
    results, barrier = [], threading.Barrier(2)

    def worker(who):
        def run():
            with app.app_context():
                barrier.wait()
                try:
                    calls[action](db.session, who)
                    db.session.commit()
                    results.append("ok")
                except Conflict as exc:
                    db.session.rollback()
                    results.append(exc.message)
        return run

    try:
        run_concurrently(worker("staff:one"), worker("staff:two"))
    finally:
        quiet(app, product_id)
    assert results.count("ok") == 1, results
    [refused] = [r for r in results if r != "ok"]
    assert refused.startswith(f"order {order_no} is "), refused
    with app.app_context():
        order = db.session.scalar(sa.select(Order).where(Order.order_no == order_no))
        assert len(audit_of(db.session, order, f"order.{action}")) == 1
        assert key_statuses(db.session, SimpleNamespace(id=product_id)) == {
            "release": {"sold": 1, "available": 1}, "refund": {"available": 2},
            "acknowledge": {"reserved": 1, "available": 1}}[action]

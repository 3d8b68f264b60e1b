"""Orders and Epay payments as plain functions, on every backend."""
import datetime as dt
import hashlib
import io

import pytest
import sqlalchemy as sa

from conftest import run_concurrently
from kamengd.errors import InvalidRequest, NotFound, OutOfStock
from kamengd.inventory.models import CardKey
from kamengd.inventory.services import import_keys
from kamengd.orders.services import (create_order, expire_orders, find_order_for_buyer, order_keys)
from kamengd.payments import epay
from kamengd.payments.models import Payment
from kamengd.payments.callbacks import handle_epay_notify
from kamengd.payments.services import add_channel

KEY = "merchant-key-123"


@pytest.fixture
def channel(session, vault):
    import secrets
    code = f"ep{secrets.token_hex(3)}"
    return add_channel(session, vault, channel_type="epay", code=code, actor="t",
                       options={"gateway": "http://127.0.0.1:9", "pid": "1001", "key": KEY})


def order_for(session, product, channel, quantity=1, **kw):
    return create_order(session, product_id=product.id, quantity=quantity, email="buyer@example.com",
                        channel_code=channel.code, **kw)


def callback(order, *, money=None, trade_no=None, status="TRADE_SUCCESS", pid="1001", key=KEY):
    params = {"pid": pid, "trade_no": trade_no or f"T{order.order_no}", "out_trade_no": order.order_no,
              "type": "alipay", "name": "x", "money": money or f"{order.amount_cents / 100:.2f}",
              "trade_status": status}
    params["sign"] = hashlib.md5((epay.signing_string(params) + key).encode()).hexdigest()
    params["sign_type"] = "MD5"
    return params


def key_statuses(session, product):
    return dict(session.execute(sa.select(CardKey.status, sa.func.count()).where(CardKey.product_id == product.id)
                                .group_by(CardKey.status)).all())


def test_signature_matches_the_protocol():
    params = {"pid": "1001", "money": "9.90", "name": "月卡", "out_trade_no": "A1", "empty": "",
              "sign": "x", "sign_type": "MD5"}
    expected = hashlib.md5("money=9.90&name=月卡&out_trade_no=A1&pid=1001KEY".encode()).hexdigest()
    assert epay.sign(params, "KEY") == expected
    assert epay.verify({**params, "sign": expected}, "KEY")
    assert not epay.verify({**params, "sign": expected}, "")
    assert not epay.verify({**params, "sign": expected.upper()[:31] + "é"}, "KEY")


def test_order_reserves_keys(backend, session, make_product, make_keys, channel):
    p = make_product(price_cents=990)
    make_keys(p, 5)
    new = order_for(session, p, channel, quantity=3, query_password="pw1234")
    o = new.order
    assert (o.status, o.amount_cents, len(o.order_no)) == ("pending", 2970, 28)
    assert key_statuses(session, p) == {"available": 2, "reserved": 3}
    assert bytes(o.token_hash) != new.token.encode() and o.query_password_hash.startswith("$argon2")
    assert find_order_for_buyer(session, o.order_no, token=new.token) is o
    assert find_order_for_buyer(session, o.order_no, query_password="pw1234") is o
    for kwargs in ({"token": "wrong"}, {"query_password": "wrong"}, {}):
        with pytest.raises(NotFound):
            find_order_for_buyer(session, o.order_no, **kwargs)
    with pytest.raises(NotFound):
        find_order_for_buyer(session, "nope", token=new.token)


def test_out_of_stock_reserves_nothing(backend, session, make_product, make_keys, channel):
    p = make_product()
    make_keys(p, 2)
    with pytest.raises(OutOfStock):
        order_for(session, p, channel, quantity=3)
    assert key_statuses(session, p) == {"available": 2}


@pytest.mark.parametrize("field, value, message", [
    ("quantity", 0, "quantity: between"), ("quantity", "2", "quantity: an integer"),
    ("email", "not-an-email", "email"), ("email", "a@b", "email"),
    ("channel_code", "nope", "not an enabled payment channel"), ("coupon", "SAVE10", "unknown coupon"),
    ("query_password", "x", "query_password"),
])
def test_order_validation(backend, session, make_product, make_keys, channel, field, value, message):
    p = make_product()
    make_keys(p, 2)
    args = {"product_id": p.id, "quantity": 1, "email": "b@example.com", "channel_code": channel.code,
            field: value}
    with pytest.raises(InvalidRequest, match=message):
        create_order(session, **args)
    assert key_statuses(session, p) == {"available": 2}


def test_paid_callback_delivers_once(backend, session, vault, make_product, make_keys, channel):
    p = make_product()
    keys = make_keys(p, 3)
    o = order_for(session, p, channel, quantity=2).order
    params = callback(o)
    assert handle_epay_notify(session, vault, channel.code, params).recorded
    assert o.status == "delivered"
    assert order_keys(session, vault, o) == keys[:2]
    assert handle_epay_notify(session, vault, channel.code, params).recorded  # repeated: success again
    assert session.scalar(sa.select(sa.func.count()).select_from(Payment).where(Payment.order_id == o.id)) == 1
    assert key_statuses(session, p) == {"available": 1, "sold": 2}


@pytest.mark.parametrize("change, reason", [
    ({"key": "forged"}, "bad signature"), ({"pid": "9999"}, "foreign pid"),
    ({"status": "WAIT_BUYER_PAY"}, "trade_status"),
])
def test_bad_callbacks_change_nothing(backend, session, vault, make_product, make_keys, channel, change, reason):
    p = make_product()
    make_keys(p, 1)
    o = order_for(session, p, channel).order
    outcome = handle_epay_notify(session, vault, channel.code, callback(o, **change))
    assert not outcome.recorded and reason in outcome.reason
    assert o.status == "pending" and key_statuses(session, p) == {"reserved": 1}


def test_callback_on_another_channels_url(backend, session, vault, make_product, make_keys, channel):
    other = add_channel(session, vault, channel_type="epay", code=channel.code + "x", actor="t",
                        options={"gateway": "http://g", "pid": "1001", "key": KEY})
    p = make_product()
    make_keys(p, 1)
    o = order_for(session, p, channel).order
    assert not handle_epay_notify(session, vault, other.code, callback(o)).recorded
    assert o.status == "pending"


def test_wrong_amount_is_held(backend, session, vault, make_product, make_keys, channel):
    p = make_product(price_cents=990)
    make_keys(p, 1)
    o = order_for(session, p, channel).order
    assert handle_epay_notify(session, vault, channel.code, callback(o, money="0.01")).recorded
    assert o.status == "held" and key_statuses(session, p) == {"reserved": 1}


def test_expired_order_paid_later_gets_fresh_keys(backend, session, vault, make_product, make_keys, channel):
    p = make_product()
    make_keys(p, 1)
    o = order_for(session, p, channel).order
    assert expire_orders(session, now=o.expires_at + dt.timedelta(seconds=1)) >= 1  # others may be due too
    session.refresh(o)
    assert o.status == "expired" and key_statuses(session, p) == {"available": 1}
    assert handle_epay_notify(session, vault, channel.code, callback(o)).recorded
    assert o.status == "delivered" and key_statuses(session, p) == {"sold": 1}


def test_paid_orders_wait_for_stock_oldest_first(backend, session, vault, make_product, make_keys, channel):
    p = make_product()
    make_keys(p, 2)
    first, second = order_for(session, p, channel).order, order_for(session, p, channel).order
    later = dt.datetime.utcnow() + dt.timedelta(hours=1)
    expire_orders(session, now=later)
    make_keys(p, ["SOMEONE-ELSE"])
    order_for(session, p, channel, quantity=3)  # a new buyer takes all three keys back on sale
    for o in (first, second):
        assert handle_epay_notify(session, vault, channel.code, callback(o)).recorded
        assert o.status == "paid"
    result = import_keys(session, vault, product_id=p.id, fh=io.BytesIO(b"NEW-1\n"), actor="t")
    assert result.delivered == 1
    session.refresh(first), session.refresh(second)
    assert (first.status, second.status) == ("delivered", "paid")
    assert order_keys(session, vault, first) == ["NEW-1"]


def test_manual_products_wait_for_staff(backend, session, vault, make_product, channel):
    p = make_product(delivery_mode="manual")
    o = order_for(session, p, channel).order
    assert handle_epay_notify(session, vault, channel.code, callback(o)).recorded
    assert o.status == "paid"


def test_manual_delivery_by_staff(backend, session, vault, make_product, channel):
    from kamengd.audit.models import AuditEntry
    from kamengd.errors import Conflict
    from kamengd.orders.services import deliver_manually

    p = make_product(delivery_mode="manual")
    o = order_for(session, p, channel, quantity=2).order
    with pytest.raises(Conflict, match="only paid orders"):
        deliver_manually(session, vault, order_no=o.order_no, keys=["M1", "M2"], actor="cli:staff")
    handle_epay_notify(session, vault, channel.code, callback(o))
    with pytest.raises(InvalidRequest, match="needs 2 keys"):
        deliver_manually(session, vault, order_no=o.order_no, keys=["M1"], actor="cli:staff")
    deliver_manually(session, vault, order_no=o.order_no, keys=["M1", "M2"], actor="cli:staff")
    assert o.status == "delivered" and order_keys(session, vault, o) == ["M1", "M2"]
    entry = session.scalars(sa.select(AuditEntry).order_by(AuditEntry.id.desc()).limit(1)).one()
    assert entry.action == "order.deliver" and "M1" not in entry.details
    second = order_for(session, p, channel).order
    handle_epay_notify(session, vault, channel.code, callback(second))
    with pytest.raises(Conflict, match="already in stock or sold"):
        deliver_manually(session, vault, order_no=second.order_no, keys=["M1"], actor="cli:staff")
    with pytest.raises(NotFound):
        deliver_manually(session, vault, order_no="nope", keys=["X"], actor="cli:staff")


def test_expiry_job_releases_due_orders(backend, app, vault):
    """The periodic job commits what expire_orders decides."""
    from kamengd.scheduler import jobs
    from kamengd.catalog.services import create_product
    from kamengd.extensions import db

    with app.app_context():
        p = create_product(db.session, name="job", price_cents=100, actor="t")
        import_keys(db.session, vault, product_id=p.id, fh=io.BytesIO(b"JOB-1\n"), actor="t")
        import secrets
        ch = add_channel(db.session, vault, channel_type="epay", code=f"j{secrets.token_hex(3)}", actor="t",
                         options={"gateway": "http://g", "pid": "1", "key": "k3y-0123456789abcdef"})
        o = create_order(db.session, product_id=p.id, quantity=1, email="b@example.com", channel_code=ch.code,
                         now=dt.datetime.utcnow() - dt.timedelta(hours=1)).order
        db.session.commit()
        order_id, product_id = o.id, p.id
        db.session.remove()
    with app.app_context():
        assert jobs.expire_reservations(db.session)["expired"] >= 1
        db.session.remove()
    with app.app_context():
        from kamengd.orders.models import Order
        assert db.session.get(Order, order_id).status == "expired"
        assert db.session.scalar(sa.select(CardKey.status).where(CardKey.product_id == product_id)) == "available"
        db.session.remove()


def test_released_keys_go_to_buyers_who_already_paid(backend, session, vault, make_product, make_keys, channel):
    """A paid order waiting for stock is served before anyone new can buy (review finding)."""
    p = make_product()
    make_keys(p, 1)
    a = order_for(session, p, channel).order
    expire_orders(session, now=a.expires_at + dt.timedelta(seconds=1))
    b = order_for(session, p, channel).order  # takes the only key
    assert handle_epay_notify(session, vault, channel.code, callback(a)).recorded
    session.refresh(a)
    assert a.status == "paid"
    expire_orders(session, now=b.expires_at + dt.timedelta(seconds=1))  # b never paid
    session.refresh(a)
    assert a.status == "delivered" and key_statuses(session, p) == {"sold": 1}
    with pytest.raises(OutOfStock):
        order_for(session, p, channel)


def test_newcomers_wait_behind_paid_orders(backend, session, vault, make_product, make_keys, channel):
    p = make_product()
    make_keys(p, 1)
    a = order_for(session, p, channel).order
    expire_orders(session, now=a.expires_at + dt.timedelta(seconds=1))
    hog = order_for(session, p, channel).order
    handle_epay_notify(session, vault, channel.code, callback(a))      # a paid, waits: hog holds the key
    session.execute(sa.update(CardKey).where(CardKey.order_id == hog.id)
                    .values(status="available", order_id=None))          # the key comes back some other way
    with pytest.raises(OutOfStock):                                       # a newcomer may not jump the queue
        order_for(session, p, channel)
    from kamengd.orders.attention import retry_waiting_deliveries
    assert retry_waiting_deliveries(session)["delivered"] >= 1            # the sweep job serves a
    session.refresh(a)
    assert a.status == "delivered"


def test_lookup_by_email_costs_one_password_check_whoever_asks(backend, session, vault, make_product, make_keys,
                                                               channel, monkeypatch):
    """One indexed query for the lookup tags and exactly one argon2 check, whether the e-mail has
    orders or not (the time tells nothing); an order placed before tags is still found."""
    from kamengd.orders import services
    from kamengd.orders.checkout import place_order

    import secrets

    p = make_product()
    make_keys(p, 8)
    name = f"buyer-{secrets.token_hex(4)}"
    tagged = [place_order(session, vault, product_id=p.id, quantity=1, email=f"{name.title()}@Example.com",
                          channel_code=channel.code, query_password="right-pw").order_id for _ in range(6)]
    other = place_order(session, vault, product_id=p.id, quantity=1, email=f"{name}@example.com",
                        channel_code=channel.code, query_password="another-pw").order_id
    legacy = services.create_order(session, product_id=p.id, quantity=1, email=f"{name}@example.com",
                                   channel_code=channel.code, query_password="right-pw").order   # no vault: no tag
    assert legacy.lookup_tag is None and session.get(services.Order, tagged[0]).lookup_tag is not None
    calls = []
    real = services.verify_password
    monkeypatch.setattr(services, "verify_password", lambda h, pw: calls.append(h) or real(h, pw))
    found = services.orders_for_email(session, vault, f" {name}@example.com ", "right-pw")
    assert [o.id for o in found] == sorted([*tagged, legacy.id], reverse=True)   # all six and the old one
    assert other not in [o.id for o in found] and len(calls) == 1
    calls.clear()
    # Tags ignore the e-mail's case (the old orders' exact match does not change).
    found = services.orders_for_email(session, vault, f"{name.upper()}@EXAMPLE.COM", "right-pw")
    assert [o.id for o in found] == sorted(tagged, reverse=True) and len(calls) == 1
    calls.clear()
    assert services.orders_for_email(session, vault, "nobody@example.com", "right-pw") == []
    assert len(calls) == 1
    calls.clear()
    assert services.orders_for_email(session, vault, f"{name}@example.com", "wrong-pw") == []
    assert len(calls) == 1


def test_manual_delivery_and_import_never_deliver_twice(backend, app, vault):
    """Staff deliver an order by hand while an import would deliver it too (review finding)."""
    import threading

    from kamengd.catalog.services import create_product
    from kamengd.extensions import db
    from kamengd.orders.services import deliver_manually
    import secrets

    with app.app_context():
        p = create_product(db.session, name="race-manual", price_cents=100, actor="t")
        ch = add_channel(db.session, vault, channel_type="epay", code=f"r{secrets.token_hex(3)}", actor="t",
                         options={"gateway": "http://g", "pid": "1001", "key": KEY})
        import_keys(db.session, vault, product_id=p.id, fh=io.BytesIO(b"FIRST\n"), actor="t")
        o = create_order(db.session, product_id=p.id, quantity=1, email="b@example.com", channel_code=ch.code).order
        expire_orders(db.session, now=o.expires_at + dt.timedelta(seconds=1))
        db.session.execute(sa.update(CardKey).where(CardKey.product_id == p.id).values(status="void"))
        handle_epay_notify(db.session, vault, ch.code, callback(o))   # paid late, no stock: waiting
        assert o.status == "paid"
        db.session.commit()
        order_no, order_id, product_id = o.order_no, o.id, p.id
        db.session.remove()

    manual_holds_lock = threading.Event()
    errors = []

    def manual():
        with app.app_context():
            try:
                deliver_manually(db.session, vault, order_no=order_no, keys=["BY-HAND"], actor="cli:staff")
                manual_holds_lock.set()
                threading.Event().wait(0.5)
                db.session.commit()
            except Exception as exc:
                errors.append(exc)
                manual_holds_lock.set()
            finally:
                db.session.remove()

    def importer():
        manual_holds_lock.wait(10)
        with app.app_context():
            try:
                import_keys(db.session, vault, product_id=product_id, fh=io.BytesIO(b"FROM-IMPORT\n"), actor="t")
                db.session.commit()
            except Exception as exc:
                errors.append(exc)
            finally:
                db.session.remove()

    run_concurrently(manual, importer)
    assert errors == []
    with app.app_context():
        sold = db.session.scalars(sa.select(CardKey.status).where(CardKey.order_id == order_id)).all()
        assert sold == ["sold"]
        assert db.session.scalar(sa.select(sa.func.count()).select_from(CardKey).where(
            CardKey.product_id == product_id, CardKey.status == "available")) == 1  # the import's key stays
        db.session.remove()

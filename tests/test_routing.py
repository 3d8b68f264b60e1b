"""Routing (W4): which channel takes an order, and the stand-ins when one cannot.

Service and HTTP tests on the shared app (SQLite and MariaDB). The channels of
each test offer a pay type of their own (a made-up method), so the shared
database's other channels never stand in for them.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
import secrets
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa

from conftest import assert_one_line_error, run_cli
from kamengd.payments import epay

KEY = "routing-merchant-key-0123456789"


def _db():
    from kamengd.extensions import db
    return db


@pytest.fixture
def world(app):
    """A product (3.00, 40 keys) and a maker of Epay channels that all offer one new method."""
    import io

    from kamengd.catalog.services import create_product
    from kamengd.context import get_vault
    from kamengd.inventory.services import import_keys

    method = f"rt{secrets.token_hex(4)}"
    db = _db()
    with app.app_context():
        p = create_product(db.session, name=f"routing {method}", price_cents=300, actor="t")
        import_keys(db.session, get_vault(), product_id=p.id, actor="t",
                    fh=io.BytesIO("\n".join(f"R-{secrets.token_hex(8)}" for _ in range(40)).encode()))
        other = create_product(db.session, name=f"other {method}", price_cents=300, actor="t")
        import_keys(db.session, get_vault(), product_id=other.id, actor="t",
                    fh=io.BytesIO("\n".join(f"O-{secrets.token_hex(8)}" for _ in range(10)).encode()))
        db.session.commit()
        ids = (p.id, other.id)
        db.session.remove()

    def channel(name: str, **rules) -> str:
        from kamengd.payments.services import add_channel, set_routing
        code = f"{name}{secrets.token_hex(3)}"
        with app.app_context():
            ch = add_channel(db.session, get_vault(), channel_type="epay", code=code, actor="t",
                             options={"gateway": "https://pay.example.com", "pid": "7007", "key": KEY,
                                      "pay_types": method})
            if rules:
                set_routing(db.session, ch, actor="t", **{k: str(v) for k, v in rules.items()})
            db.session.commit()
            db.session.remove()
        return code

    return {"product": ids[0], "other": ids[1], "method": method, "channel": channel}


def order(client, world, channel=None, quantity=1, product=None, **extra):
    body = {"product_id": product or world["product"], "quantity": quantity, "email": "r@example.com",
            "pay_type": world["method"], **extra}
    if channel is not None:
        body["channel"] = channel
    return client.post("/api/v1/orders", json=body)


def channel_of(answer) -> str:
    """The channel an order went to: its Epay pay URL's notify address names it."""
    assert answer.status_code == 201, answer.get_json()
    notify = parse_qs(urlsplit(answer.get_json()["pay_url"]).query)["notify_url"][0]
    return notify.split("/pay/", 1)[1].split("/", 1)[0]


def set_health(app, code, ok, error="refused"):
    from kamengd.payments.models import PaymentChannel
    from kamengd.payments.routing import mark_health
    db = _db()
    with app.app_context():
        ch = db.session.scalar(sa.select(PaymentChannel).where(PaymentChannel.code == code))
        mark_health(db.session, ch, ok, None if ok else error)
        db.session.commit()
        db.session.remove()


def audit_entries(app, action, target=""):
    from kamengd.audit.models import AuditEntry
    db = _db()
    with app.app_context():
        rows = db.session.scalars(sa.select(AuditEntry).where(AuditEntry.action == action,
                                                              AuditEntry.target.like(f"%{target}%"))).all()
        found = [json.loads(r.details) for r in rows]
        db.session.remove()
    return found


def count_orders(app, product_id):
    from kamengd.orders.models import Order
    db = _db()
    with app.app_context():
        n = db.session.scalar(sa.select(sa.func.count()).select_from(Order).where(Order.product_id == product_id))
        db.session.remove()
    return n


def test_fees_are_exact():
    from kamengd.payments.routing import fee_cents
    assert fee_cents(1000, 60, 0) == 6            # 0.6 % of 10.00
    assert fee_cents(250, 60, 10) == 12           # 1.5 → 2 (half up), + 0.10
    assert fee_cents(249, 60, 0) == 1             # 1.494 → 1
    assert fee_cents(99_999_999_99, 10000, 0) == 99_999_999_99
    assert fee_cents(100, 0, 0) == 0


def test_a_channel_that_is_down_is_routed_around(app, client, world):
    primary, backup = world["channel"]("pri", priority=0), world["channel"]("bak", priority=1)
    assert channel_of(order(client, world, primary)) == primary
    set_health(app, primary, False, "gateway timed out")
    placed = order(client, world, primary)
    assert placed.status_code == 201 and channel_of(placed) == backup
    # (The channel's going down is audited once; the orders routed around it are not, each.)
    assert [e["code"] for e in audit_entries(app, "channel.down", primary)] == [primary]
    assert audit_entries(app, "channel.failover", placed.get_json()["order_no"]) == []
    # The buyer no longer sees it; it comes back after a successful check.
    listed = client.get(f"/api/v1/payment-methods?product_id={world['product']}").get_json()["methods"]
    assert primary not in [m["channel"] for m in listed] and backup in [m["channel"] for m in listed]
    assert {m["method"] for m in listed if m["channel"] == backup} == {world["method"]}
    set_health(app, primary, True)
    assert channel_of(order(client, world, primary)) == primary
    # Down with no stand-in: a clear refusal, nothing written.
    set_health(app, primary, False)
    set_health(app, backup, False)
    before = count_orders(app, world["product"])
    refused = order(client, world, primary)
    assert refused.status_code == 400 and "no other channel" in refused.get_json()["error"]["message"]
    assert count_orders(app, world["product"]) == before


def test_the_rules_route_an_order_without_a_word(app, client, world):
    small = world["channel"]("small", priority=1, max_amount="5.00")
    big = world["channel"]("big", priority=2, min_amount="4.00")
    only_other = world["channel"]("only", priority=3)
    db = _db()
    from kamengd.payments.services import set_product_channels
    with app.app_context():   # the other product is paid through `only` alone
        set_product_channels(db.session, world["other"], only_other, actor="t")
        db.session.commit()
        db.session.remove()
    assert channel_of(order(client, world, small)) == small                  # 3.00
    assert channel_of(order(client, world, small, quantity=2)) == big        # 6.00: above small's maximum
    assert channel_of(order(client, world, big)) == small                    # 3.00: below big's minimum
    assert channel_of(order(client, world, only_other)) == only_other        # any channel for this product
    assert channel_of(order(client, world, small, product=world["other"])) == only_other   # only `only` there
    with app.app_context():
        set_product_channels(db.session, world["other"], "all", actor="t")
        db.session.commit()
        db.session.remove()
    assert channel_of(order(client, world, small, product=world["other"])) == small
    assert audit_entries(app, "channel.failover", only_other) == []          # rules, not failures
    listed = client.get(f"/api/v1/payment-methods?product_id={world['product']}&quantity=2").get_json()
    codes = [m["channel"] for m in listed["methods"]]
    assert big in codes and only_other in codes and small not in codes
    bad = client.get("/api/v1/payment-methods?quantity=2")
    assert bad.status_code == 400
    assert client.get("/api/v1/payment-methods?product_id=2147483000").status_code == 404


def test_a_method_without_a_channel_goes_by_priority_then_weight(app, client, world):
    zero = world["channel"]("zero", priority=0, weight=0)
    main = world["channel"]("main", priority=0, weight=5)
    later = world["channel"]("later", priority=1)
    assert {channel_of(order(client, world)) for _ in range(8)} == {main}    # weight 0: only when no other will
    set_health(app, main, False)
    assert channel_of(order(client, world)) == zero
    set_health(app, zero, False)
    assert channel_of(order(client, world)) == later
    set_health(app, later, False)
    refused = order(client, world)
    assert refused.status_code == 400 and "pay_type" in refused.get_json()["error"]["message"]


def test_weights_share_the_orders_of_one_priority(app, world):
    from kamengd.payments import routing
    a, b = world["channel"]("wa", weight=3), world["channel"]("wb", weight=1)
    db = _db()
    rng = random.Random(20261206)
    firsts = []
    with app.app_context():
        for _ in range(2000):
            routes = routing.stand_ins(db.session, product_id=world["product"], amount_cents=300, currency="CNY",
                                       method=world["method"], site_url="", day=dt.date.today(), rng=rng)
            firsts.append(routes[0].code)
            assert {r.code for r in routes} == {a, b}
        db.session.remove()
    assert 1400 <= firsts.count(a) <= 1600, firsts.count(a)   # 3 : 1 (1500 expected; sd ≈ 19)


def test_a_daily_cap_sends_the_rest_elsewhere_and_expiry_gives_room_back(app, client, world):
    from kamengd.database import utcnow
    from kamengd.orders.services import expire_orders

    capped = world["channel"]("cap", priority=0, daily_cap="10.00")
    spare = world["channel"]("spare", priority=1, daily_cap="3.00")
    went = [channel_of(order(client, world, capped)) for _ in range(4)]
    assert went == [capped, capped, capped, spare]          # 3 × 3.00 fit in 10.00; the 4th does not
    refused = order(client, world, capped)                  # both full
    assert refused.status_code == 400 and "daily cap reached" in refused.get_json()["error"]["message"]
    db = _db()
    with app.app_context():
        expire_orders(db.session, now=utcnow() + dt.timedelta(days=1))
        db.session.commit()
        db.session.remove()
    assert channel_of(order(client, world, capped)) == capped   # the expired orders' room is back


def test_a_caps_room_is_given_back_once_and_only_for_what_it_counted(app, client, world):
    """An order placed before its channel had a cap was never counted: its expiry gives nothing
    back. A counted order's room comes back once, however many sweeps see it expired."""
    from kamengd.database import utcnow
    from kamengd.orders.models import Order
    from kamengd.orders.services import expire_orders
    from kamengd.payments import routing
    from kamengd.payments.models import ChannelDay, PaymentChannel
    from kamengd.payments.services import set_routing

    code = world["channel"]("late", priority=0)
    uncounted = order(client, world, code).get_json()
    db = _db()
    with app.app_context():
        channel = db.session.scalars(sa.select(PaymentChannel).where(PaymentChannel.code == code)).one()
        set_routing(db.session, channel, actor="t", daily_cap="6.00")
        db.session.commit()
        channel_id = channel.id
        db.session.remove()
    counted = order(client, world, code).get_json()

    def taken() -> int:
        with app.app_context():
            found = db.session.scalar(sa.select(sa.func.sum(ChannelDay.amount_cents))
                                      .where(ChannelDay.channel_id == channel_id))
            db.session.remove()
        return found

    assert taken() == 300
    with app.app_context():   # the uncounted order's time is up; then two sweeps
        db.session.execute(sa.update(Order).where(Order.order_no == uncounted["order_no"])
                           .values(expires_at=utcnow() - dt.timedelta(minutes=1)))
        assert expire_orders(db.session) >= 1
        ids = db.session.scalars(sa.select(Order.id).where(Order.order_no.in_(
            [uncounted["order_no"], counted["order_no"]]))).all()
        assert routing.give_back_expired(db.session, ids) == 0
        db.session.commit()
        db.session.remove()
    assert taken() == 300                                     # still the counted order's
    assert channel_of(order(client, world, code)) == code     # 6.00 reached
    assert order(client, world, code).status_code == 400
    with app.app_context():
        expire_orders(db.session, now=utcnow() + dt.timedelta(days=1))
        again = routing.give_back_expired(db.session, ids)
        db.session.commit()
        db.session.remove()
    assert again == 0 and taken() == 0


def test_the_fee_is_recorded_with_the_payment(app, client, world):
    from kamengd.payments.models import Payment
    code = world["channel"]("fee", fee_percent="0.6", fee_fixed="0.10")
    placed = order(client, world, code, quantity=5).get_json()   # 15.00: 0.09 + 0.10
    params = {"pid": "7007", "trade_no": f"T{placed['order_no']}", "out_trade_no": placed["order_no"],
              "type": world["method"], "name": "x", "money": "15.00", "trade_status": "TRADE_SUCCESS"}
    params["sign"] = hashlib.md5((epay.signing_string(params) + KEY).encode()).hexdigest()
    params["sign_type"] = "MD5"
    assert client.get(f"/pay/{code}/notify", query_string=params).get_data(as_text=True) == "success"
    db = _db()
    with app.app_context():
        fee = db.session.scalar(sa.select(Payment.fee_cents).where(Payment.trade_no == params["trade_no"]))
        db.session.remove()
    assert fee == 19


def test_routing_rules_from_the_command_line(app, installed, world):
    code = world["channel"]("cli")
    config = installed.path
    shown = json.loads(run_cli("channel", "route", code, "--weight", "7", "--max-amount", "99.50", "--daily-cap",
                               "1000", "--fee-percent", "0.38", "--json", config=config, check=True).out)
    assert (shown["weight"], shown["max_amount"], shown["daily_cap"], shown["fee_percent"]) == \
        (7, "99.50", "1000.00", "0.38")
    for args, words in ((["--weight", "-1"], "weight"), (["--fee-percent", "101"], "fee percent"),
                        (["--min-amount", "1e3"], "minimum amount"), (["--priority", "x"], "sort order"),
                        (["--min-amount", "200", "--max-amount", "100"], "minimum amount")):
        assert_one_line_error(run_cli("channel", "route", code, *args, config=config), words)
    again = json.loads(run_cli("channel", "route", code, "--json", config=config, check=True).out)
    assert again == shown   # nothing changed by the refusals
    assert_one_line_error(run_cli("channel", "route", "no-such-channel", config=config), "not found")
    pid = str(world["product"])
    assert json.loads(run_cli("product", "channels", pid, "--set", code, "--json", config=config,
                              check=True).out)["channels"] == [code]
    assert_one_line_error(run_cli("product", "channels", pid, "--set", f"{code},nope", config=config), "nope")
    assert_one_line_error(run_cli("product", "channels", pid, "--set", f"{code},{code}", config=config), "twice")
    assert json.loads(run_cli("product", "channels", pid, "--json", config=config, check=True).out)["channels"] \
        == [code]
    assert json.loads(run_cli("product", "channels", pid, "--set", "all", "--json", config=config,
                              check=True).out)["channels"] == []


def test_a_channel_that_cannot_take_the_currency_is_never_offered_it(app, client):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from kamengd.catalog.services import create_product
    from kamengd.context import get_vault
    from kamengd.payments.routing import takes_currency
    from kamengd.payments.services import add_channel

    assert not takes_currency("alipay", {}, "USD") and takes_currency("alipay", {}, "CNY")
    assert takes_currency("stripe", {}, "USD") and takes_currency("epay", {}, "USD")
    assert takes_currency("epusdt", {"currency": "USD"}, "USD") and not takes_currency("epusdt", {}, "USD")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    code = f"ali{secrets.token_hex(3)}"
    db = _db()
    with app.app_context():
        add_channel(db.session, get_vault(), channel_type="alipay", code=code, actor="t",
                    options={"app_id": "2021004100000001", "private_key": private, "alipay_public_key": public})
        usd = create_product(db.session, name="dollar", price_cents=500, currency="USD", actor="t").id
        cny = create_product(db.session, name="yuan", price_cents=500, actor="t").id
        db.session.commit()
        db.session.remove()
    listed = {m["channel"] for m in client.get(f"/api/v1/payment-methods?product_id={usd}").get_json()["methods"]}
    assert code not in listed
    listed = {m["channel"] for m in client.get(f"/api/v1/payment-methods?product_id={cny}").get_json()["methods"]}
    assert code in listed

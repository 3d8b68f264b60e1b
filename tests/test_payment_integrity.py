"""W9: payment integrity, each hole found by an adversarial run, each closed and tested
on SQLite and MariaDB (the real-server brute force is in test_forged_callbacks.py).

1. A weak merchant key is refused; one kept from before is reported and disabled,
   and no callback signed with it is trusted.
2. A second payment for a paid order reaches a person: flagged, payment.extra,
   refunded from the panel or the CLI.
3. A payment reconciliation found without a trade number is filled in by its
   later callback, never booked twice; one trade-number rule of 128 characters.
4. Only the gateway's decimal format is money.
"""
import datetime as dt
import hashlib
import json
import secrets
from urllib.parse import urlencode

import pytest
import sqlalchemy as sa

from conftest import epay_shop, run_cli
from kamengd.audit.models import AuditEntry
from kamengd.errors import Conflict, InvalidRequest
from kamengd.notifications.models import Event
from kamengd.orders.checkout import place_order
from kamengd.orders.models import Order
from kamengd.orders.services import create_order
from kamengd.payments import epay
from kamengd.payments.callbacks import forget_channel, handle_epay_notify
from kamengd.payments.models import Payment, PaymentChannel
from kamengd.payments import services as payments
from panel_support import login, make_staff, post
from test_reconcile import KEY as GW_KEY, PID as GW_PID, gateway, reconcile  # noqa: F401 (fixture)

PID = "9009"
KEY = "integrity-merchant-key-0123456789"


def signed(order_no: str, *, money: str, trade_no: str, key: str = KEY, pid: str = PID) -> dict:
    params = {"pid": pid, "trade_no": trade_no, "out_trade_no": order_no, "type": "alipay", "name": "x",
              "money": money, "trade_status": "TRADE_SUCCESS"}
    params["sign"] = hashlib.md5((epay.signing_string(params) + key).encode()).hexdigest()
    params["sign_type"] = "MD5"
    return params


def payments_of(session, order) -> list[tuple[str, str, str]]:
    return [tuple(r) for r in session.execute(
        sa.select(Payment.trade_no, Payment.status, Payment.source).where(Payment.order_id == order.id)
        .order_by(Payment.id)).all()]


@pytest.fixture
def shop(session, vault, make_product, make_keys):
    product = make_product(price_cents=990)
    make_keys(product, 5)
    channel = payments.add_channel(session, vault, channel_type="epay", code=f"in{secrets.token_hex(3)}",
                                   actor="t", options={"gateway": "https://pay.example.com", "pid": PID, "key": KEY})
    yield product, channel
    forget_channel(channel.code)


def place(session, shop, minutes_ago=0) -> Order:
    product, channel = shop
    now = dt.datetime.utcnow() - dt.timedelta(minutes=minutes_ago)
    return create_order(session, product_id=product.id, quantity=1, email="b@example.com",
                        channel_code=channel.code, now=now).order


# --- 1. weak merchant keys ------------------------------------------------------

@pytest.mark.parametrize("key", ["a", "x", "\u200b", "k" * 40, "abcdefghijklmnopqrstuvwxyz", "1234567890123456",
                                 "Ab1" + "\u200b" * 20, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA1"])
def test_a_key_anyone_could_guess_is_refused(backend, session, vault, key):
    with pytest.raises(InvalidRequest) as refused:
        payments.add_channel(session, vault, channel_type="epay", code=f"wk{secrets.token_hex(3)}", actor="t",
                             options={"gateway": "https://pay.example.com", "pid": PID, "key": key})
    assert len(key) < 3 or key not in refused.value.message   # never echoed


@pytest.mark.parametrize("key", ["integrity-merchant-key-0123456789", "0123456789abcdef0123456789abcdef",
                                 "Zx8Qw2Lm9Rt4Yp7Vb3Nc6Kd1Hf5Gj0Ss", "merchant-key-123"])
def test_a_real_gateways_key_is_taken(backend, session, vault, key):
    channel = payments.add_channel(session, vault, channel_type="epay", code=f"ok{secrets.token_hex(3)}", actor="t",
                                   options={"gateway": "https://pay.example.com", "pid": PID, "key": key})
    assert payments.channel_secrets(vault, channel) == {"key": key}


def make_weak(session, vault, channel, key="a"):
    """A channel whose key an older version accepted (written past today's rule)."""
    payments._store_secrets(vault, channel, {"key": key})
    session.flush()
    forget_channel(channel.code)


def test_a_weak_key_from_before_is_not_trusted_then_disabled_until_changed(backend, session, vault, shop):
    product, channel = shop
    order = place(session, shop)
    make_weak(session, vault, channel, "\u200b")
    # The forged callback of the adversarial run: signed with the guessed key, first try.
    outcome = handle_epay_notify(session, vault, channel.code,
                                 signed(order.order_no, money="9.90", trade_no="F1", key="\u200b"))
    assert not outcome.recorded and "too weak" in outcome.reason
    session.refresh(order)
    assert order.status == "pending" and payments_of(session, order) == []
    # No new order is signed with it.
    with pytest.raises(InvalidRequest, match="not an enabled payment channel"):
        place_order(session, vault, product_id=product.id, quantity=1, email="b@example.com",
                    channel_code=channel.code)

    assert [c.code for c, _ in payments.weak_channels(session, vault)] == [channel.code]
    assert payments.disable_weak_channels(session, vault) == [channel.code]
    assert payments.disable_weak_channels(session, vault) == []        # once
    session.refresh(channel)
    assert channel.is_enabled is False
    entry = session.scalars(sa.select(AuditEntry).where(AuditEntry.target == f"channel:{channel.code}")
                            .order_by(AuditEntry.seq.desc())).first()
    assert entry.action == "channel.disable" and entry.actor == "system"
    assert "invisible" in json.loads(entry.details)["reason"]
    with pytest.raises(InvalidRequest, match="stays disabled"):
        payments.set_channel_enabled(session, channel, True, vault=vault, actor="t")
    # Any edit must bring a real key; then it can be enabled again.
    with pytest.raises(InvalidRequest, match="invisible"):
        payments.update_channel(session, vault, channel, name="renamed", options={"gateway": "https://pay.example.com",
                                                                                   "pid": PID}, sort_order=0, actor="t")
    payments.update_channel(session, vault, channel, name="renamed", sort_order=0, actor="t",
                            options={"gateway": "https://pay.example.com", "pid": PID, "key": KEY})
    assert payments.set_channel_enabled(session, channel, True, vault=vault, actor="t")
    assert payments.weak_channels(session, vault) == []


def test_doctor_and_the_panel_name_a_weak_channel(backend, make_install, tmp_path):
    from kamengd.app import create_app
    from kamengd.context import get_vault
    from kamengd.extensions import db

    cfg = make_install(backend)
    code = f"weak{secrets.token_hex(2)}"
    run_cli("channel", "add", "--type", "epay", "--code", code, "--option", "gateway=https://pay.example.com",
            "--option", f"pid={PID}", "--option", f"key={KEY}", config=cfg.path, check=True)
    app = create_app(cfg)
    with app.app_context():
        channel = db.session.scalar(sa.select(PaymentChannel).where(PaymentChannel.code == code))
        payments._store_secrets(get_vault(), channel, {"key": "x"})
        db.session.commit()
        channel_id = channel.id
    doctor = run_cli("doctor", config=cfg.path)
    line = next(line for line in doctor.out.splitlines() if "channel keys" in line)
    assert line.startswith("FAIL") and code in line and "at least 16 characters" in line
    assert doctor.returncode != 0

    # The scheduler's job disables it; doctor still asks for a new key, as a warning.
    run_cli("scheduler", "--once", config=cfg.path, check=True)
    doctor = run_cli("doctor", config=cfg.path)
    line = next(line for line in doctor.out.splitlines() if "channel keys" in line)
    assert line.startswith("WARN") and f"{code} (disabled)" in line

    staff = make_staff(app, "admin")
    client = app.test_client()
    client.set_cookie("lang", "en")
    login(client, staff)
    for url in ("/admin/channels", "/admin/dashboard"):
        html = client.get(url).get_data(as_text=True)
        assert 'id="weak-channels"' in html and code in html, url
    refused = post(client, f"/admin/channels/{channel_id}/toggle", {"enabled": "1"}, page_url="/admin/channels",
                   follow_redirects=True)
    assert "stays disabled" in refused.get_data(as_text=True)


# --- 2. a buyer charged twice ------------------------------------------------------

@pytest.fixture
def http_shop(app):
    return epay_shop(app, name="twice", price_cents=990, keys=[f"T-{secrets.token_hex(8)}" for _ in range(3)],
                     pid=PID, key=KEY, prefix="tw")


def test_fifty_payments_for_one_order_reach_a_person_and_are_refunded(backend, app, client, http_shop):
    from kamengd.extensions import db

    placed = client.post("/api/v1/orders", json={"product_id": http_shop["id"], "quantity": 1,
                                                 "email": "twice@example.com", "channel": http_shop["channel"]})
    order_no = placed.get_json()["order_no"]
    trades = [f"GW{secrets.token_hex(6)}" for _ in range(50)]
    for trade in trades:
        params = signed(order_no, money="9.90", trade_no=trade)
        assert client.get(f"/pay/{http_shop['channel']}/notify?{urlencode(params)}").data == b"success"
    # The gateway's retries of an extra payment change nothing more.
    assert client.get(f"/pay/{http_shop['channel']}/notify?"
                      f"{urlencode(signed(order_no, money='9.90', trade_no=trades[7]))}").data == b"success"

    with app.app_context():
        order = db.session.scalar(sa.select(Order).where(Order.order_no == order_no))
        rows = db.session.execute(sa.select(Payment.id, Payment.trade_no, Payment.status)
                                  .where(Payment.order_id == order.id).order_by(Payment.id)).all()
        events = [json.loads(e.payload) for e in db.session.scalars(
            sa.select(Event).where(Event.type == "payment.extra").order_by(Event.id))
            if json.loads(e.payload)["order_no"] == order_no]
        assert order.status == "delivered" and order.flagged_at is not None
        assert order.flag_reason.startswith("paid twice")
        assert [s for _, _, s in rows] == ["received"] + ["extra"] * 49
        assert [e["trade_no"] for e in events] == trades[1:]
        assert all(e["paid_amount"] == "9.90" and e["channel"] == http_shop["channel"] for e in events)
        extra_ids = [pid for pid, _, status in rows if status == "extra"]
        db.session.remove()

    # Staff see it on the dashboard and refund from the order's page, one click each.
    staff = make_staff(app, "finance")
    panel = app.test_client()
    panel.set_cookie("lang", "en")
    login(panel, staff)
    dashboard = panel.get("/admin/dashboard").get_data(as_text=True)
    assert 'id="extra-payments"' in dashboard and order_no in dashboard
    page = panel.get(f"/admin/orders/{order_no}").get_data(as_text=True)
    assert page.count("Refunded at the gateway") == 49
    first = post(panel, f"/admin/orders/{order_no}/payments/{extra_ids[0]}/refund", {"note": "RF-1"},
                 page_url=f"/admin/orders/{order_no}")
    assert first.status_code == 303
    again = post(panel, f"/admin/orders/{order_no}/payments/{extra_ids[0]}/refund", {},
                 page_url=f"/admin/orders/{order_no}")
    assert again.status_code == 409
    received = post(panel, f"/admin/orders/{order_no}/payments/{rows[0].id}/refund", {},
                    page_url=f"/admin/orders/{order_no}")
    assert received.status_code == 409          # the order's own payment is not an extra one
    with app.app_context():
        audit = db.session.scalars(sa.select(AuditEntry).where(AuditEntry.target == f"order:{order_no}",
                                                               AuditEntry.action == "payment.refund")).all()
        assert len(audit) == 1 and json.loads(audit[0].details)["note"] == "RF-1"
        assert json.loads(audit[0].details)["trade_no"] == trades[1]
        db.session.remove()
    for payment_id in extra_ids[1:]:
        assert post(panel, f"/admin/orders/{order_no}/payments/{payment_id}/refund", {},
                    page_url="/admin/dashboard").status_code == 303
    with app.app_context():
        order = db.session.scalar(sa.select(Order).where(Order.order_no == order_no))
        statuses = db.session.scalars(sa.select(Payment.status).where(Payment.order_id == order.id)).all()
        assert sorted(set(statuses)) == ["received", "refunded"] and statuses.count("refunded") == 49
        assert order.status == "delivered" and order.flagged_at is None     # nothing left to refund
        db.session.remove()


def test_extra_payments_from_the_cli(backend, make_install):
    cfg = make_install(backend)
    out = json.loads(run_cli("order", "extra-payments", "--json", config=cfg.path, check=True).out)
    assert out == {"count": 0, "payments": []}
    proc = run_cli("order", "refund-extra", "NOSUCHORDER", "1", config=cfg.path)
    assert proc.returncode != 0 and len(proc.err.strip().splitlines()) == 1 and "not found" in proc.err


def test_a_refund_is_recorded_once(backend, session, vault, shop):
    from kamengd.orders.staff import extra_payments_to_refund, refund_extra_payment

    order = place(session, shop)
    for trade in ("A1", "A2"):
        assert handle_epay_notify(session, vault, shop[1].code,
                                  signed(order.order_no, money="9.90", trade_no=trade)).recorded
    count, rows = extra_payments_to_refund(session)
    mine = [p for p, order_no, _ in rows if order_no == order.order_no]
    assert count >= 1 and [p.trade_no for p in mine] == ["A2"]
    refund_extra_payment(session, order_no=order.order_no, payment_id=mine[0].id, actor="t")
    with pytest.raises(Conflict, match="refunded"):
        refund_extra_payment(session, order_no=order.order_no, payment_id=mine[0].id, actor="t")


# --- 3. a reconciled payment and its late callback -------------------------------------

@pytest.fixture
def gw_shop(session, vault, make_product, make_keys, gateway):
    """test_reconcile's local gateway, with a product of five keys behind it."""
    product = make_product(price_cents=990)
    make_keys(product, 5)
    channel = payments.add_channel(session, vault, channel_type="epay", code=f"gw{secrets.token_hex(3)}", actor="t",
                                   options={"gateway": gateway.url, "pid": GW_PID, "key": GW_KEY})
    yield product, channel
    forget_channel(channel.code)


def gw_signed(order_no: str, *, trade_no: str, money: str = "9.90") -> dict:
    return signed(order_no, money=money, trade_no=trade_no, key=GW_KEY, pid=GW_PID)


def test_the_late_callback_of_a_reconciled_payment_fills_in_its_trade_number(backend, session, vault, gw_shop,
                                                                               gateway):
    order = place(session, gw_shop, minutes_ago=3)
    gateway.paid[order.order_no] = "9.90"
    gateway.trade_no_for[order.order_no] = None          # this gateway's act=order names no trade
    assert reconcile(session, vault)["completed"] >= 1
    session.refresh(order)
    assert order.status == "delivered"
    assert payments_of(session, order) == [(f"reconciled-{order.order_no}", "received", "reconciliation")]

    real = f"GW{secrets.token_hex(8)}"
    for _ in range(2):      # the callback, and its retry
        outcome = handle_epay_notify(session, vault, gw_shop[1].code,
                                     gw_signed(order.order_no, money="9.90", trade_no=real))
        assert outcome.recorded
    assert payments_of(session, order) == [(real, "received", "reconciliation")]
    session.refresh(order)
    assert order.flagged_at is None
    # A genuinely second payment is still a second payment.
    assert handle_epay_notify(session, vault, gw_shop[1].code,
                              gw_signed(order.order_no, money="9.90", trade_no="GW-second")).recorded
    assert [s for _, s, _ in payments_of(session, order)] == ["received", "extra"]


def test_a_callback_of_another_amount_is_not_taken_for_the_reconciled_payment(backend, session, vault, gw_shop,
                                                                               gateway):
    order = place(session, gw_shop, minutes_ago=3)
    gateway.paid[order.order_no] = "9.90"
    gateway.trade_no_for[order.order_no] = None
    reconcile(session, vault)
    assert handle_epay_notify(session, vault, gw_shop[1].code,
                              gw_signed(order.order_no, money="1.00", trade_no="GW-other")).recorded
    assert payments_of(session, order) == [(f"reconciled-{order.order_no}", "received", "reconciliation"),
                                           ("GW-other", "extra", "callback")]


@pytest.mark.parametrize("length", [64, 65, 128])
def test_one_trade_number_rule_for_callbacks_and_reconciliation(backend, session, vault, gw_shop, gateway, length):
    trade = "T" * length
    reconciled, called = place(session, gw_shop, minutes_ago=3), place(session, gw_shop)
    gateway.paid[reconciled.order_no] = "9.90"
    gateway.trade_no_for[reconciled.order_no] = trade
    reconcile(session, vault)
    assert payments_of(session, reconciled) == [(trade, "received", "reconciliation")]      # kept whole
    # Its callback is the same payment; another order's callback with as long a number is taken.
    assert handle_epay_notify(session, vault, gw_shop[1].code,
                              gw_signed(reconciled.order_no, money="9.90", trade_no=trade)).reason == "already recorded"
    other = "U" * length
    assert handle_epay_notify(session, vault, gw_shop[1].code,
                              gw_signed(called.order_no, money="9.90", trade_no=other)).recorded
    assert payments_of(session, called) == [(other, "received", "callback")]


def test_a_trade_number_over_the_rule_is_refused_by_both(backend, session, vault, gw_shop, gateway):
    trade = "T" * 129
    order = place(session, gw_shop, minutes_ago=3)
    outcome = handle_epay_notify(session, vault, gw_shop[1].code, gw_signed(order.order_no, trade_no=trade))
    assert not outcome.recorded and outcome.reason == "bad trade_no"
    gateway.paid[order.order_no] = "9.90"
    gateway.trade_no_for[order.order_no] = trade
    reconcile(session, vault)          # completed, under the stand-in (never a cut number)
    assert payments_of(session, order) == [(f"reconciled-{order.order_no}", "received", "reconciliation")]


# --- 4. money strings --------------------------------------------------------------

BAD_MONEY = ["٩.٩٠", "９.９０", "0.99e1", "9.90e0", "+9.90", " 9.90", "9.90\n", "9.90 ", "9.9.0", "9,90", "09.90.",
             "9.900", "NaN", "Infinity", "-9.90", "9.", ".990", "0x9", "9_90", ""]


@pytest.mark.parametrize("money", BAD_MONEY)
def test_only_the_gateways_decimal_format_is_money(backend, session, vault, shop, money):
    order = place(session, shop)
    outcome = handle_epay_notify(session, vault, shop[1].code,
                                 signed(order.order_no, money=money, trade_no=f"M{secrets.token_hex(4)}"))
    assert not outcome.recorded and "is not a gateway amount" in outcome.reason
    session.refresh(order)
    assert order.status == "pending" and payments_of(session, order) == []


@pytest.mark.parametrize("money", ["9.90", "9.9"])
def test_the_gateways_own_formats_pay(backend, session, vault, shop, money):
    order = place(session, shop)
    assert handle_epay_notify(session, vault, shop[1].code,
                              signed(order.order_no, money=money, trade_no=f"M{secrets.token_hex(4)}")).recorded
    session.refresh(order)
    assert order.status == "delivered"


@pytest.mark.parametrize("money", ["٩.٩٠", "9.90e0", "+9.90", " 9.90"])
def test_reconciliation_takes_only_the_gateways_decimal_format(backend, session, vault, gw_shop, gateway, money):
    order = place(session, gw_shop, minutes_ago=3)
    gateway.paid[order.order_no] = money
    counts = reconcile(session, vault)
    assert counts["completed"] == 0 and counts["errors"] >= 1
    session.refresh(order)
    assert order.status == "pending" and payments_of(session, order) == []


def test_the_bad_money_callback_is_answered_fail_over_http(backend, client, http_shop):
    placed = client.post("/api/v1/orders", json={"product_id": http_shop["id"], "quantity": 1,
                                                 "email": "m@example.com", "channel": http_shop["channel"]})
    order_no = placed.get_json()["order_no"]
    for money in ("９.９０", "0.99e1", "9.90\n"):
        params = signed(order_no, money=money, trade_no=f"H{secrets.token_hex(4)}")
        assert client.post(f"/pay/{http_shop['channel']}/notify", data=params).data == b"fail"
    status = client.get(f"/api/v1/orders/{order_no}", query_string={"token": placed.get_json()["token"]})
    assert status.get_json()["status"] == "pending"

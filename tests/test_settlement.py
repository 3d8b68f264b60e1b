"""The daily settlement against a local fake Epay gateway: every kind of mismatch recorded,
gateway faults waited out, the report printed by `kamengd reconcile report`."""
import datetime as dt
import functools
import json
import secrets
import zoneinfo

import pytest
import sqlalchemy as sa

from conftest import assert_one_line_error, run_cli
from kamengd.notifications.models import Event
from kamengd.orders.services import create_order, expire_orders
from kamengd.payments.models import SettlementReport
from kamengd.payments.reconcile import query_epay_order
from kamengd.payments.callbacks import handle_epay_notify
from kamengd.payments.services import add_channel
from kamengd.payments.settlement import (JOB_GIVE_UP_AFTER, GatewayDown, day_bounds, day_to_settle, report_entries,
                                         run_settlement, settle_payments)
from test_orders import callback
from test_reconcile import KEY, PID, gateway  # noqa: F401 (the fake gateway fixture)

TZ = "Asia/Shanghai"
DAY = dt.date(2026, 11, 20)
query = functools.partial(query_epay_order, timeout=1)


def utc(local: str) -> dt.datetime:
    """'2026-11-20 10:00' in Shanghai -> naive UTC, as stored."""
    return (dt.datetime.fromisoformat(local).replace(tzinfo=zoneinfo.ZoneInfo(TZ))
            .astimezone(dt.UTC).replace(tzinfo=None))


@pytest.fixture
def shop(session, vault, make_product, make_keys, gateway):
    p = make_product(price_cents=990)
    make_keys(p, 10)
    ch = add_channel(session, vault, channel_type="epay", code=f"s{secrets.token_hex(3)}", actor="t",
                     options={"gateway": gateway.url, "pid": PID, "key": KEY})
    return p, ch


def order(session, vault, shop, created: str, *, paid: str | None = None, money=None):
    p, ch = shop
    o = create_order(session, product_id=p.id, quantity=1, email="b@example.com", channel_code=ch.code,
                     now=utc(created)).order
    if paid:
        assert handle_epay_notify(session, vault, ch.code, callback(o, money=money), now=utc(paid)).recorded
    else:
        expire_orders(session, now=o.expires_at + dt.timedelta(seconds=1))
    session.refresh(o)
    return o


def test_day_bounds_and_the_day_to_settle():
    assert day_bounds(DAY, TZ) == (dt.datetime(2026, 11, 19, 16), dt.datetime(2026, 11, 20, 16))
    assert day_to_settle(utc("2026-11-21 01:59"), TZ) == dt.date(2026, 11, 19)   # yesterday waits until 02:00
    assert day_to_settle(utc("2026-11-21 02:00"), TZ) == DAY
    assert day_to_settle(utc("2026-11-21 23:59"), TZ) == DAY


def test_every_kind_of_mismatch_is_recorded(backend, session, vault, shop, gateway):
    fine = order(session, vault, shop, "2026-11-20 10:00", paid="2026-11-20 10:01")
    missed = order(session, vault, shop, "2026-11-20 11:00")                       # paid there, expired here
    differs = order(session, vault, shop, "2026-11-20 12:00", paid="2026-11-20 12:01")
    phantom = order(session, vault, shop, "2026-11-20 13:00", paid="2026-11-20 13:01")
    unpaid = order(session, vault, shop, "2026-11-20 14:00")
    late_night = order(session, vault, shop, "2026-11-20 23:50")                   # 15:50 UTC: still the 20th
    paid_after_midnight = order(session, vault, shop, "2026-11-19 23:55", paid="2026-11-20 00:05")
    day_before = order(session, vault, shop, "2026-11-19 23:30")
    day_after = order(session, vault, shop, "2026-11-21 00:10", paid="2026-11-21 00:11")
    held = order(session, vault, shop, "2026-11-20 15:00", paid="2026-11-20 15:01", money="0.99")
    gateway.paid.update({fine.order_no: "9.90", missed.order_no: "9.90", differs.order_no: "0.99",
                         paid_after_midnight.order_no: "9.90", day_after.order_no: "9.90",
                         held.order_no: "0.99"})
    gateway.unpaid.update({unpaid.order_no, late_night.order_no, day_before.order_no})
    since = session.scalar(sa.select(sa.func.max(Event.id))) or 0

    report = run_settlement(session, vault, DAY, TZ, query=query)
    assert report.status == "complete" and report.finished_at is not None
    asked = set(gateway.queries)
    assert asked == {o.order_no for o in (fine, missed, differs, phantom, unpaid, late_night, paid_after_midnight,
                                          held)}
    assert report.checked == 8 and report.mismatches == 3 and report.unverified == 0
    entries = {e.order_no: e for e in report_entries(session, report)}
    assert {no: e.kind for no, e in entries.items()} == {missed.order_no: "paid_at_gateway_only",
                                                         differs.order_no: "amount_differs",
                                                         phantom.order_no: "missing_at_gateway"}
    e = entries[differs.order_no]
    assert (e.our_amount_cents, e.gateway_amount_cents, e.our_status) == (990, 99, "delivered")
    assert entries[missed.order_no].our_status == "expired" and entries[missed.order_no].gateway_amount_cents == 990
    assert entries[phantom.order_no].gateway_status == "no record"
    mismatch_events = [json.loads(ev.payload) for ev in session.scalars(
        sa.select(Event).where(Event.type == "reconcile.mismatch", Event.id > since).order_by(Event.id))]
    assert sorted((ev["order_no"], ev["kind"], ev["day"]) for ev in mismatch_events) == sorted(
        (no, en.kind, "2026-11-20") for no, en in entries.items())
    # Running it again changes nothing; --restart checks every order again, once.
    assert run_settlement(session, vault, DAY, TZ, query=query).mismatches == 3
    gateway.queries.clear()
    again = run_settlement(session, vault, DAY, TZ, query=query, restart=True)
    assert again.mismatches == 3 and len(report_entries(session, again)) == 3 and len(gateway.queries) == 8


def test_the_job_waits_out_a_gateway_that_does_not_answer(backend, session, vault, shop, gateway):
    a = order(session, vault, shop, "2026-11-20 09:00", paid="2026-11-20 09:01")
    b = order(session, vault, shop, "2026-11-20 09:30", paid="2026-11-20 09:31")
    gateway.paid.update({a.order_no: "9.90", b.order_no: "9.90"})
    gateway.failing.add(a.order_no)
    now = utc("2026-11-21 02:30")
    assert settle_payments(session, vault, TZ, now=now, query=query)["outcome"] == "waiting"
    report = session.scalar(sa.select(SettlementReport).where(SettlementReport.day == DAY))
    assert report.status == "running" and report.checked == 0 and report.failures == 1
    assert report.next_attempt_at == now + dt.timedelta(minutes=1)
    assert settle_payments(session, vault, TZ, now=now + dt.timedelta(seconds=30), query=query) == {
        "day": "2026-11-20", "status": "running"}                                 # not yet: backing off
    asked = len(gateway.queries)
    for failure in range(2, JOB_GIVE_UP_AFTER + 1):
        session.refresh(report)
        now = report.next_attempt_at
        settle_payments(session, vault, TZ, now=now, query=query)
    session.refresh(report)
    assert len(gateway.queries) == asked + JOB_GIVE_UP_AFTER            # a asked once per try, then b
    assert report.status == "running" and report.unverified == 1 and report.checked == 2
    assert settle_payments(session, vault, TZ, now=now, query=query)["status"] == "complete"
    (entry,) = report_entries(session, report)
    assert entry.order_no == a.order_no and entry.kind == "unverified" and "HTTP" in entry.detail


def test_a_run_by_hand_stops_when_the_gateway_is_down(backend, session, vault, shop, gateway):
    a = order(session, vault, shop, "2026-11-20 09:00", paid="2026-11-20 09:01")
    gateway.paid[a.order_no] = "9.90"
    gateway.mode = "slow"    # answers only when the test ends; we give up after 1 s
    with pytest.raises(GatewayDown, match="incomplete"):
        run_settlement(session, vault, DAY, TZ, query=query)
    report = session.scalar(sa.select(SettlementReport).where(SettlementReport.day == DAY))
    assert report.status == "running" and report.checked == 0 and not report_entries(session, report)
    gateway.mode = "garbage"
    with pytest.raises(GatewayDown, match="not JSON"):
        run_settlement(session, vault, DAY, TZ, query=query)
    gateway.mode = "normal"
    report = run_settlement(session, vault, DAY, TZ, query=query)
    assert report.status == "complete" and report.mismatches == 0 and report.checked == 1


def test_reconcile_commands(backend, make_install):
    cfg = make_install(backend)
    assert_one_line_error(run_cli("reconcile", "report", "--date", "2026-11-20", config=cfg.path),
                          "no settlement report for 2026-11-20")
    assert_one_line_error(run_cli("reconcile", "report", "--date", "20-11-2026", config=cfg.path), "YYYY-MM-DD")
    assert_one_line_error(run_cli("reconcile", "run", "--date", "2999-01-01", config=cfg.path), "not over yet")
    ran = json.loads(run_cli("reconcile", "run", "--date", "2026-11-20", "--json", config=cfg.path, check=True).out)
    assert ran["status"] == "complete" and ran["checked"] == 0 and ran["entries"] == []
    shown = run_cli("reconcile", "report", "--date", "2026-11-20", config=cfg.path, check=True).out
    assert shown.startswith("settlement 2026-11-20 (Asia/Shanghai): complete, 0 orders checked, 0 mismatches")
    audit = run_cli("audit", "verify", config=cfg.path, check=True)
    assert audit.returncode == 0

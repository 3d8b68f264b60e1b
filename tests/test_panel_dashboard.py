"""The dashboard: its figures as plain functions (kamengd.reports) on controlled data, then the page."""
from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
import zoneinfo

import pytest
import sqlalchemy as sa

from kamengd.orders.staff import refund_order
from kamengd.reports import figures, scheduler, shop
from kamengd.orders.models import Order
from kamengd.orders.services import create_order
from kamengd.payments.callbacks import handle_epay_notify
from kamengd.payments.services import add_channel
from kamengd.scheduler.lease import heartbeat, release
from kamengd.scheduler.models import JobRun
from panel_support import login, make_staff
from test_orders import KEY, callback

TZ = "Asia/Shanghai"


def utc(local: str, tz: str = TZ) -> dt.datetime:
    """'2033-05-20 23:50' in the shop's zone -> naive UTC, as stored."""
    return (dt.datetime.fromisoformat(local).replace(tzinfo=zoneinfo.ZoneInfo(tz))
            .astimezone(dt.UTC).replace(tzinfo=None))


@pytest.fixture
def channel(session, vault):
    return add_channel(session, vault, channel_type="epay", code=f"d{secrets.token_hex(3)}", actor="t",
                       options={"gateway": "http://g", "pid": "1001", "key": KEY})


def sell(session, vault, product, channel, paid: str, *, money=None, tz=TZ) -> Order:
    """An order created a minute before `paid` (local time) and paid then, through the real services."""
    at = utc(paid, tz)
    order = create_order(session, product_id=product.id, quantity=1, email="b@example.com",
                         channel_code=channel.code, now=at - dt.timedelta(minutes=1)).order
    assert handle_epay_notify(session, vault, channel.code, callback(order, money=money), now=at).recorded
    session.refresh(order)
    return order


# --- the figures, without HTTP -----------------------------------------------------------------

def week_of(session, now: str, tz: str = TZ, days: int = 7):
    """The dashboard's days: newest first, (day, paid orders, {currency: cents})."""
    reader = figures.Reader(session, tz, utc(now, tz))
    found = figures.daily(reader, reader.today - dt.timedelta(days=days - 1), reader.today)
    return [(day, sum(c["paid"] for c in sums.values()), {cur: c["revenue_cents"] for cur, c in sums.items()
                                                          if c["revenue_cents"]})
            for day, sums in reversed(found)]


def test_sales_by_shop_day(backend, session, vault, make_product, make_keys, channel):
    p = make_product(price_cents=990)
    usd = make_product(price_cents=250, currency="USD")
    make_keys(p, 10)
    make_keys(usd, 2)
    late = sell(session, vault, p, channel, "2033-05-20 23:50")          # 15:50 UTC: still the 20th
    assert late.paid_at == dt.datetime(2033, 5, 20, 15, 50)
    sell(session, vault, p, channel, "2033-05-21 00:05")                 # 16:05 UTC on the 20th: the 21st
    sell(session, vault, p, channel, "2033-05-21 09:00")
    sell(session, vault, usd, channel, "2033-05-21 10:00")
    # The wrong amount: held, and counted as sold the day the money came (a refund takes it back).
    held = sell(session, vault, p, channel, "2033-05-21 11:00", money="1.00")
    assert held.status == "held"
    refunded = sell(session, vault, p, channel, "2033-05-19 12:00")     # sold the 19th, refunded the 21st
    refund_order(session, order_no=refunded.order_no, reason="t", actor="t", now=utc("2033-05-21 11:30"))
    sell(session, vault, p, channel, "2033-05-14 23:59")                 # eight days before: out of the week
    sell(session, vault, p, channel, "2033-05-15 00:00")                 # the first day of the week

    week = week_of(session, "2033-05-21 12:00")
    assert [d for d, _, _ in week] == [dt.date(2033, 5, 21) - dt.timedelta(days=i) for i in range(7)]
    assert week[0][1:] == (4, {"CNY": 2970, "USD": 250})
    assert week[1][1:] == (1, {"CNY": 990})
    assert week[2][1:] == (1, {"CNY": 990})                              # the 19th: sold (refunded later)
    assert week[6][0] == dt.date(2033, 5, 15) and week[6][1] == 1
    assert sum(n for _, n, _ in week) == 7
    reader = figures.Reader(session, TZ, utc("2033-05-21 12:00"))
    [cny] = [t for t in figures.totals(reader, dt.date(2033, 5, 21), dt.date(2033, 5, 21)) if t.currency == "CNY"]
    assert (cny.refunded, cny.refund_cents) == (1, 990)
    # Just before local midnight "today" is still the 20th; one minute later it is the 21st.
    assert week_of(session, "2033-05-20 23:59", days=1)[0][0] == dt.date(2033, 5, 20)
    assert week_of(session, "2033-05-21 00:00", days=1)[0][1] == 4


def test_a_day_across_a_clock_change(backend, session, vault, make_product, make_keys, channel):
    """New York, 2033-03-13: the clocks go forward; the day has 23 hours and still its own orders."""
    ny = "America/New_York"
    p = make_product(price_cents=100)
    make_keys(p, 3)
    sell(session, vault, p, channel, "2033-03-13 00:10", tz=ny)
    sell(session, vault, p, channel, "2033-03-13 23:50", tz=ny)   # 03:50 UTC on the 14th
    sell(session, vault, p, channel, "2033-03-12 23:55", tz=ny)
    week = week_of(session, "2033-03-14 08:00", ny, days=3)
    assert [(d.day, n) for d, n, _ in week] == [(14, 0), (13, 2), (12, 1)]


def test_orders_by_status_counts_every_status(backend, session, vault, make_product, make_keys, channel):
    before = shop.orders_by_status(session)
    assert list(before) == ["pending", "paid", "delivered", "expired", "cancelled", "refunded", "held"]
    p = make_product()
    make_keys(p, 5)
    sell(session, vault, p, channel, "2033-06-01 10:00")
    sell(session, vault, p, channel, "2033-06-01 10:05", money="0.01")
    create_order(session, product_id=p.id, quantity=1, email="b@example.com", channel_code=channel.code)
    after = shop.orders_by_status(session)
    assert {s: after[s] - before[s] for s in after} == {"pending": 1, "paid": 0, "delivered": 1, "expired": 0,
                                                        "cancelled": 0, "refunded": 0, "held": 1}


def test_low_stock_products(backend, session, make_product, make_keys):
    low = make_product(name=f"low {secrets.token_hex(3)}", low_stock_threshold=5)
    make_keys(low, 2)
    empty = make_product(name=f"empty {secrets.token_hex(3)}", low_stock_threshold=1)
    at = make_product(name=f"at {secrets.token_hex(3)}", low_stock_threshold=3)
    make_keys(at, 3)                                           # at the threshold: not low
    never = make_product(name=f"never {secrets.token_hex(3)}", low_stock_threshold=0)
    hidden = make_product(name=f"hidden {secrets.token_hex(3)}", low_stock_threshold=5)
    hidden.is_active = False
    manual = make_product(name=f"manual {secrets.token_hex(3)}", low_stock_threshold=5, delivery_mode="manual")
    session.flush()
    found = {s.product_id: s for s in shop.low_stock_products(session, limit=10000)}
    assert (found[low.id].available, found[low.id].threshold, found[low.id].name) == (2, 5, low.name)
    assert found[empty.id].available == 0
    assert not {at.id, never.id, hidden.id, manual.id} & set(found)
    ordered = [s.available for s in shop.low_stock_products(session, limit=10000)]
    assert ordered == sorted(ordered)                          # emptiest first


def test_orders_needing_attention(backend, session, vault, make_product, make_keys, channel):
    count_before, _ = shop.orders_needing_attention(session)
    p = make_product()
    make_keys(p, 5)
    held = sell(session, vault, p, channel, "2033-07-01 10:00", money="0.01")
    fine = sell(session, vault, p, channel, "2033-07-01 10:05")
    stuck = sell(session, vault, p, channel, "2033-07-01 10:10")
    session.execute(sa.update(Order).where(Order.id == stuck.id)
                    .values(flagged_at=dt.datetime(2000, 1, 1), flag_reason="waiting for stock"))
    count, first = shop.orders_needing_attention(session, limit=10)
    assert count == count_before + 2
    assert first[0].id == stuck.id                             # the longest waiting first
    assert held.id in {o.id for o in shop.orders_needing_attention(session, limit=10000)[1]}
    assert fine.id not in {o.id for o in shop.orders_needing_attention(session, limit=10000)[1]}
    assert len(shop.orders_needing_attention(session, limit=1)[1]) == 1


def test_a_paid_manual_order_needs_a_person_at_once(backend, session, vault, make_product, channel):
    """W10 §3: not only after orders.manual_sla_minutes: from the moment it is paid."""
    count_before, _ = shop.orders_needing_attention(session)
    manual = make_product(delivery_mode="manual")
    paid = sell(session, vault, manual, channel, "2033-07-02 10:00")
    assert paid.status == "paid" and paid.flagged_at is None
    count, _ = shop.orders_needing_attention(session)
    assert count == count_before + 1
    assert paid.id in {o.id for o in shop.orders_needing_attention(session, limit=10000)[1]}


def test_scheduler_status_is_stale_after_two_lease_periods(backend, session):
    now = dt.datetime(2033, 8, 1, 12, 0)
    assert heartbeat(session, "host:1:ab", now, 30)
    fresh = scheduler.scheduler_status(session, now + dt.timedelta(seconds=60), lease_seconds=30)
    assert (fresh.owner, fresh.heartbeat_at, fresh.age_seconds, fresh.stale) == ("host:1:ab", now, 60.0, False)
    assert scheduler.scheduler_status(session, now + dt.timedelta(seconds=61), lease_seconds=30).stale
    release(session, "host:1:ab")
    gone = scheduler.scheduler_status(session, now, lease_seconds=30)
    assert gone.owner is None and gone.stale


def test_last_run_of_each_job(backend, session):
    job = f"job-{secrets.token_hex(3)}"
    t0 = dt.datetime(2033, 8, 1, 12, 0)
    session.add_all([JobRun(job=job, owner="a", started_at=t0, finished_at=t0 + dt.timedelta(seconds=2),
                            outcome="ok", counts="{}"),
                     JobRun(job=job, owner="a", started_at=t0 + dt.timedelta(seconds=30),
                            finished_at=t0 + dt.timedelta(seconds=30.25), outcome="error", counts="{}",
                            error="RuntimeError: down")])
    session.flush()
    last = scheduler.last_runs(session, [job, "never-ran"])
    assert last["never-ran"] is None
    assert (last[job].outcome, last[job].error, scheduler.run_seconds(last[job])) == ("error", "RuntimeError: down",
                                                                                    0.25)
    runs = scheduler.job_runs(session, job=job, limit=1)
    assert [r.outcome for r in runs] == ["error"]
    assert [r.outcome for r in scheduler.job_runs(session, job=job, limit=5, offset=1)] == ["ok"]


# --- the page ---------------------------------------------------------------------------------

NOW = dt.datetime(2035, 9, 10, 4, 0)     # 12:00 in Shanghai, a day no other test sells on


def _order(product_id: int, status: str, paid: dt.datetime | None, cents: int, **extra) -> Order:
    """A bare order row (no events, no mails: other tests share this database)."""
    no = f"KD{secrets.token_hex(6).upper()}"
    created = (paid or NOW) - dt.timedelta(minutes=5)
    return Order(order_no=no, product_id=product_id, quantity=1, unit_price_cents=cents, amount_cents=cents,
                 currency="CNY", email="dash@example.com", status=status,
                 token_hash=hashlib.sha256(no.encode()).digest(), created_at=created, updated_at=created,
                 expires_at=created + dt.timedelta(minutes=15), paid_at=paid, **extra)


@pytest.fixture(scope="module")
def dashboard_data(app):
    from kamengd.catalog.services import create_product
    from kamengd.extensions import db

    with app.app_context():
        product = create_product(db.session, name=f"dash <b>{secrets.token_hex(3)}</b>", price_cents=1234,
                                 actor="test", low_stock_threshold=3)
        orders = [_order(product.id, "delivered", utc("2035-09-10 00:01"), 1234),
                  _order(product.id, "paid", utc("2035-09-10 11:59"), 1000),
                  _order(product.id, "delivered", utc("2035-09-09 23:50"), 500),       # yesterday, late
                  _order(product.id, "held", utc("2035-09-10 09:00"), 1234,
                         flagged_at=utc("2035-09-10 09:00"), flag_reason="paid 1.00, the order is for 12.34 CNY")]
        db.session.add_all(orders)
        db.session.commit()
        return {"product": (product.id, product.name), "orders": [o.order_no for o in orders]}


def _cell(html: str, element_id: str) -> str:
    return re.search(rf'id="{element_id}">([^<]*)<', html).group(1)


def test_dashboard_page(app, dashboard_data, monkeypatch):
    monkeypatch.setattr("kamengd.panel.dashboard.utcnow", lambda: NOW)
    owner = make_staff(app, "owner")
    client = app.test_client()
    client.get("/admin/login?lang=en")
    login(client, owner)
    resp = client.get("/admin/dashboard")
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    # (the held order counts: its money came; the dashboard names it among those needing a person)
    assert (_cell(html, "today-orders"), _cell(html, "today-amount")) == ("3", "34.68 CNY")
    assert '<tr><td>2035-09-10</td><td class="num">3</td><td class="num">34.68 CNY</td>' in html
    assert '<tr><td>2035-09-09</td><td class="num">1</td><td class="num">5.00 CNY</td>' in html
    assert html.count("<svg") >= 2 and "dash &lt;b&gt;" in html[html.index("<svg"):]   # the charts
    assert "2035-09-04" in html and "2035-09-03" not in html             # seven days
    from kamengd.extensions import db
    with app.app_context():
        by_status = shop.orders_by_status(db.session, since=utc("2035-08-12 00:00"))
        attention_count, _ = shop.orders_needing_attention(db.session)
    for status, n in by_status.items():
        assert f'data-status="{status}">{n}<' in html
    assert by_status["held"] >= 1 and _cell(html, "attention-count") == str(attention_count)
    held_no = dashboard_data["orders"][3]
    if "panel.order_detail" in app.view_functions:
        assert f'href="/admin/orders/{held_no}"' in html
    assert held_no in html and "paid 1.00, the order is for 12.34 CNY" in html
    product_id, name = dashboard_data["product"]
    assert name not in html and "dash &lt;b&gt;" in html                # escaped, never markup
    if "panel.product_edit" in app.view_functions:
        assert re.search(rf'href="[^"]*{product_id}[^"]*">dash &lt;b&gt;', html)
    # No scheduler runs for the shared app, and 2035 is long after any heartbeat.
    scheduler = html[html.index('id="scheduler"'):html.index('id="last-runs"')]
    assert 'badge warn' in scheduler
    assert 'data-job="expire_reservations"' in html and 'data-job="prune_history"' in html


def test_dashboard_for_finance_and_not_for_the_auditor(app):
    finance, auditor = make_staff(app, "finance"), make_staff(app, "auditor")
    client = app.test_client()
    login(client, finance)
    html = client.get("/admin/dashboard").get_data(as_text=True)
    assert 'id="sales-week"' in html and 'href="/admin/jobs"' in html
    other = app.test_client()
    login(other, auditor)
    assert other.get("/admin/dashboard").status_code == 403
    assert other.get("/admin/audit").status_code == 200


def test_the_operator_sees_no_links_it_may_not_open(app, dashboard_data, monkeypatch):
    monkeypatch.setattr("kamengd.panel.dashboard.utcnow", lambda: NOW)
    operator = make_staff(app, "operator")
    client = app.test_client()
    login(client, operator)
    html = client.get("/admin/dashboard").get_data(as_text=True)
    held_no = dashboard_data["orders"][3]
    assert held_no in html and f'href="/admin/orders/{held_no}"' not in html   # orders.view is not theirs
    assert 'href="/admin/jobs"' not in html

"""The merchant's reports (kamengd.reports.figures) against a fixture whose every figure is
computed by hand, read twice: from the orders (no summary yet) and from the summary rows the
`summarise_sales` job wrote — both must say the same."""
from __future__ import annotations

import datetime as dt
import secrets
import zoneinfo
from collections import Counter

import pytest
import sqlalchemy as sa

from kamengd.marketing.coupons import create_coupon, parse_coupon_form
from kamengd.orders.models import Order
from kamengd.orders.services import create_order
from kamengd.orders.staff import refund_order
from kamengd.payments.callbacks import handle_epay_notify
from kamengd.payments.models import Payment, PaymentChannel
from kamengd.payments.services import add_channel
from kamengd.reports import figures, summary
from kamengd.reports.models import ReportProgress, SalesDay
from kamengd.agents import services as agents
from kamengd.agents.models import Commission
from kamengd.catalog.services import create_category
from kamengd.risk.models import RiskDecision
from test_orders import KEY, callback

TZ = "Asia/Shanghai"


def utc(local: str) -> dt.datetime:
    return (dt.datetime.fromisoformat(local).replace(tzinfo=zoneinfo.ZoneInfo(TZ))
            .astimezone(dt.UTC).replace(tzinfo=None))


D = dt.date.fromisoformat


def sell(session, vault, product, channel, paid: str, email: str, *, created_before=60, coupon=None) -> Order:
    at = utc(paid)
    order = create_order(session, product_id=product.id, quantity=1, email=email, channel_code=channel.code,
                         coupon=coupon, now=at - dt.timedelta(seconds=created_before)).order
    assert handle_epay_notify(session, vault, channel.code, callback(order), now=at).recorded
    session.refresh(order)
    assert order.status == "delivered"
    return order


@pytest.fixture
def shop(session, vault, make_product, make_keys):
    """Hand-computed (Asia/Shanghai; channel fee 1 % + 0.00):
    20th (Fri): A 10.00 created 23:58, paid 23:59 (15:59 UTC: still the 20th) by ann;
                B 5.00 (no cost price) paid 10:00 by bob; the variant 15.00 created 23:59:30;
    21st (Sat): the variant paid 00:00:30 by ann (created the 20th, paid the 21st);
                A paid 09:00 by cat with coupon SAVE (1.00 off: 9.00 paid); a pending A, never paid;
    22nd:       cat's A refunded at 12:00;
    2 June:     B again by bob (13 days after the 20th: a new month for the May cohort)."""
    one = create_category(session, name="卡类 <one>", actor="t")
    two = create_category(session, name="two", actor="t")
    a = make_product(name="A <b>", price_cents=1000, cost_price_cents=600, category_id=one.id)
    variant = make_product(name="A 季卡", price_cents=1500, cost_price_cents=900, category_id=one.id,
                           variant_of=a.id, variant_name="季卡")
    b = make_product(name="B", price_cents=500, category_id=two.id)
    for p in (a, variant, b):
        make_keys(p, 5)
    channel = add_channel(session, vault, channel_type="epay", code=f"r{secrets.token_hex(3)}", actor="t",
                          options={"gateway": "http://g", "pid": "1001", "key": KEY})
    session.execute(sa.update(PaymentChannel).where(PaymentChannel.id == channel.id).values(fee_bp=100))
    coupon = create_coupon(session, f"SAVE{secrets.token_hex(2)}".upper(),
                           parse_coupon_form({"kind": "fixed", "amount_off": "1.00"}, TZ), actor="t")
    session.execute(sa.delete(ReportProgress))
    session.add(ReportProgress(id=1, timezone=TZ, through=D("2033-05-19")))
    session.flush()
    orders = {
        "a20": sell(session, vault, a, channel, "2033-05-20 23:59", "ann@example.com"),
        "b20": sell(session, vault, b, channel, "2033-05-20 10:00", "Bob@Example.com"),
        "v21": sell(session, vault, variant, channel, "2033-05-21 00:00:30", "ANN@example.com"),
        "a21": sell(session, vault, a, channel, "2033-05-21 09:00", "cat@example.com", coupon=coupon.code),
        "b0602": sell(session, vault, b, channel, "2033-06-02 10:00", "bob@example.com"),
    }
    create_order(session, product_id=a.id, quantity=1, email="dan@example.com", channel_code=channel.code,
                 now=utc("2033-05-21 12:00"))
    # A second payment of the 20th's order (the buyer paid twice): given back, its fee is no sale's.
    session.add(Payment(order_id=orders["a20"].id, channel_id=channel.id, trade_no=f"X{secrets.token_hex(4)}",
                        amount_cents=1000, status="extra", created_at=utc("2033-05-20 23:59:50"), fee_cents=99))
    refund_order(session, order_no=orders["a21"].order_no, reason="test", actor="t", now=utc("2033-05-22 12:00"))
    # An agent (with one sub-agent) sold bob's B on its sub-station and earned 0.30 on it; 0.50 on
    # cat's A, reversed when it was refunded.
    tag = secrets.token_hex(3)
    level, _ = agents.set_level(session, name=f"lv-{tag}", discount="10", actor="t")
    agent = agents.create_agent(session, username=f"ag-{tag}", level=level.name, actor="t")
    agents.create_agent(session, username=f"sub-{tag}", level=level.name, parent=agent.username, actor="t")
    session.execute(sa.update(Order).where(Order.id == orders["b20"].id).values(seller_agent_id=agent.id))
    for order, cents, status in ((orders["b20"], 30, "pending"), (orders["a21"], 50, "reversed")):
        session.add(Commission(order_id=order.id, agent_id=agent.id, amount_cents=cents, currency="CNY", status=status,
                               booked_at=order.delivered_at, release_at=order.delivered_at + dt.timedelta(days=7)))
    # Risk rules' decisions: two on the 20th, one on the 23rd (out of the range asked).
    rule = f"velocity-{tag}"
    for local, outcome in (("2033-05-20 08:00", "block"), ("2033-05-20 09:00", "review"), ("2033-05-23 08:00", "block")):
        session.add(RiskDecision(stage="order", rule_name=rule, kind="velocity_ip", action=outcome, inputs="{}",
                                 outcome=outcome, created_at=utc(local)))
    session.flush()
    return {"a": a, "variant": variant, "b": b, "channel": channel, "coupon": coupon, "one": one, "two": two,
            "orders": orders, "agent": agent, "rule": rule}


def both_ways(session, check):
    """Run `check(reader)` on the orders alone, then on the summaries (through 3 June)."""
    check(_live_reader(session))
    assert summary.summarise(session, TZ, now=utc("2033-06-04 01:30"), max_days=100)["days"] == 15
    reader = figures.Reader(session, TZ, now=utc("2033-06-04 01:30"))
    assert reader.through == D("2033-06-03") and reader.open_days(D("2033-05-20"), D("2033-06-04")) == [D("2033-06-04")]
    check(reader)


def _live_reader(session):
    reader = figures.Reader(session, TZ, now=utc("2033-06-04 01:30"))
    assert reader.through == D("2033-05-19")
    return reader


def mine(lines, shop, key="key"):
    ids = {shop["a"].id, shop["variant"].id, shop["b"].id, shop["one"].id, shop["two"].id, shop["channel"].id,
           shop["coupon"].id}
    return {getattr(ln, key): ln for ln in lines if ln.key in ids}


def test_totals_days_and_the_midnight_edge(backend, session, shop):
    def check(reader):
        [cny] = figures.totals(reader, D("2033-05-20"), D("2033-05-22"))
        c = cny.counters
        assert (c["created"], c["paid"], c["delivered"], c["refunded"]) == (5, 4, 4, 1)
        assert c["revenue_cents"] == 1000 + 500 + 1500 + 900
        assert c["refund_cents"] == 900 and c["discount_cents"] == 100
        assert c["fee_cents"] == 10 + 5 + 15 + 9
        assert c["cost_cents"] == 600 + 900 + 600 and c["uncosted"] == 1
        assert c["commission_cents"] == 30 + 50 - 50
        assert cny.profit_cents == 3900 - 900 - 2100 - 39 - 30
        days = dict(figures.daily(reader, D("2033-05-20"), D("2033-05-22")))
        assert days[D("2033-05-20")]["CNY"]["paid"] == 2 and days[D("2033-05-20")]["CNY"]["created"] == 3
        assert days[D("2033-05-20")]["CNY"]["revenue_cents"] == 1500
        assert days[D("2033-05-21")]["CNY"]["paid"] == 2 and days[D("2033-05-21")]["CNY"]["created"] == 2
        assert days[D("2033-05-22")]["CNY"]["refund_cents"] == 900 and days[D("2033-05-22")]["CNY"]["paid"] == 0
        # One day alone: the 20th ends at 15:59:59 UTC.
        [only] = figures.totals(reader, D("2033-05-20"), D("2033-05-20"))
        assert only.counters["revenue_cents"] == 1500
    both_ways(session, check)


def test_profit_by_product_group_and_category(backend, session, shop):
    a, v, b = shop["a"].id, shop["variant"].id, shop["b"].id

    def check(reader):
        lines = mine(figures.profit(reader, D("2033-05-20"), D("2033-06-02")), shop)
        assert {k: ln.profit_cents for k, ln in lines.items()} == {
            a: 1900 - 900 - 1200 - 19 + 50 - 50, v: 1500 - 900 - 15, b: 1000 - 10 - 30}
        assert lines[v].name == "A 季卡 · 季卡" and lines[a].name == "A <b>"
        group = mine(figures.profit(reader, D("2033-05-20"), D("2033-06-02"), by="group"), shop)
        assert group[a].profit_cents == -219 + 585 and group[a].counters["paid"] == 3 and v not in group
        cats = mine(figures.profit(reader, D("2033-05-20"), D("2033-06-02"), by="category"), shop)
        assert cats[shop["one"].id].profit_cents == 366 and cats[shop["one"].id].name == "卡类 <one>"
        assert cats[shop["two"].id].profit_cents == 960
        # Most profitable first.
        ordered = [ln.key for ln in figures.profit(reader, D("2033-05-20"), D("2033-06-02")) if ln.key in (a, v, b)]
        assert ordered == [b, v, a]
    both_ways(session, check)


def test_channel_conversion_heatmap_and_coupons(backend, session, shop):
    def check(reader):
        [line] = mine(figures.channels(reader, D("2033-05-20"), D("2033-05-22")), shop).values()
        c = line.counters
        assert (c["created"], c["paid"], c["delivered"], c["fee_cents"]) == (5, 4, 4, 39)
        orders, money = figures.heatmap(reader, D("2033-05-20"), D("2033-05-22"))
        friday, saturday = 4, 5
        assert orders[friday][23] == 1 and orders[friday][10] == 1 and money[friday][23] == 1000
        assert orders[saturday][0] == 1 and orders[saturday][9] == 1 and money[saturday][9] == 900
        assert sum(map(sum, orders)) == 4
        [coupon] = mine(figures.coupons(reader, D("2033-05-20"), D("2033-05-22")), shop).values()
        assert Counter(coupon.counters) == Counter(paid=1, discount_cents=100, revenue_cents=900, refunded=1)
    both_ways(session, check)


def test_agents_and_risk_rules(backend, session, shop):
    def check(reader):
        [line] = [ln for ln in figures.agents(reader, D("2033-05-20"), D("2033-05-22")) if ln.key == shop["agent"].id]
        assert (line.counters["paid"], line.counters["revenue_cents"], line.counters["commission_cents"]) == (1, 500, 30)
        assert line.extra == {"sub_agents": 1} and line.name == shop["agent"].username
        # the 22nd alone: the reversal
        [day] = [ln for ln in figures.agents(reader, D("2033-05-22"), D("2033-05-22")) if ln.key == shop["agent"].id]
        assert day.counters["commission_cents"] == -50
        rules = dict(figures.risk(reader, D("2033-05-20"), D("2033-05-22")))
        assert rules[shop["rule"]] == {"block": 1, "review": 1}
    both_ways(session, check)


def test_repurchase_and_cohorts(backend, session, shop):
    # cat's order as an agent's API order would be: no buyer's address, so no buyer at all
    session.execute(sa.update(Order).where(Order.id == shop["orders"]["a21"].id).values(email="", email_folded=None))
    assert summary.summarise(session, TZ, now=utc("2033-06-04 01:30"), max_days=100)["days"] == 15
    reader = figures.Reader(session, TZ, now=utc("2033-06-04 01:30"))
    r = figures.repurchase(reader, D("2033-05-01"), D("2033-05-31"))
    # ann (20th, 21st: one day apart, the e-mail in any case), bob (20th, 2 June: 13 days).
    assert (r.buyers, r.returned) == (2, 2)
    june = figures.repurchase(reader, D("2033-05-20"), D("2033-06-03"))
    assert june.gaps == [(1, 1), (13, 1)] and june.median_gap_days == 7.0
    assert june.cohorts == [(D("2033-05-01"), 2, [2, 1])]
    # A second run writes nothing twice.
    assert summary.summarise(session, TZ, now=utc("2033-06-04 01:30"))["days"] == 0
    assert figures.repurchase(reader, D("2033-05-01"), D("2033-05-31")).buyers == 2


def test_a_day_is_written_once_and_not_before_it_closes(backend, session, shop):
    assert summary.summarise(session, TZ, now=utc("2033-05-21 00:59"))["days"] == 0   # the 20th closes at 01:00
    assert summary.summarise(session, TZ, now=utc("2033-05-21 01:01"))["days"] == 1
    rows = session.scalars(sa.select(SalesDay).where(SalesDay.day == D("2033-05-20"))).all()
    assert sum(r.paid for r in rows) == 2
    assert summary.summarise(session, TZ, now=utc("2033-05-21 01:20"))["days"] == 0
    # Another time zone: everything is written again in its days (the 20th 23:59 Shanghai is the 20th in UTC too).
    assert summary.summarise(session, "UTC", now=utc("2033-05-21 12:00"))["days"] >= 1
    assert session.get(ReportProgress, 1).timezone == "UTC"


def test_the_range_is_checked(backend, session):
    reader = figures.Reader(session, TZ)
    with pytest.raises(Exception, match="ends before it starts"):
        figures.check_range(D("2033-05-02"), D("2033-05-01"))
    with pytest.raises(Exception, match="at most"):
        figures.check_range(D("2030-01-01"), D("2033-05-01"))
    with pytest.raises(Exception, match="by: one of"):
        figures.profit(reader, D("2033-05-01"), D("2033-05-02"), by="colour")

"""The reports' summary rows: what each day of the shop's calendar held, written once.

Why summaries, and why by the day things happened: a report over a year must not read a
million orders (W7: each report under 300 ms at a million orders). Every figure is a count
or a sum over a day, and each is counted on the day its event happened — created on
created_at's day, paid on paid_at's, delivered on delivered_at's, refunded on
refunded_at's — so nothing that happens later changes a day already past: a refund next
month is next month's refund, not a rewrite of the sale. The `summarise_sales` job writes
each closed day once, an hour after it ends (CLOSE_AFTER: what happened that day has
committed by then), one day per commit, in order; `day_facts` is the one place that says
what a day holds, and a report reads the days not yet summarised (today) through it too.

Cost is the product's cost price × quantity when the day is summarised (the night after a
sale, so a later change of cost price does not rewrite the past); a delivery without a cost
price counts as `uncosted`. Buyers (repurchase, cohorts) are keyed by a hash of the
case-folded e-mail and only come from closed days: they need every day in order.

The days are the shop's time zone's (site.timezone); when it changes, the summaries are
dropped and written again in the new one (`summarise`, or `kamengd report rebuild`).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import zoneinfo
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..agents.models import Commission
from ..catalog.models import Product
from ..database import insert_ignoring, utcnow
from ..orders.models import Order
from ..payments.models import Payment
from ..payments.settlement import day_bounds
from ..risk.models import RiskDecision
from .models import (AgentDay, CohortMonth, CouponDay, RepeatGap, ReportBuyer, ReportProgress, RiskDay, SalesDay,
                     SalesHour)

# A day is summarised an hour after it ends: a reconciliation or supplier pass stamps what it
# finds with the time it started, and may commit minutes later (gateways answer slowly).
CLOSE_AFTER = dt.timedelta(hours=1)
DAYS_PER_RUN = 31
SALES = ("created", "paid", "revenue_cents", "discount_cents", "fee_cents", "delivered", "cost_cents", "uncosted",
         "refunded", "refund_cents", "commission_cents")
PARTS = ("sales", "hours", "agents", "coupons", "risk")
TABLES = {"sales": SalesDay, "hours": SalesHour, "agents": AgentDay, "coupons": CouponDay, "risk": RiskDay}
BUYER_TABLES = (ReportBuyer, RepeatGap, CohortMonth)

_o, _p, _pay, _c, _r = (Order.__table__, Product.__table__, Payment.__table__, Commission.__table__,
                        RiskDecision.__table__)


def local_day(when: dt.datetime, tz: str) -> dt.date:
    """The shop's calendar day of a stored time (naive UTC)."""
    return when.replace(tzinfo=dt.UTC).astimezone(zoneinfo.ZoneInfo(tz)).date()


def last_closed_day(now: dt.datetime, tz: str) -> dt.date:
    """The newest day that has ended (and CLOSE_AFTER with it) at `now`."""
    return local_day(now - CLOSE_AFTER, tz) - dt.timedelta(days=1)


@dataclass
class Facts:
    """One day's counters per part and key (see the models for each part's key)."""
    sales: dict = field(default_factory=lambda: defaultdict(Counter))     # (product, channel, currency)
    hours: dict = field(default_factory=lambda: defaultdict(Counter))     # (hour, currency)
    agents: dict = field(default_factory=lambda: defaultdict(Counter))    # (agent, currency)
    coupons: dict = field(default_factory=lambda: defaultdict(Counter))   # (coupon, currency)
    risk: dict = field(default_factory=lambda: defaultdict(Counter))      # (rule name, outcome)


def _between(column, start, end):
    return sa.and_(column >= start, column < end)


def day_facts(session: Session, day: dt.date, tz: str, parts=PARTS) -> Facts:
    """What `day` (of the shop's calendar in `tz`) held: the one rule every report counts by."""
    start, end = day_bounds(day, tz)
    facts = Facts()
    key = (_o.c.product_id, sa.func.coalesce(_o.c.channel_id, 0), _o.c.currency)
    paid = _between(_o.c.paid_at, start, end)
    delivered = _between(_o.c.delivered_at, start, end)
    refunded = _between(_o.c.refunded_at, start, end)
    total, count = sa.func.sum, sa.func.count

    def add(target, query, names):
        for row in session.execute(query):
            counters = target[tuple(row[:-len(names)])]
            for name, value in zip(names, row[-len(names):]):
                counters[name] += int(value or 0)

    if "sales" in parts:
        s = facts.sales
        add(s, sa.select(*key, count()).where(_between(_o.c.created_at, start, end)).group_by(*key), ("created",))
        add(s, sa.select(*key, count(), total(_o.c.amount_cents), total(_o.c.discount_cents + _o.c.points_discount_cents))
            .where(paid).group_by(*key), ("paid", "revenue_cents", "discount_cents"))
        # The fee of the payment that paid the order (received, or held for staff); a second,
        # extra payment is given back and its fee is not the sale's. (The status as an
        # expression: on the column SQLite would walk the payments' status index, every payment.)
        add(s, sa.select(*key, total(_pay.c.fee_cents)).select_from(_o.join(_pay, _pay.c.order_id == _o.c.id))
            .where(paid, sa.func.coalesce(_pay.c.status, "").in_(("received", "held"))).group_by(*key),
            ("fee_cents",))
        # Cost: the products' cost prices read apart (a join made MariaDB read every order of
        # each product, seconds a day at a million orders), times the units delivered.
        costs = dict(session.execute(sa.select(_p.c.id, _p.c.cost_price_cents)).all())
        for *k, n, units in session.execute(sa.select(*key, count(), total(_o.c.quantity)).where(delivered)
                                            .group_by(*key)):
            counters, cost = s[tuple(k)], costs.get(k[0])
            counters["delivered"] += n
            counters["cost_cents"] += (cost or 0) * int(units)
            counters["uncosted"] += n if cost is None else 0
        add(s, sa.select(*key, count(), total(_o.c.amount_cents)).where(refunded).group_by(*key),
            ("refunded", "refund_cents"))
        booked = _o.join(_c, _c.c.order_id == _o.c.id)
        add(s, sa.select(*key, total(_c.c.amount_cents)).select_from(booked).where(delivered).group_by(*key),
            ("commission_cents",))
        add(s, sa.select(*key, -total(_c.c.amount_cents)).select_from(booked)
            .where(refunded, _c.c.status == "reversed").group_by(*key), ("commission_cents",))
    if "hours" in parts:
        zone = zoneinfo.ZoneInfo(tz)
        for paid_at, cents, currency in session.execute(
                sa.select(_o.c.paid_at, _o.c.amount_cents, _o.c.currency).where(paid)):
            counters = facts.hours[(paid_at.replace(tzinfo=dt.UTC).astimezone(zone).hour, currency)]
            counters["paid"] += 1
            counters["revenue_cents"] += cents
    if "agents" in parts:
        agent = sa.func.coalesce(_o.c.agent_id, _o.c.seller_agent_id)
        add(facts.agents, sa.select(agent, _o.c.currency, count(), total(_o.c.amount_cents))
            .where(paid, agent.is_not(None)).group_by(agent, _o.c.currency), ("paid", "revenue_cents"))
        booked = _o.join(_c, _c.c.order_id == _o.c.id)
        add(facts.agents, sa.select(_c.c.agent_id, _c.c.currency, total(_c.c.amount_cents)).select_from(booked)
            .where(delivered).group_by(_c.c.agent_id, _c.c.currency), ("commission_cents",))
        add(facts.agents, sa.select(_c.c.agent_id, _c.c.currency, -total(_c.c.amount_cents)).select_from(booked)
            .where(refunded, _c.c.status == "reversed").group_by(_c.c.agent_id, _c.c.currency),
            ("commission_cents",))
    if "coupons" in parts:
        add(facts.coupons, sa.select(_o.c.coupon_id, _o.c.currency, count(), total(_o.c.discount_cents),
                                     total(_o.c.amount_cents))
            .where(paid, _o.c.coupon_id.is_not(None)).group_by(_o.c.coupon_id, _o.c.currency),
            ("paid", "discount_cents", "revenue_cents"))
        add(facts.coupons, sa.select(_o.c.coupon_id, _o.c.currency, count())
            .where(refunded, _o.c.coupon_id.is_not(None)).group_by(_o.c.coupon_id, _o.c.currency), ("refunded",))
    if "risk" in parts:
        add(facts.risk, sa.select(_r.c.rule_name, _r.c.outcome, count())
            .where(_between(_r.c.created_at, start, end)).group_by(_r.c.rule_name, _r.c.outcome), ("decisions",))
    return facts


SUMS = {"sales": SALES, "hours": ("paid", "revenue_cents"), "agents": ("paid", "revenue_cents", "commission_cents"),
        "coupons": ("paid", "discount_cents", "revenue_cents", "refunded"), "risk": ("decisions",)}
KEYS = {"sales": ("product_id", "channel_id", "currency"), "hours": ("hour", "currency"),
        "agents": ("agent_id", "currency"), "coupons": ("coupon_id", "currency"), "risk": ("rule_name", "outcome")}


def _write_facts(session: Session, day: dt.date, facts: Facts) -> None:
    for part, model in TABLES.items():
        rows = [{"day": day, **dict(zip(KEYS[part], key)),
                 **{name: counters[name] for name in SUMS[part]}} for key, counters in getattr(facts, part).items()]
        if rows:
            session.execute(model.__table__.insert(), rows)


def buyer_key(email_folded: str) -> bytes:
    return hashlib.sha256(email_folded.encode()).digest()


def _month(day: dt.date) -> dt.date:
    return day.replace(day=1)


def _count_buyers(session: Session, day: dt.date, tz: str) -> int:
    """The day's paying buyers into report_buyers, their repeat gaps and their cohorts' month.
    Only ever for the day after the last one counted (the progress row, locked, says which)."""
    start, end = day_bounds(day, tz)
    orders: Counter = Counter()
    for folded, email in session.execute(sa.select(_o.c.email_folded, _o.c.email)
                                         .where(_between(_o.c.paid_at, start, end))):
        who = folded or (email or "").casefold()
        if who:   # (an agent's API order names no buyer: not one buyer who buys very often)
            orders[buyer_key(who)] += 1
    if not orders:
        return 0
    b = ReportBuyer.__table__
    known = {}
    keys = list(orders)
    for i in range(0, len(keys), 500):
        for row in session.execute(sa.select(b.c.buyer_key, b.c.first_day, b.c.last_day)
                                   .where(b.c.buyer_key.in_(keys[i:i + 500]))):
            known[bytes(row.buyer_key)] = row
    new, again, gaps, months = [], [], Counter(), Counter()
    for key, n in orders.items():
        row = known.get(key)
        if row is None:
            new.append({"buyer_key": key, "first_day": day, "last_day": day, "days": 1, "orders": n})
            months[(_month(day), _month(day))] += 1
        elif row.last_day < day:
            again.append({"k": key, "n": n})
            gaps[(day - row.last_day).days] += 1
            if _month(row.last_day) < _month(day):
                months[(_month(row.first_day), _month(day))] += 1
    if new:
        session.execute(b.insert(), new)
    if again:
        session.execute(b.update().where(b.c.buyer_key == sa.bindparam("k"))
                        .values(last_day=day, days=b.c.days + 1, orders=b.c.orders + sa.bindparam("n")), again)
    if gaps:
        session.execute(RepeatGap.__table__.insert(), [{"day": day, "gap_days": g, "buyers": n}
                                                       for g, n in gaps.items()])
    cm = CohortMonth.__table__
    for (cohort, month), n in sorted(months.items()):
        if not session.execute(cm.update().where(cm.c.cohort == cohort, cm.c.month == month)
                               .values(buyers=cm.c.buyers + n)).rowcount:
            session.execute(cm.insert().values(cohort=cohort, month=month, buyers=n))
    return len(orders)


def progress(session: Session, tz: str, *, lock: bool = False) -> ReportProgress:
    """The progress row (made on first use); in another time zone than `tz`, every summary is
    dropped and it starts again (only when locked: a reader just reads the orders then)."""
    query = sa.select(ReportProgress).where(ReportProgress.id == 1).execution_options(populate_existing=True)
    row = session.scalar(query.with_for_update() if lock else query)
    if row is None and lock:
        session.execute(insert_ignoring(ReportProgress.__table__).values(id=1, timezone=tz, through=None,
                                                                          updated_at=utcnow()))
        row = session.scalar(query.with_for_update())
    if row is not None and lock and row.timezone != tz:
        _drop(session)
        row.timezone, row.through = tz, None
        session.flush()
    return row


def _drop(session: Session) -> None:
    for model in (*TABLES.values(), *BUYER_TABLES):
        session.execute(model.__table__.delete())


def _first_day(session: Session, tz: str, fallback: dt.date) -> dt.date:
    first = session.scalar(sa.select(sa.func.min(_o.c.created_at)))
    return local_day(first, tz) if first is not None else fallback


def summarise(session: Session, tz: str, *, now: dt.datetime | None = None, max_days: int = DAYS_PER_RUN) -> dict:
    """Summarise the closed days not yet summarised, oldest first, one commit per day (the
    SQLite write lock is never held for more than a day's worth). The job's run."""
    last = last_closed_day(now or utcnow(), tz)
    done = buyers = 0
    while done < max_days:
        row = progress(session, tz, lock=True)
        day = row.through + dt.timedelta(days=1) if row.through is not None else _first_day(session, tz, last + dt.timedelta(days=1))
        if day > last:
            if row.through is None:   # nothing sold yet: start from today
                row.through = last
            session.commit()
            break
        _write_facts(session, day, day_facts(session, day, tz))
        buyers += _count_buyers(session, day, tz)
        row.through = day
        session.commit()
        done += 1
    return {"days": done, "buyers": buyers}


def rebuild(session: Session, tz: str, *, now: dt.datetime | None = None) -> dict:
    """Drop every summary and write them again (after a restore by hand, or to apply new cost prices)."""
    row = progress(session, tz, lock=True)
    _drop(session)
    row.through = None
    session.commit()
    days = buyers = 0
    while True:
        ran = summarise(session, tz, now=now, max_days=DAYS_PER_RUN)
        days, buyers = days + ran["days"], buyers + ran["buyers"]
        if ran["days"] < DAYS_PER_RUN:
            return {"days": days, "buyers": buyers}


"""The merchant's reports over a range of the shop's days: sales and profit, channels, hours,
repurchase, agents, coupons, risk. Nothing here writes.

Each reads the summary rows for the days summarised (kamengd.reports.summary) and the
orders themselves, through the same `day_facts`, for the days after (today): a range of a
year is a few thousand summary rows plus one day of orders. Money is integer cents per
currency; profit = revenue − refunds − cost − channel fees − agents' commission.
"""
from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..agents.models import Agent
from ..catalog.models import Category, Product
from ..database import utcnow
from ..errors import InvalidRequest
from ..marketing.models import Coupon
from ..payments.models import PaymentChannel
from .models import CohortMonth, RepeatGap, ReportBuyer
from .summary import KEYS, SUMS, TABLES, day_facts, local_day, progress

MAX_DAYS = 731


def parse_day(text: str | None, field: str, default: dt.date | None = None) -> dt.date | None:
    """A day typed by a person (YYYY-MM-DD), within the years every time zone's arithmetic holds;
    empty: `default`."""
    raw = (text or "").strip()
    if not raw:
        return default
    try:
        day = dt.date.fromisoformat(raw)
    except ValueError:
        day = None
    if day is None or not 1970 <= day.year <= 9998:
        raise InvalidRequest("%(field)s: %(value)r is not a day (YYYY-MM-DD)", field=field, value=raw[:20])
    return day


def check_range(first: dt.date, last: dt.date) -> None:
    if last < first:
        raise InvalidRequest("the range ends before it starts")
    if (last - first).days >= MAX_DAYS:
        raise InvalidRequest("at most %(days)s days at a time", days=MAX_DAYS)


class Reader:
    """Reads summed counters over days: summary rows up to `through`, the orders after it.
    One per request: the open days' facts are read once however many reports ask."""

    def __init__(self, session: Session, tz: str, now: dt.datetime | None = None):
        self.session, self.tz = session, tz
        self.today = local_day(now or utcnow(), tz)
        row = progress(session, tz)
        self.through = row.through if row is not None and row.timezone == tz else None
        self._facts: dict = {}

    def open_days(self, first: dt.date, last: dt.date) -> list[dt.date]:
        start = first if self.through is None else max(first, self.through + dt.timedelta(days=1))
        end = min(last, self.today)
        return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)] if start <= end else []

    def facts(self, day: dt.date, part: str):
        """The day's counters of one part (read once per reader; a report needs one part)."""
        if (day, part) not in self._facts:
            self._facts[(day, part)] = getattr(day_facts(self.session, day, self.tz, parts=(part,)), part)
        return self._facts[(day, part)]

    def sums(self, part: str, first: dt.date, last: dt.date, by: tuple[str, ...]) -> dict[tuple, Counter]:
        """The part's counters summed over [first, last], grouped by `by` (its key's columns, "day")."""
        names, t = SUMS[part], TABLES[part].__table__
        out: dict[tuple, Counter] = defaultdict(Counter)
        if self.through is not None and first <= self.through:
            cols = [t.c[b] for b in by]
            query = (sa.select(*cols, *(sa.func.sum(t.c[n]) for n in names))
                     .where(t.c.day >= first, t.c.day <= min(last, self.through)).group_by(*cols))
            for row in self.session.execute(query):
                counters = out[tuple(row[:len(by)])]
                for name, value in zip(names, row[len(by):]):
                    counters[name] += int(value or 0)
        for day in self.open_days(first, last):
            for key, counters in self.facts(day, part).items():
                values = dict(zip(KEYS[part], key), day=day)
                out[tuple(values[b] for b in by)].update(counters)
        return out


def profit_of(c: Counter) -> int:
    return c["revenue_cents"] - c["refund_cents"] - c["cost_cents"] - c["fee_cents"] - c["commission_cents"]


@dataclass
class Totals:
    currency: str
    counters: Counter

    @property
    def profit_cents(self) -> int:
        return profit_of(self.counters)

    def __getattr__(self, name):
        if name == "counters":
            raise AttributeError(name)
        return self.counters[name]


def totals(reader: Reader, first: dt.date, last: dt.date) -> list[Totals]:
    """Each currency's figures over the range (the shop's own first)."""
    sums = reader.sums("sales", first, last, ("currency",))
    return [Totals(currency, sums[(currency,)]) for currency in sorted(c for (c,) in sums)]


def main_currency(paid: dict[str, int]) -> str:
    """The currency most orders were paid in ({currency: paid orders}; CNY when nothing was)."""
    return max(paid, key=lambda c: (paid[c], c == "CNY")) if paid else "CNY"


def daily(reader: Reader, first: dt.date, last: dt.date) -> list[tuple[dt.date, dict[str, Counter]]]:
    """Every day of the range, oldest first, with each currency's figures (empty days too)."""
    sums = reader.sums("sales", first, last, ("day", "currency"))
    days: dict[dt.date, dict[str, Counter]] = {first + dt.timedelta(days=i): {} for i in range((last - first).days + 1)}
    for (day, currency), counters in sums.items():
        days[day][currency] = counters
    return sorted(days.items())


@dataclass
class Line:
    key: object              # what the line is about (a product, channel, … id)
    name: str
    currency: str
    counters: Counter
    extra: dict | None = None

    @property
    def profit_cents(self) -> int:
        return profit_of(self.counters)


PROFIT_BY = ("product", "group", "category")


def profit(reader: Reader, first: dt.date, last: dt.date, by: str = "product") -> list[Line]:
    """Profit by product (each variant, SKU, on its own), by product group (a product and its
    variants together) or by category; most profitable first."""
    if by not in PROFIT_BY:
        raise InvalidRequest("by: one of %(choices)s", choices=", ".join(PROFIT_BY))
    sums = reader.sums("sales", first, last, ("product_id", "currency"))
    ids = {pid for pid, _ in sums}
    products = {p.id: p for p in reader.session.execute(
        sa.select(Product.id, Product.name, Product.variant_of, Product.variant_name, Product.category_id)
        .where(Product.id.in_(ids))).all()} if ids else {}
    names = {}
    if by == "category":
        names = dict(reader.session.execute(sa.select(Category.id, Category.name)).all())
    elif by == "group":
        mains = {p.variant_of for p in products.values() if p.variant_of is not None} - set(products)
        names = dict(reader.session.execute(sa.select(Product.id, Product.name).where(Product.id.in_(mains))).all()) \
            if mains else {}
    lines: dict[tuple, Line] = {}
    for (pid, currency), counters in sums.items():
        p = products.get(pid)
        if by == "product":
            key = pid
            name = (f"{p.name} · {p.variant_name}" if p.variant_of is not None and p.variant_name else p.name) \
                if p else f"#{pid}"
        elif by == "group":
            key = p.variant_of if p is not None and p.variant_of is not None else pid
            name = names.get(key) or (products[key].name if key in products else f"#{key}")
        else:
            key = p.category_id if p is not None else None
            name = names.get(key, "—") if key is not None else "—"
        line = lines.setdefault((key, currency), Line(key, name, currency, Counter()))
        line.counters.update(counters)
    return sorted(lines.values(), key=lambda ln: (-ln.profit_cents, ln.name, str(ln.key)))


def channels(reader: Reader, first: dt.date, last: dt.date) -> list[Line]:
    """Per channel: orders created, paid, delivered (conversion), money and fees; busiest first."""
    sums = reader.sums("sales", first, last, ("channel_id", "currency"))
    codes = dict(reader.session.execute(sa.select(PaymentChannel.id, PaymentChannel.code)).all())
    lines = [Line(cid, codes.get(cid, "—") if cid else "—", currency, counters) for (cid, currency), counters in sums.items()]
    return sorted(lines, key=lambda ln: (-ln.counters["created"], ln.name))


WEEKDAYS = 7


def heatmap(reader: Reader, first: dt.date, last: dt.date) -> tuple[list[list[int]], list[list[int]]]:
    """Paid orders and revenue (every currency's cents added: one shop, one currency, mostly)
    by day of week (Monday first) × hour of the shop's day."""
    sums = reader.sums("hours", first, last, ("day", "hour"))
    orders = [[0] * 24 for _ in range(WEEKDAYS)]
    money = [[0] * 24 for _ in range(WEEKDAYS)]
    for (day, hour), counters in sums.items():
        orders[day.weekday()][hour] += counters["paid"]
        money[day.weekday()][hour] += counters["revenue_cents"]
    return orders, money


@dataclass
class Repurchase:
    through: dt.date | None       # summarised up to this day: buyers come from closed days only
    buyers: int                   # first paid in the range
    returned: int                 # of them, paid again on a later day (up to `through`)
    repeats: int                  # repeat purchases in the range (a buyer's later day)
    median_gap_days: float | None
    gaps: list[tuple[int, int]]   # (days between, buyers), for the histogram
    cohorts: list[tuple[dt.date, int, list[int]]]   # (first month, buyers, buyers in month +0, +1, …)


def _median(histogram: list[tuple[int, int]]) -> float | None:
    total = sum(n for _, n in histogram)
    if not total:
        return None
    low, high = (total - 1) // 2, total // 2   # the middle one or two, counting from 0
    seen, values = 0, {}
    for value, n in sorted(histogram):
        for position in (low, high):
            if seen <= position < seen + n:
                values[position] = value
        seen += n
    return (values[low] + values[high]) / 2


def repurchase(reader: Reader, first: dt.date, last: dt.date) -> Repurchase:
    """Who buys again: of the buyers who first paid in the range, how many paid again on a
    later day; the days between a buyer's purchases (those made in the range); and the
    cohorts by first month (each month since, how many of them paid)."""
    session = reader.session
    b, g, cm = ReportBuyer.__table__, RepeatGap.__table__, CohortMonth.__table__
    in_range = sa.and_(b.c.first_day >= first, b.c.first_day <= last)
    buyers, returned = session.execute(
        sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(sa.case((b.c.days > 1, 1), else_=0)), 0))
        .where(in_range)).one()
    gaps = [(int(d), int(n)) for d, n in session.execute(
        sa.select(g.c.gap_days, sa.func.sum(g.c.buyers)).where(g.c.day >= first, g.c.day <= last)
        .group_by(g.c.gap_days).order_by(g.c.gap_days))]
    cohorts: dict[dt.date, dict[dt.date, int]] = defaultdict(dict)
    for cohort, month, n in session.execute(
            sa.select(cm.c.cohort, cm.c.month, cm.c.buyers)
            .where(cm.c.cohort >= first.replace(day=1), cm.c.cohort <= last)):
        cohorts[cohort][month] = n
    table = []
    for cohort in sorted(cohorts):
        months = cohorts[cohort]
        span = max((m.year - cohort.year) * 12 + m.month - cohort.month for m in months)
        row = []
        for k in range(span + 1):
            year, month = divmod(cohort.month - 1 + k, 12)
            row.append(months.get(dt.date(cohort.year + year, month + 1, 1), 0))
        table.append((cohort, row[0], row))
    return Repurchase(reader.through, int(buyers), int(returned), sum(n for _, n in gaps), _median(gaps), gaps, table)


def agents(reader: Reader, first: dt.date, last: dt.date) -> list[Line]:
    """Per agent: its sales (own orders and its sub-station's), the commission it earned
    (booked less reversed) and its sub-agents now; biggest sales first."""
    sums = reader.sums("agents", first, last, ("agent_id", "currency"))
    session = reader.session
    a = Agent.__table__
    names = dict(session.execute(sa.select(a.c.id, a.c.username)).all())
    children = dict(session.execute(sa.select(a.c.parent_id, sa.func.count()).where(a.c.parent_id.is_not(None))
                                    .group_by(a.c.parent_id)).all())
    lines = [Line(aid, names.get(aid, f"#{aid}"), currency, counters, {"sub_agents": int(children.get(aid, 0))})
             for (aid, currency), counters in sums.items()]
    return sorted(lines, key=lambda ln: (-ln.counters["revenue_cents"], ln.name))


def coupons(reader: Reader, first: dt.date, last: dt.date) -> list[Line]:
    sums = reader.sums("coupons", first, last, ("coupon_id", "currency"))
    codes = dict(reader.session.execute(sa.select(Coupon.id, Coupon.code)).all())
    lines = [Line(cid, codes.get(cid, f"#{cid}"), currency, counters) for (cid, currency), counters in sums.items()]
    return sorted(lines, key=lambda ln: (-ln.counters["paid"], ln.name))


def risk(reader: Reader, first: dt.date, last: dt.date) -> list[tuple[str, dict[str, int]]]:
    """Per rule: its decisions by outcome; most decisions first."""
    sums = reader.sums("risk", first, last, ("rule_name", "outcome"))
    rules: dict[str, dict[str, int]] = defaultdict(dict)
    for (rule, outcome), counters in sums.items():
        rules[rule][outcome] = counters["decisions"]
    return sorted(rules.items(), key=lambda r: (-sum(r[1].values()), r[0]))

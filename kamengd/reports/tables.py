"""Each report as a table: the same columns and rows on the panel's page, in its CSV and XLSX,
and from `kamengd report NAME`. Money cells are Decimal (a number in a spreadsheet),
shares are text ("12.5%"), the rest ints and text. Nothing here writes."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal

from typing import NamedTuple

from ..errors import InvalidRequest
from ..vouchers import reports as voucher_reports
from . import figures

CENT = Decimal("0.01")


def money(cents: int) -> Decimal:
    return (Decimal(cents) / 100).quantize(CENT)


def share(part: int, whole: int) -> Decimal | None:
    """A percentage as a number (a loss's margin is negative: a spreadsheet sums and sorts it)."""
    return (Decimal(part * 100) / whole).quantize(Decimal("0.1")) if whole else None


class Text(NamedTuple):
    """Words to translate where they are shown (the panel: the staff's language; the CLI: English)."""
    msgid: str
    params: dict

    def render(self, gettext=None) -> str:
        return gettext(self.msgid, **self.params) if gettext else self.msgid % self.params if self.params \
            else self.msgid


def _l(msgid: str, **params) -> Text:
    return Text(msgid, params)


def text(cell, gettext=None) -> str:
    """A column's title or a note as words."""
    return cell.render(gettext) if isinstance(cell, Text) else str(cell)


def _percent(value: Decimal | None) -> str:
    return "—" if value is None else f"{value}%"


@dataclass
class Table:
    name: str
    title: object
    columns: list
    rows: list[list] = field(default_factory=list)
    notes: list = field(default_factory=list)
    series: list = field(default_factory=list)   # what a chart draws beside the table (repurchase: gaps)

    def header(self, gettext=None) -> list[str]:
        return [text(c, gettext) for c in self.columns]

    def cells(self, gettext=None):
        """The rows with their words (a weekday's name) in the reader's language."""
        for row in self.rows:
            yield [text(c, gettext) if isinstance(c, Text) else c for c in row]


def _sales(reader, first, last, by):
    table = Table("sales", _l("Sales per day"), [
        _l("Day"), _l("Currency"), _l("Orders created"), _l("Paid orders"), _l("Sales"), _l("Discounts"),
        _l("Refunded orders"), _l("Refunds"), _l("Cost"), _l("Channel fees"), _l("Commission"), _l("Profit")])
    for day, sums in figures.daily(reader, first, last):
        for currency, c in sorted(sums.items()):
            table.rows.append([day.isoformat(), currency, c["created"], c["paid"], money(c["revenue_cents"]),
                               money(c["discount_cents"]), c["refunded"], money(c["refund_cents"]),
                               money(c["cost_cents"]), money(c["fee_cents"]), money(c["commission_cents"]),
                               money(figures.profit_of(c))])
    return table


def _profit(reader, first, last, by):
    what = {"product": _l("Product"), "group": _l("Product with its variants"), "category": _l("Category")}[by]
    table = Table("profit", _l("Profit"), [
        what, _l("Currency"), _l("Paid orders"), _l("Sales"), _l("Refunds"), _l("Cost"), _l("Channel fees"),
        _l("Commission"), _l("Profit"), _l("Margin (%)"), _l("Delivered without a cost price")])
    uncosted = 0
    for ln in figures.profit(reader, first, last, by):
        c = ln.counters
        uncosted += c["uncosted"]
        table.rows.append([ln.name, ln.currency, c["paid"], money(c["revenue_cents"]), money(c["refund_cents"]),
                           money(c["cost_cents"]), money(c["fee_cents"]), money(c["commission_cents"]),
                           money(ln.profit_cents), share(ln.profit_cents, c["revenue_cents"]), c["uncosted"]])
    if uncosted:
        table.notes.append(_l("%(n)s orders were delivered of products without a cost price: their cost counts "
                              "as zero, their profit is too high.", n=uncosted))
    return table


def _channels(reader, first, last, by):
    table = Table("channels", _l("Payment channels"), [
        _l("Channel"), _l("Currency"), _l("Orders created"), _l("Paid orders"), _l("Paid of created (%)"),
        _l("Delivered"), _l("Sales"), _l("Channel fees"), _l("Fees of sales (%)")])
    for ln in figures.channels(reader, first, last):
        c = ln.counters
        table.rows.append([ln.name, ln.currency, c["created"], c["paid"], share(c["paid"], c["created"]),
                           c["delivered"], money(c["revenue_cents"]), money(c["fee_cents"]),
                           share(c["fee_cents"], c["revenue_cents"])])
    table.notes.append(_l("Counted on the day each happened: orders created in the range, paid in the range, "
                          "delivered in the range."))
    return table


WEEKDAY_NAMES = (_l("Monday"), _l("Tuesday"), _l("Wednesday"), _l("Thursday"), _l("Friday"), _l("Saturday"),
                 _l("Sunday"))


def _hours(reader, first, last, by):
    orders, _money = figures.heatmap(reader, first, last)
    table = Table("hours", _l("Paid orders by hour and day of the week"),
                  [_l("Day of the week"), *(f"{h:02d}" for h in range(24)), _l("Total")])
    for weekday, row in enumerate(orders):
        table.rows.append([WEEKDAY_NAMES[weekday], *row, sum(row)])
    return table


def _repurchase(reader, first, last, by):
    r = figures.repurchase(reader, first, last)
    span = max((len(row) for _, _, row in r.cohorts), default=1)
    table = Table("repurchase", _l("Repurchase: cohorts by the month of the first purchase"),
                  [_l("First month"), _l("Buyers"), *(_l("Month +%(n)s", n=k) for k in range(span))])
    table.series = r.gaps
    for cohort, buyers, row in r.cohorts:
        table.rows.append([cohort.strftime("%Y-%m"), buyers, *row, *([""] * (span - len(row)))])
    table.notes.append(_l("Buyers who first paid in the range: %(buyers)s; of them %(returned)s (%(share)s) paid "
                          "again on a later day.", buyers=r.buyers, returned=r.returned,
                          share=_percent(share(r.returned, r.buyers))))
    if r.median_gap_days is not None:
        days = f"{r.median_gap_days:g}"
        table.notes.append(_l("Median days between a buyer's purchases: %(days)s (%(n)s repeat purchases in the "
                              "range).", days=days, n=r.repeats))
    table.notes.append(_l("A buyer is an e-mail address. Counted up to %(day)s (days that have ended).",
                          day=r.through.isoformat() if r.through else "—"))
    return table


def _agents(reader, first, last, by):
    table = Table("agents", _l("Agents"), [_l("Agent"), _l("Currency"), _l("Paid orders"), _l("Sales"),
                                           _l("Commission earned"), _l("Sub-agents")])
    for ln in figures.agents(reader, first, last):
        c = ln.counters
        table.rows.append([ln.name, ln.currency, c["paid"], money(c["revenue_cents"]), money(c["commission_cents"]),
                           ln.extra["sub_agents"]])
    table.notes.append(_l("Sales: the agent's own orders and its sub-station's. Commission: booked on delivery, "
                          "less what refunds reversed."))
    return table


def _coupons(reader, first, last, by):
    table = Table("coupons", _l("Coupons"), [_l("Coupon"), _l("Currency"), _l("Paid orders"), _l("Discounts"),
                                             _l("Sales"), _l("Refunded orders")])
    for ln in figures.coupons(reader, first, last):
        c = ln.counters
        table.rows.append([ln.name, ln.currency, c["paid"], money(c["discount_cents"]), money(c["revenue_cents"]),
                           c["refunded"]])
    return table


def _risk(reader, first, last, by):
    rules = figures.risk(reader, first, last)
    outcomes = sorted({o for _, counts in rules for o in counts})
    table = Table("risk", _l("Risk rules"), [_l("Rule"), *outcomes, _l("Total")])
    for rule, counts in rules:
        table.rows.append([rule, *(counts.get(o, 0) for o in outcomes), sum(counts.values())])
    return table


def _stores(reader, first, last, by):
    table = Table("stores", _l("Redemptions by store"), [_l("Store"), _l("Redeemed"), _l("Uses"), _l("Value"),
                                                         _l("Refused"), _l("Undone")])
    for ln in voucher_reports.report(reader.session, first=first, last=last, zone=reader.tz, group=("store",)):
        table.rows.append([ln.key[0], ln.redeemed, ln.uses, money(ln.amount_cents), ln.refused, ln.undone])
    return table


REPORTS = {"sales": _sales, "profit": _profit, "channels": _channels, "hours": _hours, "repurchase": _repurchase,
           "agents": _agents, "coupons": _coupons, "risk": _risk, "stores": _stores}
TITLES = {"sales": _l("Sales"), "profit": _l("Profit"), "channels": _l("Channels"), "hours": _l("Hours"),
          "repurchase": _l("Repurchase"), "agents": _l("Agents"), "coupons": _l("Coupons"), "risk": _l("Risk"),
          "stores": _l("Stores")}


def build(reader: figures.Reader, name: str, first: dt.date, last: dt.date, by: str = "product") -> Table:
    """The report `name` over the shop's days [first, last]."""
    if name not in REPORTS:
        raise InvalidRequest("report: one of %(choices)s", choices=", ".join(REPORTS))
    figures.check_range(first, last)
    if by not in figures.PROFIT_BY:
        raise InvalidRequest("by: one of %(choices)s", choices=", ".join(figures.PROFIT_BY))
    return REPORTS[name](reader, first, last, by)

"""The shop's figures for staff: sales per day, orders by status, low stock, what needs a person.

Plain functions of a session that write nothing; those that depend on the day
take `now` (naive UTC) and the shop's time zone, so tests move the clock by
hand. Money is integer cents, summed per currency.
"""
from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..catalog.models import Product
from ..inventory.models import CardKey
from ..orders.models import ORDER_STATUSES, Order
from ..payments.settlement import day_bounds

# A sale: paid the right amount (held orders wait for staff; refunded ones were given back).
SALE_STATUSES = ("paid", "delivered")


def local_date(now: dt.datetime, tz: str) -> dt.date:
    """The shop's calendar day at `now` (naive UTC)."""
    return now.replace(tzinfo=dt.UTC).astimezone(zoneinfo.ZoneInfo(tz)).date()


@dataclass
class DaySales:
    day: dt.date
    orders: int = 0
    amounts: dict[str, int] = field(default_factory=dict)   # currency -> cents


def sales_between(session: Session, start: dt.datetime, end: dt.datetime) -> tuple[int, dict[str, int]]:
    """Orders paid in [start, end) (naive UTC) that are sales: their count and sum per currency."""
    rows = session.execute(
        sa.select(Order.currency, sa.func.count(), sa.func.coalesce(sa.func.sum(Order.amount_cents), 0))
        .where(Order.paid_at >= start, Order.paid_at < end, Order.status.in_(SALE_STATUSES))
        .group_by(Order.currency).order_by(Order.currency)).all()
    return sum(n for _, n, _ in rows), {currency: int(cents) for currency, _, cents in rows}


def daily_sales(session: Session, now: dt.datetime, tz: str, days: int = 7) -> list[DaySales]:
    """Today (in `tz`) and the days before it, newest first; a day is a calendar day of the shop."""
    today = local_date(now, tz)
    result = []
    for back in range(days):
        day = today - dt.timedelta(days=back)
        count, amounts = sales_between(session, *day_bounds(day, tz))
        result.append(DaySales(day, count, amounts))
    return result


def orders_by_status(session: Session) -> dict[str, int]:
    """Every order status (in the model's order) with its count, zeros included."""
    counts = dict(session.execute(sa.select(Order.status, sa.func.count()).group_by(Order.status)).all())
    return {status: counts.get(status, 0) for status in ORDER_STATUSES}


@dataclass
class LowStock:
    product_id: int
    name: str
    available: int
    threshold: int


def low_stock_products(session: Session, limit: int = 50) -> list[LowStock]:
    """Products below their low-stock threshold, the same rule as the stock.low warning
    (kamengd.inventory.warnings): active, automatic or loop-key delivery, threshold > 0,
    available < threshold. Emptiest first."""
    products = session.execute(sa.select(Product.id, Product.name, Product.low_stock_threshold)
                               .where(Product.is_active.is_(True), Product.delivery_mode.in_(("auto", "loop")),
                                      Product.low_stock_threshold > 0)).all()
    if not products:
        return []
    t = CardKey.__table__
    available = dict(session.execute(
        sa.select(t.c.product_id, sa.func.count()).where(t.c.status == "available",
                                                         t.c.product_id.in_([p.id for p in products]))
        .group_by(t.c.product_id)).all())
    low = [LowStock(p.id, p.name, available.get(p.id, 0), p.low_stock_threshold) for p in products
           if available.get(p.id, 0) < p.low_stock_threshold]
    low.sort(key=lambda s: (s.available, s.name, s.product_id))
    return low[:limit]


def _needs_attention():
    """Held or flagged orders, and paid orders of manual delivery: those wait for a person
    from the moment they are paid, not only once orders.manual_sla_minutes has passed."""
    manual = sa.select(Product.id).where(Product.delivery_mode == "manual")
    return sa.or_(Order.status == "held", Order.flagged_at.is_not(None),
                  sa.and_(Order.status == "paid", Order.product_id.in_(manual)))


def orders_needing_attention(session: Session, limit: int = 10) -> tuple[int, list[Order]]:
    """Orders waiting for a person (see _needs_attention): how many, and the `limit` waiting longest."""
    count = session.scalar(sa.select(sa.func.count()).select_from(Order).where(_needs_attention()))
    orders = session.scalars(sa.select(Order).where(_needs_attention())
                             .order_by(sa.func.coalesce(Order.flagged_at, Order.updated_at), Order.id)
                             .limit(limit)).all()
    return count, list(orders)

"""The shop's live figures for staff: orders by status, low stock, what needs a person (sales
and the other reports over days: kamengd.reports.figures).

Plain functions of a session that write nothing; those that depend on the day
take `now` (naive UTC) and the shop's time zone, so tests move the clock by
hand. Money is integer cents, summed per currency.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..agents.models import Withdrawal
from ..catalog.models import Product
from ..inventory.models import CardKey
from ..orders.models import ORDER_STATUSES, Order

def orders_by_status(session: Session, since: dt.datetime | None = None) -> dict[str, int]:
    """Every order status (in the model's order) with its count, zeros included; with `since`,
    of the orders created since then (the dashboard's 30 days)."""
    if since is None:
        query = sa.select(Order.status, sa.func.count()).group_by(Order.status)
    else:
        # The range of the created_at index, read in order: grouped by an expression, not the
        # column (on the column SQLite groups along the status index and reads every order's
        # created_at), and that index forced on MariaDB (which guesses a month twice as many
        # orders as it is and reads the whole table instead): seconds either way at a million.
        status = sa.func.coalesce(Order.status, "")
        query = (sa.select(status, sa.func.count()).where(Order.created_at >= since).group_by(status)
                 .with_hint(Order, "FORCE INDEX (ix_orders_created_at)", "mysql"))
    counts = dict(session.execute(query).all())
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
    from the moment they are paid, not only once orders.manual_sla_minutes has passed.
    A union of three index lookups (an OR of them reads every order at a million)."""
    o = Order.__table__
    manual = sa.select(Product.id).where(Product.delivery_mode == "manual")
    return sa.union(sa.select(o.c.id).where(o.c.status == "held"),
                    sa.select(o.c.id).where(o.c.flagged_at.is_not(None)),
                    sa.select(o.c.id).where(o.c.status == "paid", o.c.product_id.in_(manual))).subquery()


def orders_needing_attention(session: Session, limit: int = 10) -> tuple[int, list[Order]]:
    """Orders waiting for a person (see _needs_attention): how many, and the `limit` waiting longest."""
    waiting = _needs_attention()
    count = session.scalar(sa.select(sa.func.count()).select_from(waiting))
    orders = session.scalars(sa.select(Order).where(Order.id.in_(sa.select(waiting.c.id)))
                             .order_by(sa.func.coalesce(Order.flagged_at, Order.updated_at), Order.id)
                             .limit(limit)).all()
    return count, list(orders)


def waiting_for_stock(session: Session) -> int:
    """Paid orders the delivery sweep retries (no stock when they were paid)."""
    return session.scalar(sa.select(sa.func.count()).select_from(Order)
                          .where(Order.status == "paid", Order.next_delivery_at.is_not(None)))


def withdrawals_requested(session: Session) -> int:
    """Agents' withdrawals waiting for finance to pay or reject them."""
    return session.scalar(sa.select(sa.func.count()).select_from(Withdrawal).where(Withdrawal.status == "requested"))

"""Low-stock warnings: one `stock.low` per crossing of the threshold.

A product is low when its available keys fall below its low-stock threshold
(0: never). `products.low_stock_alerted` remembers that the warning went out;
it is cleared (and `stock.restocked` sent) once stock is back at or above the
threshold, so the next fall warns again and no tick in between repeats it.
Both changes are conditional updates, so two runners never warn twice.
"""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..catalog.models import Product
from ..database import utcnow
from ..notifications.events import emit
from .models import CardKey


def check_low_stock(session: Session, now: dt.datetime | None = None) -> dict[str, int]:
    now = now or utcnow()
    products = session.execute(sa.select(Product.id, Product.name, Product.low_stock_threshold,
                                         Product.low_stock_alerted)
                               .where(Product.is_active.is_(True), Product.delivery_mode.in_(("auto", "loop")),
                                      sa.or_(Product.low_stock_threshold > 0, Product.low_stock_alerted.is_(True)))
                               ).all()
    counts = {"checked": len(products), "low": 0, "restocked": 0}
    if not products:
        return counts
    t = CardKey.__table__
    available = dict(session.execute(
        sa.select(t.c.product_id, sa.func.count()).where(t.c.status == "available",
                                                         t.c.product_id.in_([p.id for p in products]))
        .group_by(t.c.product_id)).all())
    for p in products:
        stock = available.get(p.id, 0)
        low = stock < p.low_stock_threshold
        if low == p.low_stock_alerted:
            continue
        changed = session.execute(sa.update(Product).where(Product.id == p.id,
                                                           Product.low_stock_alerted.is_(not low))
                                  .values(low_stock_alerted=low)
                                  .execution_options(synchronize_session=False)).rowcount
        if changed:
            emit(session, "stock.low" if low else "stock.restocked",
                 {"product_id": p.id, "product_name": p.name, "available": stock,
                  "threshold": p.low_stock_threshold}, now)
            counts["low" if low else "restocked"] += 1
    return counts

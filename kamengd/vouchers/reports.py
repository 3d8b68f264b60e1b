"""What stores redeemed: per store, day (the shop's) and product, and today's count, live.

Undone redemptions do not count; refusals are counted apart (a store refusing many codes is
worth a look). Read from `redemptions` by its time index, a range of days at a time.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..catalog.models import Product
from ..database import utcnow
from ..errors import InvalidRequest
from .models import Redemption, Store

GROUPS = ("store", "day", "product")
MAX_DAYS = 366


@dataclass
class Line:
    key: tuple               # (store name, day, product name) with the ungrouped parts None
    redeemed: int = 0        # redemptions, undone ones left out
    uses: int = 0
    amount_cents: int = 0
    refused: int = 0
    undone: int = 0


def day_bounds(day: dt.date, zone: str) -> tuple[dt.datetime, dt.datetime]:
    """A day of the shop's calendar as naive UTC [start, end)."""
    tz = ZoneInfo(zone)
    start = dt.datetime.combine(day, dt.time(), tz).astimezone(dt.timezone.utc).replace(tzinfo=None)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tz).astimezone(dt.timezone.utc) \
        .replace(tzinfo=None)
    return start, end


def shop_today(zone: str, now: dt.datetime | None = None) -> dt.date:
    now = now or utcnow()
    return now.replace(tzinfo=dt.timezone.utc).astimezone(ZoneInfo(zone)).date()


def report(session: Session, *, first: dt.date, last: dt.date, zone: str, group: tuple[str, ...] = GROUPS,
           store_ids: list[int] | None = None) -> list[Line]:
    """One line per group (any of store, day, product), most redeemed first within each day."""
    if last < first:
        raise InvalidRequest("the range ends before it starts")
    if (last - first).days >= MAX_DAYS:
        raise InvalidRequest("at most %(days)s days at a time", days=MAX_DAYS)
    if not group or any(g not in GROUPS for g in group):
        raise InvalidRequest("group: any of %(groups)s", groups=", ".join(GROUPS))
    start, _ = day_bounds(first, zone)
    _, end = day_bounds(last, zone)
    r = Redemption.__table__
    q = (sa.select(r.c.store_id, r.c.product_id, r.c.created_at, r.c.outcome, r.c.uses, r.c.amount_cents,
                   r.c.undone_at)
         .where(r.c.created_at >= start, r.c.created_at < end))
    if store_ids is not None:
        q = q.where(r.c.store_id.in_(store_ids))
    stores = dict(session.execute(sa.select(Store.id, Store.name)).all())
    tz = ZoneInfo(zone)
    lines: dict[tuple, Line] = {}
    product_ids: set[int] = set()
    rows = session.execute(q).all()
    for row in rows:
        if row.product_id is not None:
            product_ids.add(row.product_id)
    products = dict(session.execute(sa.select(Product.id, Product.name).where(Product.id.in_(product_ids))).all()) \
        if product_ids else {}
    for row in rows:
        day = row.created_at.replace(tzinfo=dt.timezone.utc).astimezone(tz).date()
        key = (stores.get(row.store_id, f"#{row.store_id}") if "store" in group else None,
               day if "day" in group else None,
               (products.get(row.product_id, "—") if row.product_id is not None else "—")
               if "product" in group else None)
        line = lines.setdefault(key, Line(key))
        if row.outcome == "refused":
            line.refused += 1
        elif row.undone_at is not None:
            line.undone += 1
        else:
            line.redeemed += 1
            line.uses += row.uses
            line.amount_cents += row.amount_cents
    return sorted(lines.values(), key=lambda ln: (ln.key[1] or dt.date.min, -ln.redeemed, str(ln.key[0]),
                                                  str(ln.key[2])), reverse=False)


def today(session: Session, zone: str, now: dt.datetime | None = None) -> dict:
    """Today's redemptions (and refusals) per store: what the panel's live count shows."""
    start, end = day_bounds(shop_today(zone, now), zone)
    r = Redemption.__table__
    rows = session.execute(
        sa.select(r.c.store_id,
                  sa.func.sum(sa.case((sa.and_(r.c.outcome == "redeemed", r.c.undone_at.is_(None)), 1), else_=0)),
                  sa.func.sum(sa.case((r.c.outcome == "refused", 1), else_=0)))
        .where(r.c.created_at >= start, r.c.created_at < end).group_by(r.c.store_id)).all()
    names = dict(session.execute(sa.select(Store.id, Store.name)).all())
    stores = [{"store_id": sid, "store": names.get(sid, f"#{sid}"), "redeemed": int(ok or 0),
               "refused": int(no or 0)} for sid, ok, no in rows]
    stores.sort(key=lambda s: (-s["redeemed"], s["store"]))
    return {"day": shop_today(zone, now).isoformat(), "redeemed": sum(s["redeemed"] for s in stores),
            "refused": sum(s["refused"] for s in stores), "stores": stores}

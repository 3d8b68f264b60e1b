"""A product's buyer daily limit: at most N units to one buyer (e-mail, case-folded) per shop day.

Counted like the channels' daily caps and the coupons' uses: the buyer's row for the day is
made first in a short transaction of its own, then the order's transaction adds its quantity
by a conditional UPDATE that succeeds only while the sum stays within the limit: two orders
of one buyer at once never both pass it. An order that expires unpaid gives its units back
once (its limit_day is cleared by a conditional UPDATE first).
"""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..database import insert_ignoring, write_apart
from ..orders.models import Order
from .models import BuyerDay

_b, _o = BuyerDay.__table__, Order.__table__
_ADD = insert_ignoring(_b).values(product_id=sa.bindparam("pid"), email_folded=sa.bindparam("b_email"),
                                  day=sa.bindparam("b_day"), quantity=0)
_TAKE = (_b.update().where(_b.c.product_id == sa.bindparam("pid"), _b.c.email_folded == sa.bindparam("b_email"),
                           _b.c.day == sa.bindparam("b_day"),
                           _b.c.quantity + sa.bindparam("q") <= sa.bindparam("limit"))
         .values(quantity=_b.c.quantity + sa.bindparam("q")))


def _params(product_id: int, email: str, day: dt.date, **more) -> dict:
    return {"pid": product_id, "b_email": email.strip().casefold(), "b_day": day, **more}


def prepare(session: Session, product_id: int, email: str, day: dt.date) -> None:
    """The buyer's row for the day, before the order's transaction (see the module)."""
    if not session.in_transaction():
        write_apart(session, _ADD, _params(product_id, email, day))


def take(session: Session, product_id: int, email: str, day: dt.date, quantity: int, limit: int) -> bool:
    """Count the order's units for the buyer, in the caller's transaction; False (nothing
    counted) when they would pass the limit. The caller rolls back on False."""
    conn = session.connection()
    params = _params(product_id, email, day, q=quantity, limit=limit)
    if conn.execute(_TAKE, params).rowcount == 1:
        return True
    # No row yet (a caller's transaction): made here; one another order just made is asked again.
    conn.execute(_ADD, params)
    return conn.execute(_TAKE, params).rowcount == 1


def left_today(session: Session, product_id: int, email: str, day: dt.date, limit: int) -> int:
    bought = session.scalar(sa.select(_b.c.quantity).where(_b.c.product_id == product_id,
                                                           _b.c.email_folded == email.strip().casefold(),
                                                           _b.c.day == day)) or 0
    return max(0, limit - bought)


def take_again(session: Session, order, limit: int | None, day: dt.date) -> bool:
    """An expired order whose units went back is paid after all: counted again on `day` (the
    shop day it was placed). False, nothing counted, when that passes the limit now."""
    if limit is None or order.limit_day is not None or not order.email:
        return True
    params = _params(order.product_id, order.email, day, q=order.quantity, limit=limit)
    conn = session.connection()
    conn.execute(_ADD, params)
    if conn.execute(_TAKE, params).rowcount != 1:
        return False
    conn.execute(_o.update().where(_o.c.id == order.id).values(limit_day=day))
    return True


def give_back_expired(session: Session, order_ids: list[int]) -> int:
    """The units of orders that expired unpaid, each order's once, on the day they were counted."""
    rows = session.execute(sa.select(_o.c.id, _o.c.product_id, _o.c.email, _o.c.quantity, _o.c.limit_day)
                           .where(_o.c.id.in_(order_ids), _o.c.status == "expired", _o.c.limit_day.is_not(None))).all()
    conn = session.connection()
    given = 0
    for order_id, product_id, email, quantity, day in rows:
        if conn.execute(_o.update().where(_o.c.id == order_id, _o.c.status == "expired", _o.c.limit_day == day)
                        .values(limit_day=None)).rowcount:
            conn.execute(_b.update().where(_b.c.product_id == product_id, _b.c.email_folded == email.strip().casefold(),
                                           _b.c.day == day)
                         .values(quantity=sa.case((_b.c.quantity >= quantity, _b.c.quantity - quantity), else_=0)))
            given += 1
    return given

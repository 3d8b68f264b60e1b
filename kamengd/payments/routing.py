"""Which channel takes an order: the rules per channel, the stand-ins when one cannot, its health.

A channel takes an order when it is enabled and healthy, the product allows it
(a product that names channels is paid through those only), the amount lies
within its minimum and maximum, and its daily cap has room. A buyer who chose
a channel that cannot take the order is routed to another channel of the same
method (支付宝 for 支付宝): the lowest priority (`sort_order`) first, and among
channels of one priority by weight, at random. The same happens on the pay page
when a gateway will not create the payment (`channel.failover`). A channel
whose create call or health check fails is `down`, skipped until a check
succeeds (the check_channels job, or staff's Test button).

The daily cap counts the amounts of the orders placed through the channel in
the shop's day (site.timezone), less those that expired unpaid: one
conditional UPDATE in the order's own transaction, so concurrent orders never
pass it together.
"""
from __future__ import annotations

import datetime as dt
import json
import random
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..audit.services import record
from ..database import insert_ignoring, utcnow, write_apart
from ..notifications.events import emit
from ..orders.models import Order
from . import methods, sandbox
from .gateways import gateway
from .models import ChannelDay, PaymentChannel, ProductChannel

_c, _pc, _d = PaymentChannel.__table__, ProductChannel.__table__, ChannelDay.__table__
MAX_ERROR = 300


def fee_cents(amount_cents: int, fee_bp: int, fee_fixed_cents: int) -> int:
    """What the channel keeps of a payment: its rate (basis points, half up to the cent) plus its fixed part."""
    rate = (Decimal(amount_cents) * fee_bp / 10000).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    return int(rate) + fee_fixed_cents


def shop_day(now: dt.datetime, timezone: str) -> dt.date:
    return now.replace(tzinfo=dt.timezone.utc).astimezone(ZoneInfo(timezone)).date()


def allowed_for_product(product_id):
    """SQL: the channel row `_c` may take this product's orders."""
    return sa.or_(~sa.exists().where(_pc.c.product_id == product_id),
                  sa.exists().where(_pc.c.product_id == product_id, _pc.c.channel_id == _c.c.id))


def within_amounts(amount):
    return sa.and_(sa.or_(_c.c.min_amount_cents.is_(None), _c.c.min_amount_cents <= amount),
                   sa.or_(_c.c.max_amount_cents.is_(None), _c.c.max_amount_cents >= amount))


def takes_currency(channel_type: str, options: dict, currency: str) -> bool:
    protocol = gateway(channel_type)
    taken = protocol.currencies(options) if protocol is not None else None
    return taken is None or currency in taken


def refusal(row, amount_cents: int) -> str | None:
    """Why the channel of an offer row (health, amounts, allowed, currency) cannot take this
    order, or None."""
    if row.health != "ok":
        return "down"
    if not row.allowed:
        return "not for this product"
    if not takes_currency(row.channel_type, json.loads(row.options), row.currency):
        return f"not in {row.currency}"
    if row.min_amount_cents is not None and amount_cents < row.min_amount_cents:
        return "below its minimum"
    if row.max_amount_cents is not None and amount_cents > row.max_amount_cents:
        return "above its maximum"
    return None


_made_days: set[tuple[int, dt.date]] = set()   # (channel, day) rows this process knows exist
_ADD_DAY = insert_ignoring(_d).values(channel_id=sa.bindparam("cid"), day=sa.bindparam("day"), amount_cents=0,
                                      orders=0)


def _ensure_day(session: Session, channel_id: int, day: dt.date) -> None:
    """The channel's row for the day, made in a short transaction of its own: made inside the
    order's, MySQL's INSERT IGNORE would hold a shared lock on the row that the UPDATE then
    needs exclusively, and concurrent orders would deadlock on it."""
    if (channel_id, day) in _made_days:
        return
    write_apart(session, _ADD_DAY, {"cid": channel_id, "day": day})
    if len(_made_days) > 10_000:
        _made_days.clear()
    _made_days.add((channel_id, day))


def take_capacity(session: Session, channel_id: int, cap: int | None, day: dt.date, amount_cents: int) -> bool:
    """Count an order against the channel's daily cap, in the caller's transaction: False
    (nothing counted) when it has no room. Call it before the transaction has begun if it can:
    the day's row may be made first, in a transaction of its own."""
    if cap is None:
        return True
    if not session.in_transaction():
        _ensure_day(session, channel_id, day)
    conn = session.connection()
    taken = conn.execute(_d.update().where(_d.c.channel_id == channel_id, _d.c.day == day,
                                           _d.c.amount_cents + amount_cents <= cap)
                         .values(amount_cents=_d.c.amount_cents + amount_cents, orders=_d.c.orders + 1))
    if taken.rowcount == 1:
        return True
    # No room, or no row yet (a caller's transaction, or a row this process thought it made).
    if amount_cents > cap:
        return False
    if conn.execute(_ADD_DAY.values(amount_cents=amount_cents, orders=1), {"cid": channel_id, "day": day}).rowcount:
        return True
    # Another order made the row meanwhile: ask again.
    return conn.execute(_d.update().where(_d.c.channel_id == channel_id, _d.c.day == day,
                                          _d.c.amount_cents + amount_cents <= cap)
                        .values(amount_cents=_d.c.amount_cents + amount_cents, orders=_d.c.orders + 1)).rowcount == 1


def give_back(conn, channel_id: int, day: dt.date, amount_cents: int) -> None:
    """An order counted on that day will not be paid through the channel (expired, moved)."""
    conn.execute(_d.update().where(_d.c.channel_id == channel_id, _d.c.day == day)
                 .values(amount_cents=sa.case((_d.c.amount_cents >= amount_cents, _d.c.amount_cents - amount_cents),
                                              else_=0),
                         orders=sa.case((_d.c.orders > 0, _d.c.orders - 1), else_=0)))


def give_back_expired(session: Session, order_ids: list[int]) -> int:
    """The cap room of orders that expired unpaid, each given back once, on the day it was
    counted: the order's cap_day is cleared by a conditional UPDATE first, so two sweeps (two
    servers) never both give it back. The orders given back."""
    rows = session.execute(sa.select(Order.id, Order.channel_id, Order.amount_cents, Order.cap_day)
                           .where(Order.id.in_(order_ids), Order.status == "expired",
                                  Order.cap_day.is_not(None))).all()
    conn = session.connection()
    o = Order.__table__
    given = 0
    for order_id, channel_id, amount, day in rows:
        if conn.execute(o.update().where(o.c.id == order_id, o.c.status == "expired", o.c.cap_day == day)
                        .values(cap_day=None)).rowcount:
            give_back(conn, channel_id, day, amount)
            given += 1
    return given


@dataclass(frozen=True)
class Route:
    id: int
    code: str
    type: str
    options: dict
    daily_cap_cents: int | None
    method: str


def stand_ins(session: Session, *, product_id: int, amount_cents: int, currency: str, method: str, site_url: str,
              day: dt.date, leave_out: set[int] = frozenset(), rng: random.Random | None = None) -> list[Route]:
    """The channels that could take this order by `method`, in routing order: lowest priority
    first, then by weight at random within one priority (weight 0: only when no other will)."""
    rows = session.execute(
        sa.select(_c.c.id, _c.c.code, _c.c.type, _c.c.options, _c.c.sort_order, _c.c.weight, _c.c.daily_cap_cents,
                  sa.select(_d.c.amount_cents).where(_d.c.channel_id == _c.c.id, _d.c.day == day)
                  .scalar_subquery().label("taken"))
        .where(_c.c.is_enabled.is_(True), _c.c.health == "ok", allowed_for_product(product_id),
               within_amounts(amount_cents))
        .order_by(_c.c.sort_order, _c.c.id)).all()
    rng = rng or random.SystemRandom()
    found: dict[int, list] = {}
    for row in rows:
        if row.id in leave_out:
            continue
        options = json.loads(row.options)
        if method not in methods.offered(row.type, options):
            continue
        if row.type == "sandbox" and not sandbox.takes_orders(options, site_url):
            continue
        if not takes_currency(row.type, options, currency):
            continue
        if row.daily_cap_cents is not None and (row.taken or 0) + amount_cents > row.daily_cap_cents:
            continue
        found.setdefault(row.sort_order, []).append((row, options))
    ordered = []
    for priority in sorted(found):
        group = found[priority]
        while group:   # weighted draw without replacement
            weights = [max(row.weight, 0) for row, _ in group]
            pick = rng.choices(range(len(group)), weights=weights)[0] if sum(weights) else 0
            row, options = group.pop(pick)
            ordered.append(Route(row.id, row.code, row.type, options, row.daily_cap_cents, method))
    return ordered


def mark_health(session: Session, channel: PaymentChannel, ok: bool, error: str | None, *,
                now: dt.datetime | None = None, actor: str = "system") -> None:
    """Record a create call's or a check's outcome; a change of state is audited and announced."""
    now = now or utcnow()
    was = channel.health
    channel.health = "ok" if ok else "down"
    channel.health_error = None if ok else (error or "")[:MAX_ERROR]
    channel.health_checked_at = now
    if was != channel.health:
        action = "channel.up" if ok else "channel.down"
        details = {"code": channel.code, "type": channel.type, **({} if ok else {"error": channel.health_error})}
        record(session, action, actor=actor, target=f"channel:{channel.code}", details=details)
        emit(session, action, details, now=now)


def record_failover(session: Session, *, order_no: str, from_code: str, to_code: str, reason: str,
                    actor: str = "system", now: dt.datetime | None = None) -> None:
    details = {"order_no": order_no, "from": from_code, "to": to_code, "reason": reason[:MAX_ERROR]}
    record(session, "channel.failover", actor=actor, target=f"order:{order_no}", details=details)
    emit(session, "channel.failover", details, now=now)

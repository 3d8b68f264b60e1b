"""Paid orders that are not delivered yet: retried with backoff, flagged for staff when stuck.

A paid auto-delivery order without stock is tried again by the sweep after
30 s, 1, 2, 5, 10, 30 minutes, then hourly (an import or a released
reservation serves it at once, whatever the backoff). An order is flagged
for a person, once, with `order.stuck` (or `order.held` for a wrong amount):
- waiting for stock longer than the setting orders.stock_wait_alert_minutes;
- a manual-delivery order not delivered within orders.manual_sla_minutes;
- a supplier-delivered order not bought upstream within orders.stock_wait_alert_minutes;
- a delivered order whose mail could not be sent after every retry.
The flag stays until the order is dealt with (delivering clears it).
"""
from __future__ import annotations

import datetime as dt
import logging

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..catalog.models import Product
from ..database import is_busy, utcnow
from ..notifications.events import emit, order_payload
from ..settings.services import get_setting
from . import reasons
from .models import Order
from .services import deliver_waiting_orders

log = logging.getLogger("kamengd.orders")
DELIVERY_BACKOFF_SECONDS = (30, 60, 120, 300, 600, 1800, 3600)


def flag_order(session: Session, order: Order, reason: str, now: dt.datetime | None = None,
               event: str | None = "order.stuck") -> bool:
    """Flag the order for staff unless it already is; the event goes out once."""
    now = now or utcnow()
    reason = reason[:200]
    flagged = session.execute(sa.update(Order).where(Order.id == order.id, Order.flagged_at.is_(None))
                              .values(flagged_at=now, flag_reason=reason)
                              .execution_options(synchronize_session=False)).rowcount
    session.refresh(order)
    if flagged and event:
        emit(session, event, order_payload(session, order, reason=reason), now)
    return bool(flagged)


def _due(now: dt.datetime):
    return sa.and_(Order.status == "paid",
                   sa.or_(Order.next_delivery_at.is_(None), Order.next_delivery_at <= now))


def retry_waiting_deliveries(session: Session, now: dt.datetime | None = None) -> dict[str, int]:
    """The sweep: deliver paid auto orders whose next try is due; back off the rest.
    Commits per product: one product's failure does not undo or stop the others."""
    now = now or utcnow()
    counts = {"delivered": 0, "waiting": 0, "errors": 0}
    products = session.scalars(sa.select(Order.product_id).join(Product, Product.id == Order.product_id)
                               .where(_due(now), Product.delivery_mode.in_(("auto", "loop"))).distinct()).all()
    session.commit()   # ends the read: a failing product below rolls back only its own work
    for product_id in products:
        try:
            counts["delivered"] += deliver_waiting_orders(session, product_id)
            still = session.scalars(sa.select(Order).where(Order.product_id == product_id, _due(now))
                                    .order_by(Order.id).limit(1000)).all()
            for order in still:
                delay = DELIVERY_BACKOFF_SECONDS[min(order.delivery_attempts, len(DELIVERY_BACKOFF_SECONDS) - 1)]
                order.delivery_attempts += 1
                order.next_delivery_at = now + dt.timedelta(seconds=delay)
            counts["waiting"] += len(still)
            session.commit()   # this product's deliveries stay, whatever the next product does
        except Exception as exc:
            session.rollback()
            counts["errors"] += 1
            log.warning("delivering the waiting orders of product %s failed; retried next run", product_id,
                        exc_info=not is_busy(exc))
    return counts


def flag_stuck_orders(session: Session, now: dt.datetime | None = None, limit: int = 500) -> dict[str, int]:
    now = now or utcnow()
    wait = get_setting(session, "orders.stock_wait_alert_minutes")
    sla = get_setting(session, "orders.manual_sla_minutes")
    counts = {"waiting_for_stock": 0, "manual_past_sla": 0, "supplier_not_bought": 0}
    # A supplier-delivered order waits on the supplier (down, disabled, its key unreadable, its
    # own stock): whatever the forwarder saw, a person hears of it after the stock wait.
    rules = (("waiting_for_stock", "auto loop", wait, reasons.reason(reasons.WAITING_FOR_STOCK, minutes=wait)),
             ("manual_past_sla", "manual", sla, reasons.reason(reasons.MANUAL_PAST_SLA, minutes=sla)),
             ("supplier_not_bought", "supplier", wait,
              reasons.reason(reasons.SUPPLIER_NOT_BOUGHT, minutes=wait)))
    for name, mode, minutes, reason in rules:
        stuck = session.scalars(sa.select(Order).join(Product, Product.id == Order.product_id)
                                .where(Order.status == "paid", Order.flagged_at.is_(None),
                                       Product.delivery_mode.in_(mode.split()),
                                       Order.paid_at < now - dt.timedelta(minutes=minutes))
                                .order_by(Order.id).limit(limit)).all()
        for order in stuck:
            counts[name] += flag_order(session, order, reason, now)
    return counts


def flagged_orders(session: Session, limit: int = 100) -> list[Order]:
    return session.scalars(sa.select(Order).where(Order.flagged_at.is_not(None))
                           .order_by(Order.flagged_at, Order.id).limit(limit)).all()

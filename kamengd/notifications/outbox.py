"""The mail outbox: a delivery queues its mail in the transaction that delivers.

Only the write lives here, below orders and payments, which call it; the
mail is rendered and sent after the commit by kamengd.notifications.email
(a job, above orders: it reads the order's keys and flags an order whose
mail keeps failing). The row holds no key: the body is rendered at send time.
"""
from __future__ import annotations

import datetime as dt

from sqlalchemy.orm import Session

from ..database import utcnow
from ..orders.models import Order
from .models import EmailOutbox


def queue_delivery_email(session: Session, order: Order) -> None:
    queue_delivery_email_for(session, order.id, order.email)


def queue_delivery_email_for(session: Session, order_id: int, address: str, now: dt.datetime | None = None) -> None:
    """One INSERT on the session's connection (the payment callback's hot path)."""
    now = now or utcnow()
    session.connection().execute(EmailOutbox.__table__.insert(), {
        "kind": "order.delivered", "order_id": order_id, "to_address": address, "status": "pending",
        "attempts": 0, "next_attempt_at": now, "created_at": now})

"""Events: what happened, written in the transaction that made it happen.

`emit` only adds a row; it needs no config and sends nothing, so a business
rule can call it without knowing who listens, and a rolled-back transaction
leaves no event behind. Like kamengd.notifications.outbox, this is the low
half of notifications: orders, payments and stock write here, and nothing here
imports them. The notification job (kamengd.notifications.dispatch)
fans each event out to the webhooks and staff addresses subscribed to it.
Payloads never hold card keys, tokens or query passwords.
"""
from __future__ import annotations

import datetime as dt
import json

from sqlalchemy.orm import Session

from ..catalog.models import Product
from ..config import EVENT_TYPES
from ..database import utcnow
from ..money import format_cents
from .models import Event


def emit(session: Session, event_type: str, payload: dict, now: dt.datetime | None = None) -> Event:
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    event = Event(type=event_type, created_at=now or utcnow(),
                  payload=json.dumps(payload, ensure_ascii=False, sort_keys=True, default=str))
    session.add(event)
    return event


def emit_many(session: Session, events: list[tuple[str, dict]], now: dt.datetime | None = None) -> None:
    """Several events in one INSERT (the payment callback's hot path)."""
    now = now or utcnow()
    rows = []
    for event_type, payload in events:
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {event_type!r}")
        rows.append({"type": event_type, "created_at": now, "dispatched": False,
                     "payload": json.dumps(payload, ensure_ascii=False, sort_keys=True, default=str)})
    session.connection().execute(Event.__table__.insert(), rows)


def order_payload(session: Session, order, **extra) -> dict:
    product = session.get(Product, order.product_id)
    return payload_of(order, product.name if product else None, **extra)


def payload_of(order, product_name: str | None, **extra) -> dict:
    """An order's event payload from anything with the order's attributes (a row, an Order).
    `agent_id`: the agent who bought it (its own webhooks hear of it), else None."""
    return {"order_no": order.order_no, "status": order.status, "product_id": order.product_id,
            "agent_id": getattr(order, "agent_id", None),
            "product_name": product_name, "quantity": order.quantity,
            "amount": format_cents(order.amount_cents), "currency": order.currency, "email": order.email,
            "created_at": _iso(order.created_at), "paid_at": _iso(order.paid_at),
            "delivered_at": _iso(order.delivered_at), **extra}


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") + "Z" if value else None

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..database import BigId, UTCDateTime, utcnow
from ..extensions import db


class EmailOutbox(db.Model):
    """A mail to send, written in the transaction that caused it (a delivery),
    sent after the commit by a job that retries with backoff. The body is
    rendered at send time: card keys are never stored in clear, here neither."""
    __tablename__ = "email_outbox"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(32))
    order_id: Mapped[int | None] = mapped_column(sa.ForeignKey("orders.id"), index=True)
    to_address: Mapped[str] = mapped_column(sa.String(254))
    # kind "ticket.reply": the staff message it carries (no foreign key: SQLite would copy the table).
    ticket_message_id: Mapped[int | None] = mapped_column(BigId)
    status: Mapped[str] = mapped_column(sa.String(16), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_error: Mapped[str | None] = mapped_column(sa.String(500))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (sa.Index("ix_email_outbox_status_next_attempt_at", "status", "next_attempt_at"),)


class Event(db.Model):
    """Something staff or their systems may want to hear about, written in the
    transaction that caused it. The notification job fans each event out to the
    webhooks and staff addresses subscribed to it (config [notifications]).
    The payload never holds card keys or buyers' secrets."""
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    type: Mapped[str] = mapped_column(sa.String(32))
    payload: Mapped[str] = mapped_column(sa.Text, default="{}")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    dispatched: Mapped[bool] = mapped_column(default=False)

    __table_args__ = (sa.Index("ix_events_dispatched_id", "dispatched", "id"),)


# last_error of an agent's webhook's delivery given up because the agent removed the webhook
WEBHOOK_REMOVED = "the webhook was removed: not sent"


class Notification(db.Model):
    """One event for one target (a webhook URL or a staff address), retried with backoff."""
    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_id: Mapped[int] = mapped_column(sa.ForeignKey("events.id"))
    channel: Mapped[str] = mapped_column(sa.String(16))  # webhook | email
    target: Mapped[str] = mapped_column(sa.String(500))
    # channel "agent": the agent's webhook, signed with its own secret
    agent_webhook_id: Mapped[int | None] = mapped_column(sa.ForeignKey("agent_webhooks.id"), index=True)
    status: Mapped[str] = mapped_column(sa.String(16), default="pending")  # pending | sent | failed
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_error: Mapped[str | None] = mapped_column(sa.String(500))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        sa.Index("ix_notifications_status_next_attempt_at", "status", "next_attempt_at"),
        sa.Index("ix_notifications_event_id", "event_id"),
    )


class NotificationAttempt(db.Model):
    """Every try to deliver a notification, kept for staff to see what happened."""
    __tablename__ = "notification_attempts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    notification_id: Mapped[int] = mapped_column(sa.ForeignKey("notifications.id"), index=True)
    attempt: Mapped[int]
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    duration_ms: Mapped[int]
    outcome: Mapped[str] = mapped_column(sa.String(16))  # ok | error
    status_code: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(sa.String(500))

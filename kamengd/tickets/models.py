"""After-sales tickets (售后工单): a buyer's question about one order, the thread with staff,
and how it ended (a refund, a reissued key, or closed)."""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.dialects.mysql import MEDIUMBLOB
from sqlalchemy.orm import Mapped, mapped_column

from ..database import BigId, UTCDateTime, utcnow
from ..extensions import db

# open: the buyer waits for staff; answered: staff replied, the buyer may write again;
# resolved: ended with an action (refund, reissue); closed: ended without one.
TICKET_STATUSES = ("open", "answered", "resolved", "closed")
LIVE = ("open", "answered")
RESOLUTIONS = ("refund", "reissue", "close")


class Ticket(db.Model):
    __tablename__ = "tickets"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    order_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("orders.id"), index=True)
    # The order's id while the ticket is live, NULL once it ended: one live ticket per order,
    # kept by the database (a unique index allows many NULLs, on SQLite and MariaDB alike).
    live_order_id: Mapped[int | None] = mapped_column(BigId, unique=True)
    status: Mapped[str] = mapped_column(sa.String(10), default="open")
    resolution: Mapped[str | None] = mapped_column(sa.String(10))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Since when the buyer waits for an answer (NULL: staff have answered, or it ended): the SLA.
    waiting_since: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # Set by the scheduler when the buyer has waited longer than tickets.sla_hours; cleared by
    # staff's next answer.
    overdue_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    ended_by: Mapped[str | None] = mapped_column(sa.String(128))

    __table_args__ = (
        sa.CheckConstraint("status IN (" + ", ".join(f"'{s}'" for s in TICKET_STATUSES) + ")",
                           name="ticket_status_known"),
        # Staff's queue (by status, oldest waiting first) and the SLA sweep.
        sa.Index("ix_tickets_status_waiting", "status", "waiting_since"),
    )


class TicketMessage(db.Model):
    """One message of the thread: the buyer's, staff's, or what an action did (author "system")."""
    __tablename__ = "ticket_messages"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("tickets.id", ondelete="CASCADE"))
    author: Mapped[str] = mapped_column(sa.String(8))
    staff: Mapped[str | None] = mapped_column(sa.String(128))   # who of the staff wrote it
    body: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        sa.CheckConstraint("author IN ('buyer', 'staff', 'system')", name="ticket_author_known"),
        sa.Index("ix_ticket_messages_ticket", "ticket_id", "id"),
    )


class TicketImage(db.Model):
    """A picture the buyer attached (a screenshot of the error), re-encoded (kamengd.catalog.images):
    what the phone wrote into the file (its place, its make) is not kept."""
    __tablename__ = "ticket_images"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    message_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("ticket_messages.id", ondelete="CASCADE"),
                                            unique=True)
    data: Mapped[bytes] = mapped_column(sa.LargeBinary().with_variant(MEDIUMBLOB(), "mysql", "mariadb"))
    width: Mapped[int] = mapped_column(sa.Integer)
    height: Mapped[int] = mapped_column(sa.Integer)


class KeyReissue(db.Model):
    """A delivered key replaced: the old one void, a new one from stock, in one transaction. The old
    key's id is unique: a key is replaced once, however many staff press the button at once."""
    __tablename__ = "key_reissues"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    order_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("orders.id"), index=True)
    ticket_id: Mapped[int | None] = mapped_column(BigId, sa.ForeignKey("tickets.id"))
    old_key_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("card_keys.id"), unique=True)
    new_key_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("card_keys.id"), unique=True)
    reason: Mapped[str] = mapped_column(sa.String(500))
    actor: Mapped[str] = mapped_column(sa.String(128))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..database import FixedBinary, BigId, UTCDateTime, utcnow
from ..extensions import db


class PaymentChannel(db.Model):
    """A merchant's payment account. Secret options (the Epay key) are stored
    encrypted with the data key, never in clear in the database or a backup."""
    __tablename__ = "payment_channels"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(sa.String(32), unique=True)
    type: Mapped[str] = mapped_column(sa.String(16))
    name: Mapped[str] = mapped_column(sa.String(100))
    options: Mapped[str] = mapped_column(sa.Text, default="{}")
    secret_ciphertext: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    secret_nonce: Mapped[bytes | None] = mapped_column(FixedBinary(12))
    secret_key_version: Mapped[int | None] = mapped_column(sa.SmallInteger)
    is_enabled: Mapped[bool] = mapped_column(default=True)
    sort_order: Mapped[int] = mapped_column(default=0)   # the routing priority too: lowest first
    # Routing (kamengd.payments.routing): the amounts an order may have here, what it may take
    # a day (orders placed, less those that expired), its share among channels of one priority.
    min_amount_cents: Mapped[int | None] = mapped_column(sa.BigInteger)
    max_amount_cents: Mapped[int | None] = mapped_column(sa.BigInteger)
    daily_cap_cents: Mapped[int | None] = mapped_column(sa.BigInteger)
    weight: Mapped[int] = mapped_column(default=1, server_default="1")
    # What the provider keeps of each payment: basis points (1/100 %) plus a fixed part.
    fee_bp: Mapped[int] = mapped_column(default=0, server_default="0")
    fee_fixed_cents: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    # ok | down: a failed create call or health check takes it out of routing until a check succeeds.
    health: Mapped[str] = mapped_column(sa.String(8), default="ok", server_default="ok")
    health_error: Mapped[str | None] = mapped_column(sa.String(300))
    health_checked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = (
        sa.CheckConstraint("health IN ('ok', 'down')", name="health"),
        sa.CheckConstraint("weight >= 0 AND fee_bp >= 0 AND fee_bp <= 10000 AND fee_fixed_cents >= 0",
                           name="routing"),
    )


class ProductChannel(db.Model):
    """A product that names its channels is paid through those only; one with none, through any."""
    __tablename__ = "product_channels"

    product_id: Mapped[int] = mapped_column(sa.ForeignKey("products.id"), primary_key=True)
    channel_id: Mapped[int] = mapped_column(sa.ForeignKey("payment_channels.id"), primary_key=True, index=True)


class ChannelDay(db.Model):
    """What a channel with a daily cap has taken on one day (site.timezone): the orders placed
    through it, less those that expired unpaid. Raised by a conditional UPDATE in the order's
    own transaction, so concurrent orders never pass the cap together."""
    __tablename__ = "channel_days"

    channel_id: Mapped[int] = mapped_column(sa.ForeignKey("payment_channels.id"), primary_key=True)
    day: Mapped[dt.date] = mapped_column(sa.Date, primary_key=True)
    amount_cents: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    orders: Mapped[int] = mapped_column(default=0)


# The longest trade number kept, from a callback or a query answer alike.
MAX_TRADE_NO = 128
# Payment.status: received (paid its order), held (the wrong amount: a person
# decides), extra (a second payment for an order already paid: to be given
# back), refunded (an extra payment given back).
PAYMENT_STATUSES = ("received", "held", "extra", "refunded")
# How an order charged twice is flagged; the flag clears once every extra payment is refunded.
EXTRA_PAYMENT_FLAG = "paid twice"


def placeholder_trade_no(order_no: str) -> str:
    """The trade number of a payment found by reconciliation when the gateway's answer
    named none; its callback, when it comes, fills in the real one."""
    return f"reconciled-{order_no}"


class Payment(db.Model):
    """A payment reported by a channel; (channel, trade_no) makes callbacks idempotent."""
    __tablename__ = "payments"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    order_id: Mapped[int] = mapped_column(sa.ForeignKey("orders.id"), index=True)
    channel_id: Mapped[int] = mapped_column(sa.ForeignKey("payment_channels.id"))
    trade_no: Mapped[str] = mapped_column(sa.String(MAX_TRADE_NO))
    amount_cents: Mapped[int] = mapped_column(sa.BigInteger)
    status: Mapped[str] = mapped_column(sa.String(16), index=True)   # the panel lists the extra ones
    # callback | reconciliation: how it became known.
    source: Mapped[str] = mapped_column(sa.String(16), default="callback", server_default="callback")
    # What the channel keeps of it (its fee rule when the payment was recorded), for reports.
    fee_cents: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    raw: Mapped[str] = mapped_column(sa.Text, default="{}")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    refunded_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        sa.UniqueConstraint("channel_id", "trade_no", name="uq_payments_channel_trade_no"),
    )


class SettlementReport(db.Model):
    """The daily settlement: the gateway's view of each Epay order of one day
    (in site.timezone) against ours. Filled in chunks; `last_order_id` is how
    far it got."""
    __tablename__ = "settlement_reports"

    id: Mapped[int] = mapped_column(primary_key=True)
    day: Mapped[dt.date] = mapped_column(sa.Date, unique=True)
    timezone: Mapped[str] = mapped_column(sa.String(64))
    status: Mapped[str] = mapped_column(sa.String(16), default="running")  # running | complete
    last_order_id: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    checked: Mapped[int] = mapped_column(default=0)
    mismatches: Mapped[int] = mapped_column(default=0)
    unverified: Mapped[int] = mapped_column(default=0)
    # The gateway did not answer about the order after last_order_id: tries so far, next try.
    failures: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class SettlementEntry(db.Model):
    """One order whose gateway record and ours disagree, or that could not be checked."""
    __tablename__ = "settlement_entries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    report_id: Mapped[int] = mapped_column(sa.ForeignKey("settlement_reports.id"), index=True)
    order_id: Mapped[int] = mapped_column(sa.ForeignKey("orders.id"), index=True)
    order_no: Mapped[str] = mapped_column(sa.String(32))
    kind: Mapped[str] = mapped_column(sa.String(32))
    our_status: Mapped[str] = mapped_column(sa.String(16))
    our_amount_cents: Mapped[int | None] = mapped_column(sa.BigInteger)
    gateway_status: Mapped[str] = mapped_column(sa.String(32))
    gateway_amount_cents: Mapped[int | None] = mapped_column(sa.BigInteger)
    detail: Mapped[str] = mapped_column(sa.String(500), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class PaymentAttempt(db.Model):
    """A payment created at a gateway for an order (a Checkout Session, a QR code): what the
    buyer's pay page shows again, what reconciliation asks the gateway about, and, failed,
    why the order moved on to another channel."""
    __tablename__ = "payment_attempts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    order_id: Mapped[int] = mapped_column(sa.ForeignKey("orders.id"), index=True)
    channel_id: Mapped[int] = mapped_column(sa.ForeignKey("payment_channels.id"))
    status: Mapped[str] = mapped_column(sa.String(16))   # open | failed
    gateway_ref: Mapped[str | None] = mapped_column(sa.String(MAX_TRADE_NO))
    pay_url: Mapped[str | None] = mapped_column(sa.Text)
    qr_payload: Mapped[str | None] = mapped_column(sa.Text)
    amount_cents: Mapped[int] = mapped_column(sa.BigInteger)
    currency: Mapped[str] = mapped_column(sa.String(8))
    details: Mapped[str] = mapped_column(sa.Text, default="{}")
    error: Mapped[str | None] = mapped_column(sa.String(300))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        sa.UniqueConstraint("channel_id", "gateway_ref", name="uq_payment_attempts_channel_ref"),
        sa.CheckConstraint("status IN ('open', 'failed')", name="status"),
    )


class PaymentRefund(db.Model):
    """Money given back through the channel a payment came by. `refund_no` is the gateway's
    idempotency key: one per payment, so a refund asked twice is made once."""
    __tablename__ = "payment_refunds"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    payment_id: Mapped[int] = mapped_column(sa.ForeignKey("payments.id"), index=True)
    refund_no: Mapped[str] = mapped_column(sa.String(64), unique=True)
    amount_cents: Mapped[int] = mapped_column(sa.BigInteger)
    gateway_ref: Mapped[str] = mapped_column(sa.String(MAX_TRADE_NO))
    actor: Mapped[str] = mapped_column(sa.String(80))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..database import FixedBinary, BigId, UTCDateTime, utcnow
from ..extensions import db

ORDER_STATUSES = ("pending", "paid", "delivered", "expired", "cancelled", "refunded", "held")


class Order(db.Model):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    order_no: Mapped[str] = mapped_column(sa.String(32), unique=True)
    product_id: Mapped[int] = mapped_column(sa.ForeignKey("products.id"), index=True)
    channel_id: Mapped[int | None] = mapped_column(sa.ForeignKey("payment_channels.id"))
    quantity: Mapped[int]
    unit_price_cents: Mapped[int] = mapped_column(sa.BigInteger)
    amount_cents: Mapped[int] = mapped_column(sa.BigInteger)
    currency: Mapped[str] = mapped_column(sa.String(3))
    email: Mapped[str] = mapped_column(sa.String(254), index=True)
    # The e-mail case-folded: one buyer however they type it (risk rules, first-order coupons).
    email_folded: Mapped[str | None] = mapped_column(sa.String(254))
    status: Mapped[str] = mapped_column(sa.String(16), default="pending")
    # Only hashes of the buyer's secrets are stored.
    token_hash: Mapped[bytes] = mapped_column(FixedBinary(32))
    query_password_hash: Mapped[str | None] = mapped_column(sa.String(255))
    # The e-mail + query password lookup finds the order by this (Vault.lookup_tags).
    lookup_tag: Mapped[bytes | None] = mapped_column(FixedBinary(32), index=True)
    # What the buyer filled in for the product ([{"label", "value"}] as JSON), kept as placed.
    buyer_input: Mapped[str | None] = mapped_column(sa.Text)
    # The Epay pay type chosen (alipay, wxpay, …; kamengd.payments.methods); NULL: the channel's own.
    pay_type: Mapped[str | None] = mapped_column(sa.String(16))
    client_ip: Mapped[str | None] = mapped_column(sa.String(45))
    # An agent's order (the agent API, paid from its balance): the agent, the request's
    # Idempotency-Key and a hash of its body (the same key with another body is refused).
    # No foreign key: SQLite could add one only by copying the whole orders table.
    agent_id: Mapped[int | None] = mapped_column(sa.Integer)
    # A buyer's order placed on an agent's sub-station, or through its invite link: the agent
    # who sold it earns its margin on delivery (no foreign key, as agent_id).
    seller_agent_id: Mapped[int | None] = mapped_column(sa.Integer)
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(64))
    request_hash: Mapped[bytes | None] = mapped_column(FixedBinary(32))
    external_ref: Mapped[str | None] = mapped_column(sa.String(64))   # the agent's own reference
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    paid_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # When staff refunded it (the day's refunds in the reports count by this).
    refunded_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # The day (site.timezone) the order was counted against its channel's daily cap, NULL when
    # it was not (no cap then) or its room was given back (it expired): given back exactly once.
    cap_day: Mapped[dt.date | None] = mapped_column(sa.Date)
    # The day the order was counted against its product's buyer daily limit (buyer_days), NULL
    # when it was not or its units were given back (it expired): given back exactly once.
    limit_day: Mapped[dt.date | None] = mapped_column(sa.Date)
    # The coupon taken off the order (no foreign key, as agent_id) and what it took off:
    # amount_cents = unit_price_cents × quantity − discount_cents − points_discount_cents.
    coupon_id: Mapped[int | None] = mapped_column(sa.Integer)
    discount_cents: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default=sa.text("0"))
    # The order holds one use of its coupon: cleared, and the use given back, exactly once
    # when it expires unpaid.
    coupon_held: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    # Points its member spent on it at checkout (积分抵扣, kamengd.marketing.points) and what they
    # took off; points_held: the order holds them (cleared, and they go back, exactly once when
    # it expires unpaid or is refunded; taken again when it is paid after it expired).
    points_used: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default=sa.text("0"))
    points_discount_cents: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default=sa.text("0"))
    points_held: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    # A loop-key product's order (循环卡密): the key it was delivered, the same for every buyer
    # (no foreign key, as coupon_id: SQLite would copy the table to add one).
    loop_key_id: Mapped[int | None] = mapped_column(BigId)
    # The member (or agent) whose order it is, for its points (kamengd.marketing.points): signed
    # in to the portal when placing it on the storefront, or who paid it from a balance or with
    # points (no foreign key, as agent_id).
    member_id: Mapped[int | None] = mapped_column(sa.Integer)
    # A hash of the buyer's device cookie (the storefront's), for the risk rules' velocity.
    device_tag: Mapped[str | None] = mapped_column(sa.String(32))
    # A risk rule asked for review: once paid, the order is held for a person, not delivered.
    risk_review: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    # When reconciliation next asks the gateway about this unpaid order (掉单).
    next_check_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # A paid order waiting for stock: tries so far and when the sweep tries next.
    delivery_attempts: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    next_delivery_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # Needs a person (held payment, waiting too long, past the manual SLA, mail failed).
    flagged_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    flag_reason: Mapped[str | None] = mapped_column(sa.String(200))

    __table_args__ = (
        # Sweeps: pending orders past expiry, paid orders waiting for stock.
        sa.Index("ix_orders_status_expires_at", "status", "expires_at"),
        sa.Index("ix_orders_paid_at", "paid_at"),  # the daily settlement, the reports' day
        # The reports' day of deliveries and refunds (kamengd.reports.summary).
        sa.Index("ix_orders_delivered_at", "delivered_at"),
        sa.Index("ix_orders_refunded_at", "refunded_at"),
        # "Does a paid buyer wait for this product?" on every order, and the
        # waiting queue oldest first: paid orders are few, so status leads.
        sa.Index("ix_orders_status_product_paid_at", "status", "product_id", "paid_at"),
        sa.Index("ix_orders_flagged_at", "flagged_at"),
        # One order per agent and Idempotency-Key; an agent's orders newest first.
        sa.Index("uq_orders_agent_idempotency", "agent_id", "idempotency_key", unique=True),
        sa.Index("ix_orders_agent_created", "agent_id", "created_at"),
        sa.Index("ix_orders_seller_created", "seller_agent_id", "created_at"),
        # The risk rules' velocity: orders of one address, e-mail or device lately.
        sa.Index("ix_orders_client_ip_created", "client_ip", "created_at"),
        sa.Index("ix_orders_email_folded_created", "email_folded", "created_at"),
        sa.Index("ix_orders_device_created", "device_tag", "created_at"),
        # A member's orders newest first (its points statement names them).
        sa.Index("ix_orders_member_created", "member_id", "created_at"),
        # The orders a loop key went to (staff's search by key); only loop orders have one.
        sa.Index("ix_orders_loop_key_id", "loop_key_id", sqlite_where=sa.text("loop_key_id IS NOT NULL")),
        sa.CheckConstraint("quantity >= 1", name="quantity_positive"),
        sa.CheckConstraint("amount_cents >= 0", name="amount_not_negative"),
        sa.CheckConstraint(
            "status IN (" + ", ".join(f"'{s}'" for s in ORDER_STATUSES) + ")", name="status_known"),
    )

"""Suppliers (other kamengd shops this one buys from), their products as last synced, and
the orders forwarded to them."""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..database import BigId, FixedBinary, UTCDateTime, utcnow
from ..extensions import db

MARKUPS = ("fixed", "percent")
# pending: to send (again); waiting: placed upstream, its keys not there yet; delivered;
# cancelled: the order here was refunded and nothing was bought upstream.
FORWARD_STATUSES = ("pending", "waiting", "delivered", "cancelled")


class Supplier(db.Model):
    """Another kamengd, reached through its agent API with a key of this shop's agent
    account there. The secret is sealed with the data key (it signs every request)."""
    __tablename__ = "suppliers"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(32), unique=True)
    base_url: Mapped[str] = mapped_column(sa.String(500))
    key_id: Mapped[str] = mapped_column(sa.String(32))
    secret_ciphertext: Mapped[bytes] = mapped_column(sa.LargeBinary)
    secret_nonce: Mapped[bytes] = mapped_column(FixedBinary(12))
    secret_key_version: Mapped[int] = mapped_column(sa.SmallInteger)
    is_active: Mapped[bool] = mapped_column(default=True, server_default=sa.true())
    currency: Mapped[str | None] = mapped_column(sa.String(3))
    balance_cents: Mapped[int | None] = mapped_column(sa.BigInteger)
    low_balance_cents: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default=sa.text("0"))
    # Set when supplier.low_balance went out; cleared once the balance is back above.
    low_balance_warned: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    synced_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(sa.String(300))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class SupplierProduct(db.Model):
    """A product of the supplier as its last sync saw it (its price to us is our cost), and
    the product of ours it is sold as, with the price rule: cost + a fixed amount (cents),
    or cost + a percentage (hundredths of a percent), rounded up to the cent."""
    __tablename__ = "supplier_products"

    id: Mapped[int] = mapped_column(primary_key=True)
    supplier_id: Mapped[int] = mapped_column(sa.ForeignKey("suppliers.id"))
    remote_id: Mapped[int] = mapped_column(sa.Integer)
    name: Mapped[str] = mapped_column(sa.String(200))
    cost_cents: Mapped[int] = mapped_column(sa.BigInteger)
    currency: Mapped[str] = mapped_column(sa.String(3))
    stock: Mapped[int] = mapped_column(sa.Integer, default=0)
    min_quantity: Mapped[int] = mapped_column(sa.Integer, default=1, server_default=sa.text("1"))
    max_quantity: Mapped[int] = mapped_column(sa.Integer, default=100, server_default=sa.text("100"))
    gone: Mapped[bool] = mapped_column(default=False, server_default=sa.false())   # no longer offered
    product_id: Mapped[int | None] = mapped_column(sa.ForeignKey("products.id"), unique=True)
    markup_kind: Mapped[str | None] = mapped_column(sa.String(8))
    markup_value: Mapped[int | None] = mapped_column(sa.BigInteger)
    synced_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        sa.UniqueConstraint("supplier_id", "remote_id", name="uq_supplier_products_supplier_remote"),
        sa.CheckConstraint("markup_kind IS NULL OR markup_kind IN ('fixed', 'percent')", name="markup_known"),
    )


class SupplierOrder(db.Model):
    """An order of ours forwarded upstream. The Idempotency-Key is derived from our order
    number: every retry (a timeout, a 5xx, a crash of either shop) asks for the same order
    there, so it is bought once. `uncertain`: the last try got no answer, so the upstream
    may hold the order (a refund here then asks it before giving up)."""
    __tablename__ = "supplier_orders"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    order_id: Mapped[int] = mapped_column(sa.ForeignKey("orders.id"), unique=True)
    supplier_id: Mapped[int] = mapped_column(sa.ForeignKey("suppliers.id"), index=True)
    remote_product_id: Mapped[int] = mapped_column(sa.Integer)
    quantity: Mapped[int] = mapped_column(sa.Integer)
    idempotency_key: Mapped[str] = mapped_column(sa.String(64))
    status: Mapped[str] = mapped_column(sa.String(16), default="pending")
    uncertain: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    remote_order_no: Mapped[str | None] = mapped_column(sa.String(32))
    cost_cents: Mapped[int | None] = mapped_column(sa.BigInteger)
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_error: Mapped[str | None] = mapped_column(sa.String(300))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        sa.Index("ix_supplier_orders_status_next_attempt_at", "status", "next_attempt_at"),
        sa.CheckConstraint("status IN ('pending', 'waiting', 'delivered', 'cancelled')", name="status_known"),
    )

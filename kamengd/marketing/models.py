"""Coupons (优惠券): a discount a buyer claims with a code when placing an order.

Uses are counted on the coupon's row (and, when a buyer may use it a limited number of
times, on the buyer's row) by conditional UPDATEs in the order's own transaction: two
orders never take the last use both. An order that expires unpaid gives its use back,
once (kamengd.marketing.coupons).
"""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..database import UTCDateTime, utcnow
from ..extensions import db

COUPON_KINDS = ("fixed", "percent")
COUPON_SCOPES = ("all", "category", "product")


class Coupon(db.Model):
    __tablename__ = "coupons"

    id: Mapped[int] = mapped_column(primary_key=True)
    # Upper case; buyers may type it in any case.
    code: Mapped[str] = mapped_column(sa.String(32), unique=True)
    note: Mapped[str] = mapped_column(sa.String(200), default="")
    kind: Mapped[str] = mapped_column(sa.String(8))
    # fixed: cents off the order (in `currency`); percent: basis points off (1000 = 10%),
    # at most `max_discount_cents` when set.
    amount_off_cents: Mapped[int | None] = mapped_column(sa.BigInteger)
    percent_off_bp: Mapped[int | None] = mapped_column(sa.Integer)
    max_discount_cents: Mapped[int | None] = mapped_column(sa.BigInteger)
    currency: Mapped[str] = mapped_column(sa.String(3), default="CNY")
    scope: Mapped[str] = mapped_column(sa.String(8), default="all")
    # The product or category of the scope (no foreign key: either table).
    scope_id: Mapped[int | None] = mapped_column(sa.Integer)
    # The order's amount before the discount must reach this.
    min_amount_cents: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    starts_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    ends_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    max_uses: Mapped[int | None] = mapped_column(sa.Integer)   # NULL: no limit
    used: Mapped[int] = mapped_column(sa.Integer, default=0)
    per_buyer: Mapped[int | None] = mapped_column(sa.Integer)   # NULL: no limit (by e-mail)
    # Only for a buyer (by e-mail) who has never paid for an order here; once each.
    first_order: Mapped[bool] = mapped_column(default=False)
    is_active: Mapped[bool] = mapped_column(default=True)
    # Raised by every edit: an order claims the coupon only at the terms it priced with.
    version: Mapped[int] = mapped_column(sa.Integer, default=1)
    created_by: Mapped[str] = mapped_column(sa.String(64), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = (
        sa.CheckConstraint("kind IN ('fixed', 'percent')", name="kind_known"),
        sa.CheckConstraint("scope IN ('all', 'category', 'product')", name="scope_known"),
        sa.CheckConstraint("(kind = 'fixed' AND amount_off_cents > 0 AND percent_off_bp IS NULL) OR "
                           "(kind = 'percent' AND percent_off_bp > 0 AND percent_off_bp <= 10000 "
                           "AND amount_off_cents IS NULL)", name="discount_shape"),
        sa.CheckConstraint("(scope = 'all') = (scope_id IS NULL)", name="scope_target"),
        sa.CheckConstraint("used >= 0 AND (max_uses IS NULL OR used <= max_uses)", name="uses_within_limit"),
        sa.CheckConstraint("min_amount_cents >= 0", name="min_amount_not_negative"),
    )


class CouponBuyer(db.Model):
    """How many times one buyer (by e-mail, lower case) holds a use of a coupon that limits it."""
    __tablename__ = "coupon_buyers"

    coupon_id: Mapped[int] = mapped_column(sa.ForeignKey("coupons.id", ondelete="CASCADE"), primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(254), primary_key=True)
    uses: Mapped[int] = mapped_column(sa.Integer, default=0)

    __table_args__ = (sa.CheckConstraint("uses >= 0", name="uses_not_negative"),)

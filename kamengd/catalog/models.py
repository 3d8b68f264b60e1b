from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.dialects.mysql import MEDIUMBLOB
from sqlalchemy.orm import Mapped, mapped_column

from ..database import UTCDateTime, utcnow
from ..extensions import db

# What staff choose. "loop" (循环卡密): every buyer gets the same key, the product's oldest
# available one (the keys stay in stock; each delivery is counted on its order).
DELIVERY_MODES = ("auto", "manual", "loop")
# "supplier": set by mapping the product to a supplier's (kamengd.suppliers): its orders are
# bought upstream and its stock is the supplier's.
ALL_DELIVERY_MODES = (*DELIVERY_MODES, "supplier")


class Category(db.Model):
    __tablename__ = "categories"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100), unique=True)
    # The tree (kamengd.catalog.tree): a category under another, at most MAX_DEPTH deep; hiding
    # one hides everything under it.
    parent_id: Mapped[int | None] = mapped_column(sa.ForeignKey("categories.id"), index=True)
    sort_order: Mapped[int] = mapped_column(default=0)
    is_active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class BuyerDay(db.Model):
    """Units of one product bought by one buyer on one shop day (the buyer daily limit)."""
    __tablename__ = "buyer_days"

    product_id: Mapped[int] = mapped_column(sa.ForeignKey("products.id", ondelete="CASCADE"), primary_key=True)
    email_folded: Mapped[str] = mapped_column(sa.String(254), primary_key=True)
    day: Mapped[dt.date] = mapped_column(sa.Date, primary_key=True)
    quantity: Mapped[int] = mapped_column(sa.Integer, default=0)

    __table_args__ = (sa.CheckConstraint("quantity >= 0", name="quantity_not_negative"),)


class ProductImage(db.Model):
    """A product's picture, resized (kamengd.catalog.images): in the database, so every server
    of a shop serves it and backups hold it; each server keeps a copy on disk to serve."""
    __tablename__ = "product_images"

    product_id: Mapped[int] = mapped_column(sa.ForeignKey("products.id", ondelete="CASCADE"), primary_key=True)
    # A hash of the large picture: its address (/media/<name>-800.webp), so it is cached for good
    # (two products with the same picture share it).
    name: Mapped[str] = mapped_column(sa.String(32), index=True)
    large: Mapped[bytes] = mapped_column(sa.LargeBinary().with_variant(MEDIUMBLOB(), "mysql", "mariadb"))
    thumb: Mapped[bytes] = mapped_column(sa.LargeBinary().with_variant(MEDIUMBLOB(), "mysql", "mariadb"))
    width: Mapped[int] = mapped_column(sa.Integer)
    height: Mapped[int] = mapped_column(sa.Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Product(db.Model):
    """Money is integer cents in `currency`; never a float."""
    __tablename__ = "products"

    id: Mapped[int] = mapped_column(primary_key=True)
    category_id: Mapped[int | None] = mapped_column(sa.ForeignKey("categories.id"), index=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    description: Mapped[str] = mapped_column(sa.Text, default="")
    price_cents: Mapped[int] = mapped_column(sa.BigInteger)
    cost_price_cents: Mapped[int | None] = mapped_column(sa.BigInteger)
    currency: Mapped[str] = mapped_column(sa.String(3), default="CNY")
    delivery_mode: Mapped[str] = mapped_column(sa.String(8), default="auto")
    low_stock_threshold: Mapped[int] = mapped_column(default=0)
    # Set when stock.low was sent; cleared once stock is back at the threshold,
    # so each crossing is notified once.
    low_stock_alerted: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    min_quantity: Mapped[int] = mapped_column(default=1)
    max_quantity: Mapped[int] = mapped_column(default=100)
    # At most this many units to one buyer (e-mail, case-folded) per shop day; NULL: no limit.
    # Counted per buyer and day in buyer_days, in the order's transaction (kamengd.catalog.limits).
    buyer_daily_limit: Mapped[int | None] = mapped_column(sa.Integer)
    # Wholesale tiers (批发价): [[least quantity, unit cents], …] as JSON, least first; None: none.
    price_tiers: Mapped[str | None] = mapped_column(sa.Text)
    # A time-window price (限时价, e.g. a flash sale): this unit price from/until (UTC), either
    # end open. The buyer pays the lowest of the price, the window's and the quantity's tier
    # (kamengd.catalog.pricing).
    sale_price_cents: Mapped[int | None] = mapped_column(sa.BigInteger)
    sale_starts_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    sale_ends_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # The member price (会员价): a unit for a buyer signed in to the portal (a member or an
    # agent) on the shop's own site, when lower than what applies; None: none.
    member_price_cents: Mapped[int | None] = mapped_column(sa.BigInteger)
    is_active: Mapped[bool] = mapped_column(default=True)
    sort_order: Mapped[int] = mapped_column(default=0)
    # What the buyer fills in (kamengd.catalog.inputs), as JSON; None: nothing.
    input_fields: Mapped[str | None] = mapped_column(sa.Text)
    # A variant (SKU, 规格) of another product: its own price, cost and stock, chosen on that
    # product's page (kamengd.catalog.variants). One level: a variant has no variants.
    variant_of: Mapped[int | None] = mapped_column(sa.ForeignKey("products.id"), index=True)
    # What a buyer chooses it by among its product's variants, e.g. "3 个月" (the main product's
    # own option too; empty: its name).
    variant_name: Mapped[str] = mapped_column(sa.String(64), default="", server_default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = (
        sa.CheckConstraint("price_cents >= 0", name="price_not_negative"),
        sa.CheckConstraint("delivery_mode IN ('auto', 'manual', 'loop', 'supplier')", name="delivery_mode_known"),
        sa.CheckConstraint("min_quantity >= 1 AND max_quantity >= min_quantity",
                           name="quantity_limits"),
    )

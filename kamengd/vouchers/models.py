"""Vouchers (卡券): codes kamengd makes, sold or issued, and redeemed (核销) at stores.

A voucher product's codes are its stock: each code is a card key (encrypted and
fingerprinted like an imported one, reserved and sold by the same machinery, so it is
never sold twice) with a voucher row beside it that holds what is left of it and a
lookup hash of the code, so a terminal finds it from the code alone without decrypting
anything. Redeeming is one conditional UPDATE of that row (kamengd.vouchers.services).
"""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..database import BigId, FixedBinary, UTCDateTime, utcnow
from ..extensions import db

# uses: redeemed whole, once or N times; value: a stored value redeemed in parts.
VOUCHER_KINDS = ("uses", "value")
# stock: not sold yet (a terminal refuses it); active: sold or issued; void: staff voided it
# (a reissued key, a batch withdrawn); refunded: its order was refunded.
VOUCHER_STATUSES = ("stock", "active", "void", "refunded")
# Why a terminal refused a code (one word each, translated where shown).
REFUSALS = ("unknown", "typo", "not_sold", "used_up", "not_enough", "expired", "not_yet", "void", "refunded",
            "other_store")


class VoucherTerms(db.Model):
    """What a voucher product's codes are worth: a product is a voucher product when it has terms."""
    __tablename__ = "voucher_terms"

    product_id: Mapped[int] = mapped_column(sa.ForeignKey("products.id"), primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(8))
    # uses: how many times a code may be redeemed. value: 0 (any number of parts).
    uses: Mapped[int] = mapped_column(default=1)
    # value: the stored value; uses: the face value shown (0: none).
    value_cents: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    currency: Mapped[str] = mapped_column(sa.String(3), default="CNY")
    # What the holder gets, in words (一杯中杯拿铁, "one adult ticket").
    entitlement: Mapped[str] = mapped_column(sa.String(300), default="")
    # Valid for this many days from the sale (or the batch), within the fixed window if any.
    valid_days: Mapped[int | None] = mapped_column(sa.Integer)
    valid_from: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    valid_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # The code's characters (no look-alikes by default) and length, its check character included.
    alphabet: Mapped[str] = mapped_column(sa.String(40))
    code_length: Mapped[int] = mapped_column(sa.SmallInteger, default=16)
    # The scheduler tops the product's unsold codes up to this many (0: staff generate them).
    keep_in_stock: Mapped[int] = mapped_column(default=0)
    # Stores where its codes may be redeemed: NULL everywhere, else store ids "1,4,7".
    store_ids: Mapped[str | None] = mapped_column(sa.String(400))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = (
        sa.CheckConstraint("kind IN ('uses', 'value')", name="voucher_kind_known"),
        sa.CheckConstraint("(kind = 'uses' AND uses >= 1) OR (kind = 'value' AND value_cents > 0)",
                           name="voucher_terms_shape"),
    )


class VoucherBatch(db.Model):
    """Codes issued at once outside any order (a corporate gift): who, why, how many."""
    __tablename__ = "voucher_batches"

    id: Mapped[int] = mapped_column(primary_key=True)
    product_id: Mapped[int] = mapped_column(sa.ForeignKey("products.id"), index=True)
    count: Mapped[int] = mapped_column()
    reason: Mapped[str] = mapped_column(sa.String(200))
    actor: Mapped[str] = mapped_column(sa.String(128))
    import_id: Mapped[int] = mapped_column(sa.ForeignKey("key_imports.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    voided_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class Voucher(db.Model):
    __tablename__ = "vouchers"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # The card key holding the code's ciphertext (what the buyer's order shows).
    card_key_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("card_keys.id"), unique=True)
    product_id: Mapped[int] = mapped_column(sa.ForeignKey("products.id"))
    # HMAC of the normalised code under the data key of key_version (kamengd.vault): how a
    # typed or scanned code finds its row, with no plaintext in the database.
    lookup: Mapped[bytes] = mapped_column(FixedBinary(16), unique=True)
    key_version: Mapped[int] = mapped_column(sa.SmallInteger)
    status: Mapped[str] = mapped_column(sa.String(10), default="stock")
    uses_left: Mapped[int] = mapped_column(default=0)
    value_left_cents: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    valid_from: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    valid_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    issued_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    order_id: Mapped[int | None] = mapped_column(sa.Integer, index=True)
    batch_id: Mapped[int | None] = mapped_column(sa.ForeignKey("voucher_batches.id"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        # The last line of defence under the conditional UPDATE: never below zero.
        sa.CheckConstraint("uses_left >= 0 AND value_left_cents >= 0", name="voucher_left_not_negative"),
        sa.CheckConstraint("status IN ('stock', 'active', 'void', 'refunded')", name="voucher_status_known"),
    )


class Store(db.Model):
    """A store (门店) where vouchers are redeemed."""
    __tablename__ = "stores"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(80), unique=True)
    address: Mapped[str] = mapped_column(sa.String(200), default="")
    is_active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class StoreVerifier(db.Model):
    """A staff member who redeems at a store; a manager may also undo its redemptions."""
    __tablename__ = "store_verifiers"

    store_id: Mapped[int] = mapped_column(sa.ForeignKey("stores.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("staff_users.id", ondelete="CASCADE"), primary_key=True,
                                         index=True)
    is_manager: Mapped[bool] = mapped_column(default=False)


class Redemption(db.Model):
    """Every redemption, and every refusal, at a terminal: the record staff and reports read."""
    __tablename__ = "redemptions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # NULL: the code matched no voucher (code_lookup then says which code was typed: its HMAC,
    # as vouchers.lookup, never the code).
    voucher_id: Mapped[int | None] = mapped_column(BigId, sa.ForeignKey("vouchers.id"))
    code_lookup: Mapped[bytes | None] = mapped_column(FixedBinary(16))
    product_id: Mapped[int | None] = mapped_column(sa.Integer)
    store_id: Mapped[int] = mapped_column(sa.ForeignKey("stores.id"))
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("staff_users.id"))
    outcome: Mapped[str] = mapped_column(sa.String(10))
    reason: Mapped[str | None] = mapped_column(sa.String(16))
    uses: Mapped[int] = mapped_column(default=0)
    amount_cents: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    undone_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    undone_by: Mapped[int | None] = mapped_column(sa.Integer)
    undo_reason: Mapped[str | None] = mapped_column(sa.String(200))

    __table_args__ = (
        sa.CheckConstraint("outcome IN ('redeemed', 'refused')", name="redemption_outcome_known"),
        sa.Index("ix_redemptions_voucher", "voucher_id", "id"),
        sa.Index("ix_redemptions_store_time", "store_id", "created_at"),
        sa.Index("ix_redemptions_time", "created_at"),
    )

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..database import BigId, UTCDateTime, utcnow
from ..extensions import db

KEY_STATUSES = ("available", "reserved", "sold", "void")


class CardKey(db.Model):
    """One card key (卡密), stored only as AES-GCM ciphertext.

    `fingerprint` is an HMAC of the plaintext: duplicates are found without
    decrypting, and (product_id, fingerprint) identifies the row, so the
    ciphertext's associated data binds it to both (see kamengd.vault).
    """
    __tablename__ = "card_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    product_id: Mapped[int] = mapped_column(sa.ForeignKey("products.id"))
    status: Mapped[str] = mapped_column(sa.String(16), default="available")
    order_id: Mapped[int | None] = mapped_column(sa.ForeignKey("orders.id"), index=True)
    reserved_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    ciphertext: Mapped[bytes] = mapped_column(sa.LargeBinary)
    nonce: Mapped[bytes] = mapped_column(sa.BINARY(12))
    key_version: Mapped[int] = mapped_column(sa.SmallInteger)
    fingerprint: Mapped[bytes] = mapped_column(sa.BINARY(32))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    sold_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        # "Take N available keys of product P": an index range scan in id order.
        sa.Index("ix_card_keys_take", "product_id", "status", "id"),
        sa.UniqueConstraint("product_id", "fingerprint", name="uq_card_keys_product_fingerprint"),
        sa.CheckConstraint("status IN ('available', 'reserved', 'sold', 'void')", name="status_known"),
    )

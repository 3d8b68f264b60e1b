from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..database import FixedBinary, BigId, UTCDateTime, utcnow
from ..extensions import db

# "pool": on sale only through one agent (its stock pool, 库存池: pool_agent_id).
KEY_STATUSES = ("available", "reserved", "sold", "void", "pool")


class KeyImport(db.Model):
    """One run of an import: who, when, what it counted. Keys point to it."""
    __tablename__ = "key_imports"

    id: Mapped[int] = mapped_column(primary_key=True)
    product_id: Mapped[int] = mapped_column(sa.ForeignKey("products.id"), index=True)
    actor: Mapped[str] = mapped_column(sa.String(128))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    encoding: Mapped[str] = mapped_column(sa.String(32), default="")
    imported: Mapped[int] = mapped_column(default=0)
    duplicates: Mapped[int] = mapped_column(default=0)
    blank: Mapped[int] = mapped_column(default=0)


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
    import_id: Mapped[int] = mapped_column(sa.ForeignKey("key_imports.id"))
    order_id: Mapped[int | None] = mapped_column(sa.ForeignKey("orders.id"))
    reserved_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    ciphertext: Mapped[bytes] = mapped_column(sa.LargeBinary)
    nonce: Mapped[bytes] = mapped_column(FixedBinary(12))
    key_version: Mapped[int] = mapped_column(sa.SmallInteger)
    fingerprint: Mapped[bytes] = mapped_column(FixedBinary(16))
    sold_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # The agent whose stock pool the key is in (its own sales only), kept while it is
    # reserved so a released reservation goes back to the pool. No foreign key: SQLite
    # could add one only by copying the whole table.
    pool_agent_id: Mapped[int | None] = mapped_column(sa.Integer)

    __table_args__ = (
        # "Take N available keys of product P": an index range scan in id order.
        sa.Index("ix_card_keys_take", "product_id", "status", "id"),
        # Only sold/reserved keys have an order; on SQLite the index skips the
        # (many) others, which keeps imports fast.
        sa.Index("ix_card_keys_order_id", "order_id", sqlite_where=sa.text("order_id IS NOT NULL")),
        sa.UniqueConstraint("product_id", "fingerprint", name="uq_card_keys_product_fingerprint"),
        # No CHECK on status here: SQLite evaluates it per row and it cost a
        # third of a million-key import. Only kamengd.inventory writes status.
    )


def on_sale_again(table=None):
    """The status a released key goes back to: its agent's pool, or the shop's stock."""
    t = CardKey.__table__ if table is None else table
    return sa.case((t.c.pool_agent_id.is_(None), "available"), else_="pool")

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..database import BigId, UTCDateTime
from ..extensions import db


class AuditEntry(db.Model):
    """Append-only. entry_hash = SHA-256(prev_hash + canonical content)."""
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    seq: Mapped[int] = mapped_column(sa.BigInteger, unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    actor: Mapped[str] = mapped_column(sa.String(128), index=True)
    action: Mapped[str] = mapped_column(sa.String(64), index=True)
    target: Mapped[str] = mapped_column(sa.String(255), default="")
    source_ip: Mapped[str | None] = mapped_column(sa.String(45))
    details: Mapped[str] = mapped_column(sa.Text, default="{}")
    prev_hash: Mapped[str] = mapped_column(sa.String(64))
    entry_hash: Mapped[str] = mapped_column(sa.String(64))


class AuditHead(db.Model):
    """The one row every append locks: it serialises writers and records the
    last entry, so removing the newest entries is detected too.

    `seal` is an HMAC of (seq, last_hash) with a key derived from the data
    key, which never enters the database: someone who can rewrite every row
    can recompute the SHA-256 chain, but not the seal.
    """
    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(sa.BigInteger)
    last_hash: Mapped[str] = mapped_column(sa.String(64))
    seal: Mapped[str | None] = mapped_column(sa.String(64))
    seal_version: Mapped[int | None] = mapped_column(sa.SmallInteger)

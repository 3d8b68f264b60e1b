"""Agents (代理): accounts that buy at their level's price and resell.

The shop is the root of a tree; each agent has at most one parent agent and
sits `depth` levels below the shop (1: directly under it).
"""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..database import BigId, FixedBinary, UTCDateTime, utcnow
from ..extensions import db


class AgentLevel(db.Model):
    __tablename__ = "agent_levels"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(32), unique=True)
    # Off the shop's price, in hundredths of a percent: 1250 = 12.50 %.
    discount_bp: Mapped[int] = mapped_column(sa.Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = (sa.CheckConstraint("discount_bp BETWEEN 0 AND 10000", name="discount_range"),)


class Agent(db.Model):
    __tablename__ = "agents"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(sa.String(64), unique=True)
    # None: no portal sign-in yet (the API works with a key).
    password_hash: Mapped[str | None] = mapped_column(sa.String(255))
    level_id: Mapped[int] = mapped_column(sa.ForeignKey("agent_levels.id"), index=True)
    parent_id: Mapped[int | None] = mapped_column(sa.ForeignKey("agents.id"), index=True)
    depth: Mapped[int] = mapped_column(sa.SmallInteger)
    is_active: Mapped[bool] = mapped_column(default=True, server_default=sa.true())
    # A level staff set by hand stays; automatic level rules leave it alone.
    level_pinned: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = (sa.CheckConstraint("depth >= 1", name="depth_positive"),)


class AgentApiKey(db.Model):
    """A key pair of the agent API: the id is public, the secret is kept sealed with the
    data key (the server needs it to check HMAC signatures) and shown once."""
    __tablename__ = "agent_api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    agent_id: Mapped[int] = mapped_column(sa.ForeignKey("agents.id"), index=True)
    key_id: Mapped[str] = mapped_column(sa.String(32), unique=True)
    secret_ciphertext: Mapped[bytes] = mapped_column(sa.LargeBinary)
    secret_nonce: Mapped[bytes] = mapped_column(FixedBinary(12))
    secret_key_version: Mapped[int] = mapped_column(sa.SmallInteger)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class ApiNonce(db.Model):
    """Nonces of signed agent API requests seen within the time window: a request replayed
    (captured and sent again) finds its nonce here and is refused."""
    __tablename__ = "agent_api_nonces"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    key_id: Mapped[str] = mapped_column(sa.String(32))
    nonce: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)

    __table_args__ = (sa.UniqueConstraint("key_id", "nonce", name="uq_agent_api_nonces_key_nonce"),)

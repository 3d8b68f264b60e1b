from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..database import FixedBinary, UTCDateTime, utcnow
from ..extensions import db

# Least privilege per role; the permission table that maps them onto pages
# lives with the panel (K5). Kept in one place so the CLI, the panel and the
# migrations agree on the names.
ROLES = ("owner", "admin", "operator", "support", "finance", "auditor", "verifier")


class StaffUser(db.Model):
    __tablename__ = "staff_users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(sa.String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    role: Mapped[str] = mapped_column(sa.String(16))
    is_active: Mapped[bool] = mapped_column(default=True)
    # The TOTP secret, encrypted with the data key (context "staff-totp:<id>").
    # Set while enrolling; totp_enabled only once a code from it was entered.
    totp_ciphertext: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    totp_nonce: Mapped[bytes | None] = mapped_column(FixedBinary(12))
    totp_key_version: Mapped[int | None] = mapped_column(sa.SmallInteger)
    totp_enabled: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    # The last 30-second step a code was accepted for: a code works once.
    totp_last_step: Mapped[int | None] = mapped_column(sa.BigInteger)
    # Bumped by "log out everywhere", a password change and a deactivation:
    # a panel session remembers the epoch it began in and ends when it differs.
    session_epoch: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    password_changed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        sa.CheckConstraint(
            "role IN (" + ", ".join(f"'{r}'" for r in ROLES) + ")", name="role_known"),
    )


class RecoveryCode(db.Model):
    """One-time 2FA recovery codes; only a SHA-256 of each (they are random, 50 bits)."""
    __tablename__ = "staff_recovery_codes"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("staff_users.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[bytes] = mapped_column(FixedBinary(32))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class LoginThrottle(db.Model):
    """Failed logins per account name, per client address and per (name, address) pair,
    for lockout with backoff.

    Keyed by the name typed, known or not, so a lockout says nothing about
    which accounts exist.
    """
    __tablename__ = "login_throttles"

    scope: Mapped[str] = mapped_column(sa.String(8), primary_key=True)   # "user", "ip" or "pair"
    key: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    failures: Mapped[int] = mapped_column(default=0)
    last_failure_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    locked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (sa.CheckConstraint("scope IN ('user', 'ip', 'pair')", name="scope_known"),)


class StaffSession(db.Model):
    """One signed-in panel session. The cookie holds a random token; only its
    SHA-256 is here. Signing out ends this row, so a copy of the cookie taken
    before is worth nothing afterwards."""
    __tablename__ = "staff_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("staff_users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[bytes] = mapped_column(FixedBinary(32), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    ip: Mapped[str | None] = mapped_column(sa.String(64))
    user_agent: Mapped[str | None] = mapped_column(sa.String(200))
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

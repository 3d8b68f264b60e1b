from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..database import FixedBinary, UTCDateTime, utcnow
from ..extensions import db


class Setting(db.Model):
    """Settings staff change at run time (site notice, order timeout...), as JSON."""
    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    value: Mapped[str] = mapped_column(sa.Text)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    updated_by: Mapped[str | None] = mapped_column(sa.String(128))


class SettingSecret(db.Model):
    """Secret settings staff enter in the panel (the SMTP password, the webhook
    signing secret), encrypted with the data key like channel secrets."""
    __tablename__ = "setting_secrets"

    key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    ciphertext: Mapped[bytes] = mapped_column(sa.LargeBinary)
    nonce: Mapped[bytes] = mapped_column(FixedBinary(12))
    key_version: Mapped[int] = mapped_column(sa.SmallInteger)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    updated_by: Mapped[str | None] = mapped_column(sa.String(128))

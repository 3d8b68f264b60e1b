from __future__ import annotations

import datetime as dt
import json

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, Session, mapped_column

from ..database import UTCDateTime, utcnow
from ..extensions import db


class OpsRecord(db.Model):
    """What the admin last did: the last backup, the last key backup (doctor reads them)."""
    __tablename__ = "ops_records"

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    value: Mapped[str] = mapped_column(sa.Text, default="{}")
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


def note(session: Session, name: str, value: dict, now: dt.datetime | None = None) -> None:
    now = now or utcnow()
    row = session.get(OpsRecord, name)
    if row is None:
        session.add(OpsRecord(name=name, value=json.dumps(value, default=str), updated_at=now))
    else:
        row.value, row.updated_at = json.dumps(value, default=str), now


def read(session: Session, name: str) -> tuple[dict, dt.datetime] | None:
    row = session.get(OpsRecord, name)
    return None if row is None else (json.loads(row.value), row.updated_at)

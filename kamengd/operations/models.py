"""The rows operations keep about the running installation."""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..database import UTCDateTime
from ..extensions import db


class ServerProcess(db.Model):
    """A running `kamengd serve` process and its last heartbeat (kamengd.operations.processes)."""
    __tablename__ = "server_processes"

    id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    role: Mapped[str] = mapped_column(sa.String(16))
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)

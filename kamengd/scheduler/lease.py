"""The leader lease: one conditional UPDATE decides who runs the jobs.

Every scheduler instance (in `kamengd serve`, or `kamengd scheduler`) calls
`heartbeat` every few seconds. It succeeds for the current owner (renewal)
or for anyone once the lease has expired (takeover); the row count says
which. A holder that dies stops renewing, and another takes over within the
lease time. Clocks: every instance compares against its own clock, so the
machines' clocks must agree to well within the lease time (NTP).
"""
from __future__ import annotations

import datetime as dt
import os
import secrets
import socket
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..notifications.events import emit
from .models import SchedulerLease

LEASE = "main"


def new_owner_id() -> str:
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{secrets.token_hex(3)}"


def heartbeat(session: Session, owner: str, now: dt.datetime, lease_seconds: int) -> bool:
    """Claim or renew the lease; True when `owner` holds it afterwards."""
    t = SchedulerLease.__table__
    expires = now + dt.timedelta(seconds=lease_seconds)
    renewed = session.execute(t.update().where(t.c.name == LEASE, t.c.owner == owner, t.c.expires_at >= now)
                              .values(heartbeat_at=now, expires_at=expires)).rowcount
    if renewed:
        return True
    before = session.execute(sa.select(t.c.owner, t.c.heartbeat_at).where(t.c.name == LEASE)).first()
    taken = session.execute(t.update().where(t.c.name == LEASE, sa.or_(t.c.owner.is_(None), t.c.expires_at < now))
                            .values(owner=owner, acquired_at=now, heartbeat_at=now, expires_at=expires)).rowcount
    if taken == 1 and before is not None and before.owner is not None:
        # The previous leader stopped renewing without releasing: it died or lost
        # the database. (A clean stop releases the lease: no failover then.)

        emit(session, "scheduler.failover",
             {"owner": owner, "previous_owner": before.owner,
              "previous_heartbeat_at": before.heartbeat_at.isoformat(timespec="seconds") + "Z"
              if before.heartbeat_at else None,
              "seconds_since_its_heartbeat": round((now - before.heartbeat_at).total_seconds(), 1)
              if before.heartbeat_at else None}, now)
    return taken == 1


def release(session: Session, owner: str) -> None:
    t = SchedulerLease.__table__
    session.execute(t.update().where(t.c.name == LEASE, t.c.owner == owner).values(owner=None, expires_at=None))


@dataclass
class LeaderInfo:
    owner: str | None
    heartbeat_at: dt.datetime | None
    expires_at: dt.datetime | None
    acquired_at: dt.datetime | None


def leader_info(session: Session) -> LeaderInfo:
    row = session.get(SchedulerLease, LEASE)
    if row is None:
        return LeaderInfo(None, None, None, None)
    return LeaderInfo(row.owner, row.heartbeat_at, row.expires_at, row.acquired_at)

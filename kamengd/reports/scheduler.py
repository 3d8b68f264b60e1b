"""The scheduler and its jobs, for staff: who leads, and every recorded run. Nothing here writes."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..scheduler.lease import leader_info
from ..scheduler.models import JobRun


@dataclass
class SchedulerStatus:
    owner: str | None
    heartbeat_at: dt.datetime | None
    acquired_at: dt.datetime | None
    age_seconds: float | None
    stale: bool      # no leader, or its heartbeat is older than two lease periods


def scheduler_status(session: Session, now: dt.datetime, lease_seconds: int) -> SchedulerStatus:
    info = leader_info(session)
    age = round((now - info.heartbeat_at).total_seconds(), 1) if info.heartbeat_at else None
    stale = info.owner is None or age is None or age > 2 * lease_seconds
    return SchedulerStatus(info.owner, info.heartbeat_at, info.acquired_at, age, stale)


def last_runs(session: Session, jobs) -> dict[str, JobRun | None]:
    """The newest recorded run of each named job (one index lookup per job)."""
    return {name: session.scalars(sa.select(JobRun).where(JobRun.job == name)
                                  .order_by(JobRun.started_at.desc(), JobRun.id.desc()).limit(1)).first()
            for name in jobs}


def job_runs(session: Session, *, job: str | None = None, limit: int = 20, offset: int = 0) -> list[JobRun]:
    """Recorded runs, newest first."""
    query = sa.select(JobRun).order_by(JobRun.id.desc()).limit(limit)
    if offset:
        query = query.offset(offset)
    if job:
        query = query.where(JobRun.job == job)
    return list(session.scalars(query))


def run_seconds(run: JobRun) -> float | None:
    return round((run.finished_at - run.started_at).total_seconds(), 3) if run.finished_at else None

"""Bounded history: job runs, sent notifications and sign-in throttles do not grow forever.

The scheduler records a run of each job every few seconds (about 25,000 rows
a day); events and notification attempts follow the shop's traffic. Old rows
go in batches; audit entries, payments, orders and settlement reports are
never pruned here.
"""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..accounts.auth import FORGET_AFTER
from ..accounts.models import LoginThrottle, StaffSession
from ..database import utcnow
from ..notifications.models import Event, Notification, NotificationAttempt
from ..scheduler.models import JobRun

JOB_RUNS_DAYS = 14
# Longer than the longest panel session may last (panel.session_max_hours is at most 720).
STAFF_SESSIONS_DAYS = 31
EVENTS_DAYS = 90
BATCH = 5000


def _delete_ids(session: Session, model, ids) -> int:
    if not ids:
        return 0
    return session.execute(sa.delete(model).where(model.id.in_(ids))
                           .execution_options(synchronize_session=False)).rowcount


def prune(session: Session, now: dt.datetime | None = None) -> dict[str, int]:
    now = now or utcnow()
    counts = {"job_runs": 0, "events": 0, "login_throttles": 0, "staff_sessions": 0}
    while True:
        ids = session.scalars(sa.select(JobRun.id).where(JobRun.started_at < now - dt.timedelta(days=JOB_RUNS_DAYS))
                              .order_by(JobRun.id).limit(BATCH)).all()
        counts["job_runs"] += _delete_ids(session, JobRun, ids)
        session.commit()   # a batch at a time: the write lock is let go between batches
        if len(ids) < BATCH:
            break
    while True:
        # Only events whose every notification is finished (sent or failed).
        unfinished = sa.select(Notification.id).where(Notification.event_id == Event.id,
                                                      Notification.status == "pending")
        ids = session.scalars(sa.select(Event.id).where(Event.created_at < now - dt.timedelta(days=EVENTS_DAYS),
                                                        Event.dispatched.is_(True), ~sa.exists(unfinished))
                              .order_by(Event.id).limit(BATCH)).all()
        if ids:
            notes = session.scalars(sa.select(Notification.id).where(Notification.event_id.in_(ids))).all()
            for start in range(0, len(notes), BATCH):
                part = notes[start:start + BATCH]
                session.execute(sa.delete(NotificationAttempt).where(NotificationAttempt.notification_id.in_(part)))
                _delete_ids(session, Notification, part)
            counts["events"] += _delete_ids(session, Event, ids)
        session.commit()   # a batch at a time, as above
        if len(ids) < BATCH:
            break
    # A sign-in throttle with no failure for a day and no lock counts for nothing any more.
    counts["login_throttles"] = session.execute(sa.delete(LoginThrottle).where(
        LoginThrottle.last_failure_at < now - FORGET_AFTER,
        sa.or_(LoginThrottle.locked_until.is_(None), LoginThrottle.locked_until < now))).rowcount
    counts["staff_sessions"] = session.execute(sa.delete(StaffSession).where(
        StaffSession.created_at < now - dt.timedelta(days=STAFF_SESSIONS_DAYS))).rowcount
    return counts

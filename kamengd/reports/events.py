"""Events and the notifications they became, for staff: what was sent, what failed. Nothing here writes."""
from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..notifications.models import Event, Notification, NotificationAttempt

NOTIFICATION_STATUSES = ("pending", "sent", "failed")


def recent_notifications(session: Session, *, status: str | None = None, limit: int = 20,
                         offset: int = 0) -> list[tuple[Notification, str]]:
    """Notifications newest first, each with its event's type."""
    query = (sa.select(Notification, Event.type).join(Event, Event.id == Notification.event_id)
             .order_by(Notification.id.desc()).limit(limit))
    if offset:
        query = query.offset(offset)
    if status:
        query = query.where(Notification.status == status)
    return [(n, event_type) for n, event_type in session.execute(query)]


def notification_attempts(session: Session, notification_ids) -> dict[int, list[NotificationAttempt]]:
    """Every attempt of these notifications, oldest first, by notification id."""
    attempts: dict[int, list[NotificationAttempt]] = {}
    ids = list(notification_ids)
    if ids:
        for a in session.scalars(sa.select(NotificationAttempt).where(NotificationAttempt.notification_id.in_(ids))
                                 .order_by(NotificationAttempt.id)):
            attempts.setdefault(a.notification_id, []).append(a)
    return attempts


@dataclass
class EventRow:
    event: Event
    notifications: list[Notification]


def recent_events(session: Session, *, status: str | None = None, limit: int = 50,
                  offset: int = 0) -> list[EventRow]:
    """Events newest first with their notifications; with `status`, only events that have a
    notification in that status, and only those notifications."""
    query = sa.select(Event).order_by(Event.id.desc()).limit(limit).offset(offset)
    if status:
        query = query.where(sa.exists(sa.select(Notification.id).where(Notification.event_id == Event.id,
                                                                       Notification.status == status)))
    events = session.scalars(query).all()
    notes: dict[int, list[Notification]] = {e.id: [] for e in events}
    if events:
        nq = sa.select(Notification).where(Notification.event_id.in_(list(notes))).order_by(Notification.id)
        if status:
            nq = nq.where(Notification.status == status)
        for n in session.scalars(nq):
            notes[n.event_id].append(n)
    return [EventRow(e, notes[e.id]) for e in events]

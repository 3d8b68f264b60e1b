from __future__ import annotations

import click
import sqlalchemy as sa

from ..extensions import db
from ..notifications.models import Event, Notification, NotificationAttempt
from . import cli, emit, json_option, with_app


def _iso(value):
    return value.isoformat(timespec="seconds") + "Z" if value else None


@cli.command()
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--status", type=click.Choice(("pending", "sent", "failed")), help="Only these.")
@json_option
@with_app(readonly=True)
def notifications(limit, status, as_json):
    """Recent webhook and staff-mail notifications, newest first, with every attempt."""
    query = (sa.select(Notification, Event.type).join(Event, Event.id == Notification.event_id)
             .order_by(Notification.id.desc()).limit(limit))
    if status:
        query = query.where(Notification.status == status)
    rows = db.session.execute(query).all()
    attempts = {}
    if rows:
        for a in db.session.scalars(sa.select(NotificationAttempt).where(
                NotificationAttempt.notification_id.in_([n.id for n, _ in rows])).order_by(NotificationAttempt.id)):
            attempts.setdefault(a.notification_id, []).append(
                {"attempt": a.attempt, "at": _iso(a.started_at), "ms": a.duration_ms, "outcome": a.outcome,
                 "status_code": a.status_code, "error": a.error})
    items = [{"id": n.id, "event": event, "channel": n.channel, "target": n.target, "status": n.status,
              "attempts": attempts.get(n.id, []), "next_attempt_at": _iso(n.next_attempt_at) if n.status == "pending"
              else None, "last_error": n.last_error} for n, event in rows]
    lines = [f"{i['id']:>6}  {i['event']:<18} {i['channel']:<7} {i['status']:<7} {len(i['attempts'])} tries  "
             f"{i['target']}" + (f"  ({i['last_error']})" if i["last_error"] else "") for i in items]
    emit(as_json, {"notifications": items}, "\n".join(lines) or "no notifications")

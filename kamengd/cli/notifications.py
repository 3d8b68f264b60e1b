from __future__ import annotations

import click

from ..extensions import db
from ..reports.events import NOTIFICATION_STATUSES, notification_attempts, recent_notifications
from .group import cli, emit, json_option, with_app


def _iso(value):
    return value.isoformat(timespec="seconds") + "Z" if value else None


@cli.command()
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--status", type=click.Choice(NOTIFICATION_STATUSES), help="Only these.")
@json_option
@with_app(readonly=True)
def notifications(limit, status, as_json):
    """Recent webhook and staff-mail notifications, newest first, with every attempt."""
    rows = recent_notifications(db.session, status=status, limit=limit)
    attempts = {note_id: [{"attempt": a.attempt, "at": _iso(a.started_at), "ms": a.duration_ms, "outcome": a.outcome,
                           "status_code": a.status_code, "error": a.error} for a in found]
                for note_id, found in notification_attempts(db.session, [n.id for n, _ in rows]).items()}
    items = [{"id": n.id, "event": event, "channel": n.channel, "target": n.target, "status": n.status,
              "attempts": attempts.get(n.id, []), "next_attempt_at": _iso(n.next_attempt_at) if n.status == "pending"
              else None, "last_error": n.last_error} for n, event in rows]
    lines = [f"{i['id']:>6}  {i['event']:<18} {i['channel']:<7} {i['status']:<7} {len(i['attempts'])} tries  "
             f"{i['target']}" + (f"  ({i['last_error']})" if i["last_error"] else "") for i in items]
    emit(as_json, {"notifications": items}, "\n".join(lines) or "no notifications")

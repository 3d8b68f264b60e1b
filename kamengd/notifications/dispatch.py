"""Deliver events to webhooks and staff mail, retried with backoff, every attempt recorded.

The job does two things per run. `fan_out` turns new events into one
notification row per subscribed target (config [notifications], read at that
moment). `send_due` sends what is due: it claims a row and sets its next
attempt before sending, so a crash mid-send retries later and two runners
never send the same attempt twice.

Webhook request: POST, JSON body {"id", "event", "created_at", "data"};
headers X-Kamengd-Event, X-Kamengd-Delivery (the notification id, stable
across retries), X-Kamengd-Timestamp (Unix seconds, fresh per attempt) and
X-Kamengd-Signature: "sha256=" + hex HMAC-SHA256(secret, "<timestamp>." + body).
The receiver recomputes it with a constant-time comparison and refuses old
timestamps, so a captured request cannot be replayed later. Any 2xx answer
counts as delivered; redirects are not followed (a POST must not silently
turn into a GET elsewhere).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import http.client
import json
import logging
import smtplib
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import EmailMessage

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..version import __version__
from ..config import Config
from ..database import utcnow
from ..errors import ConfigError
from .email import MAX_ATTEMPTS, claim_attempt, smtp_send
from .models import Event, Notification, NotificationAttempt

log = logging.getLogger("kamengd.notifications")


def subscribed(events: tuple[str, ...], event_type: str) -> bool:
    return "*" in events or event_type in events


def targets_for(config: Config, event_type: str) -> list[tuple[str, str]]:
    n = config.notifications
    found = []
    if subscribed(n.webhook_events, event_type):
        found += [("webhook", url) for url in dict.fromkeys(n.webhook_urls)]
    if subscribed(n.email_events, event_type):
        found += [("email", address) for address in dict.fromkeys(n.email_to)]
    return found


def fan_out(session: Session, config: Config, *, now: dt.datetime | None = None, limit: int = 500) -> int:
    """New events -> notification rows; returns how many rows were written."""
    now = now or utcnow()
    events = session.execute(sa.select(Event.id, Event.type).where(Event.dispatched.is_(False))
                             .order_by(Event.id).limit(limit)).all()
    written = 0
    for event_id, event_type in events:
        claimed = session.execute(sa.update(Event).where(Event.id == event_id, Event.dispatched.is_(False))
                                  .values(dispatched=True)).rowcount
        if not claimed:
            continue
        for channel, target in targets_for(config, event_type):
            session.add(Notification(event_id=event_id, channel=channel, target=target, status="pending",
                                     attempts=0, next_attempt_at=now, created_at=now))
            written += 1
    session.commit()   # the fan-out is stored before anything is sent
    return written


def webhook_body(event: Event) -> bytes:
    return json.dumps({"id": event.id, "event": event.type, "created_at": event.created_at.isoformat() + "Z",
                       "data": json.loads(event.payload)}, ensure_ascii=False, sort_keys=True).encode()


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


@dataclass
class AttemptResult:
    ok: bool
    status_code: int | None = None
    error: str | None = None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def post_webhook(url: str, body: bytes, headers: dict[str, str], timeout: float) -> AttemptResult:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with _opener.open(request, timeout=timeout) as resp:
            resp.read(4096)
            return AttemptResult(200 <= resp.status < 300, resp.status,
                                 None if 200 <= resp.status < 300 else f"HTTP {resp.status}")
    except urllib.error.HTTPError as exc:
        return AttemptResult(False, exc.code, f"HTTP {exc.code}")
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        return AttemptResult(False, None, f"{exc.__class__.__name__}: {reason}"[:500])


def render_staff_email(config: Config, event: Event, to: str) -> EmailMessage:
    data = json.loads(event.payload)
    summary = SUMMARIES.get(event.type, lambda d: event.type)(data)
    msg = EmailMessage()
    msg["Subject"] = f"[{config.site.name}] {event.type}: {summary}"
    msg["From"] = config.smtp.from_address or f"kamengd@{config.smtp.host}"
    msg["To"] = to
    msg.set_content("\n".join([summary, "", f"event: {event.type}",
                               f"time: {event.created_at.isoformat(timespec='seconds')}Z", "",
                               json.dumps(data, ensure_ascii=False, indent=2, sort_keys=True)]))
    return msg


SUMMARIES = {
    "stock.low": lambda d: f"库存不足 low stock: {d.get('product_name')} ({d.get('available')} left, "
                           f"threshold {d.get('threshold')})",
    "stock.restocked": lambda d: f"已补货 restocked: {d.get('product_name')} ({d.get('available')} available)",
    "order.paid": lambda d: f"订单已付款 order {d.get('order_no')} paid {d.get('amount')} {d.get('currency')}",
    "order.delivered": lambda d: f"订单已发货 order {d.get('order_no')} delivered",
    "order.held": lambda d: f"订单待处理 order {d.get('order_no')} held: {d.get('reason')}",
    "order.stuck": lambda d: f"订单需处理 order {d.get('order_no')} needs a person: {d.get('reason')}",
    "payment.extra": lambda d: f"重复付款待退款 order {d.get('order_no')} paid twice: refund "
                               f"{d.get('paid_amount')} {d.get('currency')} (trade {d.get('trade_no')})",
    "reconcile.mismatch": lambda d: f"对账不符 settlement {d.get('day')}: order {d.get('order_no')} {d.get('kind')}",
    "scheduler.failover": lambda d: f"调度切换 scheduler taken over by {d.get('owner')} "
                                    f"(was {d.get('previous_owner')})",
    "withdrawal.requested": lambda d: f"提现待审核 withdrawal {d.get('withdrawal_id')}: {d.get('agent')} asks for "
                                      f"{d.get('amount')} {d.get('currency')}",
}


def send_due(session: Session, config: Config, *, now: dt.datetime | None = None, limit: int = 50,
             post=post_webhook, send_mail=smtp_send) -> dict[str, int]:
    """Send due notifications; commits per notification (a job, not a request)."""
    now = now or utcnow()
    counts = {"sent": 0, "failed": 0}
    due = session.execute(sa.select(Notification.id, Notification.attempts).where(
        Notification.status == "pending", Notification.next_attempt_at <= now)
        .order_by(Notification.next_attempt_at, Notification.id).limit(limit)).all()
    for notification_id, attempts in due:
        if not claim_attempt(session, Notification, notification_id, attempts, now):
            continue
        note = session.get(Notification, notification_id)
        event = session.get(Event, note.event_id)
        started, clock = utcnow(), time.monotonic()
        result = _attempt(config, note, event, post, send_mail)
        session.add(NotificationAttempt(notification_id=note.id, attempt=attempts + 1, started_at=started,
                                        duration_ms=int((time.monotonic() - clock) * 1000),
                                        outcome="ok" if result.ok else "error", status_code=result.status_code,
                                        error=result.error))
        if result.ok:
            note.status, note.sent_at, note.last_error = "sent", utcnow(), None
            counts["sent"] += 1
        else:
            note.last_error = result.error
            if attempts + 1 >= MAX_ATTEMPTS:
                note.status = "failed"
            counts["failed"] += 1
            log.warning("notification %s (%s to %s, attempt %d) failed: %s", note.id, event.type, note.target,
                        attempts + 1, result.error)
        session.commit()   # each attempt is stored before the next notification is sent
    return counts


def _attempt(config: Config, note: Notification, event: Event, post, send_mail) -> AttemptResult:
    try:
        if note.channel == "webhook":
            body = webhook_body(event)
            timestamp = int(time.time())
            headers = {"Content-Type": "application/json; charset=utf-8",
                       "User-Agent": f"kamengd/{__version__}", "X-Kamengd-Event": event.type,
                       "X-Kamengd-Delivery": str(note.id), "X-Kamengd-Timestamp": str(timestamp),
                       "X-Kamengd-Signature": sign(config.webhook_secret(), timestamp, body)}
            return post(note.target, body, headers, config.notifications.webhook_timeout_seconds)
        if not config.smtp.host:
            return AttemptResult(False, None, "no SMTP server configured ([smtp] host)")
        send_mail(config, render_staff_email(config, event, note.target))
        return AttemptResult(True)
    except (OSError, smtplib.SMTPException, ConfigError) as exc:
        return AttemptResult(False, None, f"{exc.__class__.__name__}: {exc}"[:500])


def deliver_notifications(session: Session, config: Config, *, now: dt.datetime | None = None,
                          **kwargs) -> dict[str, int]:
    """The job: fan out new events, then send what is due."""
    now = now or utcnow()
    queued = fan_out(session, config, now=now)
    return {"queued": queued, **send_due(session, config, now=now, **kwargs)}

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

Agents' own webhooks (kamengd.agents.webhooks) ride the same rows as channel
"agent": the same body, headers, retries and attempts, signed with the
webhook's own secret. This module does not know agents (imports go only
downward): the scheduler's job passes two hooks, `extra_targets` (the agent
webhooks an event goes to) and `agent_secret` (a webhook's secret, None once it
was removed).
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
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from email.message import EmailMessage

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..version import __version__
from ..config import Config
from ..database import utcnow
from ..errors import ConfigError
from ..validation import private_target
from .email import MAX_ATTEMPTS, claim_attempt, smtp_send
from .models import WEBHOOK_REMOVED, Event, Notification, NotificationAttempt

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


# extra_targets(session, event_type, payload_json) -> [(channel, target, agent_webhook_id)]
ExtraTargets = Callable[[Session, str, str], list[tuple[str, str, "int | None"]]]
# agent_secret(session, agent_webhook_id) -> the webhook's secret, or None once it was removed
AgentSecret = Callable[[Session, int], "bytes | None"]


def fan_out(session: Session, config: Config, *, now: dt.datetime | None = None, limit: int = 500,
            extra_targets: ExtraTargets | None = None, extra_events: tuple[str, ...] = ()) -> int:
    """New events -> notification rows; returns how many rows were written. `extra_targets`
    adds targets of its own (agents' webhooks) for the types in `extra_events`: only those
    events' payloads are read."""
    now = now or utcnow()
    payload = (sa.case((Event.type.in_(extra_events), Event.payload), else_=sa.null())
               if extra_targets is not None and extra_events else sa.null())
    events = session.execute(sa.select(Event.id, Event.type, payload).where(Event.dispatched.is_(False))
                             .order_by(Event.id).limit(limit)).all()
    written = 0
    for event_id, event_type, payload_json in events:
        claimed = session.execute(sa.update(Event).where(Event.id == event_id, Event.dispatched.is_(False))
                                  .values(dispatched=True)).rowcount
        if not claimed:
            continue
        found = [(channel, target, None) for channel, target in targets_for(config, event_type)]
        if payload_json is not None:
            found += extra_targets(session, event_type, payload_json)
        for channel, target, webhook_id in found:
            session.add(Notification(event_id=event_id, channel=channel, target=target, agent_webhook_id=webhook_id,
                                     status="pending", attempts=0, next_attempt_at=now, created_at=now))
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
    "supplier.low_balance": lambda d: f"上游余额不足 supplier {d.get('supplier')}: balance {d.get('balance')} "
                                      f"{d.get('currency')} (warning below {d.get('threshold')})",
    "supplier.cost_changed": lambda d: f"上游成本变动 supplier {d.get('supplier')}: {d.get('product_name')} cost "
                                       f"{d.get('old_cost')} -> {d.get('cost')}, price now {d.get('price')}",
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
    "channel.down": lambda d: f"支付通道故障 channel {d.get('code')} is down: {d.get('error')}",
    "channel.up": lambda d: f"支付通道恢复 channel {d.get('code')} is back",
    "channel.failover": lambda d: f"支付通道切换 order {d.get('order_no')}: {d.get('from')} -> {d.get('to')} "
                                  f"({d.get('reason')})",
    "order.refunded": lambda d: f"订单已退款 order {d.get('order_no')} refunded {d.get('amount')} {d.get('currency')}",
    "ticket.opened": lambda d: f"新售后工单 ticket {d.get('ticket_id')} about order {d.get('order_no')}",
    "ticket.overdue": lambda d: f"售后工单超时 ticket {d.get('ticket_id')} (order {d.get('order_no')}) waits since "
                                f"{d.get('waiting_since')}",
}


def send_due(session: Session, config: Config, *, now: dt.datetime | None = None, limit: int = 50,
             post=post_webhook, send_mail=smtp_send, agent_secret: AgentSecret | None = None) -> dict[str, int]:
    """Send due notifications; commits per notification (a job, not a request)."""
    now = now or utcnow()
    counts = {"sent": 0, "failed": 0, "dropped": 0}
    due = sa.select(Notification.id, Notification.attempts).where(
        Notification.status == "pending", Notification.next_attempt_at <= now)
    if agent_secret is None:   # agents' webhooks wait for a runner that can sign for them
        due = due.where(Notification.channel != "agent")
    due = session.execute(due.order_by(Notification.next_attempt_at, Notification.id).limit(limit)).all()
    for notification_id, attempts in due:
        if not claim_attempt(session, Notification, notification_id, attempts, now):
            continue
        note = session.get(Notification, notification_id)
        event = session.get(Event, note.event_id)
        secret = _agent_secret(session, note, agent_secret) if note.channel == "agent" else None
        if note.channel == "agent" and secret is None:   # removed since: nothing more is sent to it
            note.status, note.attempts, note.last_error = "failed", attempts, WEBHOOK_REMOVED
            session.commit()   # each outcome is stored before the next notification is sent
            counts["dropped"] += 1
            continue
        # No transaction (on SQLite: no write lock) while a receiver answers: an agent's slow
        # URL must not hold up the shop's writes. The rows are read; the outcome is written after.
        sent_note = SimpleNamespace(id=note.id, channel=note.channel, target=note.target)
        sent_event = SimpleNamespace(id=event.id, type=event.type, created_at=event.created_at, payload=event.payload)
        session.commit()
        started, clock = utcnow(), time.monotonic()
        result = _attempt(config, sent_note, sent_event, post, send_mail, secret)
        note, event = session.get(Notification, notification_id), sent_event
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


def _agent_secret(session: Session, note: Notification, agent_secret: AgentSecret) -> bytes | ConfigError | None:
    """The agent webhook's secret; None once the agent removed it; a secret that cannot be
    opened is the error this attempt fails with (recorded like any other)."""
    try:
        return agent_secret(session, note.agent_webhook_id)
    except ConfigError as exc:
        return exc


def webhook_headers(event: Event, note: Notification, secret: bytes, body: bytes) -> dict[str, str]:
    timestamp = int(time.time())
    return {"Content-Type": "application/json; charset=utf-8", "User-Agent": f"kamengd/{__version__}",
            "X-Kamengd-Event": event.type, "X-Kamengd-Delivery": str(note.id),
            "X-Kamengd-Timestamp": str(timestamp), "X-Kamengd-Signature": sign(secret, timestamp, body)}


def _attempt(config: Config, note: Notification, event: Event, post, send_mail,
             agent_secret: bytes | ConfigError | None = None) -> AttemptResult:
    try:
        if note.channel in ("webhook", "agent"):
            if isinstance(agent_secret, ConfigError):
                raise agent_secret
            secret = agent_secret if note.channel == "agent" else config.webhook_secret()
            if note.channel == "agent" and not config.notifications.agent_webhook_private:
                problem = private_target(note.target)   # an agent's URL: asked again at each send
                if problem:
                    return AttemptResult(False, None, f"refused: {problem}")
            body = webhook_body(event)
            return post(note.target, body, webhook_headers(event, note, secret, body),
                        config.notifications.webhook_timeout_seconds)
        if not config.smtp.host:
            return AttemptResult(False, None, "no SMTP server configured ([smtp] host)")
        send_mail(config, render_staff_email(config, event, note.target))
        return AttemptResult(True)
    except (OSError, smtplib.SMTPException, ConfigError) as exc:
        return AttemptResult(False, None, f"{exc.__class__.__name__}: {exc}"[:500])


def deliver_notifications(session: Session, config: Config, *, now: dt.datetime | None = None,
                          extra_targets: ExtraTargets | None = None, extra_events: tuple[str, ...] = (),
                          **kwargs) -> dict[str, int]:
    """The job: fan out new events, then send what is due."""
    now = now or utcnow()
    queued = fan_out(session, config, now=now, extra_targets=extra_targets, extra_events=extra_events)
    return {"queued": queued, **send_due(session, config, now=now, **kwargs)}

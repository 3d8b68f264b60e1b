"""An agent's own webhooks: its orders and its balance, told to its own systems.

An agent (or a member) registers up to five URLs, each with the events it wants
(AGENT_EVENTS, or "*") and a secret of its own, shown once and kept sealed with
the data key like an API secret. Deliveries ride the shop's notification rows
(channel "agent"): the same JSON body, headers, signature, retries with backoff
and recorded attempts as the shop's own webhooks (kamengd.notifications.dispatch).

- Order events (order.paid, order.delivered, order.refunded) carry the buying
  agent's id; the notification job asks `extra_targets` which of that agent's
  webhooks hear of each one.
- balance.changed is made here, from the ledger: `announce_balance_changes` turns
  each new entry of the agent's accounts into an event of its own (already
  dispatched: staff never get it) and a notification, and moves the webhook's
  cursor past it, in one commit per webhook. A new webhook starts at the ledger's
  end: no flood of history.
"""
from __future__ import annotations

import datetime as dt
import json
import secrets
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..audit.services import record
from ..database import utcnow
from ..errors import Collector, ConfigError, Conflict, InvalidRequest, NotFound
from ..ledger.models import AGENT_KINDS, LedgerAccount, LedgerEntry, LedgerTransaction
from ..money import format_cents
from ..notifications.models import WEBHOOK_REMOVED, Event, Notification, NotificationAttempt
from ..settings.services import mask_url
from ..validation import private_target
from ..vault import Vault, VaultError
from .models import Agent, AgentWebhook

AGENT_EVENTS = ("order.paid", "order.delivered", "order.refunded", "balance.changed")
ORDER_EVENTS = ("order.paid", "order.delivered", "order.refunded")
MAX_WEBHOOKS = 5
URL_MAX = 500
CHANNEL = "agent"   # the notifications' channel for agents' webhooks


def secret_context(webhook_id: int) -> str:
    """What a webhook's sealed secret is bound to (never an API key's context)."""
    return f"agent-webhook:{webhook_id}"


# -- the agent's list -------------------------------------------------------------

def check_url(value) -> str:
    url = value.strip() if isinstance(value, str) else ""
    if not url:
        raise InvalidRequest("url: the address your system receives webhooks at is required")
    if len(url) > URL_MAX:
        raise InvalidRequest("url: at most %(max)s characters", max=URL_MAX)
    if not all(32 < ord(c) < 127 for c in url):
        raise InvalidRequest("url: printable ASCII only, no spaces (write a non-Latin host name in its "
                             "xn-- form and escape the path with percent-codes)")
    try:
        parts = urlsplit(url)   # "http://[::1" (an unclosed IPv6 host) raises here
    except ValueError:
        raise InvalidRequest("url: not an address (an IPv6 host goes in brackets: http://[2001:db8::1]/)") from None
    try:
        parts.port   # a port that is not a number raises here, not at the first send
    except ValueError:
        raise InvalidRequest("url: the port is not a number") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest("url: an http:// or https:// address with a host is required")
    if parts.username is not None or parts.password is not None:
        raise InvalidRequest("url: no user name or password in the address (check the signature instead)")
    return url


def check_events(value) -> str:
    """["order.paid", ...] or "*" -> the stored form: "*", or the events in AGENT_EVENTS order.
    None: every event."""
    if value is None or value == "*":
        return "*"
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
        raise InvalidRequest("events: a list of %(known)s, or \"*\"", known=", ".join(AGENT_EVENTS))
    wanted = {i.strip() for i in items if i.strip()}
    if "*" in wanted:
        return "*"
    unknown = sorted(wanted - set(AGENT_EVENTS))
    if unknown:
        raise InvalidRequest("events: unknown %(unknown)s (known: %(known)s)", unknown=", ".join(unknown)[:100],
                             known=", ".join(AGENT_EVENTS))
    if not wanted:
        raise InvalidRequest("events: at least one of %(known)s", known=", ".join(AGENT_EVENTS))
    return ",".join(e for e in AGENT_EVENTS if e in wanted)


def events_of(webhook: AgentWebhook) -> list[str]:
    return list(AGENT_EVENTS) if webhook.events == "*" else webhook.events.split(",")


def subscribed(events: str, event_type: str) -> bool:
    return events == "*" or event_type in events.split(",")


def check_target(url, allow_private: bool) -> None:
    """Refuse (400) a URL whose host is this machine or the shop's network, unless allowed.
    Asks DNS: a view calls it before its write transaction begins (a slow name server must
    not hold SQLite's write lock); a malformed URL is left to add_webhook to report."""
    if allow_private:
        return
    try:
        url = check_url(url)
    except InvalidRequest:
        return
    problem = private_target(url)
    if problem:
        raise InvalidRequest("url: %(problem)s; a webhook goes to a public address", problem=problem)


def add_webhook(session: Session, vault: Vault, agent: Agent, *, url, events, actor: str,
                source_ip: str | None = None, allow_private: bool = False,
                target_checked: bool = False) -> tuple[AgentWebhook, str]:
    """A new webhook and its secret: (row, secret), the secret returned this once. Every
    mistake at once (400); a sixth live webhook is refused (409). Audited (without the
    secret or the URL's path, which often is the receiver's token). Unless `allow_private`
    (notifications.agent_webhook_private), an address on this machine or the shop's network
    is refused: an agent must not reach, or probe, what only the server can."""
    found = Collector()
    with found:
        url = check_url(url)
        problem = None if allow_private or target_checked else private_target(url)
        if problem:
            raise InvalidRequest("url: %(problem)s; a webhook goes to a public address", problem=problem)
    with found:
        events = check_events(events)
    found.check()
    if not agent.is_active:
        raise InvalidRequest("agent %(username)r is disabled", username=agent.username)
    # The agent's row first: two adds at once count one after the other.
    session.execute(sa.select(Agent.id).where(Agent.id == agent.id).with_for_update())
    live = session.scalar(sa.select(sa.func.count()).select_from(AgentWebhook).where(
        AgentWebhook.agent_id == agent.id, AgentWebhook.removed_at.is_(None)))
    if live >= MAX_WEBHOOKS:
        raise Conflict("at most %(count)s webhooks: remove one first", count=MAX_WEBHOOKS)
    secret = "whsec_" + secrets.token_urlsafe(32)
    row = AgentWebhook(agent_id=agent.id, url=url, events=events, secret_ciphertext=b"", secret_nonce=b"\0" * 12,
                       secret_key_version=vault.current_version, created_at=utcnow(),
                       # Announce the agent's balance from here on, not its history.
                       ledger_cursor=session.scalar(sa.select(sa.func.max(LedgerEntry.id))) or 0)
    session.add(row)
    session.flush()   # its id is in its secret's context
    row.secret_nonce, row.secret_ciphertext, row.secret_key_version = vault.encrypt_secret(
        secret_context(row.id), secret.encode())
    session.flush()
    record(session, "agent.webhook.add", actor=actor, target=f"agent:{agent.id}", source_ip=source_ip,
           details={"id": row.id, "url": mask_url(url), "events": events})
    return row, secret


def list_webhooks(session: Session, agent_id: int) -> list[AgentWebhook]:
    return session.scalars(sa.select(AgentWebhook).where(AgentWebhook.agent_id == agent_id,
                                                         AgentWebhook.removed_at.is_(None))
                           .order_by(AgentWebhook.id)).all()


def own_webhook(session: Session, agent_id: int, webhook_id, *, removed: bool = False) -> AgentWebhook:
    """The agent's own webhook (a removed one only with `removed`); another agent's, or
    none, is NotFound alike."""
    if isinstance(webhook_id, bool) or not isinstance(webhook_id, int) or not 0 < webhook_id < 2**31:
        raise NotFound("webhook not found")
    row = session.get(AgentWebhook, webhook_id)
    if row is None or row.agent_id != agent_id or (row.removed_at is not None and not removed):
        raise NotFound("webhook not found")
    return row


def remove_webhook(session: Session, agent: Agent, webhook_id, *, actor: str,
                   source_ip: str | None = None) -> AgentWebhook:
    """Nothing more is sent to it: its deliveries still waiting fail at once, saying why.
    Its past deliveries stay readable. Audited."""
    row = own_webhook(session, agent.id, webhook_id)
    now = utcnow()
    if not session.execute(sa.update(AgentWebhook).where(AgentWebhook.id == row.id, AgentWebhook.removed_at.is_(None))
                           .values(removed_at=now).execution_options(synchronize_session=False)).rowcount:
        raise NotFound("webhook not found")   # removed meanwhile
    session.execute(sa.update(Notification).where(Notification.agent_webhook_id == row.id,
                                                  Notification.status == "pending")
                    .values(status="failed", last_error=WEBHOOK_REMOVED).execution_options(synchronize_session=False))
    session.refresh(row)
    record(session, "agent.webhook.remove", actor=actor, target=f"agent:{agent.id}", source_ip=source_ip,
           details={"id": row.id, "url": mask_url(row.url)})
    return row


def webhook_view(row: AgentWebhook) -> dict:
    return {"id": row.id, "url": row.url, "events": row.events.split(","),   # ["*"]: all, later ones too
            "created_at": row.created_at.isoformat(timespec="seconds") + "Z"}


def deliveries(session: Session, agent_id: int, webhook_id=None, limit: int = 50) -> list[dict]:
    """The newest deliveries to the agent's webhooks (or to one of them: another agent's is
    NotFound), each with every attempt."""
    query = (sa.select(Notification, Event.type, Event.payload).join(Event, Event.id == Notification.event_id)
             .join(AgentWebhook, AgentWebhook.id == Notification.agent_webhook_id)
             .where(AgentWebhook.agent_id == agent_id, Notification.channel == CHANNEL)
             .order_by(Notification.id.desc()).limit(max(1, min(int(limit), 200))))
    if webhook_id is not None:
        query = query.where(Notification.agent_webhook_id == own_webhook(session, agent_id, webhook_id,
                                                                         removed=True).id)
    rows = session.execute(query).all()
    tries: dict[int, list[dict]] = {}
    if rows:
        for a in session.scalars(sa.select(NotificationAttempt).where(
                NotificationAttempt.notification_id.in_([n.id for n, _t, _p in rows]))
                .order_by(NotificationAttempt.attempt)):
            tries.setdefault(a.notification_id, []).append(
                {"attempt": a.attempt, "at": _iso(a.started_at), "outcome": a.outcome,
                 "status_code": a.status_code, "error": a.error, "duration_ms": a.duration_ms})
    return [{"id": n.id, "webhook_id": n.agent_webhook_id, "event": event_type, "event_id": n.event_id,
             "order_no": json.loads(payload).get("order_no"), "status": n.status, "created_at": _iso(n.created_at),
             "sent_at": _iso(n.sent_at), "next_attempt_at": _iso(n.next_attempt_at) if n.status == "pending" else None,
             "last_error": n.last_error, "attempts": tries.get(n.id, [])}
            for n, event_type, payload in rows]


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") + "Z" if value else None


# -- the notification job's hooks -------------------------------------------------

def agent_targets(session: Session, event_type: str, payload: dict) -> list[AgentWebhook]:
    """The live webhooks of the order's agent that asked for `event_type`."""
    agent_id = payload.get("agent_id")
    if event_type not in ORDER_EVENTS or not isinstance(agent_id, int):
        return []
    return [w for w in list_webhooks(session, agent_id) if subscribed(w.events, event_type)]


def extra_targets(session: Session, event_type: str, payload_json: str) -> list[tuple[str, str, int]]:
    """kamengd.notifications.dispatch.fan_out's hook: (channel, url, webhook id) per target."""
    return [(CHANNEL, w.url, w.id) for w in agent_targets(session, event_type, json.loads(payload_json))]


def webhook_secret(session: Session, vault: Vault, webhook_id: int) -> bytes | None:
    """The secret that signs a webhook's deliveries; None once it was removed (nothing more
    is sent to it)."""
    row = session.get(AgentWebhook, webhook_id)
    if row is None or row.removed_at is not None:
        return None
    try:
        return vault.decrypt_secret(secret_context(row.id), row.secret_nonce, row.secret_ciphertext,
                                    row.secret_key_version)
    except VaultError as exc:
        raise ConfigError(f"the secret of agent webhook {row.id} cannot be opened with the data key file "
                          f"({exc.message}): the agent must add the webhook again") from None


_e, _a, _t = LedgerEntry.__table__, LedgerAccount.__table__, LedgerTransaction.__table__
# Money moves only: points (kamengd.marketing.points) are no balance the agent is told of.
_MONEY = _a.c.kind.in_(AGENT_KINDS)


def announce_balance_changes(session: Session, *, now: dt.datetime | None = None, limit: int = 200) -> int:
    """Each live webhook that asked for balance.changed: the new entries of its agent's
    accounts (oldest first, at most `limit` a run) become events and notifications, its
    cursor moved past them, in one commit per webhook. Returns how many were announced."""
    now = now or utcnow()
    w = AgentWebhook.__table__
    # One read when nothing moved (the job runs every few seconds): webhooks with news only.
    news = sa.exists().where(_e.c.account_id == _a.c.id, _a.c.agent_id == w.c.agent_id, _MONEY,
                             _e.c.id > w.c.ledger_cursor)
    hooks = session.execute(sa.select(w.c.id, w.c.agent_id, w.c.events).where(
        w.c.removed_at.is_(None), sa.or_(w.c.events == "*", w.c.events.contains("balance.changed")), news)
        .order_by(w.c.id)).all()
    session.commit()   # each webhook's batch below is a transaction of its own
    total = 0
    for webhook_id, agent_id, events in hooks:
        if subscribed(events, "balance.changed"):
            total += _announce(session, webhook_id, agent_id, now, limit)
    return total


def _announce(session: Session, webhook_id: int, agent_id: int, now: dt.datetime, limit: int) -> int:
    if not _movements_settled(session, agent_id):
        session.rollback()
        return 0   # a movement of the agent's money is being written: the next run announces it
    hook = session.execute(sa.select(AgentWebhook.url, AgentWebhook.ledger_cursor)
                           .where(AgentWebhook.id == webhook_id, AgentWebhook.removed_at.is_(None))).first()
    entries = [] if hook is None else session.execute(
        sa.select(_e.c.id, _e.c.amount_cents, _e.c.balance_after_cents, _e.c.created_at, _a.c.kind, _a.c.currency,
                  _t.c.kind.label("what"), _t.c.cause, _t.c.memo)
        .join(_a, _a.c.id == _e.c.account_id).join(_t, _t.c.id == _e.c.transaction_id)
        .where(_a.c.agent_id == agent_id, _MONEY, _e.c.id > hook.ledger_cursor).order_by(_e.c.id)
        .limit(limit)).all()
    if not entries:
        session.rollback()
        return 0
    # The cursor is claimed: a second runner by mistake announces nothing twice.
    if not session.execute(sa.update(AgentWebhook).where(AgentWebhook.id == webhook_id,
                                                         AgentWebhook.ledger_cursor == hook.ledger_cursor)
                           .values(ledger_cursor=entries[-1].id)).rowcount:
        session.rollback()
        return 0
    for entry in entries:
        event = Event(type="balance.changed", dispatched=True, created_at=entry.created_at,
                      payload=json.dumps(_balance_payload(agent_id, entry), ensure_ascii=False, sort_keys=True))
        session.add(event)
        session.flush()
        session.add(Notification(event_id=event.id, channel=CHANNEL, target=hook.url, agent_webhook_id=webhook_id,
                                 status="pending", attempts=0, next_attempt_at=now, created_at=now))
    session.commit()   # the events, their notifications and the cursor together
    return len(entries)


def _movements_settled(session: Session, agent_id: int) -> bool:
    """Lock the agent's accounts, skipping any a movement holds (MariaDB; SQLite has one writer
    at a time). A movement locks its accounts before it writes its entries and keeps them
    until it commits, so with every account locked here each entry with an id below the ones
    read is committed: the cursor never passes an entry that would appear later. Waiting on a
    movement instead could deadlock with one that locked the agent's debt first. (FOR UPDATE:
    MariaDB's shared SKIP LOCKED does not skip a row an UPDATE holds.)"""
    locked = session.scalars(sa.select(_a.c.id).where(_a.c.agent_id == agent_id, _MONEY)
                             .with_for_update(skip_locked=True)).all()
    every = session.scalar(sa.select(sa.func.count()).select_from(_a).where(_a.c.agent_id == agent_id, _MONEY))
    return len(locked) == every


def _balance_payload(agent_id: int, entry) -> dict:
    return {"agent_id": agent_id, "entry_id": entry.id, "account": entry.kind,
            "amount": format_cents(entry.amount_cents),
            "balance_after": None if entry.balance_after_cents is None else format_cents(entry.balance_after_cents),
            "currency": entry.currency, "kind": entry.what, "cause": entry.cause, "memo": entry.memo,
            "at": _iso(entry.created_at)}

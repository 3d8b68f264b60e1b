"""Events and their notifications: signed webhooks to a real local HTTP receiver, staff mail
through a real local SMTP server, retries with backoff, every attempt recorded."""
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import sqlalchemy as sa

from conftest import assert_one_line_error, free_port, run_cli
from kamengd.config import build_config
from kamengd.errors import ConfigError
from kamengd.notifications.dispatch import deliver_notifications, sign
from kamengd.notifications.email import BACKOFF_SECONDS, MAX_ATTEMPTS
from kamengd.notifications.events import emit
from kamengd.notifications.models import Event, Notification, NotificationAttempt
from kamengd.orders.services import create_order
from kamengd.payments.callbacks import handle_epay_notify
from kamengd.payments.services import add_channel
from test_config import MINIMAL
from test_email import smtp_server, with_smtp  # noqa: F401 (fixture)
from test_orders import KEY, callback

SECRET = "whsec-test-0123456789"


class Receiver:
    """A webhook endpoint: records each request; answers from a script of status codes."""

    def __init__(self):
        self.requests = []
        self.script = []          # status codes to answer, in turn; then `default`
        self.default = 200
        self.delay = 0.0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((self.path, dict(self.headers), body))
                time.sleep(receiver.delay)
                status = receiver.script.pop(0) if receiver.script else receiver.default
                try:
                    self.send_response(status)
                    if status in (301, 302, 307, 308):
                        self.send_header("Location", "/elsewhere")
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def notify_config(installed, tmp_path, **notifications):
    secret = tmp_path / "webhook.secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    values = {"webhook_secret_file": secret, "webhook_timeout_seconds": 2, **notifications}
    return dataclasses.replace(installed, notifications=dataclasses.replace(installed.notifications, **values))


def verify(headers, body, secret=SECRET):
    """What a receiver does: recompute the signature over "<timestamp>.<body>", compare in constant time."""
    expected = "sha256=" + hmac.new(secret.encode(), headers["X-Kamengd-Timestamp"].encode() + b"." + body,
                                    hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, headers["X-Kamengd-Signature"])


def events_of(session, event_type=None):
    query = sa.select(Event).order_by(Event.id)
    if event_type:
        query = query.where(Event.type == event_type)
    return session.scalars(query).all()


@pytest.fixture
def epay_channel(session, vault):
    return add_channel(session, vault, channel_type="epay", code=f"n{secrets.token_hex(3)}", actor="t",
                       options={"gateway": "http://g", "pid": "1001", "key": KEY})


def test_orders_emit_paid_delivered_and_held(backend, session, vault, make_product, make_keys, epay_channel):
    p = make_product(price_cents=990)
    keys = make_keys(p, 2)
    start = len(events_of(session))
    good = create_order(session, product_id=p.id, quantity=1, email="b@example.com",
                        channel_code=epay_channel.code).order
    assert handle_epay_notify(session, vault, epay_channel.code, callback(good)).recorded
    short = create_order(session, product_id=p.id, quantity=1, email="c@example.com",
                         channel_code=epay_channel.code).order
    assert handle_epay_notify(session, vault, epay_channel.code, callback(short, money="0.99")).recorded
    new = events_of(session)[start:]
    assert [e.type for e in new] == ["order.paid", "order.delivered", "order.held"]
    paid, delivered, held = (json.loads(e.payload) for e in new)
    assert paid["order_no"] == good.order_no and paid["amount"] == "9.90" and paid["trade_no"] == f"T{good.order_no}"
    assert delivered["status"] == "delivered" and delivered["product_name"] == p.name
    assert held["order_no"] == short.order_no and held["paid_amount"] == "0.99"
    assert "0.99" in held["reason"] and "9.90" in held["reason"]
    session.refresh(short)
    assert short.status == "held" and short.flagged_at is not None and "0.99" in short.flag_reason
    everything = " ".join(e.payload for e in events_of(session))
    assert not any(k in everything for k in keys)   # never a card key in an event


def test_webhook_is_signed_and_delivered_once(backend, session, installed, tmp_path, receiver):
    config = notify_config(installed, tmp_path, webhook_urls=(receiver.url,),
                           webhook_events=("stock.low", "reconcile.mismatch"))
    emit(session, "stock.low", {"product_id": 7, "product_name": "月卡 <b>", "available": 2, "threshold": 5})
    emit(session, "reconcile.mismatch", {"order_no": "X1"})
    counts = deliver_notifications(session, config)
    assert counts["sent"] >= 2 and counts["failed"] == 0
    mine = [r for r in receiver.requests if json.loads(r[2])["event"] == "stock.low"]
    assert len(mine) == 1
    path, headers, body = mine[0]
    data = json.loads(body)
    assert path == "/hook" and headers["Content-Type"].startswith("application/json")
    assert headers["X-Kamengd-Event"] == "stock.low" and data["data"]["product_name"] == "月卡 <b>"
    assert abs(int(headers["X-Kamengd-Timestamp"]) - time.time()) < 60
    assert verify(headers, body)
    assert not verify(headers, body.replace(b"2", b"3"))           # the body is covered
    assert not verify({**headers, "X-Kamengd-Timestamp": "1"}, body)  # and the timestamp
    assert headers["X-Kamengd-Signature"] == sign(SECRET.encode(), int(headers["X-Kamengd-Timestamp"]), body)
    note = session.get(Notification, int(headers["X-Kamengd-Delivery"]))
    assert note.status == "sent" and note.attempts == 1
    # Nothing is sent twice: the events are dispatched, the notifications sent.
    before = len(receiver.requests)
    deliver_notifications(session, config)
    assert len(receiver.requests) == before


def test_webhook_failures_retry_with_backoff_and_log_every_attempt(backend, session, installed, tmp_path,
                                                                   receiver):
    config = notify_config(installed, tmp_path, webhook_urls=(receiver.url,), webhook_events=("stock.low",))
    emit(session, "order.paid", {"order_no": "not subscribed"})
    event = emit(session, "stock.low", {"product_id": 1})
    session.flush()
    receiver.script = [500, 302]
    now = dt.datetime.utcnow()
    deliver_notifications(session, config, now=now)
    note = session.scalars(sa.select(Notification).where(Notification.event_id == event.id)).one()
    assert note.status == "pending" and note.attempts == 1 and note.last_error == "HTTP 500"
    assert note.next_attempt_at == now + dt.timedelta(seconds=BACKOFF_SECONDS[0])
    deliver_notifications(session, config, now=now + dt.timedelta(seconds=30))   # not due yet
    assert note.attempts == 1
    later = now + dt.timedelta(seconds=BACKOFF_SECONDS[0])
    deliver_notifications(session, config, now=later)                            # a redirect is not followed
    session.refresh(note)
    assert note.attempts == 2 and note.status == "pending" and note.last_error == "HTTP 302"
    assert note.next_attempt_at == later + dt.timedelta(seconds=BACKOFF_SECONDS[1])
    deliver_notifications(session, config, now=note.next_attempt_at)
    session.refresh(note)
    assert note.status == "sent" and note.attempts == 3 and note.last_error is None
    tries = session.scalars(sa.select(NotificationAttempt).where(NotificationAttempt.notification_id == note.id)
                            .order_by(NotificationAttempt.attempt)).all()
    assert [(a.attempt, a.outcome, a.status_code) for a in tries] == [(1, "error", 500), (2, "error", 302),
                                                                     (3, "ok", 200)]
    assert all(a.duration_ms >= 0 for a in tries)
    assert [json.loads(b)["event"] for _, _, b in receiver.requests] == ["stock.low"] * 3  # not order.paid
    assert len({h["X-Kamengd-Delivery"] for _, h, _ in receiver.requests}) == 1         # one delivery id


def test_webhook_timeouts_and_a_dead_endpoint_give_up_after_the_last_attempt(backend, session, installed,
                                                                            tmp_path, receiver):
    dead = f"http://127.0.0.1:{free_port()}/hook"
    # Only this event type: events other tests left in the shared database stay out of the way.
    config = notify_config(installed, tmp_path, webhook_urls=(receiver.url, dead), webhook_timeout_seconds=1,
                           webhook_events=("scheduler.failover",))
    event = emit(session, "scheduler.failover", {"owner": "b", "previous_owner": "a"})
    session.flush()
    receiver.delay = 1.5                    # the first attempt times out, the next ones get a 503
    now = dt.datetime.utcnow()
    for attempt in range(MAX_ATTEMPTS):
        deliver_notifications(session, config, now=now)
        receiver.delay, receiver.default = 0, 503
        now += dt.timedelta(seconds=BACKOFF_SECONDS[-1])
    notes = session.scalars(sa.select(Notification).where(Notification.event_id == event.id)
                            .order_by(Notification.target)).all()
    assert {n.target for n in notes} == {receiver.url, dead}
    for n in notes:
        assert n.status == "failed" and n.attempts == MAX_ATTEMPTS
        errors = session.scalars(sa.select(NotificationAttempt.error)
                                 .where(NotificationAttempt.notification_id == n.id)).all()
        assert len(errors) == MAX_ATTEMPTS and all(errors)
    slow = session.scalars(sa.select(NotificationAttempt.error).join(Notification).where(
        Notification.target == receiver.url, Notification.event_id == event.id)
        .order_by(NotificationAttempt.attempt)).all()
    assert "timed out" in slow[0].lower() and slow[1:] == ["HTTP 503"] * (MAX_ATTEMPTS - 1), slow
    deliver_notifications(session, config, now=now + dt.timedelta(days=1))
    assert all(n.attempts == MAX_ATTEMPTS for n in notes)   # given up: no more tries


def test_staff_mail(backend, session, installed, tmp_path, smtp_server):  # noqa: F811
    port, inbox = smtp_server
    config = with_smtp(notify_config(installed, tmp_path, email_to=("ops@example.com", "boss@example.com")), port)
    emit(session, "stock.low", {"product_id": 3, "product_name": "周卡", "available": 1, "threshold": 10})
    emit(session, "order.delivered", {"order_no": "Y"})    # not in email_events by default
    counts = deliver_notifications(session, config)
    assert counts["failed"] == 0
    mails = [m for m in inbox.messages if "stock.low" in m[1]["Subject"]]
    assert sorted(r for rcpt, _ in mails for r in rcpt) == ["boss@example.com", "ops@example.com"]
    body = mails[0][1].get_payload(decode=True).decode()
    assert "周卡" in body and "threshold" in body
    assert not any("order.delivered" in m[1]["Subject"] for m in inbox.messages)
    # Without an SMTP server the mail fails (and is retried), it is not lost silently.
    event = emit(session, "order.stuck", {"order_no": "Z", "reason": "r"})
    session.flush()
    deliver_notifications(session, dataclasses.replace(config, smtp=dataclasses.replace(config.smtp, host="")))
    notes = session.scalars(sa.select(Notification).where(Notification.event_id == event.id)).all()
    assert notes and all(n.status == "pending" and "SMTP" in n.last_error for n in notes)


def test_no_targets_configured(backend, session, installed):
    event = emit(session, "order.paid", {"order_no": "Q"})
    session.flush()
    deliver_notifications(session, installed)
    session.refresh(event)
    assert event.dispatched and not session.scalars(
        sa.select(Notification).where(Notification.event_id == event.id)).all()


def test_a_missing_secret_file_fails_the_attempt_not_the_job(backend, session, installed, tmp_path, receiver):
    config = notify_config(installed, tmp_path, webhook_urls=(receiver.url,))
    config = dataclasses.replace(config, notifications=dataclasses.replace(
        config.notifications, webhook_secret_file=tmp_path / "gone"))
    # The shared shop's other events and notifications wait (this test's session is rolled back):
    # the job's batches then reach this one whatever the tests before it left.
    session.execute(sa.update(Event).where(Event.dispatched.is_(False)).values(dispatched=True))
    session.execute(sa.update(Notification).where(Notification.status == "pending")
                    .values(next_attempt_at=dt.datetime(2999, 1, 1)))
    event = emit(session, "order.paid", {"order_no": "S"})
    session.flush()
    deliver_notifications(session, config)
    note = session.scalars(sa.select(Notification).where(Notification.event_id == event.id)).one()
    assert note.status == "pending" and "webhook_secret_file" in note.last_error and not receiver.requests


def test_notifications_config():
    base = {**MINIMAL}
    cfg = build_config({**base, "notifications": {"webhook_urls": ["https://a.example/h"],
                                                  "webhook_secret_file": "/etc/kamengd/wh.secret",
                                                  "email_to": ["ops@example.com"]}}, env={})
    assert cfg.notifications.webhook_urls == ("https://a.example/h",)
    assert cfg.notifications.webhook_events == ("*",) and "stock.low" in cfg.notifications.email_events
    env = {"KAMENGD_NOTIFICATIONS_EMAIL_TO": "a@example.com, b@example.com",
           "KAMENGD_NOTIFICATIONS_WEBHOOK_EVENTS": "order.paid,order.held"}
    cfg = build_config(base, env=env)
    assert cfg.notifications.email_to == ("a@example.com", "b@example.com")
    assert cfg.notifications.webhook_events == ("order.paid", "order.held")
    for notifications, message in [
            ({"webhook_urls": ["https://a.example/h"]}, "webhook_secret_file: required"),
            ({"webhook_urls": ["ftp://a.example/h"], "webhook_secret_file": "/x"}, r"not an http\(s\) URL"),
            ({"webhook_urls": "https://a.example/h"}, "expected a list of strings"),
            ({"email_events": ["stock.lo"]}, "unknown event 'stock.lo'"),
            ({"email_to": ["not an address"]}, "not an e-mail address"),
            ({"webhook_timeout_seconds": 0}, "at least 1")]:
        with pytest.raises(ConfigError, match=message):
            build_config({**base, "notifications": notifications}, env={})
    with pytest.raises(ConfigError, match="unknown time zone"):
        build_config({**base, "site": {"timezone": "Mars/Olympus"}}, env={})


def test_notifications_command(backend, make_install, tmp_path):
    cfg = make_install(backend)
    listed = json.loads(run_cli("notifications", "--json", config=cfg.path, check=True).out)
    assert listed == {"notifications": []}
    assert_one_line_error(run_cli("notifications", "--status", "bogus", config=cfg.path), "bogus")

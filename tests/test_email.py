"""Delivery mail through a real (local) SMTP server; failures retry and never undo a delivery."""
import dataclasses
import datetime as dt
import email
import io
import secrets

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller

from conftest import free_port
from kamengd.notifications.email import MAX_ATTEMPTS, send_due_emails
from kamengd.notifications.models import EmailOutbox
from kamengd.orders.services import create_order
from kamengd.payments.callbacks import handle_epay_notify
from kamengd.payments.services import add_channel
from test_orders import KEY, callback


class Inbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.rcpt_tos, email.message_from_bytes(envelope.content)))
        return "250 OK"


@pytest.fixture
def smtp_server():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller.port, inbox
    controller.stop()


def with_smtp(config, port):
    return dataclasses.replace(config, smtp=dataclasses.replace(
        config.smtp, host="127.0.0.1", port=port, security="none", from_address="shop@example.com"))


@pytest.fixture
def delivered_order(session, vault, make_product, make_keys):
    p = make_product()
    keys = make_keys(p, 2)
    ch = add_channel(session, vault, channel_type="epay", code=f"m{secrets.token_hex(3)}", actor="t",
                     options={"gateway": "http://g", "pid": "1001", "key": KEY})
    order = create_order(session, product_id=p.id, quantity=2, email="buyer@example.com",
                         channel_code=ch.code).order
    assert handle_epay_notify(session, vault, ch.code, callback(order)).recorded
    assert order.status == "delivered"
    return order, keys


def outbox_of(session, order):
    return session.scalars(sa.select(EmailOutbox).where(EmailOutbox.order_id == order.id)).one()


def test_delivery_mail_carries_the_keys(backend, session, vault, installed, delivered_order, smtp_server):
    order, keys = delivered_order
    port, inbox = smtp_server
    counts = send_due_emails(session, vault, with_smtp(installed, port), now=dt.datetime.utcnow() + dt.timedelta(seconds=1))
    assert counts["sent"] >= 1
    rcpts, msg = next((r, m) for r, m in inbox.messages if order.order_no in m["Subject"])
    assert rcpts == ["buyer@example.com"]
    body = msg.get_payload(decode=True).decode()
    assert all(k in body for k in keys)
    mail = outbox_of(session, order)
    assert mail.status == "sent" and mail.attempts == 1
    # the stored row never holds the keys
    assert not any(k in repr(vars(mail)) for k in keys)
    before = len(inbox.messages)
    send_due_emails(session, vault, with_smtp(installed, port), now=dt.datetime.utcnow() + dt.timedelta(days=1))
    assert len(inbox.messages) == before  # sent once


def test_failed_mail_is_retried_and_keeps_the_delivery(backend, session, vault, installed, delivered_order,
                                                       smtp_server):
    order, keys = delivered_order
    port, inbox = smtp_server
    dead = with_smtp(installed, free_port())  # nothing listens there
    now = dt.datetime.utcnow() + dt.timedelta(seconds=1)
    send_due_emails(session, vault, dead, now=now)
    mail = outbox_of(session, order)
    assert (mail.status, mail.attempts) == ("pending", 1) and "Connection" in (mail.last_error or "")
    assert mail.next_attempt_at >= now + dt.timedelta(seconds=60)
    session.refresh(order)
    assert order.status == "delivered"
    send_due_emails(session, vault, with_smtp(installed, port), now=now)  # not due yet
    assert outbox_of(session, order).status == "pending"
    send_due_emails(session, vault, with_smtp(installed, port), now=now + dt.timedelta(minutes=2))
    assert outbox_of(session, order).status == "sent"
    assert any(order.order_no in m["Subject"] for _, m in inbox.messages)


def test_gives_up_after_the_last_attempt(backend, session, vault, installed, delivered_order):
    order, _ = delivered_order
    dead = with_smtp(installed, free_port())
    now = dt.datetime.utcnow()
    for _ in range(MAX_ATTEMPTS + 2):
        now += dt.timedelta(days=1)
        send_due_emails(session, vault, dead, now=now)
    mail = outbox_of(session, order)
    assert (mail.status, mail.attempts) == ("failed", MAX_ATTEMPTS)


def test_no_smtp_configured_skips(backend, session, vault, installed, delivered_order):
    order, _ = delivered_order
    send_due_emails(session, vault, installed, now=dt.datetime.utcnow() + dt.timedelta(seconds=1))
    assert outbox_of(session, order).status == "skipped"

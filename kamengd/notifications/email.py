"""Mail to buyers: their keys, once delivered; staff's answers to their after-sales tickets.

A delivery writes an outbox row in its own transaction
(kamengd.notifications.outbox); `send_due_emails` sends after the commit and
retries with backoff. A mail that cannot be sent never undoes a delivery:
the keys are on the order page either way.
"""
from __future__ import annotations

import datetime as dt
import io
import logging
import smtplib
import ssl
from email.message import EmailMessage
from html import escape

import segno

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..config import Config
from ..database import utcnow
from ..errors import ConfigError, InvalidRequest
from ..money import format_cents
from ..orders.attention import flag_order
from ..orders import reasons
from ..orders.models import Order
from ..orders.services import order_keys
from ..settings.services import site_name, site_url
from ..tickets.models import TicketMessage
from ..validation import is_email_address
from ..vault import Vault
from ..vouchers import services as vouchers
from .models import EmailOutbox

log = logging.getLogger("kamengd.email")
BACKOFF_SECONDS = (60, 300, 900, 3600, 3 * 3600, 6 * 3600, 12 * 3600)
MAX_ATTEMPTS = len(BACKOFF_SECONDS) + 1


def claim_attempt(session: Session, model, row_id: int, attempts: int, now: dt.datetime) -> bool:
    """Claim the next attempt of a pending outbox row (mail or notification) and
    set the one after it first: another runner skips it, and a crash mid-send
    retries later, not in a loop. Commits; False when someone else claimed it."""
    delay = BACKOFF_SECONDS[min(attempts, len(BACKOFF_SECONDS) - 1)]
    claimed = session.execute(
        sa.update(model).where(model.id == row_id, model.status == "pending", model.attempts == attempts)
        .values(attempts=attempts + 1, next_attempt_at=now + dt.timedelta(seconds=delay))).rowcount
    session.commit()   # the claim is stored before the network call it guards
    return bool(claimed)


def render_delivery_email(session: Session, vault: Vault, config: Config, mail: EmailOutbox) -> EmailMessage:
    order = session.get(Order, mail.order_id)
    keys = order_keys(session, vault, order)
    site = site_name(session, config.site.name)
    msg = EmailMessage()
    msg["Subject"] = f"[{site}] 订单 {order.order_no} 卡密 / your keys"
    msg["From"] = config.smtp.from_address or f"kamengd@{config.smtp.host}"
    msg["To"] = mail.to_address
    lines = [f"您在 {site} 的订单 {order.order_no} 已发货。Your order {order.order_no} at {site} is delivered.",
             f"金额 Amount: {format_cents(order.amount_cents)} {order.currency}", "",
             "卡密 Keys:", *keys, "",
             f"订单页 Order page: {site_url(session, config.site.url).rstrip('/')}/order/{order.order_no}"]
    # (a code replaced by a reissue, void now, is not mailed as if it held something)
    held = [h for h in vouchers.order_vouchers(session, vault, order.id, order.product_id)
            if h.voucher.status == "active"]
    if not held:
        msg.set_content("\n".join(lines))
        return msg
    # A voucher order: each code with what it is worth, and its QR code to show at the store (an
    # HTML part with the pictures inline, beside the same words in plain text).
    for h in held:
        lines.insert(-1, f"{h.code}  {_worth(h)}")
    msg.set_content("\n".join(lines))
    cards = "".join(
        f'<li><p><img src="cid:qr{i}@kamengd" alt="QR {escape(h.code)}" width="180" height="180"></p>'
        f"<p><code>{escape(h.code)}</code><br>{escape(h.terms.entitlement)}<br>{escape(_worth(h))}</p></li>"
        for i, h in enumerate(held))
    msg.add_alternative(
        f"<!doctype html><html><body><p>{escape(lines[0])}</p><p>{escape(lines[1])}</p>"
        f"<p>到店核销时出示二维码。Show the QR code at the store.</p><ol>{cards}</ol>"
        f"<p>{escape(lines[-1])}</p></body></html>", subtype="html")
    html = msg.get_payload()[1]
    for i, h in enumerate(held):
        png = io.BytesIO()
        segno.make(h.code, error="m").save(png, kind="png", scale=6, border=2)
        html.add_related(png.getvalue(), maintype="image", subtype="png", cid=f"<qr{i}@kamengd>")
    return msg


def render_ticket_email(session: Session, config: Config, mail: EmailOutbox) -> EmailMessage:
    """Staff's answer to the buyer's after-sales ticket; the thread goes on on the order page."""
    order = session.get(Order, mail.order_id)
    message = session.get(TicketMessage, mail.ticket_message_id)
    site = site_name(session, config.site.name)
    msg = EmailMessage()
    msg["Subject"] = f"[{site}] 订单 {order.order_no} 售后回复 / reply about your order"
    msg["From"] = config.smtp.from_address or f"kamengd@{config.smtp.host}"
    msg["To"] = mail.to_address
    msg.set_content("\n".join([
        f"{site} 回复了您关于订单 {order.order_no} 的售后工单。{site} answered your ticket about order {order.order_no}.",
        "", message.body, "",
        f"回复或查看 Reply or read it all: {site_url(session, config.site.url).rstrip('/')}/order/{order.order_no}"]))
    return msg


def render_email(session: Session, vault: Vault, config: Config, mail: EmailOutbox) -> EmailMessage:
    if mail.kind == "ticket.reply":
        return render_ticket_email(session, config, mail)
    return render_delivery_email(session, vault, config, mail)


def _worth(h) -> str:
    v, t = h.voucher, h.terms
    left = f"剩余 {v.uses_left}/{t.uses} 次 uses left" if t.kind == "uses" else \
        f"余额 {format_cents(v.value_left_cents)} {t.currency} left"
    until = f", 有效期至 valid until {v.valid_until:%Y-%m-%d %H:%M} UTC" if v.valid_until else ""
    return left + until


def smtp_send(config: Config, msg: EmailMessage) -> None:
    smtp = config.smtp
    context = ssl.create_default_context()
    if smtp.security == "tls":
        client = smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=smtp.timeout_seconds, context=context)
    else:
        client = smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout_seconds)
    with client:
        if smtp.security == "starttls":
            client.starttls(context=context)
        if smtp.username:
            client.login(smtp.username, config.smtp_password())
        client.send_message(msg)


def check_mail_address(text: str) -> str:
    """The recipient a staff member typed for a test mail, checked like a buyer's address."""
    address = text.strip()
    if not is_email_address(address):
        raise InvalidRequest("recipient: a valid e-mail address is required")
    return address


def send_test_mail(config: Config, to: str, *, site_name: str | None = None, send=smtp_send) -> str | None:
    """One short mail through the configured server: None when it was accepted,
    else what went wrong, on one line (never the password)."""
    if not config.smtp.host:
        raise InvalidRequest("no SMTP server is configured: set [smtp] host in the config file")
    site = site_name or config.site.name
    msg = EmailMessage()
    msg["Subject"] = f"[{site}] 测试邮件 / test mail"
    msg["From"] = config.smtp.from_address or f"kamengd@{config.smtp.host}"
    msg["To"] = check_mail_address(to)
    msg.set_content(f"这是 {site} 的测试邮件，邮件设置可用。\n"
                    f"This is a test mail from {site}: the mail settings work.\n")
    try:
        send(config, msg)
    except (OSError, smtplib.SMTPException, ConfigError) as exc:
        return " ".join(f"{exc.__class__.__name__}: {exc}".split())[:300]
    return None


def send_due_emails(session: Session, vault: Vault, config: Config, *, now: dt.datetime | None = None,
                    limit: int = 50, send=smtp_send) -> dict[str, int]:
    """Send what is due; commits per mail (a job, not a request)."""
    now = now or utcnow()
    counts = {"sent": 0, "failed": 0, "skipped": 0}
    due = session.execute(sa.select(EmailOutbox.id, EmailOutbox.attempts).where(
        EmailOutbox.status == "pending", EmailOutbox.next_attempt_at <= now)
        .order_by(EmailOutbox.next_attempt_at, EmailOutbox.id).limit(limit)).all()
    for mail_id, attempts in due:
        if not config.smtp.host:
            session.execute(sa.update(EmailOutbox).where(EmailOutbox.id == mail_id, EmailOutbox.status == "pending")
                            .values(status="skipped", last_error="no SMTP server configured"))
            session.commit()   # each mail's outcome is stored before the next mail is sent
            counts["skipped"] += 1
            continue
        if not claim_attempt(session, EmailOutbox, mail_id, attempts, now):
            continue
        mail = session.get(EmailOutbox, mail_id)
        try:
            send(config, render_email(session, vault, config, mail))
        except (OSError, smtplib.SMTPException) as exc:
            error = f"{exc.__class__.__name__}: {exc}"[:500]
            mail.last_error = error
            if attempts + 1 >= MAX_ATTEMPTS:
                mail.status = "failed"
                if mail.order_id is not None and mail.kind == "order.delivered":
                    # the buyer may never see the keys: tell a person
                    flag_order(session, session.get(Order, mail.order_id),
                               reasons.reason(reasons.MAIL_FAILED, attempts=attempts + 1, error=error), now)
            session.commit()   # each mail's outcome is stored before the next mail is sent
            counts["failed"] += 1
            log.warning("mail %s to order %s not sent (attempt %d): %s", mail_id, mail.order_id,
                        attempts + 1, error)
            continue
        mail.status, mail.sent_at, mail.last_error = "sent", utcnow(), None
        session.commit()   # each mail's outcome is stored before the next mail is sent
        counts["sent"] += 1
    return counts

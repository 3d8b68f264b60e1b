"""Starting a payment at a gateway for a buyer's order: the pay page's work.

An order of a gateway channel (kamengd.payments.gateways) is placed without
asking the gateway anything: placing orders stays as fast as the database.
Its pay URL is this shop's `/pay/<code>/start`; the first visit creates the
payment at the gateway (a Checkout Session, a QR code) outside any
transaction, then keeps it as the order's attempt in one short write, so a
second visit (a reload, the back button) shows the same payment. A gateway
that cannot create it leaves a failed attempt with its reason and the buyer
a clear message.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..catalog.models import Product
from ..database import utcnow
from ..errors import InvalidRequest, KamengdError
from ..orders.models import Order
from ..vault import Vault, VaultError
from .gateways import gateway
from .gateways.base import GatewayError, OrderToPay, Urls
from .models import PaymentAttempt, PaymentChannel
from .services import gateway_channel

class NotStarted(KamengdError):
    """The gateway did not create the payment (down, refused): the failed attempt is kept
    (commit it), the buyer may try again."""
    code = "busy"
    http_status = 503
    retry_after = 5


# A payment created at the gateway is shown again for this long at most (its own expiry may be sooner).
REUSE_FOR = dt.timedelta(hours=23)


@dataclass
class PayPage:
    attempt_id: int
    pay_url: str | None
    qr: str | None
    expires_at: dt.datetime | None
    details: dict


def _open_attempt(session: Session, order_id: int, channel_id: int, now: dt.datetime) -> PaymentAttempt | None:
    return session.scalars(sa.select(PaymentAttempt).where(
        PaymentAttempt.order_id == order_id, PaymentAttempt.channel_id == channel_id,
        PaymentAttempt.status == "open", PaymentAttempt.created_at > now - REUSE_FOR,
        sa.or_(PaymentAttempt.expires_at.is_(None), PaymentAttempt.expires_at > now))
        .order_by(PaymentAttempt.id.desc())).first()


def _page(attempt: PaymentAttempt) -> PayPage:
    return PayPage(attempt.id, attempt.pay_url, attempt.qr_payload, attempt.expires_at, json.loads(attempt.details))


def start_payment(session: Session, vault: Vault, order: Order, *, site_url: str, back_url: str,
                  now: dt.datetime | None = None) -> PayPage:
    """The payment of a pending order at its channel's gateway: the one created before, or a new
    one. The caller commits (the attempt, open or failed). Raises InvalidRequest when the order
    is not one to pay here, NotStarted when the gateway could not create the payment."""
    now = now or utcnow()
    channel = session.get(PaymentChannel, order.channel_id) if order.channel_id else None
    protocol = gateway(channel.type) if channel is not None else None
    if protocol is None or order.status != "pending":
        raise InvalidRequest("this order is not waiting for a payment at a gateway")
    found = _open_attempt(session, order.id, channel.id, now)
    if found is not None:
        return _page(found)
    product_name = session.scalar(sa.select(Product.name).where(Product.id == order.product_id)) or ""
    try:
        conf = gateway_channel(vault, channel)
    except VaultError:   # the data key changed under it: staff enter the secrets again (doctor says so)
        raise NotStarted("the payment channel is not set up: try another way to pay") from None
    to_pay = OrderToPay(order.order_no, order.amount_cents, order.currency, product_name, order.expires_at,
                        pay_type=order.pay_type, client_ip=order.client_ip)
    urls = Urls(notify=f"{site_url.rstrip('/')}/pay/{channel.code}/notify", back=back_url)
    order_id, channel_id, amount, currency = order.id, channel.id, order.amount_cents, order.currency
    session.rollback()   # no transaction (SQLite's write lock, a row lock) while the gateway answers
    try:
        started = protocol.start(conf, to_pay, urls, now)
    except GatewayError as exc:
        session.add(PaymentAttempt(order_id=order_id, channel_id=channel_id, status="failed", amount_cents=amount,
                                   currency=currency, error=str(exc)[:300], created_at=now, details="{}"))
        raise NotStarted("the payment channel did not answer: try again in a moment, or choose another way to "
                         "pay") from None
    attempt = PaymentAttempt(order_id=order_id, channel_id=channel_id, status="open", gateway_ref=started.ref,
                             pay_url=started.pay_url, qr_payload=started.qr, amount_cents=amount, currency=currency,
                             details=json.dumps(started.details, sort_keys=True, default=str), created_at=now,
                             expires_at=started.expires_at)
    try:
        with session.begin_nested():
            session.add(attempt)
    except IntegrityError:   # the same payment, kept by a concurrent visit (the gateway's idempotency)
        attempt = session.scalars(sa.select(PaymentAttempt).where(PaymentAttempt.channel_id == channel_id,
                                                                  PaymentAttempt.gateway_ref == started.ref)).one()
    return _page(attempt)

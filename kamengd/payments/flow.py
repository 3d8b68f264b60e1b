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
from ..orders.services import lock_order_status
from ..vault import Vault, VaultError
from . import methods, routing
from .gateways import gateway
from .gateways.base import GatewayError, NotForThisOrder, OrderToPay, Urls
from .models import PaymentAttempt, PaymentChannel
from .services import gateway_channel

class NotStarted(KamengdError):
    """The gateway did not create the payment (down, refused): the failed attempt is kept
    (commit it), the buyer may try again. `detail`: the gateway's reason, for staff."""
    code = "busy"
    http_status = 503
    retry_after = 5
    detail = ""
    channel_failed = True


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
        failed = NotStarted("the payment channel is not set up: try another way to pay")
        failed.detail = "its secrets cannot be opened with the data key"
        raise failed from None
    to_pay = OrderToPay(order.order_no, order.amount_cents, order.currency, product_name, order.expires_at,
                        pay_type=order.pay_type, client_ip=order.client_ip)
    urls = Urls(notify=f"{site_url.rstrip('/')}/pay/{channel.code}/notify", back=back_url)
    order_id, channel_id, amount, currency = order.id, channel.id, order.amount_cents, order.currency
    session.rollback()   # no transaction (SQLite's write lock, a row lock) while the gateway answers
    try:
        try:
            started = protocol.start(conf, to_pay, urls, now)
        except (GatewayError, KamengdError):
            raise
        except Exception as exc:   # an answer no protocol foresaw: a failed create, never the buyer's 500
            raise GatewayError(f"unexpected answer ({exc.__class__.__name__})") from None
    except GatewayError as exc:   # (NotForThisOrder too: the order may go elsewhere, the channel is fine)
        session.add(PaymentAttempt(order_id=order_id, channel_id=channel_id, status="failed", amount_cents=amount,
                                   currency=currency, error=str(exc)[:300], created_at=now, details="{}"))
        failed = NotStarted("the payment channel did not answer: try again in a moment, or choose another way "
                            "to pay")
        failed.detail = str(exc)[:300]
        failed.channel_failed = not isinstance(exc, NotForThisOrder)
        raise failed from None
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
    channel = session.get(PaymentChannel, channel_id)
    if channel.health != "ok":   # a create call that works is a check that succeeds
        routing.mark_health(session, channel, True, None, now=now)
    return _page(attempt)


def fail_over(session: Session, order: Order, channel: PaymentChannel, reason: str, *, site_url: str,
              timezone: str, channel_failed: bool = True, now: dt.datetime | None = None) -> PaymentChannel | None:
    """After the order's channel could not create its payment: the order moves to a channel of
    the same method that can take it (`channel.failover`), which is returned; None when there
    is none. A channel that failed (not one that only cannot take this order) is down until a
    check succeeds. The caller commits."""
    now = now or utcnow()
    # The order's row first, as payments and the expiry sweep take it (MySQL: no deadlock with them).
    if lock_order_status(session, order.id) != "pending":
        return None
    if channel_failed:
        routing.mark_health(session, channel, False, reason, now=now)
    # A payment already created for the order (a concurrent visit) may still be paid there: it stays.
    if session.scalar(sa.select(PaymentAttempt.id).where(PaymentAttempt.order_id == order.id,
                                                         PaymentAttempt.status == "open").limit(1)) is not None:
        return None
    options = json.loads(channel.options)
    method = (order.pay_type if channel.type in methods.WITH_PAY_TYPES and order.pay_type
              else methods.offered(channel.type, options)[0])
    # Channels that already failed this order are not tried again.
    tried = set(session.scalars(sa.select(PaymentAttempt.channel_id).where(PaymentAttempt.order_id == order.id,
                                                                          PaymentAttempt.status == "failed")))
    day = routing.shop_day(order.created_at, timezone)
    conn = session.connection()
    # The day its channel counted it on, if one did (read under the lock taken above).
    counted_on = conn.execute(sa.select(Order.__table__.c.cap_day).where(Order.__table__.c.id == order.id)).scalar()
    for route in routing.stand_ins(session, product_id=order.product_id, amount_cents=order.amount_cents,
                                   currency=order.currency, method=method, site_url=site_url, day=day,
                                   leave_out=tried | {channel.id}):
        if not routing.take_capacity(session, route.id, route.daily_cap_cents, day, order.amount_cents):
            continue
        moved = conn.execute(sa.update(Order.__table__).where(
            Order.__table__.c.id == order.id, Order.__table__.c.status == "pending",
            Order.__table__.c.channel_id == channel.id)
            .values(channel_id=route.id, pay_type=route.method if route.type in methods.WITH_PAY_TYPES else None,
                    cap_day=day if route.daily_cap_cents is not None else None, updated_at=now)).rowcount
        if not moved:   # paid, expired or moved meanwhile: nothing to move
            if route.daily_cap_cents is not None:
                routing.give_back(conn, route.id, day, order.amount_cents)
            return None
        if counted_on is not None:
            routing.give_back(conn, channel.id, counted_on, order.amount_cents)
        routing.record_failover(session, order_no=order.order_no, from_code=channel.code, to_code=route.code,
                                reason=reason, now=now)
        session.expire(order)
        return session.get(PaymentChannel, route.id)
    return None

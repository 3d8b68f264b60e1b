"""Refunds through the channel a payment came by (Stripe, Alipay and the other gateway
protocols): the money goes back at the gateway, then the order is refunded here.

The gateway is asked outside any transaction, with the payment's own refund
number as its idempotency key (Stripe's Idempotency-Key, Alipay's
out_request_no): asked twice, by a double click, two staff members or a retry
after this shop failed to record the first answer, it gives the money back
once. The refund's row, the payment's new status, the order's refund
(kamengd.orders.staff.refund_order: keys, commission, events) and the audit
entry are then written in one transaction.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..audit.services import record
from ..database import utcnow
from ..errors import Conflict, InvalidRequest
from ..money import format_cents
from ..orders import staff as order_staff
from ..orders.models import Order
from ..vault import Vault
from .gateways import gateway
from .gateways.base import GatewayError
from .models import Payment, PaymentChannel, PaymentRefund
from .services import gateway_channel


@dataclass
class ChannelRefund:
    refund: order_staff.Refund
    payment_id: int
    amount_cents: int
    gateway_ref: str


def _received_payment(session: Session, order: Order) -> tuple[Payment, PaymentChannel] | None:
    return session.execute(sa.select(Payment, PaymentChannel).join(PaymentChannel,
                                                                    PaymentChannel.id == Payment.channel_id)
                           .where(Payment.order_id == order.id, Payment.status.in_(("received", "held")))
                           .order_by(Payment.id)).first()


def refundable_payment(session: Session, order: Order) -> tuple[Payment, PaymentChannel] | None:
    """The order's payment that its channel can give back (None: money goes back by hand, or
    to the balance that paid it)."""
    row = _received_payment(session, order)
    protocol = gateway(row[1].type) if row is not None else None
    if protocol is None or not protocol.refunds:
        return None
    return row[0], row[1]


def refund_through_channel(session: Session, vault: Vault, *, order_no, reason, actor: str,
                           source_ip: str | None = None, now: dt.datetime | None = None) -> ChannelRefund:
    """Give the order's payment back at its gateway, then refund the order (see the module)."""
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidRequest("reason: required")
    now = now or utcnow()
    order = order_staff.find_order(session, order_no)
    if order.status not in order_staff.REFUNDABLE:
        raise Conflict("order %(order_no)s is %(status)s; only paid, held or delivered orders can be refunded",
                       order_no=order.order_no, status=order.status)
    found = refundable_payment(session, order)
    if found is None:
        paid = _received_payment(session, order)
        if paid is not None and paid[1].type == "balance":
            raise InvalidRequest("order %(order_no)s was paid from a balance: refund it without the channel and the "
                                 "money goes back to that balance", order_no=order.order_no)
        if paid is not None and paid[1].type == "points":
            raise InvalidRequest("order %(order_no)s was paid with points: refund it without the channel and the "
                                 "points go back to the member", order_no=order.order_no)
        if paid is not None and gateway(paid[1].type) is not None:
            raise InvalidRequest("order %(order_no)s was paid through %(channel)s, which cannot give money back: "
                                 "return it by hand, then refund the order without the channel",
                                 order_no=order.order_no, channel=paid[1].code)
        raise InvalidRequest("order %(order_no)s was not paid through a channel that can give money back: mark it "
                             "refunded and return the money at the gateway", order_no=order.order_no)
    payment, channel = found
    refund_no = f"kamengd-refund-{payment.id}"
    conf, protocol = gateway_channel(vault, channel), gateway(channel.type)
    payment_id, trade_no, amount, currency, code = (payment.id, payment.trade_no, payment.amount_cents,
                                                    order.currency, channel.code)
    session.rollback()   # no transaction (SQLite's write lock, a row lock) while the gateway answers
    try:
        ref = protocol.refund(conf, trade_no=trade_no, amount_cents=amount, currency=currency, refund_no=refund_no)
    except GatewayError as exc:
        # Kept although the request fails: the gateway may have moved money all the same (a
        # refund of another amount), and staff must find the attempt and the gateway's words.
        record(session, "payment.refund_failed", actor=actor, target=f"order:{order_no}", source_ip=source_ip,
               details={"payment_id": payment_id, "channel": code, "amount": format_cents(amount),
                        "currency": currency, "refund_no": refund_no, "error": str(exc)[:300]})
        session.commit()
        raise Conflict("the gateway did not give the money back: %(error)s", error=str(exc)[:200]) from None
    try:
        with session.begin_nested():
            session.add(PaymentRefund(payment_id=payment_id, refund_no=refund_no, amount_cents=amount,
                                      gateway_ref=ref[:128], actor=actor[:80], created_at=now))
    except IntegrityError:   # a concurrent request recorded this very refund
        raise Conflict("order %(order_no)s is being refunded by someone else", order_no=order_no) from None
    details = {"payment_id": payment_id, "channel": code, "amount": format_cents(amount), "currency": currency,
               "gateway_ref": ref[:128], "refund_no": refund_no}
    try:
        done = order_staff.refund_order(session, order_no=order_no, reason=reason, actor=actor,
                                        source_ip=source_ip, now=now)
    except Conflict:
        # Refunded by hand meanwhile (the order's state was read before the gateway was asked):
        # the money the gateway gave back is recorded all the same, and staff are told, so the
        # buyer is not paid back a second time by hand. Nothing else was written by the refusal.
        _mark_refunded(session, payment_id, now)
        record(session, "payment.refund", actor=actor, target=f"order:{order_no}", source_ip=source_ip,
               details={**details, "order_refunded_meanwhile": True})
        session.commit()
        raise Conflict("order %(order_no)s was refunded by someone else meanwhile, and the gateway gave the money "
                       "back too (%(ref)s): make sure the buyer is not paid back twice", order_no=order_no,
                       ref=ref[:128]) from None
    _mark_refunded(session, payment_id, now)
    record(session, "payment.refund", actor=actor, target=order_staff.target(done.order), source_ip=source_ip,
           details=details)
    return ChannelRefund(done, payment_id, amount, ref)


def _mark_refunded(session: Session, payment_id: int, now: dt.datetime) -> None:
    session.execute(sa.update(Payment).where(Payment.id == payment_id)
                    .values(status="refunded", refunded_at=now).execution_options(synchronize_session=False))

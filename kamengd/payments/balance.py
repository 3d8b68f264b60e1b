"""The balance channel: a buyer pays an order from its own balance (a member's or an agent's,
W2's ledger) instead of at a gateway.

There is no gateway and so no callback to trust: the order's pay page
(/pay/<code>/balance) asks the buyer to sign in to the portal and to confirm,
and this module pays it in the request's one transaction: the order's row
locked, the ledger's debit (cause `order:<order_no>:paid`, booked once
whoever presses, however often), and the payment recorded by the same
record_payment every gateway's callback ends in (trade `balance-<order_no>`),
which delivers the order. A balance that does not cover the amount refuses
it all and the order stays pending. A refund of the order gives the money
back to the balance that paid it (kamengd.orders.staff.refund_order).
"""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..database import utcnow
from ..errors import Conflict, InvalidRequest
from ..ledger import services as ledger
from ..orders.models import Order
from ..orders.services import lock_order_status
from .models import Payment, PaymentChannel
from .services import PaymentOutcome, record_payment

TRADE_PREFIX = "balance-"


def trade_no_for(order_no: str) -> str:
    """One payment per order: a second press finds the first."""
    return TRADE_PREFIX + order_no


def balance_channel(session: Session, code: str, order) -> PaymentChannel:
    """The enabled balance channel `code` the order is paid through; InvalidRequest otherwise."""
    channel = session.scalar(sa.select(PaymentChannel).where(PaymentChannel.code == code))
    if channel is None or channel.type != "balance" or order.channel_id != channel.id:
        raise InvalidRequest("this order is not paid from a balance through %(code)s", code=code[:32])
    if not channel.is_enabled:
        raise InvalidRequest("the balance channel %(code)s is turned off", code=code)
    return channel


def open_for_payment(session: Session, channel: PaymentChannel, order, trade_no: str, payer,
                     now: dt.datetime) -> bool:
    """Lock the order of a channel this shop pays itself (a balance, points) and check it can
    be paid by `payer` now. False: it was paid through `trade_no` already (a double click, a
    second tab). Raises Conflict (no longer pending, expired) or InvalidRequest (payer disabled)."""
    status = lock_order_status(session, order.id)   # before anything: the expiry sweep locks it first too
    session.refresh(order)
    if session.scalar(sa.select(Payment.id).where(Payment.channel_id == channel.id,
                                                  Payment.trade_no == trade_no)) is not None:
        return False
    if status != "pending":
        raise Conflict("order %(order_no)s is %(status)s: there is nothing to pay", order_no=order.order_no,
                       status=status)
    if order.expires_at <= now:
        raise Conflict("order %(order_no)s has expired: place it again", order_no=order.order_no)
    if not payer.is_active:
        raise InvalidRequest("%(username)s is disabled", username=payer.username)
    return True


def mark_member(session: Session, order, payer) -> None:
    """The payer becomes the order's member: whose statement names it, who earns its points on
    delivery (kamengd.marketing.points)."""
    session.execute(sa.update(Order).where(Order.id == order.id).values(member_id=payer.id)
                    .execution_options(synchronize_session=False))
    session.refresh(order)


def pay_from_balance(session: Session, *, code: str, order, payer, now: dt.datetime | None = None) -> PaymentOutcome:
    """Pay `order` from `payer`'s (an Agent: member or agent) spendable balance, and deliver it.

    Raises InvalidRequest (not this channel's order, another currency), Conflict (the order
    is no longer pending, or expired) or InsufficientBalance; the caller then rolls back and
    nothing is written. Paid already (a double click, a second tab): the first payment's
    outcome, nothing charged twice. The caller commits."""
    now = now or utcnow()
    channel = balance_channel(session, code, order)
    trade_no = trade_no_for(order.order_no)
    if not open_for_payment(session, channel, order, trade_no, payer, now):
        return PaymentOutcome(True, "already recorded")
    available = ledger.agent_refs(session, payer.id).get("available")
    if available is None or available.currency != order.currency:
        raise InvalidRequest("this order is in %(currency)s, the balance is in %(balance)s",
                             currency=order.currency, balance=available.currency if available else "-")
    cause = ledger.order_paid_cause(order.order_no)
    if order.amount_cents:
        sales = ledger.shop_ref(session, "shop:sales", order.currency)
        ledger.post(session, cause=cause, kind="order", legs=[(available, -order.amount_cents),
                                                              (sales, order.amount_cents)],
                    actor=f"agent:{payer.username}", memo=f"order {order.order_no}"[:200])
    mark_member(session, order, payer)
    outcome = record_payment(session, channel, order, trade_no=trade_no, amount_cents=order.amount_cents,
                             raw={"payer": payer.username, "payer_id": payer.id, "ledger_cause": cause},
                             now=now, source="balance")
    # Paid, or held for a person (a risk rule asked for review): pending and locked, nothing else.
    if not outcome.recorded or outcome.reason not in ("paid", "held"):
        raise RuntimeError(f"order {order.order_no}: a balance payment was recorded as {outcome.reason!r}")
    return outcome

"""The points channel (积分兑换): a member (or an agent) pays an order with its points instead
of money. A product sold through a points channel only (its routing) is a points-only product.

As the balance channel (kamengd.payments.balance): no gateway, no callback to trust. The
order's pay page (/pay/<code>/points) asks the buyer to sign in to the portal and to confirm;
this module pays it in the request's one transaction: the order's row locked, the points
taken (kamengd.marketing.points, cause `order:<order_no>:points_paid`: once, whoever presses,
however often), and the payment recorded by the same record_payment every gateway's callback
ends in (trade `points-<order_no>`), which delivers the order. Points that do not cover it
refuse it all and the order stays pending. A refund gives the points back.
"""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..database import utcnow
from ..errors import Conflict, InvalidRequest
from ..ledger.services import DEFAULT_CURRENCY
from ..marketing import points
from ..settings.services import get_setting
from .balance import mark_member, open_for_payment
from .models import PaymentChannel
from .services import PaymentOutcome, record_payment

TRADE_PREFIX = "points-"


def trade_no_for(order_no: str) -> str:
    """One payment per order: a second press finds the first."""
    return TRADE_PREFIX + order_no


def points_channel(session: Session, code: str, order) -> PaymentChannel:
    """The enabled points channel `code` the order is paid through; InvalidRequest otherwise."""
    channel = session.scalar(sa.select(PaymentChannel).where(PaymentChannel.code == code))
    if channel is None or channel.type != "points" or order.channel_id != channel.id:
        raise InvalidRequest("this order is not paid with points through %(code)s", code=code[:32])
    if not channel.is_enabled:
        raise InvalidRequest("the points channel %(code)s is turned off", code=code)
    return channel


def cost(session: Session, order) -> int:
    """The points the order costs now (points.value per 1.00, rounded up)."""
    return points.cost_of(order.amount_cents, get_setting(session, "points.value"))


def pay_with_points(session: Session, *, code: str, order, payer, now: dt.datetime | None = None,
                    expected_cost=None) -> PaymentOutcome:
    """Pay `order` with `payer`'s (an Agent: member or agent) points, and deliver it.

    Raises InvalidRequest (not this channel's order, not in the shop's currency), Conflict (no
    longer pending, or expired) or InsufficientBalance; the caller then rolls back and nothing
    is written. Paid already (a double click, a second tab): the first payment's outcome,
    nothing taken twice. With `expected_cost` (what the buyer's page said), a cost changed
    since (points.value) is refused: the buyer sees the new one first. The caller commits."""
    now = now or utcnow()
    channel = points_channel(session, code, order)
    trade_no = trade_no_for(order.order_no)
    if not open_for_payment(session, channel, order, trade_no, payer, now):
        return PaymentOutcome(True, "already recorded")
    if order.currency != DEFAULT_CURRENCY:
        raise InvalidRequest("points pay orders in %(currency)s only", currency=DEFAULT_CURRENCY)
    if expected_cost not in (None, "") and str(expected_cost).strip() != str(cost(session, order)):
        raise Conflict("this order costs %(cost)s points now: check it and pay again", cost=cost(session, order))
    taken = points.pay(session, order_no=order.order_no, member_id=payer.id, amount_cents=order.amount_cents,
                       actor=f"agent:{payer.username}")
    mark_member(session, order, payer)   # (it earns nothing: points.earn sees it paid with points)
    outcome = record_payment(session, channel, order, trade_no=trade_no, amount_cents=order.amount_cents,
                             raw={"payer": payer.username, "payer_id": payer.id, "points": taken,
                                  "ledger_cause": points.paid_cause(order.order_no)},
                             now=now, source="points")
    # Paid, or held for a person (a risk rule asked for review): pending and locked, nothing else.
    if not outcome.recorded or outcome.reason not in ("paid", "held"):
        raise RuntimeError(f"order {order.order_no}: a points payment was recorded as {outcome.reason!r}")
    return outcome

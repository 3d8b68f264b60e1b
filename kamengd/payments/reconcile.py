"""Missed callbacks (掉单): ask the gateway about orders still unpaid here.

Gateway channels (Stripe and the others of kamengd.payments.gateways) are
asked about the payment created for the order (its attempt), the same way
and on the same schedule as Epay orders below.

For Epay orders pending longer than a minute, the reconciliation job asks
`<gateway>/api.php?act=order` (CONTRACT.md §3) with a backoff (next check
after half the order's age, at least a minute) until the order has expired,
and completes those the gateway reports paid (status 1) with the right money,
exactly as their callback would have, once. A gateway that does not answer,
or answers nonsense, changes nothing; the order is asked about again later.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlencode

import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased

from ..database import utcnow
from ..money import parse_gateway_money
from ..orders.models import Order
from ..vault import Vault, VaultError
from ..validation import has_control_characters
from .gateways import SPECS, gateway
from .gateways.base import GatewayError as ProtocolError
from .models import MAX_TRADE_NO, PaymentAttempt, PaymentChannel, placeholder_trade_no
from .services import channel_option, channel_secrets, gateway_channel, record_payment

log = logging.getLogger("kamengd.reconcile")
MIN_AGE = dt.timedelta(minutes=1)
LATE_PAYMENTS = dt.timedelta(hours=1)  # keep asking this long after expiry: late payers still get keys


class GatewayError(Exception):
    pass


def query_epay_order(gateway: str, pid: str, key: str, order_no: str, timeout: float = 10) -> dict:
    url = f"{gateway.rstrip('/')}/api.php?" + urlencode({"act": "order", "pid": pid, "key": key,
                                                          "out_trade_no": order_no})
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read(64 * 1024)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise GatewayError(f"gateway unreachable: {exc.__class__.__name__}") from None
    try:
        # Numbers kept as written: "money": 9.90 is read as the text 9.90, never a float.
        data = json.loads(body, parse_float=str, parse_int=str)
    except (ValueError, UnicodeDecodeError):
        raise GatewayError("gateway answered something that is not JSON") from None
    if not isinstance(data, dict):
        raise GatewayError("gateway answered something that is not a JSON object")
    return data


def _next_check(order: Order, now: dt.datetime) -> dt.datetime:
    age = now - order.created_at
    return now + max(MIN_AGE, age / 2)


def _due(now: dt.datetime):
    """Orders of a channel still worth asking about: unpaid, a minute old, their next check due."""
    return [sa.or_(Order.status == "pending",
                   sa.and_(Order.status == "expired", Order.expires_at > now - LATE_PAYMENTS)),
            Order.created_at <= now - MIN_AGE,
            sa.or_(Order.next_check_at.is_(None), Order.next_check_at <= now)]


def reconcile_pending(session: Session, vault: Vault, *, now: dt.datetime | None = None, limit: int = 100,
                      query=query_epay_order) -> dict:
    """One pass; commits per order (a job, not a request)."""
    now = now or utcnow()
    counts = _reconcile_epay(session, vault, now=now, limit=limit, query=query)
    for name, value in _reconcile_gateways(session, vault, now=now, limit=limit).items():
        counts[name] += value
    return counts


def _reconcile_gateways(session: Session, vault: Vault, *, now: dt.datetime, limit: int) -> dict:
    """The orders of gateway channels (kamengd.payments.gateways) whose payment was created:
    the gateway is asked about that payment, and one it reports paid is recorded exactly as
    its callback would have been."""
    counts = {"checked": 0, "completed": 0, "unpaid": 0, "errors": 0}
    tried = aliased(PaymentAttempt)
    latest = (sa.select(sa.func.max(tried.id)).where(tried.order_id == Order.id, tried.channel_id == Order.channel_id,
                                                     tried.status == "open")
              .correlate(Order).scalar_subquery())
    due = session.execute(
        sa.select(Order.id, Order.order_no, Order.channel_id, PaymentChannel.type, PaymentAttempt.gateway_ref)
        .join(PaymentChannel, PaymentChannel.id == Order.channel_id)
        .join(PaymentAttempt, sa.and_(PaymentAttempt.order_id == Order.id, PaymentAttempt.id == latest))
        .where(PaymentChannel.type.in_(list(SPECS)), *_due(now))
        .order_by(Order.next_check_at, Order.id).limit(limit)).all()
    channels = {}
    for channel_id in {row.channel_id for row in due}:
        channels[channel_id] = gateway_channel(vault, session.get(PaymentChannel, channel_id))
    session.commit()   # no transaction is held while a gateway answers
    for order_id, order_no, channel_id, channel_type, ref in due:
        counts["checked"] += 1
        try:
            notice = usable(gateway(channel_type).query(channels[channel_id], order_no, ref, now))
        except ProtocolError as exc:
            log.warning("reconcile %s: %s", order_no, exc)
            notice, outcome = None, "errors"
        except Exception as exc:   # an answer no protocol foresaw: this order waits, the pass goes on
            log.warning("reconcile %s: unexpected %s", order_no, exc.__class__.__name__)
            notice, outcome = None, "errors"
        else:
            outcome = "unpaid"
        if notice is not None:
            result = record_payment(session, session.get(PaymentChannel, channel_id), session.get(Order, order_id),
                                    trade_no=notice.trade_no, amount_cents=notice.amount_cents or 0,
                                    currency=notice.currency or None, now=now, source="reconciliation",
                                    raw={**notice.raw, "source": "reconciliation"})
            outcome = "completed" if result.recorded else "errors"
        counts[outcome] += 1
        order = session.get(Order, order_id)
        if order.status in ("pending", "expired"):
            order.next_check_at = _next_check(order, now)
        session.commit()
    return counts


def usable(notice):
    """A query's notice, or ProtocolError when its trade number could not be recorded (the
    callback's rule: within MAX_TRADE_NO, no control characters)."""
    if notice is not None and (not notice.trade_no or len(notice.trade_no) > MAX_TRADE_NO
                               or has_control_characters(notice.trade_no)):
        raise ProtocolError("the gateway's trade number is unusable")
    return notice


# The buyer's return asks the gateway at most this often per order and process (a page
# refreshing itself every 5 s without JavaScript must not become a stream of API calls).
RETURN_SPACING_SECONDS = 15
_asked_on_return: dict[int, float] = {}
_asked_lock = threading.Lock()


def _may_ask_on_return(order_id: int) -> bool:
    now = time.monotonic()
    with _asked_lock:
        if len(_asked_on_return) > 4096:
            _asked_on_return.clear()
        if now - _asked_on_return.get(order_id, -RETURN_SPACING_SECONDS) < RETURN_SPACING_SECONDS:
            return False
        _asked_on_return[order_id] = now
    return True


def ask_on_return(session: Session, vault: Vault, order_id: int, *, now: dt.datetime | None = None) -> bool:
    """The buyer is back from a gateway where the money moves only when this shop asks for it
    (PayPal: an approved order is captured by query()): ask about the order's latest open
    attempt now and record what the gateway reports paid, as reconciliation would. True when
    a payment was recorded (committed). No transaction is held while the gateway answers; a
    gateway that cannot say leaves the order to its webhook and to reconciliation."""
    now = now or utcnow()
    row = session.execute(
        sa.select(Order.order_no, Order.status, Order.channel_id, PaymentChannel.type, PaymentAttempt.gateway_ref)
        .join(PaymentChannel, PaymentChannel.id == Order.channel_id)
        .join(PaymentAttempt, sa.and_(PaymentAttempt.order_id == Order.id,
                                      PaymentAttempt.channel_id == Order.channel_id, PaymentAttempt.status == "open"))
        .where(Order.id == order_id).order_by(PaymentAttempt.id.desc()).limit(1)).first()
    protocol = gateway(row.type) if row is not None else None
    if (protocol is None or not protocol.asks_on_return or row.status != "pending" or not row.gateway_ref
            or not _may_ask_on_return(order_id)):
        session.rollback()
        return False
    try:
        conf = gateway_channel(vault, session.get(PaymentChannel, row.channel_id))
    except VaultError:
        session.rollback()
        return False
    session.rollback()   # no transaction while the gateway answers
    try:
        notice = usable(protocol.query(conf, row.order_no, row.gateway_ref, now))
    except ProtocolError as exc:
        log.warning("asked on the buyer's return %s: %s", row.order_no, exc)
        return False
    except Exception as exc:   # a gateway's answer no protocol foresaw: never the buyer's 500
        log.warning("asked on the buyer's return %s: unexpected %s", row.order_no, exc.__class__.__name__)
        return False
    if notice is None:
        return False
    result = record_payment(session, session.get(PaymentChannel, row.channel_id), session.get(Order, order_id),
                            trade_no=notice.trade_no, amount_cents=notice.amount_cents or 0,
                            currency=notice.currency or None, now=now, source="reconciliation",
                            raw={**notice.raw, "source": "return"})
    if result.recorded:
        session.commit()
    else:
        session.rollback()
    return result.recorded


def _reconcile_epay(session: Session, vault: Vault, *, now: dt.datetime, limit: int, query) -> dict:
    counts = {"checked": 0, "completed": 0, "unpaid": 0, "errors": 0}
    due = session.execute(
        sa.select(Order.id, Order.order_no, Order.channel_id)
        .join(PaymentChannel, PaymentChannel.id == Order.channel_id)
        .where(PaymentChannel.type == "epay", *_due(now))
        .order_by(Order.next_check_at, Order.id).limit(limit)).all()
    gateways = {}
    for channel_id in {row.channel_id for row in due}:
        channel = session.get(PaymentChannel, channel_id)
        gateways[channel_id] = (channel_option(channel, "gateway"), channel_option(channel, "pid"),
                                channel_secrets(vault, channel).get("key", ""))
    session.commit()  # ends the read: no transaction (SQLite write lock) is held while a gateway answers
    for order_id, order_no, channel_id in due:
        counts["checked"] += 1
        try:
            data = query(*gateways[channel_id], order_no)
            outcome = _complete(session, session.get(PaymentChannel, channel_id), order_id, order_no, data, now)
        except GatewayError as exc:
            outcome = "errors"
            log.warning("reconcile %s: %s", order_no, exc)
        counts[outcome] += 1
        order = session.get(Order, order_id)
        if order.status in ("pending", "expired"):
            order.next_check_at = _next_check(order, now)
        session.commit()   # each order's outcome is stored before the next gateway call
    return counts


def _complete(session: Session, channel: PaymentChannel, order_id: int, order_no: str, data: dict,
              now: dt.datetime) -> str:
    if str(data.get("code")) != "1" or str(data.get("status")) != "1":
        return "unpaid"
    if str(data.get("out_trade_no", order_no)) != order_no:
        raise GatewayError("gateway answered about another order")
    amount = parse_gateway_money(data.get("money"))
    if amount is None:
        raise GatewayError("gateway reported no usable amount")
    order = session.get(Order, order_id)
    if amount != order.amount_cents:
        # Only an exact match completes an order here; a wrong amount waits for
        # its callback (which holds it) or for a person.
        log.warning("reconcile %s: gateway says %s paid, the order is for %s cents", order_no, amount,
                    order.amount_cents)
        return "unpaid"
    # One rule with the callback's: a trade number the callback would refuse is not
    # cut to fit (a cut one would never match its callback); the stand-in is used.
    given = data.get("trade_no")
    given = given if isinstance(given, str) else ""
    if len(given) > MAX_TRADE_NO or has_control_characters(given):
        log.warning("reconcile %s: the gateway's trade number is unusable (%d characters); recorded "
                    "under %s", order_no, len(given), placeholder_trade_no(order_no))
        given = ""
    trade_no = given or placeholder_trade_no(order_no)
    result = record_payment(session, channel, order, trade_no=trade_no, amount_cents=amount,
                            raw={**{k: str(v) for k, v in data.items()}, "source": "reconciliation"}, now=now,
                            source="reconciliation")
    return "completed" if result.recorded else "errors"

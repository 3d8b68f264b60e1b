"""What staff do with orders: find them, look at one, and act on it.

Each action takes (session, ..., actor, source_ip), changes the order with a
conditional UPDATE on its status (two staff acting at once: one wins, the
other gets Conflict), records an audit entry in the same transaction and
only flushes; the caller commits once. An action refused halfway raises,
and the caller's rollback leaves nothing done.

Money never moves here: a refund marks the order refunded, the merchant
returns the money at the gateway.
"""
from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..agents import commission
from ..agents.models import Agent
from ..audit.models import AuditEntry
from ..audit.services import record
from ..catalog.models import Product
from ..database import utcnow
from ..errors import Conflict, InvalidRequest, NotFound
from ..inventory.models import CardKey, on_sale_again
from ..ledger import services as ledger
from ..marketing import points
from ..money import format_cents
from ..notifications.events import emit, order_payload
from ..notifications.models import EmailOutbox, Event
from ..notifications.outbox import queue_delivery_email
from ..payments.models import EXTRA_PAYMENT_FLAG, Payment, PaymentChannel
from ..vault import Vault
from ..vouchers import services as vouchers
from .models import ORDER_STATUSES, Order
from .services import (DELIVERED, RESOLVED, deliver_manually, deliver_paid_order,
                       deliver_waiting_orders, lock_order_status, order_keys)

MAX_REASON = 500
MAX_PASTE = 1_000_000          # characters of pasted keys
REFUNDABLE = ("paid", "held", "delivered")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")   # as the importer: a tab may stay


def target(order: Order) -> str:
    return f"order:{order.order_no}"


def find_order(session: Session, order_no) -> Order:
    if not isinstance(order_no, str) or not 0 < len(order_no) <= 32:
        raise NotFound("order not found")
    order = session.scalar(sa.select(Order).where(Order.order_no == order_no))
    if order is None:
        raise NotFound("order %(order_no)s not found", order_no=order_no)
    return order


def _text(value, name: str, *, required: bool) -> str:
    value = (value if isinstance(value, str) else "").strip()
    if required and not value:
        raise InvalidRequest("%(name)s: required", name=name)
    if len(value) > MAX_REASON:
        raise InvalidRequest("%(name)s: at most %(MAX_REASON)s characters", name=name, MAX_REASON=MAX_REASON)
    return value


def _claim(session: Session, order: Order, expected: tuple[str, ...], **values) -> bool:
    """Conditional UPDATE on the order's status; True when this transaction changed it."""
    done = session.execute(sa.update(Order).where(Order.id == order.id, Order.status.in_(expected))
                           .values(**values).execution_options(synchronize_session=False)).rowcount
    session.refresh(order)
    return done == 1


def _release_reserved(session: Session, order: Order) -> int:
    """The order's reserved keys go back on sale; buyers who already paid get them first."""
    t = CardKey.__table__
    released = session.execute(t.update().where(t.c.order_id == order.id, t.c.status == "reserved")
                               .values(status=on_sale_again(t), order_id=None, reserved_until=None)).rowcount
    if released:
        deliver_waiting_orders(session, order.product_id)
    return released


def key_counts(session: Session, order: Order) -> dict[str, int]:
    t = CardKey.__table__
    counts = dict(session.execute(sa.select(t.c.status, sa.func.count()).where(t.c.order_id == order.id)
                                  .group_by(t.c.status)).all())
    if order.loop_key_id is not None:   # its loop key, sold to it as to every buyer (and kept in stock)
        counts["sold"] = counts.get("sold", 0) + 1
    return counts


# --- finding orders -------------------------------------------------------

@dataclass
class OrderSearch:
    order_no: str = ""                  # exact or prefix
    email: str = ""                     # exact, any letter case
    status: str = ""                    # one of ORDER_STATUSES, or "" for all
    created_from: dt.datetime | None = None   # naive UTC, inclusive
    created_to: dt.datetime | None = None     # naive UTC, exclusive
    flagged: bool = False
    product_id: int | None = None
    channel_id: int | None = None
    extra_payment: bool = False               # an extra payment still to refund
    order_ids: list[int] | None = None        # found by a delivered key (orders_with_key)

    def conditions(self) -> list:
        where = []
        if self.product_id is not None:
            where.append(Order.product_id == self.product_id)
        if self.channel_id is not None:
            where.append(Order.channel_id == self.channel_id)
        if self.extra_payment:
            where.append(sa.exists().where(Payment.order_id == Order.id, Payment.status == "extra"))
        if self.order_ids is not None:
            where.append(Order.id.in_(self.order_ids or [-1]))
        if self.order_no:
            where.append(Order.order_no.startswith(self.order_no[:32], autoescape=True))
        if self.email:   # phones capitalise the first letter: any letter case matches
            where.append(sa.func.lower(Order.email) == self.email[:254].lower())
        if self.status in ORDER_STATUSES:
            where.append(Order.status == self.status)
        if self.created_from is not None:
            where.append(Order.created_at >= self.created_from)
        if self.created_to is not None:
            where.append(Order.created_at < self.created_to)
        if self.flagged:
            where.append(Order.flagged_at.is_not(None))
        return where


def orders_with_key(session: Session, vault: Vault, key: str, limit: int = 100) -> list[int]:
    """The orders a card key went to ("this key doesn't work"), found by its fingerprint
    under each product and data-key version: one indexed query, nothing decrypted, the
    key itself never stored or logged."""
    plaintext = key.strip().encode()
    if not plaintext:
        return []
    t = CardKey.__table__
    product_ids = session.scalars(sa.select(Product.id)).all()
    pairs = [(pid, vault.fingerprint(pid, plaintext, version)) for pid in product_ids for version in vault.versions]
    ids: set[int] = set()
    loop_keys: set[int] = set()
    for start in range(0, len(pairs), 500):   # bounded statements for a big catalogue
        chunk = pairs[start:start + 500]
        for key_id, order_id in session.execute(sa.select(t.c.id, t.c.order_id).where(
                sa.tuple_(t.c.product_id, t.c.fingerprint).in_(chunk))):
            if order_id is not None:
                ids.add(order_id)
            else:   # in stock, or a loop key (ix_orders_loop_key_id finds its orders)
                loop_keys.add(key_id)
    if loop_keys:   # a loop key went to every order that has it, the newest first
        ids.update(session.scalars(sa.select(Order.id).where(Order.loop_key_id.in_(loop_keys))
                                   .order_by(Order.id.desc()).limit(limit)).all())
    return sorted(ids, reverse=True)[:limit]


def search_orders(session: Session, search: OrderSearch, *, page: int = 1,
                  page_size: int = 50) -> tuple[list, int]:
    """One page of (Order, product name), newest first, and how many match in all."""
    where = search.conditions()
    total = session.scalar(sa.select(sa.func.count()).select_from(Order).where(*where))
    # The page of orders alone, then its products' names: joined in one statement, MariaDB drove the
    # join from products and sorted a million orders for each page (9 s); alone, the created_at
    # index gives the page in order.
    orders = session.scalars(sa.select(Order).where(*where).order_by(Order.created_at.desc(), Order.id.desc())
                             .limit(page_size).offset((max(page, 1) - 1) * page_size)).all()
    names = dict(session.execute(sa.select(Product.id, Product.name)
                                 .where(Product.id.in_({o.product_id for o in orders}))).all()) if orders else {}
    return [(o, names.get(o.product_id, "")) for o in orders], total


# --- one order ------------------------------------------------------------

@dataclass
class OrderDetail:
    order: Order
    product: Product
    channel: PaymentChannel | None
    payments: list = field(default_factory=list)    # (Payment, channel code)
    mails: list = field(default_factory=list)       # EmailOutbox rows
    events: list = field(default_factory=list)      # (Event, payload dict)
    audit: list = field(default_factory=list)       # AuditEntry rows
    keys: dict = field(default_factory=dict)        # key status -> count
    agent: Agent | None = None                      # an agent's order (the agent API)


def order_detail(session: Session, order_no, limit: int = 200) -> OrderDetail:
    order = find_order(session, order_no)
    payments = session.execute(sa.select(Payment, PaymentChannel.code)
                               .join(PaymentChannel, PaymentChannel.id == Payment.channel_id)
                               .where(Payment.order_id == order.id).order_by(Payment.id)).all()
    mails = session.scalars(sa.select(EmailOutbox).where(EmailOutbox.order_id == order.id)
                            .order_by(EmailOutbox.id).limit(limit)).all()
    # Events and audit entries name the order in their text; none predates it (an hour
    # of margin for servers whose clocks differ) and the time index bounds the search.
    since = order.created_at - dt.timedelta(hours=1)
    events = session.scalars(sa.select(Event).where(
        Event.created_at >= since,
        Event.payload.contains(json.dumps({"order_no": order.order_no})[1:-1], autoescape=True))
        .order_by(Event.id).limit(limit)).all()
    audit = session.scalars(sa.select(AuditEntry).where(AuditEntry.created_at >= since,
                                                        AuditEntry.target == target(order))
                            .order_by(AuditEntry.id).limit(limit)).all()
    return OrderDetail(order=order, product=session.get(Product, order.product_id),
                       channel=session.get(PaymentChannel, order.channel_id) if order.channel_id else None,
                       payments=[tuple(p) for p in payments], mails=list(mails),
                       events=[(e, json.loads(e.payload)) for e in events], audit=list(audit),
                       keys=key_counts(session, order),
                       agent=session.get(Agent, order.agent_id) if order.agent_id else None)


# --- actions --------------------------------------------------------------

def reveal_keys(session: Session, vault: Vault, *, order_no, actor: str,
                source_ip: str | None = None) -> tuple[Order, list[str]]:
    """The keys a delivered order's buyer received; every look is audited."""
    order = find_order(session, order_no)
    if order.delivered_at is None:
        raise Conflict("order %(order_no)s is %(status)s; it has no delivered keys",
                       order_no=order.order_no, status=order.status)
    keys = order_keys(session, vault, order)
    record(session, "order.keys_view", actor=actor, target=target(order), source_ip=source_ip,
           details={"keys": len(keys)})
    return order, keys


def parse_pasted_keys(text, max_length: int) -> list[str]:
    """One key a line; blank lines and surrounding spaces are dropped."""
    if not isinstance(text, str) or len(text) > MAX_PASTE:
        raise InvalidRequest("keys: at most %(MAX_PASTE)s characters", MAX_PASTE=MAX_PASTE)
    keys = []
    for lineno, line in enumerate(text.splitlines(), 1):
        key = line.strip()
        if not key:
            continue
        if len(key) > max_length:
            raise InvalidRequest("line %(lineno)s: the key is %(key)s characters, longer than the limit "
                                 "of %(max_length)s; nothing delivered",
                                 lineno=lineno, key=len(key), max_length=max_length)
        if _CONTROL.search(key):
            raise InvalidRequest("line %(lineno)s: the key contains control characters; nothing "
                                 "delivered", lineno=lineno)
        keys.append(key)
    if not keys:
        raise InvalidRequest("keys: paste the order's keys, one per line")
    return keys


def deliver_pasted_keys(session: Session, vault: Vault, *, order_no, text, max_key_length: int,
                        actor: str, source_ip: str | None = None) -> Order:
    """Staff deliver a paid order with keys they paste (audited order.deliver)."""
    keys = parse_pasted_keys(text, max_key_length)
    order = find_order(session, order_no)
    if order.status != "paid":
        raise Conflict("order %(order_no)s is %(status)s; only paid orders can be delivered",
                       order_no=order.order_no, status=order.status)
    if len(keys) != order.quantity:
        if order.quantity == 1:
            raise InvalidRequest("order %(order_no)s needs 1 key, %(keys)s pasted",
                                 order_no=order.order_no, keys=len(keys))
        raise InvalidRequest("order %(order_no)s needs %(quantity)s keys, %(keys)s pasted",
                             order_no=order.order_no, quantity=order.quantity, keys=len(keys))
    order = deliver_manually(session, vault, order_no=order.order_no, keys=keys, actor=actor,
                             source_ip=source_ip)
    _release_reserved(session, order)   # an auto order delivered by hand keeps no reservation
    return order


RELEASED_DELIVERED, RELEASED_WAITING, RELEASED_MANUAL = "delivered", "waiting for stock", "manual delivery"


def release_held(session: Session, *, order_no, reason, actor: str, source_ip: str | None = None,
                 now: dt.datetime | None = None) -> str:
    """Accept a held payment (the wrong amount): the order goes on as paid and is
    delivered from its reserved keys, or waits for stock or for staff as any paid
    order does. Returns what became of it."""
    reason = _text(reason, "reason", required=True)
    now = now or utcnow()
    order = find_order(session, order_no)
    if not _claim(session, order, ("held",), status="paid", updated_at=now, **RESOLVED):
        status = lock_order_status(session, order.id)
        raise Conflict("order %(order_no)s is %(status)s; only a held order can be released",
                       order_no=order.order_no, status=status)
    # Points its member took off it that went back when it expired (paid late, of the wrong
    # amount): taken again; a member without them now keeps the discount, as the person decided.
    points_again = points.take_again(session, order)
    # (a payment of the wrong amount; or the right one, held for a risk rule's review)
    payment = session.scalar(sa.select(Payment).where(Payment.order_id == order.id,
                                                      Payment.status.in_(("held", "received")))
                             .order_by(Payment.id).limit(1))
    paid = payment.amount_cents if payment else None
    emit(session, "order.paid", order_payload(session, order, trade_no=payment.trade_no if payment else None,
                                              paid_amount=None if paid is None else format_cents(paid),
                                              released_by=actor), now)
    outcome = RELEASED_MANUAL
    if session.get(Product, order.product_id).delivery_mode in ("auto", "loop"):
        delivered = deliver_paid_order(session, order, now)   # NO_STOCK: it waits, like any paid order
        outcome = RELEASED_DELIVERED if delivered == DELIVERED else RELEASED_WAITING
    record(session, "order.release", actor=actor, target=target(order), source_ip=source_ip,
           details={"reason": reason, "paid": None if paid is None else format_cents(paid),
                    "amount": format_cents(order.amount_cents), "currency": order.currency,
                    "outcome": outcome, **({} if points_again else {"points_not_taken_again": order.points_used})})
    return outcome


@dataclass
class Refund:
    order: Order
    previous_status: str
    keys_released: int
    keys_sold: int
    to_balance_cents: int = 0   # given back to the balance that paid it
    points: points.PointsRefund | None = None   # the points given back and taken back


def refund_order(session: Session, *, order_no, reason, actor: str, source_ip: str | None = None,
                 now: dt.datetime | None = None) -> Refund:
    """Mark a paid, held or delivered order refunded. Its reserved keys go back on
    sale; keys already delivered stay sold (the buyer has seen them)."""
    reason = _text(reason, "reason", required=True)
    now = now or utcnow()
    order = find_order(session, order_no)
    previous = lock_order_status(session, order.id)
    if previous not in REFUNDABLE or not _claim(session, order, (previous,), status="refunded",
                                                 updated_at=now, refunded_at=now, **RESOLVED):
        status = lock_order_status(session, order.id)
        raise Conflict("order %(order_no)s is %(status)s; only paid, held or delivered orders "
                       "can be refunded", order_no=order.order_no, status=status)
    released = _release_reserved(session, order)
    sold = key_counts(session, order).get("sold", 0)
    codes_stopped = vouchers.refund_for_order(session, order.id)   # its voucher codes redeemed no more
    to_balance = _refund_to_balance(session, order, actor)
    given = points.on_refund(session, order.order_no, actor=actor)
    reversed_ = commission.reverse_commissions(session, order.id, order.order_no, actor=actor, now=now)
    record(session, "order.refund", actor=actor, target=target(order), source_ip=source_ip,
           details={"reason": reason, "previous_status": previous,
                    "amount": format_cents(order.amount_cents), "currency": order.currency,
                    "keys_released": released, "keys_kept_sold": sold,
                    **({"voucher_codes_stopped": codes_stopped} if codes_stopped else {}),
                    **({"refunded_to_balance": format_cents(to_balance)} if to_balance else {}),
                    **({"points": given.as_details()} if given.as_details() else {}),
                    **({"commission_reversed": [{"agent_id": r["agent_id"], "amount": format_cents(r["amount"]),
                                                 "debt": format_cents(r["debt"])} for r in reversed_]}
                       if reversed_ else {})})
    # Not the staff's reason: the payload may reach the agent who bought the order.
    emit(session, "order.refunded", order_payload(session, order, previous_status=previous,
                                                  refunded_to_balance=format_cents(to_balance)), now)
    return Refund(order, previous, released, sold, to_balance, given)


def _refund_to_balance(session: Session, order: Order, actor: str) -> int:
    """An order paid from a balance (an agent's through the API, anyone's through a balance
    channel): the refund goes back to the balance it came from, once (the cause names the
    order). The cents credited."""
    paid = ledger.paid_from_balance(session, order.order_no)
    if paid is None:
        return 0
    agent_id, cents, shop_legs = paid
    ledger.post(session, cause=f"order:{order.order_no}:refund", kind="refund",
                legs=[*ledger.agent_credit_legs(session, agent_id, cents),
                      *((account, -amount) for account, amount in shop_legs)],
                actor=actor, memo=f"refund of order {order.order_no}")
    return cents


def refund_extra_payment(session: Session, *, order_no, payment_id, note="", actor: str,
                         source_ip: str | None = None, now: dt.datetime | None = None) -> Payment:
    """Record that a buyer charged twice got the extra payment back (audited
    payment.refund). The order keeps its first payment and its keys. Once no extra
    payment is left to refund, the order's "paid twice" flag clears itself.

    The money goes back at the gateway, by hand, for now: the channels of W4 that
    can refund will do it from here."""
    note = _text(note, "note", required=False)
    now = now or utcnow()
    order = find_order(session, order_no)
    try:
        payment_id = int(payment_id)
    except (TypeError, ValueError):
        raise NotFound("payment not found") from None
    lock_order_status(session, order.id)   # one refund at a time per order (and the flag below)
    t = Payment.__table__
    done = session.execute(t.update().where(t.c.id == payment_id, t.c.order_id == order.id, t.c.status == "extra")
                           .values(status="refunded", refunded_at=now)).rowcount
    payment = session.scalar(sa.select(Payment).where(Payment.id == payment_id, Payment.order_id == order.id)
                             .execution_options(populate_existing=True))
    if payment is None:
        raise NotFound("order %(order_no)s has no payment %(payment_id)s",
                       order_no=order.order_no, payment_id=payment_id)
    if not done:
        raise Conflict("payment %(trade_no)s is %(payment_status)s; only an extra payment is refunded "
                       "here", trade_no=payment.trade_no, payment_status=payment.status)
    channel = session.get(PaymentChannel, payment.channel_id)
    record(session, "payment.refund", actor=actor, target=target(order), source_ip=source_ip,
           details={"trade_no": payment.trade_no, "channel": channel.code if channel else None,
                    "amount": format_cents(payment.amount_cents), "currency": order.currency,
                    "how": "by hand at the gateway", **({"note": note} if note else {})})
    left = session.scalar(sa.select(sa.func.count()).select_from(Payment)
                          .where(Payment.order_id == order.id, Payment.status == "extra"))
    if not left:
        session.execute(sa.update(Order).where(Order.id == order.id, Order.flag_reason.startswith(EXTRA_PAYMENT_FLAG))
                        .values(flagged_at=None, flag_reason=None).execution_options(synchronize_session=False))
        session.refresh(order)
    return payment


def extra_payments_to_refund(session: Session, limit: int = 100) -> tuple[int, list]:
    """Payments to give back (buyers charged twice): how many, and the oldest `limit`
    as (Payment, order_no, channel code)."""
    count = session.scalar(sa.select(sa.func.count()).select_from(Payment).where(Payment.status == "extra"))
    rows = session.execute(sa.select(Payment, Order.order_no, PaymentChannel.code)
                           .join(Order, Order.id == Payment.order_id)
                           .join(PaymentChannel, PaymentChannel.id == Payment.channel_id)
                           .where(Payment.status == "extra").order_by(Payment.id).limit(limit)).all()
    return count, [tuple(r) for r in rows]


def resend_delivery_email(session: Session, *, order_no, smtp_configured: bool, actor: str,
                          source_ip: str | None = None) -> EmailOutbox:
    """Queue the delivery mail of a delivered order again (the buyer lost it)."""
    if not smtp_configured:
        raise Conflict("no SMTP server is configured ([smtp] host in the config file); no mail can be sent")
    order = find_order(session, order_no)
    if not order.email:
        raise Conflict("order %(order_no)s was bought by an agent through the API: it has no e-mail address "
                       "(the agent reads its keys from the API)", order_no=order.order_no)
    status = lock_order_status(session, order.id)
    if status != "delivered":
        raise Conflict("order %(order_no)s is %(status)s; only a delivered order's mail can "
                       "be sent again", order_no=order.order_no, status=status)
    waiting = session.scalar(sa.select(EmailOutbox).where(EmailOutbox.order_id == order.id,
                                                          EmailOutbox.kind == "order.delivered",
                                                          EmailOutbox.status == "pending").limit(1))
    if waiting is not None:
        raise Conflict("a delivery mail for order %(order_no)s is already waiting to be sent "
                       "(attempts so far: %(attempts)s)", order_no=order.order_no, attempts=waiting.attempts)
    queue_delivery_email(session, order)
    session.flush()
    mail = session.scalar(sa.select(EmailOutbox).where(EmailOutbox.order_id == order.id,
                                                       EmailOutbox.kind == "order.delivered")
                          .order_by(EmailOutbox.id.desc()).limit(1))
    record(session, "order.resend_email", actor=actor, target=target(order), source_ip=source_ip,
           details={"mail_id": mail.id, "to": mail.to_address})
    return mail


def acknowledge_flag(session: Session, *, order_no, note="", actor: str,
                     source_ip: str | None = None) -> str:
    """Clear the order's flag (a person has looked at it); returns the old reason."""
    note = _text(note, "note", required=False)
    order = find_order(session, order_no)
    flagged_at, reason = session.execute(sa.select(Order.flagged_at, Order.flag_reason)
                                         .where(Order.id == order.id).with_for_update()).one()
    cleared = flagged_at is not None and session.execute(
        sa.update(Order).where(Order.id == order.id, Order.flagged_at.is_not(None))
        .values(flagged_at=None, flag_reason=None)
        .execution_options(synchronize_session=False)).rowcount == 1
    session.refresh(order)
    if not cleared:
        raise Conflict("order %(order_no)s is not flagged", order_no=order.order_no)
    details = {"reason": reason}
    if note:
        details["note"] = note
    record(session, "order.acknowledge", actor=actor, target=target(order), source_ip=source_ip,
           details=details)
    return reason or ""

"""After-sales tickets (售后): a buyer asks about a paid order from its page; staff answer (the
buyer gets each answer by mail) and end the ticket with an action — a refund, a reissued key,
or closing it.

A reissue voids the delivered key (with the reason) and sells the order a fresh one from stock
in one transaction: each key is voided by a conditional UPDATE (sold → void, this order's), and
key_reissues holds the old key's id once (unique), so two staff replacing the same key at once
give the buyer one new key, never two; without stock nothing changes.

Every action is in the audit log; the scheduler marks a ticket overdue when the buyer has waited
longer than tickets.sla_hours for an answer. Functions take a session and only flush: the caller
commits once (a refund through the channel is the exception: it asks the gateway outside any
transaction, see kamengd.payments.refunds).
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..audit.services import record
from ..catalog import images
from ..catalog.models import Product
from ..database import utcnow
from ..errors import Conflict, InvalidRequest, NotFound, OutOfStock, RateLimited
from ..inventory.models import CardKey
from ..inventory.services import mask_key
from ..notifications.events import emit, order_payload
from ..notifications.models import EmailOutbox
from ..notifications.outbox import queue_delivery_email
from ..orders import staff as order_staff
from ..orders.checkout import reserve_keys
from ..orders.models import Order
from ..orders.services import lock_order_status, pool_of
from ..payments.refunds import refund_through_channel, refundable_payment
from ..settings.services import get_setting
from ..vault import Vault
from ..vouchers import services as vouchers
from .models import LIVE, TICKET_STATUSES, KeyReissue, Ticket, TicketImage, TicketMessage

MAX_BODY = 2000
MAX_REASON = 500
IMAGE_SIDE = 1600            # a screenshot stays readable
BUYER_PER_HOUR = 5           # messages a buyer may write to one order's tickets in an hour
TICKETS_PER_ORDER = 10       # tickets a buyer may open about one order, ever
MAX_KEYS = 100               # keys replaced at once
# Orders a buyer may ask about: paid once (a pending or expired order has nothing to follow up).
ASKABLE = ("paid", "held", "delivered", "refunded")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")   # a message keeps its lines and tabs


def target(ticket: Ticket) -> str:
    return f"ticket:{ticket.id}"


def _body(value, name: str = "message", *, limit: int = MAX_BODY, required: bool = True) -> str:
    text = value.replace("\r\n", "\n").strip() if isinstance(value, str) else ""
    if required and not text:
        raise InvalidRequest("%(name)s: required", name=name)
    if len(text) > limit:
        raise InvalidRequest("%(name)s: at most %(limit)s characters", name=name, limit=limit)
    if _CONTROL.search(text):
        raise InvalidRequest("%(name)s: contains control characters", name=name)
    return text


def sla_hours(session: Session) -> int:
    return int(get_setting(session, "tickets.sla_hours"))


@dataclass(frozen=True)
class Picture:
    """A buyer's picture, decoded and saved again (WebP): made before any transaction, so no lock
    waits while a large photo is decoded."""
    data: bytes
    width: int
    height: int


def prepare_picture(raw: bytes | None) -> Picture | None:
    if not raw:
        return None
    return Picture(*images.resized(images.load(raw, "picture"), IMAGE_SIDE))


def check_message(body) -> str:
    return _body(body)


# -- the buyer's side ---------------------------------------------------------------------

@dataclass
class Thread:
    ticket: Ticket
    messages: list          # (TicketMessage, image id or None), oldest first


def threads_for_order(session: Session, order_id: int) -> list[Thread]:
    """The order's tickets, newest first, each with its messages (two queries however many)."""
    tickets = of_order(session, order_id)
    if not tickets:
        return []
    by_ticket: dict[int, list] = {t.id: [] for t in tickets}
    for message, image_id in _messages(session, list(by_ticket)):
        by_ticket[message.ticket_id].append((message, image_id))
    return [Thread(t, by_ticket[t.id]) for t in tickets]


def of_order(session: Session, order_id: int) -> list[Ticket]:
    """The order's tickets, newest first (staff's order page links them)."""
    return list(session.scalars(sa.select(Ticket).where(Ticket.order_id == order_id).order_by(Ticket.id.desc())
                                .limit(TICKETS_PER_ORDER)))


def _messages(session: Session, ticket_ids: list[int]) -> list[tuple]:
    """(message, its picture's id or None) of the tickets, oldest first."""
    return [tuple(r) for r in session.execute(
        sa.select(TicketMessage, TicketImage.id).outerjoin(TicketImage, TicketImage.message_id == TicketMessage.id)
        .where(TicketMessage.ticket_id.in_(ticket_ids)).order_by(TicketMessage.id))]


def thread(session: Session, ticket: Ticket) -> Thread:
    return Thread(ticket, _messages(session, [ticket.id]))


def write_as_buyer(session: Session, order: Order, *, body, picture: bytes | Picture | None = None,
                   now: dt.datetime | None = None) -> Ticket:
    """The buyer's message about its order: a new ticket, or the next message of the live one
    (which then waits for staff again). The order is the caller's, proven by its token."""
    now = now or utcnow()
    text = _body(body)
    image = picture if isinstance(picture, Picture) or picture is None else prepare_picture(picture)
    status = lock_order_status(session, order.id)
    if status not in ASKABLE:
        raise Conflict("order %(order_no)s is %(status)s; after-sales is for paid orders",
                       order_no=order.order_no, status=status)
    recent = session.scalar(sa.select(sa.func.count()).select_from(TicketMessage)
                            .join(Ticket, Ticket.id == TicketMessage.ticket_id)
                            .where(Ticket.order_id == order.id, TicketMessage.author == "buyer",
                                   TicketMessage.created_at > now - dt.timedelta(hours=1)))
    if recent >= BUYER_PER_HOUR:
        raise RateLimited("too many messages about this order; please wait for an answer")
    ticket = session.scalar(sa.select(Ticket).where(Ticket.live_order_id == order.id).with_for_update())
    opened = ticket is None
    if opened:
        if session.scalar(sa.select(sa.func.count()).select_from(Ticket)
                          .where(Ticket.order_id == order.id)) >= TICKETS_PER_ORDER:
            raise Conflict("this order has had %(n)s after-sales tickets; contact the shop another way",
                           n=TICKETS_PER_ORDER)
        ticket = Ticket(order_id=order.id, live_order_id=order.id, status="open", created_at=now,
                        updated_at=now, waiting_since=now)
        try:
            with session.begin_nested():
                session.add(ticket)
                session.flush()
        except IntegrityError:   # opened by another request of the buyer's meanwhile: write there
            ticket = session.scalar(sa.select(Ticket).where(Ticket.live_order_id == order.id).with_for_update())
            if ticket is None:
                raise Conflict("the ticket changed meanwhile; please send it again") from None
            opened = False
    if not opened:
        session.execute(sa.update(Ticket).where(Ticket.id == ticket.id)
                        .values(status="open", updated_at=now,
                                waiting_since=sa.func.coalesce(Ticket.waiting_since, now))
                        .execution_options(synchronize_session=False))
        session.refresh(ticket)
    message = TicketMessage(ticket_id=ticket.id, author="buyer", body=text, created_at=now)
    session.add(message)
    session.flush()
    if image is not None:
        session.add(TicketImage(message_id=message.id, data=image.data, width=image.width, height=image.height))
    # The buyer is not staff: the entry says so; its words stay in the ticket, not in the log.
    record(session, "ticket.open" if opened else "ticket.buyer_message", actor="buyer", target=target(ticket),
           details={"order_no": order.order_no, "characters": len(text), "picture": image is not None})
    if opened:
        emit(session, "ticket.opened", order_payload(session, order, ticket_id=ticket.id), now)
    session.flush()
    return ticket


def buyer_image(session: Session, order: Order, image_id) -> bytes:
    """A picture of one of the order's tickets (the buyer's own, proven by the order's token)."""
    data = session.scalar(sa.select(TicketImage.data).join(TicketMessage, TicketMessage.id == TicketImage.message_id)
                          .join(Ticket, Ticket.id == TicketMessage.ticket_id)
                          .where(TicketImage.id == _id(image_id), Ticket.order_id == order.id))
    if data is None:
        raise NotFound("picture not found")
    return data


# -- staff's side -------------------------------------------------------------------------

def _id(value) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise NotFound("ticket not found") from None
    if not 0 < number < 2 ** 63:
        raise NotFound("ticket not found")
    return number


def get_ticket(session: Session, ticket_id, *, lock: bool = False) -> Ticket:
    query = sa.select(Ticket).where(Ticket.id == _id(ticket_id))
    if lock:
        query = query.with_for_update().execution_options(populate_existing=True)
    ticket = session.scalar(query)
    if ticket is None:
        raise NotFound("ticket %(ticket_id)s not found", ticket_id=ticket_id)
    return ticket


def _live(session: Session, ticket_id) -> tuple[Ticket, Order]:
    """The live ticket and its order, both locked: the order's row first, then the ticket's, as
    the buyer's message and every order action lock them (MariaDB never deadlocks on the pair)."""
    order_id = session.scalar(sa.select(Ticket.order_id).where(Ticket.id == _id(ticket_id)))
    if order_id is None:
        raise NotFound("ticket %(ticket_id)s not found", ticket_id=ticket_id)
    lock_order_status(session, order_id)
    ticket = get_ticket(session, ticket_id, lock=True)
    if ticket.status not in LIVE:
        raise Conflict("ticket %(ticket_id)s is %(status)s", ticket_id=ticket.id, status=ticket.status)
    return ticket, session.get(Order, ticket.order_id)


def image_data(session: Session, image_id) -> bytes:
    data = session.scalar(sa.select(TicketImage.data).where(TicketImage.id == _id(image_id)))
    if data is None:
        raise NotFound("picture not found")
    return data


@dataclass
class TicketRow:
    ticket: Ticket
    order_no: str
    email: str
    product_name: str


def list_tickets(session: Session, *, status: str = "", overdue: bool = False, page: int = 1,
                 page_size: int = 50) -> tuple[list[TicketRow], int]:
    """Staff's queue: live tickets the longest waiting first, ended ones newest first."""
    where = []
    if status in TICKET_STATUSES:
        where.append(Ticket.status == status)
    elif status == "live":
        where.append(Ticket.status.in_(LIVE))
    if overdue:
        where.append(Ticket.overdue_at.is_not(None))
    total = session.scalar(sa.select(sa.func.count()).select_from(Ticket).where(*where))
    rows = session.execute(
        sa.select(Ticket, Order.order_no, Order.email, Product.name).join(Order, Order.id == Ticket.order_id)
        .join(Product, Product.id == Order.product_id).where(*where)
        .order_by(Ticket.waiting_since.is_(None), Ticket.waiting_since, Ticket.updated_at.desc(), Ticket.id.desc())
        .limit(page_size).offset((max(page, 1) - 1) * page_size)).all()
    return [TicketRow(*r) for r in rows], total


def counts(session: Session) -> dict[str, int]:
    """Live tickets waiting for staff, and how many of them are overdue (the nav's badge)."""
    row = session.execute(sa.select(sa.func.count(), sa.func.count(Ticket.overdue_at))
                          .where(Ticket.status == "open")).one()
    return {"open": row[0], "overdue": row[1]}


def _staff_message(session: Session, ticket: Ticket, order: Order, body: str, *, actor: str, author: str = "staff",
                   mail: bool = True, now: dt.datetime) -> TicketMessage:
    message = TicketMessage(ticket_id=ticket.id, author=author, staff=actor[:128], body=body, created_at=now)
    session.add(message)
    session.flush()
    if mail and order.email:   # an agent's API order has no buyer's address
        session.add(EmailOutbox(kind="ticket.reply", order_id=order.id, ticket_message_id=message.id,
                                to_address=order.email, status="pending", attempts=0, next_attempt_at=now,
                                created_at=now))
    return message


def reply(session: Session, ticket_id, *, body, actor: str, source_ip: str | None = None,
          now: dt.datetime | None = None) -> TicketMessage:
    """Staff answer; the buyer gets it by mail; the ticket waits for the buyer (no longer overdue)."""
    now = now or utcnow()
    text = _body(body)
    ticket, order = _live(session, ticket_id)
    ticket.status, ticket.waiting_since, ticket.overdue_at, ticket.updated_at = "answered", None, None, now
    message = _staff_message(session, ticket, order, text, actor=actor, now=now)
    record(session, "ticket.reply", actor=actor, target=target(ticket), source_ip=source_ip,
           details={"order_no": order.order_no, "characters": len(text)})
    return message


def _end(session: Session, ticket: Ticket, resolution: str, status: str, *, actor: str, now: dt.datetime) -> None:
    ticket.status, ticket.resolution, ticket.live_order_id = status, resolution, None
    ticket.waiting_since, ticket.overdue_at, ticket.ended_at, ticket.ended_by = None, None, now, actor[:128]
    ticket.updated_at = now


def close(session: Session, ticket_id, *, note="", actor: str, source_ip: str | None = None,
          now: dt.datetime | None = None) -> Ticket:
    """End the ticket without an action; a note, if any, is mailed to the buyer as a last answer."""
    now = now or utcnow()
    text = _body(note, "note", required=False)
    ticket, order = _live(session, ticket_id)
    if text:
        _staff_message(session, ticket, order, text, actor=actor, now=now)
    _end(session, ticket, "close", "closed", actor=actor, now=now)
    record(session, "ticket.close", actor=actor, target=target(ticket), source_ip=source_ip,
           details={"order_no": order.order_no, "note": bool(text)})
    return ticket


# -- reissue ------------------------------------------------------------------------------

@dataclass
class DeliveredKey:
    id: int
    masked: str
    replaced: bool          # void, replaced by a reissue


def delivered_keys(session: Session, vault: Vault, order: Order) -> list[DeliveredKey]:
    """The order's keys as staff choose among them to replace: each masked (enough to match the
    buyer's screenshot, never enough to use), the ones already replaced marked."""
    k = CardKey.__table__
    replaced = sa.select(KeyReissue.old_key_id).where(KeyReissue.order_id == order.id)
    rows = session.execute(sa.select(k.c.id, k.c.status, k.c.product_id, k.c.fingerprint, k.c.nonce,
                                     k.c.ciphertext, k.c.key_version)
                           .where(k.c.order_id == order.id,
                                  sa.or_(k.c.status == "sold", k.c.id.in_(replaced))).order_by(k.c.id)).all()
    return [DeliveredKey(r.id, mask_key(vault.decrypt_card_key(r.product_id, r.fingerprint, r.nonce, r.ciphertext,
                                                               r.key_version).decode("utf-8", "replace")),
                         r.status != "sold") for r in rows]


def _key_ids(values) -> list[int]:
    ids = []
    for value in values if isinstance(values, (list, tuple)) else [values]:
        text = str(value).strip()
        if not (text.isascii() and text.isdigit() and 0 < len(text) < 19):
            raise InvalidRequest("keys: choose the keys to replace")
        ids.append(int(text))
    if not ids:
        raise InvalidRequest("keys: choose the keys to replace")
    if len(ids) > MAX_KEYS:
        raise InvalidRequest("keys: at most %(n)s at once", n=MAX_KEYS)
    return sorted(set(ids))


def reissue_keys(session: Session, *, order_no, key_ids, reason, actor: str, ticket_id: int | None = None,
                 source_ip: str | None = None, now: dt.datetime | None = None) -> list[tuple[int, int]]:
    """Replace delivered keys of an order: each voided (with the reason) and a fresh one sold to the
    order from stock, in the caller's transaction; (old id, new id) pairs. Refused whole — nothing
    voided — when a key is not a key the order holds now (replaced meanwhile, or never its own),
    or when stock is short (OutOfStock)."""
    now = now or utcnow()
    reason = _body(reason, "reason", limit=MAX_REASON)
    ids = _key_ids(key_ids)
    order = order_staff.find_order(session, order_no)
    if lock_order_status(session, order.id) != "delivered":
        session.refresh(order)
        raise Conflict("order %(order_no)s is %(status)s; only a delivered order's keys can be replaced",
                       order_no=order.order_no, status=order.status)
    session.refresh(order)
    product = session.get(Product, order.product_id)
    if order.loop_key_id is not None or product.delivery_mode == "loop":
        raise Conflict("order %(order_no)s has a loop key, the same for every buyer: replace it for everyone by "
                       "voiding it and importing another", order_no=order.order_no)
    k = CardKey.__table__
    voided = session.execute(k.update().where(k.c.id.in_(ids), k.c.order_id == order.id, k.c.status == "sold")
                             .values(status="void")).rowcount
    if voided != len(ids):
        raise Conflict("a chosen key is not one order %(order_no)s holds now (replaced meanwhile?); nothing "
                       "replaced", order_no=order.order_no)
    before = set(session.scalars(sa.select(k.c.id).where(k.c.order_id == order.id, k.c.status == "sold")))
    try:
        with session.begin_nested():   # a short claim puts back only what it claimed
            reserve_keys(session, product_id=order.product_id, quantity=len(ids), order_id=order.id, until=now,
                         sold_at=now, pool=pool_of(session, order))
    except OutOfStock:
        raise OutOfStock("not enough keys of %(product)s in stock to replace %(n)s; nothing replaced",
                         product=product.name, n=len(ids)) from None
    new = sorted(set(session.scalars(sa.select(k.c.id).where(k.c.order_id == order.id, k.c.status == "sold")))
                 - before)
    pairs = list(zip(ids, new))
    try:
        with session.begin_nested():
            for old_id, new_id in pairs:
                session.add(KeyReissue(order_id=order.id, ticket_id=ticket_id, old_key_id=old_id, new_key_id=new_id,
                                       reason=reason, actor=actor[:128], created_at=now))
            session.flush()
    except IntegrityError:   # (the void above already decided it; the unique index says it again)
        raise Conflict("a chosen key was replaced meanwhile; nothing replaced") from None
    for old_id, new_id in pairs:   # a voucher code: the new one holds what the old had left
        vouchers.reissue_code(session, old_id, new_id, order.id, order.product_id, now)
    if order.email:   # the buyer's keys as they are now (an agent's API order reads them from the API)
        queue_delivery_email(session, order)
    record(session, "order.reissue", actor=actor, target=order_staff.target(order), source_ip=source_ip,
           details={"reason": reason, "replaced": [{"old_key_id": o, "new_key_id": n} for o, n in pairs],
                    **({"ticket_id": ticket_id} if ticket_id else {})})
    return pairs


def reissue(session: Session, ticket_id, *, key_ids, reason, actor: str, source_ip: str | None = None,
            now: dt.datetime | None = None) -> list[tuple[int, int]]:
    """Resolve a ticket by replacing the keys the buyer says do not work (reissue_keys)."""
    now = now or utcnow()
    ticket, order = _live(session, ticket_id)
    if ticket.resolution == "refund":
        raise Conflict("ticket %(ticket_id)s is being refunded through the payment channel", ticket_id=ticket.id)
    pairs = reissue_keys(session, order_no=order.order_no, key_ids=key_ids, reason=reason, actor=actor,
                         ticket_id=ticket.id, source_ip=source_ip, now=now)
    text = _body(reason, "reason", limit=MAX_REASON)
    # The mail of the new keys goes out as a delivery does; this message says why.
    _staff_message(session, ticket, order, text, actor=actor, author="system", mail=False, now=now)
    _end(session, ticket, "reissue", "resolved", actor=actor, now=now)
    record(session, "ticket.resolve", actor=actor, target=target(ticket), source_ip=source_ip,
           details={"order_no": order.order_no, "resolution": "reissue", "keys": len(pairs)})
    return pairs


# -- refund -------------------------------------------------------------------------------

@dataclass
class TicketRefund:
    through_channel: bool
    amount_cents: int
    to_balance_cents: int
    gateway_ref: str = ""
    points_returned: int = 0


def refund(session: Session, vault: Vault, ticket_id, *, reason, actor: str, source_ip: str | None = None,
           now: dt.datetime | None = None) -> TicketRefund:
    """Resolve a ticket with a refund: through the payment's channel where it can give money back
    (the gateway asked first, outside any transaction), else to the balance (or points) that paid
    it, else the order is marked refunded and staff return the money at the gateway. The ticket
    ends in the transaction that refunds the order."""
    now = now or utcnow()
    reason = _body(reason, "reason", limit=MAX_REASON)
    ticket, order = _live(session, ticket_id)
    ticket_id, order_no = ticket.id, order.order_no
    if refundable_payment(session, order) is not None and order.status in order_staff.REFUNDABLE:
        # The gateway is asked with no lock held: the ticket says first, in its own commit, that a
        # refund is under way, and a reissue is refused meanwhile (money back and a new key, never
        # both). A failed or interrupted refund may be tried again; a refused one clears it.
        ticket.resolution = "refund"
        session.commit()
        try:
            given = refund_through_channel(session, vault, order_no=order_no, reason=reason, actor=actor,
                                           source_ip=source_ip, now=now)
        except Exception:
            session.rollback()
            session.execute(sa.update(Ticket).where(Ticket.id == ticket_id, Ticket.status.in_(LIVE))
                            .values(resolution=None).execution_options(synchronize_session=False))
            session.commit()
            raise
        outcome = TicketRefund(True, given.amount_cents, 0, given.gateway_ref)
    else:
        done = order_staff.refund_order(session, order_no=order_no, reason=reason, actor=actor, source_ip=source_ip,
                                        now=now)
        outcome = TicketRefund(False, done.order.amount_cents, done.to_balance_cents,
                               points_returned=done.points.returned if done.points else 0)
    # The gateway was asked outside the ticket's lock: it may have ended meanwhile (closed by
    # someone else); the money went back all the same, and the ticket says so.
    ticket = get_ticket(session, ticket_id, lock=True)
    order = session.get(Order, ticket.order_id)
    _staff_message(session, ticket, order, reason, actor=actor, author="system", now=now)
    if ticket.status in LIVE:
        _end(session, ticket, "refund", "resolved", actor=actor, now=now)
    record(session, "ticket.resolve", actor=actor, target=target(ticket), source_ip=source_ip,
           details={"order_no": order_no, "resolution": "refund", "through_channel": outcome.through_channel})
    return outcome


# -- the SLA ------------------------------------------------------------------------------

def flag_overdue(session: Session, now: dt.datetime | None = None, limit: int = 500) -> int:
    """Tickets whose buyer has waited longer than tickets.sla_hours become overdue (once each,
    an event for staff); staff's next answer clears it. A job: the caller commits."""
    now = now or utcnow()
    due = now - dt.timedelta(hours=sla_hours(session))
    ids = session.scalars(sa.select(Ticket.id).where(Ticket.status == "open", Ticket.waiting_since < due,
                                                     Ticket.overdue_at.is_(None))
                          .order_by(Ticket.waiting_since).limit(limit)).all()
    flagged = 0
    for ticket_id in ids:
        done = session.execute(sa.update(Ticket).where(Ticket.id == ticket_id, Ticket.status == "open",
                                                       Ticket.waiting_since < due, Ticket.overdue_at.is_(None))
                               .values(overdue_at=now).execution_options(synchronize_session=False)).rowcount
        if done:
            ticket = session.get(Ticket, ticket_id)
            order = session.get(Order, ticket.order_id)
            emit(session, "ticket.overdue", order_payload(session, order, ticket_id=ticket_id,
                                                          waiting_since=ticket.waiting_since.isoformat() + "Z"), now)
            record(session, "ticket.overdue", actor="scheduler", target=target(ticket),
                   details={"order_no": order.order_no, "sla_hours": sla_hours(session)})
            flagged += 1
    return flagged

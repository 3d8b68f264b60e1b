"""Orders of ours bought upstream: a paid order of a supplier-delivered product is
forwarded to the supplier, and the keys it answers with deliver it here.

Never charged twice. The Idempotency-Key of the upstream order is derived from our
order number, so every try (after a timeout, a 5xx, a crash or a kill -9 of either shop)
asks for the same order there: the supplier answers the first one again and charges
nothing more. No HTTP call is made inside a database transaction, and each try is
claimed (its attempt counted, its next try set) and committed before the call, so a
crash mid-call leaves a forward that is simply tried again.

What each answer does:
- delivered, with keys: stored encrypted like imported keys, our order delivered (its
  mail, events and commission as for any delivery);
- paid (the supplier waits for stock itself): polled until it delivers;
- no answer (refused connection, timeout) or a 5xx: tried again with backoff; the
  forward is `uncertain` (the supplier may hold the order);
- refused (out of stock, our balance there too low, anything 4xx): nothing was bought;
  our order waits, paid, flagged for staff (order.stuck), and is tried again every few
  minutes; staff may refund it instead.
A refunded order is never bought afterwards: one never sent, or refused each time, is
cancelled; an uncertain one is first looked up at the supplier by its Idempotency-Key.
Keys that arrive for an order refunded meanwhile are kept as this shop's stock of the
product (they were paid for upstream).
"""
from __future__ import annotations

import datetime as dt
import io
import logging
import time

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..catalog.models import Product
from ..database import utcnow
from ..errors import KamengdError
from ..inventory.services import import_keys
from ..money import format_cents, parse_plain_money
from ..notifications.events import emit
from ..orders.attention import flag_order
from ..orders.models import Order
from ..orders.services import deliver_manually
from ..vault import Vault
from .client import Answer, Unreachable
from .models import Supplier, SupplierOrder, SupplierProduct
from .services import client_for

log = logging.getLogger("kamengd.suppliers")
KEY_PREFIX = "kamengd-order:"
# After no answer: soon, then less often (the same Idempotency-Key each time).
NO_ANSWER_BACKOFF = (5, 10, 20, 30, 60, 120, 300)
REFUSED_RETRY_SECONDS = 300    # out of stock or balance: the supplier's stock or our top-up may come
POLL_SECONDS = 30              # the supplier waits for stock: ask again
BUSY_RETRY_SECONDS = 30        # 429
# Refusals the supplier gives only after looking the Idempotency-Key up (kamengd.agents.checkout):
# no order is held there under it. Others (401, 403, 429, a proxy's 4xx) say nothing of that, so
# a forward that got no answer before stays `uncertain` through them.
NOTHING_PLACED = (400, 402, 404, 409)
RUN_BUDGET_SECONDS = 20        # one job run forwards for at most this long: other jobs wait for it

_so, _o, _p, _sp = SupplierOrder.__table__, Order.__table__, Product.__table__, SupplierProduct.__table__


def idempotency_key(order_no: str) -> str:
    return KEY_PREFIX + order_no


def enqueue(session: Session, now: dt.datetime | None = None, limit: int = 500) -> int:
    """Paid orders of supplier-delivered products, not forwarded yet: one forward each."""
    now = now or utcnow()
    rows = session.execute(
        sa.select(_o.c.id, _o.c.order_no, _o.c.quantity, _sp.c.supplier_id, _sp.c.remote_id)
        .select_from(_o.join(_p, _p.c.id == _o.c.product_id).join(_sp, _sp.c.product_id == _p.c.id))
        .where(_o.c.status == "paid", _p.c.delivery_mode == "supplier",
               ~sa.exists().where(_so.c.order_id == _o.c.id))
        .order_by(_o.c.paid_at, _o.c.id).limit(limit)).all()
    made = 0
    for row in rows:
        try:
            with session.begin_nested():   # another runner forwarded it meanwhile: skip it
                session.execute(_so.insert().values(
                    order_id=row.id, supplier_id=row.supplier_id, remote_product_id=row.remote_id,
                    quantity=row.quantity, idempotency_key=idempotency_key(row.order_no), status="pending",
                    uncertain=False, attempts=0, next_attempt_at=now, created_at=now, updated_at=now))
            made += 1
        except IntegrityError:
            continue
    session.commit()
    return made


def cancel_refunded(session: Session, now: dt.datetime | None = None) -> int:
    """Forwards of orders refunded here that the supplier refused each time (or that were
    never sent): nothing was bought, nothing will be. An uncertain one is asked first (`_try`)."""
    refunded = sa.select(_o.c.id).where(_o.c.id == _so.c.order_id, _o.c.status != "paid")
    done = session.execute(_so.update().where(_so.c.status == "pending", _so.c.uncertain.is_(False),
                                              sa.exists(refunded))
                           .values(status="cancelled", updated_at=now or utcnow(),
                                   last_error="the order was refunded here; nothing was bought upstream")).rowcount
    session.commit()
    return done


def forward_due(session: Session, vault: Vault, *, now: dt.datetime | None = None, limit: int = 100,
                budget_seconds: float = RUN_BUDGET_SECONDS) -> dict[str, int]:
    """The job: enqueue, then try every forward that is due. Commits per forward."""
    counts = {"queued": enqueue(session, now), "delivered": 0, "waiting": 0, "refused": 0, "no_answer": 0,
              "cancelled": cancel_refunded(session, now)}
    now = now or utcnow()
    due = session.execute(sa.select(_so.c.id, _so.c.attempts).select_from(
        _so.join(Supplier.__table__, Supplier.__table__.c.id == _so.c.supplier_id))
        .where(_so.c.status.in_(("pending", "waiting")), _so.c.next_attempt_at <= now,
               Supplier.__table__.c.is_active.is_(True))
        .order_by(_so.c.next_attempt_at, _so.c.id).limit(limit)).all()
    session.rollback()
    started = time.monotonic()
    for forward_id, attempts in due:
        if time.monotonic() - started > budget_seconds:
            break
        if not _claim(session, forward_id, attempts, now):
            continue
        try:
            outcome = _try(session, vault, forward_id, now)
        except Exception:
            session.rollback()
            log.exception("forwarding %s failed", forward_id)
            outcome = "no_answer"
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def _claim(session: Session, forward_id: int, attempts: int, now: dt.datetime) -> bool:
    """Count the try and set when the next one is due, before the call: a crash retries."""
    wait = NO_ANSWER_BACKOFF[min(attempts, len(NO_ANSWER_BACKOFF) - 1)]
    claimed = session.execute(_so.update().where(_so.c.id == forward_id, _so.c.attempts == attempts)
                              .values(attempts=attempts + 1, next_attempt_at=now + dt.timedelta(seconds=wait),
                                      updated_at=now)).rowcount
    session.commit()
    return claimed == 1


def _try(session: Session, vault: Vault, forward_id: int, now: dt.datetime) -> str:
    """One try of a claimed forward. Every outcome is dated `now`, the run's time (as `_claim`)."""
    forward = session.get(SupplierOrder, forward_id)
    order = session.get(Order, forward.order_id)
    supplier = session.get(Supplier, forward.supplier_id)
    try:
        client = client_for(supplier, vault)
    except KamengdError as exc:   # its key cannot be opened: nothing is sent; the sweep flags the order
        session.rollback()
        session.execute(_so.update().where(_so.c.id == forward_id).values(last_error=exc.message[:300],
                                                                         updated_at=now))
        session.commit()
        return "no_answer"
    state = {"status": forward.status, "uncertain": forward.uncertain, "remote": forward.remote_order_no,
             "order_status": order.status, "order_no": order.order_no, "key": forward.idempotency_key,
             "supplier": supplier.name, "remote_product": forward.remote_product_id, "quantity": forward.quantity}
    if state["status"] == "pending" and state["order_status"] == "paid":
        # From the moment the order is sent, the supplier may hold it, whatever happens to
        # this process or its answer: only a definite answer clears this.
        session.execute(_so.update().where(_so.c.id == forward_id).values(uncertain=True))
        session.commit()
    else:
        session.rollback()   # no transaction is held across the call
    try:
        if state["status"] == "waiting":
            answer = client.call("GET", f"/orders/{state['remote']}")
        elif state["order_status"] != "paid":
            if not state["uncertain"]:
                return _set(session, forward_id, "cancelled", now, error="the order was not paid any more; "
                                                                         "nothing was bought upstream")
            found = client.call("GET", "/orders", query={"idempotency_key": state["key"]})
            orders = found.body.get("orders") if found.ok else None
            if not isinstance(orders, list):
                return _no_answer(session, forward_id, now, found)
            if not orders:
                return _set(session, forward_id, "cancelled", now,
                            error="refunded here; the supplier holds no order")
            answer = Answer(201, orders[0])
        else:
            answer = client.call("POST", "/orders", {"product_id": state["remote_product"],
                                                     "quantity": state["quantity"], "ref": state["order_no"]},
                                 idempotency_key=state["key"])
    except Unreachable as exc:
        return _no_answer(session, forward_id, now, None, str(exc))
    if answer.status >= 500:
        return _no_answer(session, forward_id, now, answer)
    if answer.ok:
        return _placed(session, vault, forward_id, state, answer, now)
    return _refused(session, forward_id, state, answer, now)


def _set(session: Session, forward_id: int, status: str, now: dt.datetime, *, error: str | None = None,
         **values) -> str:
    session.execute(_so.update().where(_so.c.id == forward_id).values(
        status=status, last_error=error[:300] if error else None, updated_at=now, **values))
    session.commit()
    return "cancelled" if status == "cancelled" else status


def _no_answer(session: Session, forward_id: int, now: dt.datetime, answer: Answer | None,
               why: str | None = None) -> str:
    why = why or (f"HTTP {answer.status}: {answer.error_message}" if answer is not None else "no answer")
    # Only a forward still to settle: one cancelled meanwhile by another runner stays as it is.
    session.execute(_so.update().where(_so.c.id == forward_id, _so.c.status.in_(("pending", "waiting")))
                    .values(uncertain=True, last_error=why[:300], updated_at=now))
    session.commit()
    return "no_answer"


def _placed(session: Session, vault: Vault, forward_id: int, state: dict, answer: Answer,
            now: dt.datetime) -> str:
    body = answer.body
    remote_no, status = str(body.get("order_no", ""))[:32], body.get("status")
    cost = _cents(body.get("amount"))
    if status == "delivered":
        keys = body.get("keys")
        if not isinstance(keys, list) or len(keys) != state["quantity"] or \
                not all(isinstance(k, str) and k for k in keys):
            return _refused(session, forward_id, state, Answer(502, {"error": {
                "code": "bad_answer", "message": "the supplier's answer holds the wrong keys"}}), now)
        return _deliver(session, vault, forward_id, state, keys, remote_no, cost, now)
    if status == "paid":
        session.execute(_so.update().where(_so.c.id == forward_id).values(
            status="waiting", uncertain=False, remote_order_no=remote_no, cost_cents=cost,
            last_error="the supplier waits for stock", updated_at=now,
            next_attempt_at=now + dt.timedelta(seconds=POLL_SECONDS)))
        session.commit()
        return "waiting"
    if status == "refunded":   # the supplier gave up on it and refunded us
        return _refused(session, forward_id, state, Answer(409, {"error": {
            "code": "refunded_upstream", "message": f"the supplier refunded its order {remote_no}"}}),
            now, final=True)
    return _no_answer(session, forward_id, now, None, f"the supplier's order is {status!r}")


def _deliver(session: Session, vault: Vault, forward_id: int, state: dict, keys: list[str], remote_no: str,
             cost: int | None, now: dt.datetime) -> str:
    actor = f"supplier:{state['supplier']}"
    done = {"status": "delivered", "uncertain": False, "remote_order_no": remote_no, "cost_cents": cost,
            "updated_at": now}
    try:
        order = deliver_manually(session, vault, order_no=state["order_no"], keys=keys, actor=actor)
        session.execute(_so.update().where(_so.c.id == forward_id).values(last_error=None, **done))
        session.commit()
        return "delivered"
    except KamengdError as exc:
        session.rollback()
        why = exc.message
    order = session.scalars(sa.select(Order).where(Order.order_no == state["order_no"])).one()
    # The keys were paid for upstream: whatever happens to this order, they are kept as stock
    # (a key this shop holds already is skipped by the import, never stored twice).
    try:
        imported = import_keys(session, vault, product_id=order.product_id, actor=actor,
                               fh=io.BytesIO("\n".join(keys).encode("utf-8")))
        kept = f"{imported.imported} of its {len(keys)} keys kept as stock"
    except KamengdError as exc:
        session.rollback()
        kept = f"its keys could not be kept: {exc.message}"
        order = session.scalars(sa.select(Order).where(Order.order_no == state["order_no"])).one()
    if order.status != "paid":   # refunded here while the supplier delivered
        why = f"supplier order {remote_no} arrived after order {order.order_no} was {order.status}: {kept}"
        session.execute(_so.update().where(_so.c.id == forward_id).values(last_error=why[:300], **done))
        session.commit()
        return "delivered"
    # The keys cannot deliver it (one is already here: the supplier sold a key twice?).
    why = f"{why}; supplier order {remote_no}: {kept}"
    flag_order(session, order, f"supplier {state['supplier']}: {why}"[:200], now)
    session.execute(_so.update().where(_so.c.id == forward_id).values(last_error=why[:300], **done))
    session.commit()
    return "refused"


def _refused(session: Session, forward_id: int, state: dict, answer: Answer, now: dt.datetime,
             final: bool = False) -> str:
    why = f"{answer.error_code}: {answer.error_message}"
    wait = BUSY_RETRY_SECONDS if answer.status == 429 else REFUSED_RETRY_SECONDS
    values = {"last_error": why[:300], "updated_at": now, "next_attempt_at": now + dt.timedelta(seconds=wait)}
    if final or answer.status in NOTHING_PLACED or answer.error_code == "bad_answer":
        values["uncertain"] = False   # the supplier's side is known (a bad answer: staff's to sort out)
    if final:
        values["status"] = "cancelled"
    session.execute(_so.update().where(_so.c.id == forward_id).values(**values))
    order = session.scalars(sa.select(Order).where(Order.order_no == state["order_no"])).one()
    if order.status == "paid" and answer.status != 429:
        flag_order(session, order, f"supplier {state['supplier']} refused: {why}"[:200], now)
    if answer.error_code == "insufficient_balance":
        supplier = session.scalars(sa.select(Supplier).where(Supplier.name == state["supplier"])).one()
        if not supplier.low_balance_warned:
            supplier.low_balance_warned = True
            emit(session, "supplier.low_balance", {"supplier": supplier.name, "balance": format_cents(
                supplier.balance_cents or 0), "threshold": format_cents(supplier.low_balance_cents),
                "currency": supplier.currency or "", "order_no": order.order_no}, now)
    session.commit()
    return "refused"


def _cents(text) -> int | None:
    try:
        return parse_plain_money(text, allow_zero=True) if isinstance(text, str) else None
    except KamengdError:
        return None


def forwards(session: Session, *, supplier_id: int | None = None, problems_only: bool = False,
             limit: int = 100) -> list[tuple[SupplierOrder, str, str]]:
    """Recent forwards with our order number and its status (the panel's and the CLI's list)."""
    query = (sa.select(SupplierOrder, Order.order_no, Order.status).join(Order, Order.id == SupplierOrder.order_id)
             .order_by(SupplierOrder.id.desc()).limit(limit))
    if supplier_id is not None:
        query = query.where(SupplierOrder.supplier_id == supplier_id)
    if problems_only:
        query = query.where(SupplierOrder.status.in_(("pending", "waiting")), SupplierOrder.attempts > 0)
    return session.execute(query).all()

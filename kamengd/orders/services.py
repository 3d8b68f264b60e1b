"""Orders: create and reserve, pay, deliver, expire. No key is ever sold twice.

Every state change two actors could race for is a conditional UPDATE whose
row count is checked, in the transaction that records its consequence:
reserving keys (status available -> reserved), paying an order (pending or
expired -> paid), selling keys (reserved -> sold), expiring an order
(pending -> expired). On MySQL the keys to reserve are picked with
SELECT ... FOR UPDATE SKIP LOCKED, so concurrent buyers do not queue on the
same rows; on SQLite the transaction holds the write lock from its start.
"""
from __future__ import annotations

import datetime as dt
import hmac
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..accounts.passwords import verify_password
from ..agents import commission
from ..agents.models import Agent
from ..audit.services import record
from ..catalog import limits
from ..catalog.models import Product
from ..database import utcnow
from ..errors import Conflict, InvalidRequest, NotFound, OutOfStock
from ..inventory.models import CardKey, KeyImport, on_sale_again
from ..marketing import coupons, points
from ..notifications.events import emit, order_payload
from ..notifications.outbox import queue_delivery_email
from ..payments import routing
from ..vault import Vault
from ..vouchers import services as vouchers
from .checkout import place_order, reserve_keys, token_hash
from .keys import keys_query, loop_key_id
from .models import Order

@dataclass
class NewOrder:
    order: Order
    token: str


def create_order(session: Session, *, product_id, quantity, email, channel_code,
                 query_password=None, coupon=None, client_ip: str | None = None,
                 now: dt.datetime | None = None) -> NewOrder:
    """place_order for callers that want the Order row (and no pay URL)."""
    placed = place_order(session, None, product_id=product_id, quantity=quantity, email=email,
                         channel_code=channel_code, query_password=query_password, coupon=coupon,
                         client_ip=client_ip, now=now)
    return NewOrder(session.get(Order, placed.order_id), placed.token)


def find_order_for_buyer(session: Session, order_no: str, *, token: str | None = None,
                         query_password: str | None = None) -> Order:
    """The order, if the caller proves to be its buyer; otherwise NotFound, the same for
    an order that does not exist (never reveal that it does)."""
    order = session.scalar(sa.select(Order).where(Order.order_no == str(order_no)[:32]))
    ok = False
    if order is not None and token:
        ok = hmac.compare_digest(bytes(order.token_hash), token_hash(token))
    elif order is not None and query_password and order.query_password_hash:
        ok = verify_password(order.query_password_hash, query_password)
    elif query_password:
        verify_password(None, query_password)  # same time as a real check
    if not ok:
        raise NotFound("order not found")
    return order


def sell_reserved_keys(session: Session, order: Order, now: dt.datetime) -> bool:
    """reserved -> sold for this order's keys; then the order is delivered."""
    t = CardKey.__table__
    sold = session.execute(t.update().where(t.c.order_id == order.id, t.c.status == "reserved")
                           .values(status="sold", sold_at=now, reserved_until=None)).rowcount
    if sold != order.quantity:
        if sold:
            raise RuntimeError(f"order {order.order_no}: {sold} of {order.quantity} reserved keys")
        return False
    done = session.execute(sa.update(Order).where(Order.id == order.id, Order.status == "paid")
                           .values(status="delivered", delivered_at=now, updated_at=now, **RESOLVED)
                           .execution_options(synchronize_session=False)).rowcount
    session.refresh(order)
    if done == 1:
        delivered(session, order, now)
    return done == 1


# Delivering an order settles whatever it was flagged for (waiting, past the SLA).
RESOLVED = {"flagged_at": None, "flag_reason": None, "next_delivery_at": None}


def delivered(session: Session, order: Order, now: dt.datetime) -> None:
    vouchers.activate_for_order(session, order.id, order.product_id, now)   # its codes redeemable from now
    # Its member's points first, then the agents' accounts: every path locks them in this order.
    if order.member_id:   # its member earns its points in this transaction
        points.earn(session, order_no=order.order_no, member_id=order.member_id, amount_cents=order.amount_cents,
                    currency=order.currency)
    # The agents earn their commission in this transaction; on money only (none on points).
    if (order.agent_id or order.seller_agent_id) and not points.paid_with_points(session, order.order_no):
        commission.book_for_order(session, order, session.get(Product, order.product_id).price_cents, now)
    if order.email:   # an agent's order has no buyer's address: the agent reads its keys from the API
        queue_delivery_email(session, order)
    emit(session, "order.delivered", order_payload(session, order), now)


def lock_order_status(session: Session, order_id: int) -> str | None:
    """Lock the order's row and read its current status (MySQL: the newest
    committed one, after waiting for any transaction that holds the row)."""
    return session.scalar(sa.select(Order.status).where(Order.id == order_id).with_for_update())


DELIVERED, NO_STOCK, NOT_PAID = "delivered", "no stock", "not paid"


def deliver_paid_order(session: Session, order: Order, now: dt.datetime | None = None) -> str:
    """Deliver a paid auto-delivery order: with its reserved keys, or newly reserved
    ones if its reservation was released. NO_STOCK leaves it paid, waiting.

    The order's row is locked first, so staff delivering it by hand, another
    import or a sweep never deliver it a second time.
    """
    now = now or utcnow()
    if lock_order_status(session, order.id) != "paid":
        session.refresh(order)
        return NOT_PAID
    product = session.get(Product, order.product_id)
    if product.delivery_mode == "loop":
        return _deliver_loop_key(session, order, now)
    if product.delivery_mode != "auto":
        return NOT_PAID
    t = CardKey.__table__
    held = session.scalar(sa.select(sa.func.count()).select_from(t).where(
        t.c.order_id == order.id, t.c.status == "reserved"))
    if held == 0:
        try:
            with session.begin_nested():
                reserve_keys(session, product_id=order.product_id, quantity=order.quantity,
                             order_id=order.id, until=now, pool=pool_of(session, order))
        except OutOfStock:
            return NO_STOCK
    return DELIVERED if sell_reserved_keys(session, order, now) else NOT_PAID


def _deliver_loop_key(session: Session, order: Order, now: dt.datetime) -> str:
    """A paid loop-key order (its row locked by the caller) gets the product's key; the key
    stays in stock for the next buyer. NO_STOCK: the product has none, the order waits."""
    t = CardKey.__table__
    if order.quantity != 1:
        # Placed for several keys while the product was sold key by key: its own keys, if it
        # still holds them all; else a person decides (it stays paid and is flagged).
        held = session.scalar(sa.select(sa.func.count()).select_from(t).where(
            t.c.order_id == order.id, t.c.status == "reserved"))
        if held == order.quantity:
            return DELIVERED if sell_reserved_keys(session, order, now) else NOT_PAID
        return NOT_PAID
    # Keys it reserved while the product was sold key by key go back on sale.
    session.execute(t.update().where(t.c.order_id == order.id, t.c.status == "reserved")
                    .values(status=on_sale_again(t), order_id=None, reserved_until=None))
    key_id = loop_key_id(session, order.product_id)
    if key_id is None:
        return NO_STOCK
    done = session.execute(sa.update(Order).where(Order.id == order.id, Order.status == "paid")
                           .values(status="delivered", delivered_at=now, updated_at=now, loop_key_id=key_id,
                                   **RESOLVED)
                           .execution_options(synchronize_session=False)).rowcount
    session.refresh(order)
    if done != 1:
        return NOT_PAID
    delivered(session, order, now)
    return DELIVERED


def pool_of(session: Session, order: Order) -> int | None:
    """The agent whose stock pool an order may draw on: the agent that ordered it, or that
    it was sold through, when that agent has a pool."""
    agent_id = order.agent_id or order.seller_agent_id
    if agent_id is None:
        return None
    return agent_id if session.scalar(sa.select(Agent.has_pool).where(Agent.id == agent_id)) else None


def waiting_orders(product_id: int):
    return sa.select(Order).where(Order.product_id == product_id, Order.status == "paid")


def deliver_waiting_orders(session: Session, product_id: int, limit: int = 1000) -> int:
    """Paid orders waiting for stock, oldest first, get keys (after an import,
    an expiry, or the periodic sweep)."""
    if session.get(Product, product_id).delivery_mode not in ("auto", "loop"):
        return 0
    waiting = session.scalars(waiting_orders(product_id).order_by(Order.paid_at, Order.id)
                              .limit(limit)).all()
    delivered = 0
    for order in waiting:
        outcome = deliver_paid_order(session, order)
        if outcome == NO_STOCK:
            break  # oldest first: a younger order never jumps the queue
        delivered += outcome == DELIVERED
    return delivered


def order_keys(session: Session, vault: Vault, order: Order) -> list[str]:
    rows = session.execute(keys_query(order)).all()
    return [vault.decrypt_card_key(r.product_id, r.fingerprint, r.nonce, r.ciphertext, r.key_version)
            .decode("utf-8") for r in rows]


def expire_orders(session: Session, now: dt.datetime | None = None, batch: int = 500) -> int:
    """Pending orders past expiry become expired; their keys go back on sale."""
    now = now or utcnow()
    ids = session.scalars(sa.select(Order.id).where(Order.status == "pending", Order.expires_at < now)
                          .order_by(Order.id).limit(batch)).all()
    if not ids:
        return 0
    expired = session.execute(sa.update(Order).where(Order.id.in_(ids), Order.status == "pending",
                                                     Order.expires_at < now)
                              .values(status="expired", updated_at=now)
                              .execution_options(synchronize_session=False)).rowcount
    # Their channels' daily caps have room again (each order's once, whoever expired it).
    if expired:
        routing.give_back_expired(session, ids)
        coupons.give_back_expired(session, ids)   # (each order's use once, whoever expired it)
        limits.give_back_expired(session, ids)    # (and its units of a buyer daily limit)
        points.give_back_expired(session, ids)    # (and the points its member took off it)
    t = CardKey.__table__
    really = sa.select(Order.id).where(Order.id.in_(ids), Order.status == "expired")
    products = session.scalars(sa.select(Order.product_id).where(Order.id.in_(ids), Order.status == "expired")
                               .distinct()).all()
    session.execute(t.update().where(t.c.status == "reserved", t.c.order_id.in_(really))
                    .values(status=on_sale_again(t), order_id=None, reserved_until=None))
    for product_id in products:  # released keys go to buyers who already paid, first
        deliver_waiting_orders(session, product_id)
    return expired


def deliver_manually(session: Session, vault: Vault, *, order_no: str, keys: list[str], actor: str,
                     source_ip: str | None = None) -> Order:
    """Staff deliver a paid order with keys they supply (manual-delivery products,
    or an auto order waiting for stock). The keys are stored like imported ones."""
    # populate_existing: the row as locked now, not as this request loaded it before.
    order = session.scalars(sa.select(Order).where(Order.order_no == order_no[:32]).with_for_update()
                            .execution_options(populate_existing=True)).first()
    if order is None:
        raise NotFound("order %(order_no)s not found", order_no=order_no)
    if order.status != "paid":
        raise Conflict("order %(order_no)s is %(status)s; only paid orders can be delivered", order_no=order_no,
                       status=order.status)
    if vouchers.terms_of(session, order.product_id) is not None:
        raise InvalidRequest("order %(order_no)s is of a voucher product: its codes are made by kamengd (kamengd "
                             "voucher generate), and it is delivered from them", order_no=order_no)
    if len(keys) != order.quantity:
        raise InvalidRequest("order %(order_no)s needs %(quantity)s keys, the file has %(given)s", order_no=order_no,
                             quantity=order.quantity, given=len(keys))
    if len(set(keys)) != len(keys):
        raise InvalidRequest("the same key is in the file twice")
    now = utcnow()
    run = KeyImport(product_id=order.product_id, actor=actor, encoding="manual delivery",
                    imported=len(keys))
    session.add(run)
    session.flush()
    for key in keys:
        plaintext = key.encode("utf-8")
        fp = vault.fingerprint(order.product_id, plaintext)
        every_version = [vault.fingerprint(order.product_id, plaintext, v) for v in vault.versions]
        if session.scalar(sa.select(CardKey.id).where(CardKey.product_id == order.product_id,
                                                      CardKey.fingerprint.in_(every_version))) is not None:
            raise Conflict("a key in the file is already in stock or sold for this product")
        nonce, ct, version = vault.encrypt_card_key(order.product_id, plaintext, fp)
        session.add(CardKey(product_id=order.product_id, import_id=run.id, status="sold", order_id=order.id,
                            ciphertext=ct, nonce=nonce, key_version=version, fingerprint=fp, sold_at=now))
    try:
        with session.begin_nested():
            session.flush()
    except sa.exc.IntegrityError:   # the same key, stored meanwhile by someone else's delivery or import
        raise Conflict("a key in the file is already in stock or sold for this product") from None
    done = session.execute(sa.update(Order).where(Order.id == order.id, Order.status == "paid")
                           .values(status="delivered", delivered_at=now, updated_at=now, **RESOLVED)
                           .execution_options(synchronize_session=False)).rowcount
    if done != 1:
        raise Conflict("order %(order_no)s changed while delivering; nothing delivered", order_no=order_no)
    session.refresh(order)
    delivered(session, order, now)
    record(session, "order.deliver", actor=actor, target=f"order:{order.order_no}", source_ip=source_ip,
           details={"keys": len(keys), "import_id": run.id})
    return order


# Orders shown for one e-mail + query password, newest first.
LOOKUP_LIMIT = 20
LOOKUP_PAGE = 10


def orders_for_email(session: Session, vault: Vault, email: str, query_password: str) -> list[Order]:
    """The buyer's recent orders whose query password matches.

    One indexed query for the lookup tags (an HMAC per data key version) and
    exactly one argon2 check (against the newest order placed before tags
    existed, or a dummy): the same work whether or not the e-mail has orders,
    and bounded however many it has.
    """
    email = email.strip()[:254]
    tagged = session.scalars(sa.select(Order).where(Order.lookup_tag.in_(vault.lookup_tags(email, query_password)))
                             .order_by(Order.id.desc()).limit(LOOKUP_LIMIT)).all()
    legacy = session.scalars(sa.select(Order).where(Order.email == email, Order.lookup_tag.is_(None),
                                                    Order.query_password_hash.is_not(None))
                             .order_by(Order.id.desc()).limit(1)).first()
    if verify_password(legacy.query_password_hash if legacy else None, query_password) and legacy:
        tagged = sorted({o.id: o for o in [*tagged, legacy]}.values(), key=lambda o: o.id, reverse=True)
    return list(tagged)


def orders_by_tags(session: Session, tags: list[bytes], *, page: int = 1,
                   page_size: int = LOOKUP_PAGE) -> tuple[list[Order], int]:
    """A page of the orders found by lookup tags (newest first) and how many there are: the
    later pages of an e-mail + query password lookup, whose tags the browser's session keeps
    (signed; the password itself is never kept)."""
    if not tags:
        return [], 0
    where = Order.lookup_tag.in_(tags)
    total = session.scalar(sa.select(sa.func.count()).select_from(Order).where(where))
    orders = session.scalars(sa.select(Order).where(where).order_by(Order.id.desc())
                             .limit(page_size).offset((max(page, 1) - 1) * page_size)).all()
    return list(orders), total


def orders_of_this_browser(session: Session, tokens: dict) -> list[Order]:
    """The orders whose tokens this browser keeps, newest first; a token that does not
    match is skipped (never an error: the cookie is the buyer's own)."""
    if not isinstance(tokens, dict) or not tokens:
        return []
    wanted = {str(no)[:32]: tok for no, tok in list(tokens.items())[-50:] if isinstance(tok, str)}
    found = session.scalars(sa.select(Order).where(Order.order_no.in_(wanted))).all()
    mine = [o for o in found if hmac.compare_digest(bytes(o.token_hash), token_hash(wanted[o.order_no]))]
    return sorted(mine, key=lambda o: o.id, reverse=True)

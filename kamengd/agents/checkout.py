"""An agent buys through the API, paying from its balance, in one transaction.

Read first, outside the write lock (on SQLite a snapshot): an earlier order
for the same Idempotency-Key, the product, the agent's account. Then, in one
write transaction: the request's nonce, the order row (written only if the
product, its price and the agent's level still are what the answer was built
from: the INSERT checks them itself; delivered already when its keys come
from stock), its keys claimed as sold, the ledger's debit of the balance and
the commission above the agent. Any refusal (no stock, not enough balance)
undoes all of them. The same Idempotency-Key
again finds the first order and charges nothing; with another request behind
it, it is refused. Core statements built once: this is the agents' hot path.

With `backorder` an auto-delivery order that finds too few keys is placed all the same,
paid and waiting (`paid`): the balance is debited now and the keys come with the next
import, announced as order.delivered. Without it, no stock is a 409 that changes nothing.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
import secrets

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, scoped_session

from ..catalog import variants
from ..catalog.models import Product
from ..catalog.services import pool_stock, stock_by_product, supplier_stock_query
from ..database import utcnow
from ..errors import Busy, Conflict, InvalidRequest, NotFound, OutOfStock, Unauthorized
from ..inventory.models import CardKey
from ..ledger import services as ledger
from ..money import format_cents
from ..notifications.events import emit_many, payload_of
from ..orders.checkout import new_order_no, reserve_keys, token_hash
from ..orders.keys import keys_query, loop_key_id
from ..orders.models import Order
from ..vault import Vault
from ..vouchers import services as vouchers
from . import commission
from .auth import Caller, spend_nonce
from .models import Agent, AgentLevel, LevelPrice
from .services import level_cost, level_prices

IDEMPOTENCY_RE = re.compile(r"[\x21-\x7e]{1,64}")
REF_RE = re.compile(r"[\x20-\x7e]{0,64}")
MAX_ID = 2**31 - 1

_p, _o, _k, _a, _l = Product.__table__, Order.__table__, CardKey.__table__, Agent.__table__, AgentLevel.__table__
_lp = LevelPrice.__table__
_VIEW = (_o.c.id, _o.c.order_no, _o.c.status, _o.c.amount_cents, _o.c.currency, _o.c.quantity, _o.c.product_id,
         _o.c.created_at, _o.c.request_hash, _o.c.external_ref, _o.c.loop_key_id)
_EARLIER = sa.select(*_VIEW).where(_o.c.agent_id == sa.bindparam("agent_id"),
                                   _o.c.idempotency_key == sa.bindparam("key"))
_BY_NO = sa.select(*_VIEW).where(_o.c.order_no == sa.bindparam("order_no"), _o.c.agent_id == sa.bindparam("agent_id"))
_AGENT = (sa.select(_a.c.is_active, _a.c.level_id, _l.c.discount_bp).select_from(_a.join(_l, _l.c.id == _a.c.level_id))
          .where(_a.c.id == sa.bindparam("agent_id")))
# The level's own price for the product, or -1: its discount applies (a value the INSERT can compare).
_OWN_PRICE = sa.func.coalesce(sa.select(_lp.c.price_cents).where(_lp.c.level_id == sa.bindparam("level_id"),
                                                                 _lp.c.product_id == _p.c.id)
                              .scalar_subquery(), -1)
_PRODUCT = sa.select(_p.c.name, _p.c.price_cents, _p.c.currency, _p.c.is_active, _p.c.delivery_mode,
                     _p.c.min_quantity, _p.c.max_quantity, _OWN_PRICE.label("own_price"),
                     supplier_stock_query(_p).label("supplier_stock")).where(
    _p.c.id == sa.bindparam("product_id"))
_FIELDS = ("order_no", "product_id", "quantity", "unit_price_cents", "amount_cents", "currency", "email", "status",
           "token_hash", "agent_id", "idempotency_key", "request_hash", "created_at", "updated_at", "expires_at",
           "paid_at", "delivered_at", "delivery_attempts", "external_ref")
_INSERT = _o.insert().from_select(
    list(_FIELDS),
    sa.select(*(sa.bindparam(name, type_=_o.c[name].type) for name in _FIELDS))
    .select_from(_p)
    .where(_p.c.id == sa.bindparam("product_id"), _p.c.is_active.is_(True),
           _p.c.price_cents == sa.bindparam("shop_price"), _p.c.currency == sa.bindparam("currency"),
           _p.c.delivery_mode == sa.bindparam("delivery_mode"),
           _p.c.min_quantity <= sa.bindparam("quantity"), _p.c.max_quantity >= sa.bindparam("quantity"),
           _OWN_PRICE == sa.bindparam("own_price"),
           sa.exists().where(_a.c.id == sa.bindparam("agent_id"), _a.c.is_active.is_(True),
                             _a.c.level_id == sa.bindparam("level_id"), _l.c.id == _a.c.level_id,
                             _l.c.discount_bp == sa.bindparam("discount_bp"))))


def _integer(value, field: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_ID:
        raise InvalidRequest("%(field)s: a whole number of at least %(low)s is required", field=field, low=low)
    return value


def _digest(product_id: int, quantity: int, backorder: bool = False, ref: str = "") -> bytes:
    # The fields that default stay out: an order placed before they existed hashes the same.
    request = {"product_id": product_id, "quantity": quantity, **({"backorder": True} if backorder else {}),
               **({"ref": ref} if ref else {})}
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).digest()


def parse_ref(value) -> str:
    """The agent's own reference for an order (its order number): printable, ≤ 64 characters."""
    if value is None:
        return ""
    if not isinstance(value, str) or not REF_RE.fullmatch(value):
        raise InvalidRequest("ref: at most 64 printable characters")
    return value.strip()


def parse_backorder(value) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequest("backorder: true or false")
    return value


def _same_request(row, digest: bytes):
    if row is not None and bytes(row.request_hash) != digest:
        raise Conflict("this Idempotency-Key was used for another request")
    return row


def place_agent_order(session: Session, vault: Vault, caller: Caller, *, product_id, quantity, idempotency_key,
                      backorder=None, ref=None, now: dt.datetime | None = None,
                      on_placed=None) -> tuple[dict, bool]:
    """(the order as the API shows it, placed now). Raises InvalidRequest, NotFound,
    OutOfStock, InsufficientBalance, Conflict or Unauthorized (a replayed nonce); the
    request's transaction is then rolled back.

    `idempotency_key` None: a batch's line, whose own row (written by `on_placed(order_id)`
    in the order's transaction) is what makes it idempotent; the batch spent the nonce."""
    batch_line = idempotency_key is None and on_placed is not None
    if not batch_line and (not isinstance(idempotency_key, str) or not IDEMPOTENCY_RE.fullmatch(idempotency_key)):
        raise InvalidRequest("Idempotency-Key: a header of 1 to 64 printable characters is required")
    product_id = _integer(product_id, "product_id")
    quantity = _integer(quantity, "quantity")
    backorder, ref = parse_backorder(backorder), parse_ref(ref)
    digest = _digest(product_id, quantity, backorder, ref)
    account = ledger.AccountRef(caller.account_id, caller.currency)
    session = session() if isinstance(session, scoped_session) else session
    for _attempt in range(3):
        now = now or utcnow()
        # Read, outside the write lock (in the snapshot the request's signature was checked in).
        reading = session.connection() if session.in_transaction() else \
            session.connection(execution_options={"kamengd_readonly": True})
        earlier = None if batch_line else _same_request(
            reading.execute(_EARLIER, {"agent_id": caller.agent_id, "key": idempotency_key}).first(), digest)
        product = None if earlier is not None else reading.execute(
            _PRODUCT, {"product_id": product_id, "level_id": caller.level_id}).first()
        session.rollback()
        if not batch_line:
            spend_nonce(session, caller, now)   # the write transaction begins here
        if earlier is not None:
            return _view(session, vault, earlier), False
        if product is None or not product.is_active:
            raise NotFound("product not found")
        if not product.min_quantity <= quantity <= product.max_quantity:
            raise InvalidRequest("quantity: %(low)s to %(high)s for this product", low=product.min_quantity,
                                 high=product.max_quantity)
        if product.currency != account.currency:
            raise InvalidRequest("this product is priced in %(currency)s, the balance is in %(balance)s",
                                 currency=product.currency, balance=account.currency)
        if product.delivery_mode == "supplier" and not backorder and (product.supplier_stock or 0) < quantity:
            raise OutOfStock("not enough stock for this quantity")
        unit = level_cost(product.price_cents, caller.discount_bp,
                          None if product.own_price < 0 else product.own_price)
        # Keys in stock are claimed as sold in this same transaction: the order is written
        # delivered (no stock, or the balance short: the whole transaction is undone).
        auto = product.delivery_mode in ("auto", "loop")
        values = {"order_no": new_order_no(now), "product_id": product_id, "quantity": quantity,
                  "unit_price_cents": unit, "amount_cents": unit * quantity, "currency": product.currency,
                  "email": "", "status": "delivered" if auto else "paid",
                  "token_hash": token_hash(secrets.token_urlsafe(24)),
                  "agent_id": caller.agent_id, "idempotency_key": idempotency_key, "request_hash": digest,
                  "created_at": now, "updated_at": now, "expires_at": now, "paid_at": now,
                  "delivered_at": now if auto else None, "delivery_attempts": 0, "external_ref": ref or None,
                  "shop_price": product.price_cents, "delivery_mode": product.delivery_mode,
                  "discount_bp": caller.discount_bp, "level_id": caller.level_id, "own_price": product.own_price}
        conn = session.connection()
        try:
            inserted = conn.execute(_INSERT, values)
        except IntegrityError:   # the same key, placed meanwhile by a retry on another connection
            session.rollback()
            earlier = _same_request(session.connection().execute(
                _EARLIER, {"agent_id": caller.agent_id, "key": idempotency_key}).first(), digest)
            if earlier is None:
                raise
            return _view(session, vault, earlier), False
        if inserted.rowcount == 1:
            if on_placed is not None:
                on_placed(inserted.lastrowid)
            return _pay_and_deliver(session, vault, caller, values, inserted.lastrowid, product, account, now,
                                    backorder), True
        # The product, its price or the agent changed since it was read: read the agent again too.
        session.rollback()
        agent = session.connection(execution_options={"kamengd_readonly": True}).execute(
            _AGENT, {"agent_id": caller.agent_id}).first()
        session.rollback()
        if agent is None or not agent.is_active:
            raise Unauthorized("agent %(username)s is disabled", username=caller.username)
        caller = dataclasses.replace(caller, discount_bp=agent.discount_bp, level_id=agent.level_id)
        now = None
    raise Busy("the product or the agent's level is being changed: try again")


_WAIT = (_o.update().where(_o.c.id == sa.bindparam("order_id"), _o.c.status == "delivered")
         .values(status="paid", delivered_at=None))


def _pay_and_deliver(session: Session, vault: Vault, caller: Caller, values: dict, order_id: int, product,
                     account, now: dt.datetime, backorder: bool = False) -> dict:
    auto = product.delivery_mode in ("auto", "loop")
    loop_key = None
    if auto:
        try:
            if product.delivery_mode == "loop":   # the key every buyer gets, kept in stock
                loop_key = loop_key_id(session, values["product_id"])
                if loop_key is None:
                    raise OutOfStock("not enough stock for this quantity")
                session.connection().execute(_o.update().where(_o.c.id == order_id).values(loop_key_id=loop_key))
            else:
                reserve_keys(session, product_id=values["product_id"], quantity=values["quantity"],
                             order_id=order_id, until=now, sold_at=now,
                             pool=caller.agent_id if caller.has_pool else None)
                vouchers.activate_for_order(session, order_id, values["product_id"], now)   # (a voucher's codes)
        except OutOfStock:
            if not backorder:
                raise
            # Paid and waiting: the sweep and the next import deliver it (and book commission).
            session.connection().execute(_WAIT, {"order_id": order_id})
            values = {**values, "status": "paid", "delivered_at": None}
            auto = False
    amount = values["amount_cents"]
    if amount:
        sales = ledger.AccountRef(caller.sales_account_id, account.currency, "shop") if caller.sales_account_id \
            else ledger.shop_ref(session, "shop:sales", account.currency)
        ledger.post(session, cause=ledger.order_paid_cause(values["order_no"]), kind="order",
                    legs=[(account, -amount), (sales, amount)], actor=f"agent:{caller.username}",
                    memo=f"{values['quantity']} × {product.name}"[:200], savepoint=False)
    status = values["status"]
    if auto:
        if caller.parent_id is not None:
            commission.book_commission(session, order_id=order_id, order_no=values["order_no"],
                                       agent_id=caller.agent_id, paid_unit_cents=values["unit_price_cents"],
                                       price_cents=product.price_cents, quantity=values["quantity"],
                                       product_id=values["product_id"],
                                       currency=account.currency, now=now, savepoint=False,
                                       shop_account_id=caller.commission_account_id)
    order = _Placed(order_id, values, status, now, loop_key)
    # An auto order's buyer is the agent (no mail); staff hear of a manual one as of any paid order.
    emit_many(session, [("order.delivered" if auto else "order.paid", payload_of(order, product.name))], now)
    return _view(session, vault, order)


class _Placed:
    """The order just written, with the attributes its view and its event read."""

    def __init__(self, order_id: int, values: dict, status: str, now: dt.datetime, loop_key_id: int | None = None):
        self.id, self.status, self.loop_key_id = order_id, status, loop_key_id
        for name in ("order_no", "product_id", "quantity", "amount_cents", "currency", "email", "created_at",
                     "paid_at", "agent_id", "external_ref"):
            setattr(self, name, values[name])
        self.delivered_at = now if status == "delivered" else None


def _view(session: Session, vault: Vault, order) -> dict:
    data = {"order_no": order.order_no, "status": order.status, "amount": format_cents(order.amount_cents),
            "currency": order.currency, "quantity": order.quantity, "product_id": order.product_id,
            "created_at": order.created_at.isoformat(timespec="seconds") + "Z"}
    if order.external_ref:
        data["ref"] = order.external_ref
    if order.status == "delivered":
        data["keys"] = [vault.decrypt_card_key(r.product_id, r.fingerprint, r.nonce, r.ciphertext, r.key_version)
                        .decode("utf-8")
                        for r in session.connection().execute(keys_query(order))]
    return data


def agent_order(session: Session, vault: Vault, caller: Caller, order_no) -> dict:
    """The agent's own order as the API shows it; another's, or none, is NotFound alike."""
    return order_of(session, vault, caller.agent_id, order_no)


def order_of(session: Session, vault: Vault, agent_id: int, order_no) -> dict:
    """One of the agent's orders with its keys once delivered (the API's and the portal's view)."""
    row = session.connection().execute(_BY_NO, {"order_no": str(order_no)[:32], "agent_id": agent_id}).first()
    if row is None:
        raise NotFound("order not found")
    return _view(session, vault, row)


def find_orders(session: Session, vault: Vault, agent_id: int, *, idempotency_key=None, ref=None,
                limit=50) -> list[dict]:
    """The agent's own orders, newest first: all, the one placed with an Idempotency-Key (a
    client that lost the answer finds what it bought), or those with its reference."""
    if not isinstance(limit, int) or not 1 <= limit <= 100:
        raise InvalidRequest("limit: 1 to 100")
    query = sa.select(*_VIEW).where(_o.c.agent_id == agent_id)
    if idempotency_key is not None:
        query = query.where(_o.c.idempotency_key == str(idempotency_key)[:64])
    if ref is not None:
        query = query.where(_o.c.external_ref == str(ref)[:64])
    rows = session.connection().execute(query.order_by(_o.c.id.desc()).limit(limit)).all()
    return [_view(session, vault, row) for row in rows]


def agent_products(session: Session, caller: Caller) -> list[dict]:
    stock = stock_by_product(session)
    if caller.has_pool:   # its own pool is its stock too
        for product_id, count in pool_stock(session, caller.agent_id).items():
            stock[product_id] = stock.get(product_id, 0) + count
    own = level_prices(session, caller.level_id)
    products = variants.on_sale(session.scalars(sa.select(Product).where(Product.is_active.is_(True))
                                                .order_by(Product.sort_order, Product.id)).all())
    return [{"id": p.id, "name": p.name,
             "price": format_cents(level_cost(p.price_cents, caller.discount_bp, own.get(p.id))),
             "shop_price": format_cents(p.price_cents), "currency": p.currency, "stock": stock.get(p.id, 0),
             "delivery": p.delivery_mode, "min_quantity": p.min_quantity, "max_quantity": p.max_quantity,
             **variants.api_fields(p)}
            for p in products]

"""An agent buys through the API, paying from its balance, in one transaction.

The order row (one per agent and Idempotency-Key: a unique index), the keys'
reservation, the ledger's debit of the balance and the delivery are written
together; any refusal (no stock, not enough balance) leaves none of them.
The same Idempotency-Key again finds the first order and charges nothing;
with another request behind it, it is refused.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import secrets

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..catalog.models import Product
from ..catalog.services import stock_by_product
from ..database import utcnow
from ..errors import Conflict, InvalidRequest, NotFound
from ..ledger import services as ledger
from ..money import format_cents
from ..notifications.events import emit, order_payload
from ..orders.checkout import new_order_no, reserve_keys, token_hash
from ..orders.models import Order
from ..orders.services import order_keys, sell_reserved_keys
from ..vault import Vault
from .models import Agent, AgentLevel
from .services import agent_price

IDEMPOTENCY_RE = re.compile(r"[\x21-\x7e]{1,64}")
MAX_ID = 2**31 - 1


def _integer(value, field: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_ID:
        raise InvalidRequest("%(field)s: a whole number of at least %(low)s is required", field=field, low=low)
    return value


def _digest(product_id: int, quantity: int) -> bytes:
    return hashlib.sha256(json.dumps({"product_id": product_id, "quantity": quantity},
                                     sort_keys=True).encode()).digest()


def _earlier(session: Session, agent_id: int, key: str, digest: bytes) -> Order | None:
    order = session.scalars(sa.select(Order).where(Order.agent_id == agent_id,
                                                   Order.idempotency_key == key)).first()
    if order is not None and order.request_hash != digest:
        raise Conflict("this Idempotency-Key was used for another request")
    return order


def place_agent_order(session: Session, agent: Agent, *, product_id, quantity, idempotency_key,
                      now: dt.datetime | None = None) -> tuple[Order, bool]:
    """(the order, placed now). Raises InvalidRequest, NotFound, OutOfStock,
    InsufficientBalance or Conflict; the caller's transaction is then rolled back."""
    if not isinstance(idempotency_key, str) or not IDEMPOTENCY_RE.fullmatch(idempotency_key):
        raise InvalidRequest("Idempotency-Key: a header of 1 to 64 printable characters is required")
    product_id = _integer(product_id, "product_id")
    quantity = _integer(quantity, "quantity")
    digest = _digest(product_id, quantity)
    earlier = _earlier(session, agent.id, idempotency_key, digest)
    if earlier is not None:
        return earlier, False
    now = now or utcnow()
    product = session.get(Product, product_id)
    if product is None or not product.is_active:
        raise NotFound("product not found")
    if not product.min_quantity <= quantity <= product.max_quantity:
        raise InvalidRequest("quantity: %(low)s to %(high)s for this product", low=product.min_quantity,
                             high=product.max_quantity)
    mine = ledger.account_by_name(session, ledger.agent_account_name(agent.id, "available"))
    if product.currency != mine.currency:
        raise InvalidRequest("this product is priced in %(currency)s, the balance is in %(balance)s",
                             currency=product.currency, balance=mine.currency)
    unit = agent_price(product.price_cents, session.get(AgentLevel, agent.level_id).discount_bp)
    order = Order(order_no=new_order_no(now), product_id=product.id, channel_id=None, quantity=quantity,
                  unit_price_cents=unit, amount_cents=unit * quantity, currency=product.currency, email="",
                  status="paid", token_hash=token_hash(secrets.token_urlsafe(24)), agent_id=agent.id,
                  idempotency_key=idempotency_key, request_hash=digest, created_at=now, updated_at=now,
                  expires_at=now, paid_at=now, delivery_attempts=0)
    try:
        with session.begin_nested():
            session.add(order)
            session.flush()
    except IntegrityError:   # the same key, placed meanwhile by a retry on another connection
        earlier = _earlier(session, agent.id, idempotency_key, digest)
        if earlier is None:
            raise
        return earlier, False
    if product.delivery_mode == "auto":
        reserve_keys(session, product_id=product.id, quantity=quantity, order_id=order.id, until=now)
    if order.amount_cents:
        sales = ledger.shop_account(session, "shop:sales", mine.currency)
        ledger.post(session, cause=f"order:{order.order_no}:paid", kind="order",
                    legs=[(mine, -order.amount_cents), (sales, order.amount_cents)],
                    actor=f"agent:{agent.username}", memo=f"{quantity} × {product.name}"[:200])
    if product.delivery_mode == "auto":
        if not sell_reserved_keys(session, order, now):
            raise RuntimeError(f"order {order.order_no}: its reserved keys could not be sold")
    else:   # staff deliver it (代充): they hear of it as of any paid order
        emit(session, "order.paid", order_payload(session, order), now)
    return order, True


def agent_order_view(session: Session, vault: Vault, order: Order) -> dict:
    data = {"order_no": order.order_no, "status": order.status, "amount": format_cents(order.amount_cents),
            "currency": order.currency, "quantity": order.quantity, "product_id": order.product_id,
            "created_at": order.created_at.isoformat(timespec="seconds") + "Z"}
    if order.status == "delivered":
        data["keys"] = order_keys(session, vault, order)
    return data


def find_agent_order(session: Session, agent: Agent, order_no) -> Order:
    """The agent's own order; another's, or none, is NotFound alike."""
    order = session.scalars(sa.select(Order).where(Order.order_no == str(order_no)[:32],
                                                   Order.agent_id == agent.id)).first()
    if order is None:
        raise NotFound("order not found")
    return order


def agent_products(session: Session, agent: Agent) -> list[dict]:
    discount = session.get(AgentLevel, agent.level_id).discount_bp
    stock = stock_by_product(session)
    products = session.scalars(sa.select(Product).where(Product.is_active.is_(True))
                               .order_by(Product.sort_order, Product.id)).all()
    return [{"id": p.id, "name": p.name, "price": format_cents(agent_price(p.price_cents, discount)),
             "shop_price": format_cents(p.price_cents), "currency": p.currency, "stock": stock.get(p.id, 0),
             "delivery": p.delivery_mode, "min_quantity": p.min_quantity, "max_quantity": p.max_quantity}
            for p in products]

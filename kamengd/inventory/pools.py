"""Stock pools (库存池): keys put aside for one agent, sold only through it.

A pooled key has the status "pool" and names its agent (pool_agent_id): the
shop's own sales never see it (they take "available" keys only), and the
agent's sales (its API orders, its sub-station's, its invitees') draw on its
pool first, then on the shop's stock (kamengd.orders.checkout.reserve_keys).
A released reservation goes back where the key came from. Staff move keys
in and out, all or nothing, audited.
"""
from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..agents.models import Agent
from ..audit.services import record
from ..catalog.models import Product

from ..errors import InvalidRequest, NotFound
from ..orders.services import deliver_waiting_orders
from .models import CardKey

_k = CardKey.__table__
MAX_MOVE = 100_000


def _count(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_MOVE:
        raise InvalidRequest("count: a whole number from 1 to %(most)s", most=MAX_MOVE)
    return value


def _product(session: Session, product_id) -> Product:
    product = session.get(Product, product_id) if isinstance(product_id, int) and 0 < product_id < 2**31 else None
    if product is None:
        raise NotFound("product %(product_id)s not found", product_id=product_id)
    if product.delivery_mode != "auto":
        raise InvalidRequest("product %(product_id)s is delivered by hand: it has no keys in stock",
                             product_id=product.id)
    return product


def _move(session: Session, product_id: int, count: int, *, source: list, values: dict) -> int:
    """Move exactly `count` keys matching `source` (oldest first), or none."""
    ids = session.execute(sa.select(_k.c.id).where(_k.c.product_id == product_id, *source).order_by(_k.c.id)
                          .limit(count).with_for_update()).scalars().all()
    if len(ids) < count:
        return len(ids)
    moved = session.execute(_k.update().where(_k.c.id.in_(ids), *source).values(**values)).rowcount
    if moved != count:   # changed under us: never a part of what was asked
        raise InvalidRequest("the stock changed meanwhile: try again")
    return moved


def pool_keys(session: Session, *, product_id, agent: Agent, count, actor: str, source_ip: str | None = None) -> int:
    """Put `count` of the shop's available keys of the product in the agent's pool."""
    product, count = _product(session, product_id), _count(count)
    if not agent.is_active or agent.is_member:
        raise InvalidRequest("%(username)s is not an active agent", username=agent.username)
    moved = _move(session, product.id, count, source=[_k.c.status == "available"],
                  values={"status": "pool", "pool_agent_id": agent.id})
    if moved < count:
        raise InvalidRequest("count: only %(n)s keys of this product are available", n=moved)
    agent.has_pool = True
    session.flush()
    record(session, "keys.pool", actor=actor, target=f"product:{product.id}", source_ip=source_ip,
           details={"agent": agent.username, "count": count})
    return moved


def unpool_keys(session: Session, *, product_id, agent: Agent, count=None, actor: str,
                source_ip: str | None = None) -> int:
    """Give `count` (default: all) of the agent's pooled keys of the product back to the shop's
    stock; buyers who paid and wait for this product get them first."""
    product = _product(session, product_id)
    source = [_k.c.status == "pool", _k.c.pool_agent_id == agent.id]
    if count is None:
        count = session.scalar(sa.select(sa.func.count()).select_from(_k).where(_k.c.product_id == product.id,
                                                                                *source))
        if not count:
            raise InvalidRequest("agent %(username)s has no keys of this product in its pool", username=agent.username)
    count = _count(count)
    moved = _move(session, product.id, count, source=source, values={"status": "available", "pool_agent_id": None})
    if moved < count:
        raise InvalidRequest("count: the pool holds only %(n)s keys of this product", n=moved)
    record(session, "keys.unpool", actor=actor, target=f"product:{product.id}", source_ip=source_ip,
           details={"agent": agent.username, "count": count})
    deliver_waiting_orders(session, product.id)
    return moved


def pools(session: Session) -> list[tuple[str, int, str, int]]:
    """[(agent, product id, product name, keys)] of every pool holding keys."""
    return [tuple(r) for r in session.execute(
        sa.select(Agent.username, Product.id, Product.name, sa.func.count())
        .select_from(_k.join(Agent, Agent.id == _k.c.pool_agent_id).join(Product, Product.id == _k.c.product_id))
        .where(_k.c.status == "pool").group_by(Agent.username, Product.id, Product.name)
        .order_by(Agent.username, Product.id))]

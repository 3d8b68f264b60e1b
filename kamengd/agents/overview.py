"""What an agent's portal shows of its own business: today's figures, its orders, its team.

Read-only queries over one agent's rows; the portal's pages and the tests call
them alike. Money stays in cents here; the pages format it.
"""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..database import utcnow
from ..ledger import services as ledger
from ..orders.models import Order
from ..catalog.models import Product
from .models import Agent, AgentLevel, Commission
from .withdrawals import shop_day

ORDERS_PAGE = 50
TEAM_DAYS = 30


def _sales(session: Session, agent_ids, since: dt.datetime, until: dt.datetime | None = None) -> dict[int, tuple]:
    """{agent id: (orders, cents)} of orders delivered in the window: the agents' own (the API)
    and those sold through them (their sub-stations, their invite links)."""
    found: dict[int, tuple] = {}
    for column in (Order.agent_id, Order.seller_agent_id):   # each by its own index
        query = (sa.select(column, sa.func.count(), sa.func.coalesce(sa.func.sum(Order.amount_cents), 0))
                 .where(column.in_(agent_ids), Order.status == "delivered", Order.delivered_at >= since)
                 .group_by(column))
        if until is not None:
            query = query.where(Order.delivered_at < until)
        for agent_id, count, cents in session.execute(query):
            before = found.get(agent_id, (0, 0))
            found[agent_id] = (before[0] + count, before[1] + int(cents))
    return found


def _commission(session: Session, agent_id: int) -> dict[str, int]:
    rows = session.execute(sa.select(Commission.status, sa.func.coalesce(sa.func.sum(Commission.amount_cents), 0))
                           .where(Commission.agent_id == agent_id).group_by(Commission.status)).all()
    found = {status: int(cents) for status, cents in rows}
    return {status: found.get(status, 0) for status in ("pending", "available", "reversed")}


def dashboard(session: Session, agent: Agent, now: dt.datetime | None = None) -> dict:
    """Today's sales (the shop's day), commission by state, and the balances."""
    start, end = shop_day(now or utcnow())
    today = _sales(session, [agent.id], start, end).get(agent.id, (0, 0))
    earned_today = session.scalar(
        sa.select(sa.func.coalesce(sa.func.sum(Commission.amount_cents), 0))
        .where(Commission.agent_id == agent.id, Commission.booked_at >= start, Commission.booked_at < end))
    return {"orders_today": today[0], "sales_today": today[1], "commission_today": int(earned_today or 0),
            "commission": _commission(session, agent.id), "balances": ledger.balances(session, agent.id),
            "team": session.scalar(sa.select(sa.func.count()).select_from(Agent).where(Agent.parent_id == agent.id))}


def orders(session: Session, agent_id: int, *, before: int | None = None, status: str | None = None,
           limit: int = ORDERS_PAGE) -> list:
    """The agent's own orders, newest first, a page at a time (`before`: an order id)."""
    query = (sa.select(Order.id, Order.order_no, Order.status, Order.quantity, Order.amount_cents, Order.currency,
                       Order.created_at, Order.delivered_at, Product.name.label("product"))
             .join(Product, Product.id == Order.product_id)
             .where(Order.agent_id == agent_id).order_by(Order.id.desc()).limit(limit))
    if before is not None:
        query = query.where(Order.id < before)
    if status:
        query = query.where(Order.status == status)
    return session.execute(query).all()


def sold_through(session: Session, agent_id: int, *, limit: int = ORDERS_PAGE) -> list:
    """Buyers' orders sold through the agent (its sub-station, its invite links), newest first:
    what it earns from, never the buyers' keys or addresses."""
    return session.execute(
        sa.select(Order.order_no, Order.status, Order.quantity, Order.amount_cents, Order.created_at,
                  Product.name.label("product"), Commission.amount_cents.label("earned"))
        .join(Product, Product.id == Order.product_id)
        .outerjoin(Commission, sa.and_(Commission.order_id == Order.id, Commission.agent_id == agent_id))
        .where(Order.seller_agent_id == agent_id).order_by(Order.id.desc()).limit(limit)).all()


def team(session: Session, agent: Agent, *, days: int = TEAM_DAYS, now: dt.datetime | None = None) -> list[dict]:
    """The agent's direct sub-agents: level, state, their delivered sales of the last `days`
    days, and what the agent has earned through each (commission on their and their own
    sub-agents' orders)."""
    children = session.execute(
        sa.select(Agent.id, Agent.username, Agent.is_active, Agent.created_at, AgentLevel.name.label("level"))
        .join(AgentLevel, AgentLevel.id == Agent.level_id)
        .where(Agent.parent_id == agent.id).order_by(Agent.id)).all()
    if not children:
        return []
    ids = [c.id for c in children]
    sales = _sales(session, ids, (now or utcnow()) - dt.timedelta(days=days))
    earned = dict(session.execute(
        sa.select(Commission.below_agent_id, sa.func.coalesce(sa.func.sum(Commission.amount_cents), 0))
        .where(Commission.agent_id == agent.id, Commission.below_agent_id.in_(ids),
               Commission.status != "reversed").group_by(Commission.below_agent_id)).all())
    return [{"id": c.id, "username": c.username, "level": c.level, "active": c.is_active,
             "created_at": c.created_at, "orders": sales.get(c.id, (0, 0))[0], "sales": sales.get(c.id, (0, 0))[1],
             "earned": int(earned.get(c.id, 0))} for c in children]


def commissions(session: Session, agent_id: int, *, limit: int = 100) -> list:
    return session.execute(sa.select(Commission, Order.order_no).join(Order, Order.id == Commission.order_id)
                           .where(Commission.agent_id == agent_id)
                           .order_by(Commission.id.desc()).limit(limit)).all()

"""Agents' levels moved by staff or by performance rules.

A rule says: delivered sales of the last `days` days of at least `min_sales_cents` earn
`level`. The `adjust_agent_levels` job gives each active agent whose level is not pinned
the best level (the largest discount) among the rules it reaches; an agent no rule
reaches keeps its level. Staff setting a level by hand pins it (rules leave it alone
until unpinned). Every change is a LevelChange row with its reason, and audited.
"""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..audit.services import record
from ..database import utcnow
from ..errors import InvalidRequest, NotFound
from ..money import format_cents, parse_plain_money
from ..orders.models import Order
from ..validation import has_control_characters
from .models import Agent, AgentLevel, LevelChange, LevelRule
from .services import get_level

MAX_DAYS = 366
_a, _o = Agent.__table__, Order.__table__


def _days(value) -> int:
    text = str(value).strip()
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_DAYS):
        raise InvalidRequest("days: a whole number from 1 to %(most)s", most=MAX_DAYS)
    return int(text)


def set_rule(session: Session, *, level, min_sales, days=30, actor: str,
             source_ip: str | None = None) -> tuple[LevelRule, bool]:
    """Create or change the rule of a level: (rule, created). Audited."""
    the_level = get_level(session, level)
    cents = parse_plain_money(min_sales, field="min_sales", allow_zero=True)
    days = _days(days)
    rule = session.scalar(sa.select(LevelRule).where(LevelRule.level_id == the_level.id).with_for_update())
    created = rule is None
    if created:
        rule = LevelRule(level_id=the_level.id, min_sales_cents=cents, days=days)
        session.add(rule)
    else:
        rule.min_sales_cents, rule.days = cents, days
    session.flush()
    record(session, "agent.rule.set", actor=actor, target=f"agent_level:{the_level.id}", source_ip=source_ip,
           details={"level": the_level.name, "min_sales": format_cents(cents), "days": days})
    return rule, created


def remove_rule(session: Session, *, level, actor: str, source_ip: str | None = None) -> None:
    the_level = get_level(session, level)
    rule = session.scalar(sa.select(LevelRule).where(LevelRule.level_id == the_level.id))
    if rule is None:
        raise NotFound("level %(name)s has no rule", name=the_level.name)
    session.delete(rule)
    session.flush()
    record(session, "agent.rule.remove", actor=actor, target=f"agent_level:{the_level.id}", source_ip=source_ip,
           details={"level": the_level.name})


def list_rules(session: Session) -> list[tuple[LevelRule, AgentLevel]]:
    """Best level first."""
    return session.execute(sa.select(LevelRule, AgentLevel).join(AgentLevel, AgentLevel.id == LevelRule.level_id)
                           .order_by(AgentLevel.discount_bp.desc(), LevelRule.min_sales_cents.desc())).all()


def _reason(text) -> str:
    reason = str(text or "").strip()
    if not reason or len(reason) > 200 or has_control_characters(reason):
        raise InvalidRequest("reason: 1 to 200 characters on one line are required")
    return reason


def _change(session: Session, agent: Agent, level: AgentLevel, *, reason: str, actor: str, pinned: bool,
            source_ip: str | None = None, only_if_unpinned: bool = False) -> bool:
    """Move the agent to `level` if it still is where it was read (a conditional UPDATE: staff
    and the job never both change one agent from the same level)."""
    old = agent.level_id
    if old == level.id and agent.level_pinned == pinned:
        return False
    conditions = [_a.c.id == agent.id, _a.c.level_id == old]
    if only_if_unpinned:
        conditions.append(_a.c.level_pinned.is_(False))
    done = session.execute(_a.update().where(*conditions).values(level_id=level.id, level_pinned=pinned,
                                                                 updated_at=utcnow())).rowcount
    session.refresh(agent)
    if not done:
        return False
    if old != level.id:
        session.add(LevelChange(agent_id=agent.id, from_level_id=old, to_level_id=level.id, reason=reason[:200],
                                actor=actor[:80]))
    record(session, "agent.level.change", actor=actor, target=f"agent:{agent.id}", source_ip=source_ip,
           details={"username": agent.username, "from_level_id": old, "level": level.name, "pinned": pinned,
                    "reason": reason[:200]})
    return True


def assign_level(session: Session, agent: Agent, level, *, reason, actor: str,
                 source_ip: str | None = None) -> bool:
    """Staff set the level by hand: it stays (pinned) whatever the rules say."""
    if agent.is_member:
        raise InvalidRequest("%(username)s is a plain member: promote it to an agent of a level",
                             username=agent.username)
    return _change(session, agent, get_level(session, level), reason=_reason(reason), actor=actor, pinned=True,
                   source_ip=source_ip)


def unpin_level(session: Session, agent: Agent, *, actor: str, source_ip: str | None = None) -> bool:
    """The rules may move this agent again (from the next run of the job)."""
    if not agent.level_pinned:
        return False
    return _change(session, agent, session.get(AgentLevel, agent.level_id), reason="unpinned", actor=actor,
                   pinned=False, source_ip=source_ip)


def sales_since(session: Session, since: dt.datetime) -> dict[int, int]:
    """{agent id: cents} of the orders delivered since `since` that the agents placed (the API)
    or that were sold through them (their sub-stations, their invite links)."""
    found: dict[int, int] = {}
    for column in (_o.c.agent_id, _o.c.seller_agent_id):
        for agent_id, total in session.execute(sa.select(column, sa.func.sum(_o.c.amount_cents))
                                               .where(column.is_not(None), _o.c.status == "delivered",
                                                      _o.c.delivered_at >= since).group_by(column)):
            found[agent_id] = found.get(agent_id, 0) + int(total)
    return found


def adjust_levels(session: Session, now: dt.datetime | None = None) -> dict:
    """The job: every unpinned active agent to the best level its sales reach."""
    now = now or utcnow()
    rules = list_rules(session)
    if not rules:
        return {"checked": 0, "changed": 0}
    sales = {days: sales_since(session, now - dt.timedelta(days=days)) for days in {r.days for r, _l in rules}}
    agents = session.scalars(sa.select(Agent).where(Agent.is_active.is_(True), Agent.level_pinned.is_(False),
                                                    Agent.kind == "agent")
                             .order_by(Agent.id)).all()
    changed = 0
    for agent in agents:
        for rule, level in rules:   # best level first
            made = sales[rule.days].get(agent.id, 0)
            if made >= rule.min_sales_cents:
                if level.id != agent.level_id and _change(
                        session, agent, level, actor="system", pinned=False, only_if_unpinned=True,
                        reason=f"delivered sales of the last {rule.days} days {format_cents(made)} "
                               f">= {format_cents(rule.min_sales_cents)}"):
                    changed += 1
                break
    session.commit()
    return {"checked": len(agents), "changed": changed}


def level_history(session: Session, agent: Agent, limit: int = 50) -> list[dict]:
    names = dict(session.execute(sa.select(AgentLevel.id, AgentLevel.name)).all())
    rows = session.scalars(sa.select(LevelChange).where(LevelChange.agent_id == agent.id)
                           .order_by(LevelChange.id.desc()).limit(limit)).all()
    return [{"at": r.created_at.isoformat(timespec="seconds") + "Z", "from": names.get(r.from_level_id),
             "to": names.get(r.to_level_id), "reason": r.reason, "by": r.actor} for r in rows]

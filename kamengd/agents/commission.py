"""Commission: what the agents above a sale earn on it, booked once per order and agent.

The rule, in one place (`margins`): start from the price the order was paid at
per unit (an agent's own order: its cost). Walk up the agent's ancestors; each
earns that price less its own cost (`services.level_cost`: its level's own price
for the product, or the product's price less its level's discount), and its cost becomes the price the next one up is measured from. An
ancestor whose cost is not below the price earns nothing and leaves the price
as it was, so the shop always keeps the lowest cost in the chain and never
pays more commission than the margin there is.

Life of a commission: *pending* from the delivery's transaction (the ledger
moves it from the shop's commission account into the agent's pending
account), *available* once the hold has passed (the `release_commissions`
job), *reversed* if the order is refunded — from pending before the hold,
from available after it; what the available balance no longer covers then
becomes a recorded debt, repaid first from the agent's next money. Each step
is a conditional UPDATE of the commission's row (only one of the hold job and
a refund can move it) plus a ledger movement whose cause names the row.
"""
from __future__ import annotations

import dataclasses
import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..audit.services import record
from ..database import insert_ignoring, utcnow
from ..money import parse_plain_money
from ..orders.models import Order
from ..ledger import services as ledger
from ..ledger.models import DEBT, LedgerAccount
from ..settings.services import get_setting
from .models import Agent, AgentLevel, Commission, LevelPrice, NewBuyerReward
from .services import DEEPEST, level_cost

_a, _l, _c, _acc = Agent.__table__, AgentLevel.__table__, Commission.__table__, LedgerAccount.__table__
_lp = LevelPrice.__table__
# An agent, its parent, and what its level pays for the product (its own price, or NULL: the discount).
_UP = (sa.select(_a.c.id, _a.c.parent_id, _l.c.discount_bp,
                 sa.select(_lp.c.price_cents).where(_lp.c.level_id == _a.c.level_id,
                                                    _lp.c.product_id == sa.bindparam("product_id"))
                 .scalar_subquery().label("own_price"))
       .select_from(_a.join(_l, _l.c.id == _a.c.level_id)).where(_a.c.id == sa.bindparam("agent_id")))
_ACCOUNTS = sa.select(_acc.c.agent_id, _acc.c.kind, _acc.c.id, _acc.c.currency).where(
    _acc.c.agent_id.in_(sa.bindparam("agent_ids", expanding=True)))


def margins(session: Session, *, agent_id: int, paid_unit_cents: int, price_cents: int, quantity: int,
            product_id: int, sold_through: bool = False) -> list[tuple[int, int | None, int]]:
    """[(agent id, the agent below whose price it earned from, cents)] of a sale at
    `paid_unit_cents` a unit by `agent_id` (its own order: its ancestors earn), or, with
    `sold_through`, a buyer's order sold through it (it earns first, from the buyer's
    price, then its ancestors), nearest first."""
    conn = session.connection()
    earned = []
    if sold_through:
        price, below, parent = paid_unit_cents, None, agent_id
    else:
        price, below = paid_unit_cents, agent_id
        parent = conn.execute(_UP, {"agent_id": agent_id, "product_id": product_id}).first().parent_id
    for _step in range(DEEPEST + 1):   # a tree is never deeper; a loop in it never runs on
        if parent is None:
            break
        row = conn.execute(_UP, {"agent_id": parent, "product_id": product_id}).first()
        cost = level_cost(price_cents, row.discount_bp, row.own_price)
        if cost < price:
            earned.append((row.id, below, (price - cost) * quantity))
            price, below = cost, row.id
        parent = row.parent_id
    return earned


def book_commission(session: Session, *, order_id: int, order_no: str, agent_id: int, paid_unit_cents: int,
                    price_cents: int, quantity: int, currency: str, product_id: int, now: dt.datetime | None = None,
                    savepoint: bool = True, shop_account_id: int | None = None,
                    sold_through: bool = False, new_buyer: NewBuyer | None = None) -> list[tuple[int, int | None, int]]:
    """Book the order's commissions as pending, in the delivery's transaction. Once: a
    second call for the same order books nothing (the ledger's cause and the rows' key).
    `new_buyer`: the seller's new-buyer reward, claimed here and booked with its margin (held
    and reversed alike)."""
    now = now or utcnow()
    earned = margins(session, agent_id=agent_id, paid_unit_cents=paid_unit_cents, price_cents=price_cents,
                     quantity=quantity, product_id=product_id, sold_through=sold_through)
    pending = _accounts(session, [a for a, _b, _m in earned] + ([agent_id] if new_buyer else []))
    if any(pending[a]["pending"].currency != currency for a in pending):
        earned = earned or [(agent_id, None, 0)]   # (said below, reward or not)
    elif new_buyer is not None and _claim(session, new_buyer, agent_id, order_id, now):
        own = next((i for i, (a, _b, _m) in enumerate(earned) if a == agent_id), None)
        if own is None:
            earned.insert(0, (agent_id, None, new_buyer.cents))
        else:
            earned[own] = (agent_id, earned[own][1], earned[own][2] + new_buyer.cents)
    if not earned:
        return []
    if any(pending[a]["pending"].currency != currency for a, _b, _m in earned):
        # The agents' money is kept in another currency: nothing to book it against. The
        # order is delivered all the same (its delivery must never fail on this); staff see why.
        record(session, "commission.skipped", actor="system", target=f"order:{order_no}",
               details={"currency": currency, "reason": "the agents' accounts are in another currency"})
        return []
    commission = ledger.AccountRef(shop_account_id, currency, "shop") if shop_account_id else \
        ledger.shop_ref(session, "shop:commission", currency)
    legs = [(pending[a]["pending"], cents) for a, _b, cents in earned]
    legs.append((commission, -sum(cents for _a, _b, cents in earned)))
    booking = ledger.post(session, cause=f"order:{order_no}:commission", kind="commission", legs=legs,
                          actor="system", memo=f"commission on order {order_no}", savepoint=savepoint)
    if not booking.booked:
        return []
    release_at = now + dt.timedelta(days=get_setting(session, "agents.commission_hold_days"))
    session.connection().execute(_c.insert(), [
        {"order_id": order_id, "agent_id": a, "below_agent_id": b, "amount_cents": cents, "currency": currency,
         "status": "pending", "booked_at": now, "release_at": release_at, "debt_cents": 0}
        for a, b, cents in earned])
    return earned


def book_for_order(session: Session, order, product_price_cents: int, now: dt.datetime | None = None) -> None:
    """An agent's order, or a buyer's sold through an agent, just delivered (by the gateway's
    payment, staff or a waiting sweep)."""
    agent_id = order.agent_id or order.seller_agent_id
    if agent_id:
        book_commission(session, order_id=order.id, order_no=order.order_no, agent_id=agent_id,
                        paid_unit_cents=order.unit_price_cents, price_cents=product_price_cents,
                        quantity=order.quantity, currency=order.currency, product_id=order.product_id, now=now,
                        sold_through=not order.agent_id,
                        new_buyer=None if order.agent_id else new_buyer_reward(session, order))


# A buyer has bought here before when an earlier order of theirs got this far.
_BOUGHT = ("paid", "delivered", "refunded", "held")


@dataclasses.dataclass(frozen=True)
class NewBuyer:
    email_folded: str
    cents: int


def new_buyer_reward(session: Session, order) -> NewBuyer | None:
    """The reward (agents.new_buyer_reward, never more than the order's amount) the agent that
    sold `order` is due for bringing a new buyer: the buyer's earliest order only. None: none.
    book_commission claims it, once per e-mail (new_buyer_rewards: two first orders delivered
    at once reward once)."""
    reward = parse_plain_money(get_setting(session, "agents.new_buyer_reward"), field="amount", allow_zero=True)
    if not reward or not order.seller_agent_id or not order.email_folded or not order.amount_cents:
        return None
    _o = Order.__table__
    before = session.execute(sa.select(sa.literal(1)).where(
        _o.c.email_folded == order.email_folded, _o.c.id < order.id, _o.c.status.in_(_BOUGHT)).limit(1)).first()
    return None if before is not None else NewBuyer(order.email_folded, min(reward, order.amount_cents))


def _claim(session: Session, new_buyer: NewBuyer, agent_id: int, order_id: int, now: dt.datetime) -> bool:
    return session.connection().execute(insert_ignoring(NewBuyerReward.__table__), {
        "email_folded": new_buyer.email_folded, "agent_id": agent_id, "order_id": order_id,
        "amount_cents": new_buyer.cents, "created_at": now}).rowcount == 1


def _accounts(session: Session, agent_ids: list[int]) -> dict[int, dict[str, ledger.AccountRef]]:
    found: dict[int, dict[str, ledger.AccountRef]] = {}
    for row in session.connection().execute(_ACCOUNTS, {"agent_ids": sorted(set(agent_ids))}):
        found.setdefault(row.agent_id, {})[row.kind] = ledger.AccountRef(row.id, row.currency, row.kind)
    return found


def _lock_agent_accounts(session: Session, agent_id: int) -> None:
    """Lock all of an agent's accounts, lowest id first. A commission's release and its
    reversal each lock the commission's row and then these, in this order: neither can
    hold an account the other waits for while it waits for a row (MariaDB: no deadlock)."""
    session.execute(sa.select(_acc.c.id).where(_acc.c.agent_id == agent_id).order_by(_acc.c.id).with_for_update())


def release_commissions(session: Session, now: dt.datetime | None = None, batch: int = 200) -> dict:
    """Pending commissions past their hold become available (a job: one commit per
    commission, so it never holds an agent's accounts while it waits for the next row,
    which a refund may hold while it waits for those accounts)."""
    now = now or utcnow()
    released = 0
    while True:
        due = session.execute(sa.select(_c.c.id, _c.c.agent_id, _c.c.amount_cents)
                              .where(_c.c.status == "pending", _c.c.release_at <= now)
                              .order_by(_c.c.id).limit(batch)).all()
        session.commit()
        for row in due:
            claimed = session.execute(_c.update().where(_c.c.id == row.id, _c.c.status == "pending")
                                      .values(status="available", released_at=now)).rowcount
            if not claimed:   # reversed meanwhile by a refund
                session.rollback()
                continue
            _lock_agent_accounts(session, row.agent_id)
            pending = _accounts(session, [row.agent_id])[row.agent_id]["pending"]
            ledger.post(session, cause=f"commission:{row.id}:release", kind="commission_release",
                        legs=[(pending, -row.amount_cents), *ledger.agent_credit_legs(session, row.agent_id, row.amount_cents)],
                        actor="system", memo=f"commission {row.id} released after its hold")
            session.commit()
            released += 1
        if len(due) < batch:
            return {"released": released}


def reverse_commissions(session: Session, order_id: int, order_no: str, *, actor: str,
                        now: dt.datetime | None = None) -> list[dict]:
    """The order was refunded: take back what its agents earned on it. Pending: from the
    pending balance. Already available: from the available balance, and what that no longer
    holds as a debt. [{agent_id, amount, debt}] of what was reversed now."""
    now = now or utcnow()
    ids = session.execute(sa.select(_c.c.id).where(_c.c.order_id == order_id)).scalars().all()
    reversed_ = []
    # One row at a time, lowest id first, as the hold job takes them: a lock on several at
    # once would follow the index, and a refund and the job could each wait for the other.
    for commission_id in sorted(ids):
        row = session.execute(sa.select(_c.c.id, _c.c.agent_id, _c.c.amount_cents, _c.c.currency, _c.c.status)
                              .where(_c.c.id == commission_id).with_for_update()).first()
        status = row.status   # as locked: the hold job may have moved it while this waited
        if status not in ("pending", "available"):
            continue
        _lock_agent_accounts(session, row.agent_id)
        accounts = _accounts(session, [row.agent_id])[row.agent_id]
        amount, debt = row.amount_cents, 0
        if status == "pending":
            legs = [(accounts["pending"], -amount)]
        else:
            have = session.execute(sa.select(_acc.c.balance_cents).where(_acc.c.id == accounts["available"].id)
                                   .with_for_update()).scalar_one()
            taken = min(have, amount)
            debt = amount - taken
            legs = [(accounts["available"], -taken)] if taken else []
            if debt:
                legs.append((accounts[DEBT], -debt))
        done = session.execute(_c.update().where(_c.c.id == row.id, _c.c.status == status)
                               .values(status="reversed", reversed_at=now, debt_cents=debt)).rowcount
        if not done:
            continue
        commission = ledger.shop_ref(session, "shop:commission", row.currency)
        ledger.post(session, cause=f"commission:{row.id}:reversal", kind="commission_reversal",
                    legs=[*legs, (commission, amount)], actor=actor,
                    memo=f"order {order_no} refunded" + (" after the hold" if status == "available" else ""))
        reversed_.append({"agent_id": row.agent_id, "amount": amount, "debt": debt, "was": status})
    return reversed_

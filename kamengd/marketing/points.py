"""Points (积分): what a member (or an agent) earns by buying and spends through a points channel.

Points are kept in the ledger like money, in their own pseudo-currency (POINTS_CURRENCY: the
ledger never mixes it with money): one account "agent:<id>:points" per holder, made on first
use, and the shop's counter-account "shop:points". Every movement has a cause naming its
order (or the staff's reference), so it is booked once however often a delivery, a refund or
a second server tries:

- `order:<no>:points_earned`: on delivery of an order whose member is known (orders.member_id:
  signed in when placing it, or who paid it from a balance), points.earn_rate per 1.00 paid;
  never for an order paid with points.
- `order:<no>:points_paid`: an order paid through a points channel (kamengd.payments.points),
  points.value per 1.00 of its amount, rounded up.
- `order:<no>:points_returned` / `order:<no>:points_reversed`: its refund gives back the points
  it was paid with, and takes back those it earned; what the balance no longer holds (spent
  already) becomes a points debt ("agent:<id>:points_debt", zero or below) that the holder's
  next points repay first, so no order of refunds leaves it points it did not keep.
- `order:<no>:points_discount`: points a member spent on an order at checkout (积分抵扣, up to
  points.discount_share of its amount, points.value per 1.00), in the order's transaction; the
  order holds them (orders.points_held) and they go back exactly once: `…_back` when it expires
  unpaid, `…_refund` when it is refunded; `…_again` takes them again when an expired order is
  paid after all (or it waits for a person when the member no longer has them).
- `points:<reference>`: staff's grant or deduction, audited.
- `points_bonus:<credit's cause>`: the top-up bonus (充值满额赠送积分, points.topup_bonus) of a
  credit of the holder's balance, once per credit.

The caller commits.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import re

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..agents.models import Agent
from ..agents.services import get_agent
from ..audit.services import record
from ..database import utcnow
from ..errors import InsufficientBalance, InvalidRequest
from ..ledger import services as ledger
from ..ledger.models import (POINTS_CURRENCY, POINTS_DEBT_KIND, POINTS_KIND, LedgerAccount, LedgerEntry,
                             LedgerTransaction)
from ..money import format_cents, parse_plain_money
from ..orders.models import Order
from ..settings.services import get_setting
from ..validation import has_control_characters

_acc = LedgerAccount.__table__
_entries = LedgerEntry.__table__
_txns = LedgerTransaction.__table__
_o = Order.__table__
MAX_POINTS = 10**12
_REFERENCE_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def account_name(agent_id: int, kind: str = POINTS_KIND) -> str:
    return f"agent:{agent_id}:{kind}"


def points_ref(session: Session, agent_id: int, kind: str = POINTS_KIND) -> ledger.AccountRef:
    """The holder's points account (or its points debt), made on first use (two first uses at
    once: one makes it, the other finds it)."""
    name = account_name(agent_id, kind)
    found = session.execute(sa.select(_acc.c.id).where(_acc.c.name == name)).scalar()
    if found is None:
        try:
            with session.begin_nested():
                session.execute(_acc.insert().values(name=name, agent_id=agent_id, kind=kind,
                                                     currency=POINTS_CURRENCY, balance_cents=0,
                                                     may_go_negative=kind == POINTS_DEBT_KIND, created_at=utcnow()))
        except IntegrityError:
            pass
        found = session.execute(sa.select(_acc.c.id).where(_acc.c.name == name)).scalar_one()
    return ledger.AccountRef(found, POINTS_CURRENCY, kind)


def _credit_legs(session: Session, agent_id: int, points: int) -> list[tuple[ledger.AccountRef, int]]:
    """Legs that give the holder `points`: its points debt is repaid first, the rest is its.
    The debt's row is locked first (MariaDB: two repayments never both see the same debt)."""
    account = points_ref(session, agent_id)
    debt = session.execute(sa.select(_acc.c.id, _acc.c.balance_cents).where(
        _acc.c.name == account_name(agent_id, POINTS_DEBT_KIND)).with_for_update()).first()
    repay = min(-debt.balance_cents, points) if debt is not None else 0
    legs = [(ledger.AccountRef(debt.id, POINTS_CURRENCY, POINTS_DEBT_KIND), repay)] if repay else []
    if points - repay:
        legs.append((account, points - repay))
    return legs


def _shop(session: Session) -> ledger.AccountRef:
    return ledger.shop_ref(session, "shop:points", POINTS_CURRENCY)


def balance(session: Session, agent_id: int) -> int:
    """The holder's points (0 before it has any)."""
    return session.execute(sa.select(_acc.c.balance_cents).where(_acc.c.name == account_name(agent_id))
                           ).scalar() or 0


def owed(session: Session, agent_id: int) -> int:
    """Points a refund could not take back from the holder, still to be repaid (0: none)."""
    return -(session.execute(sa.select(_acc.c.balance_cents).where(
        _acc.c.name == account_name(agent_id, POINTS_DEBT_KIND))).scalar() or 0)


def _locked_balance(session: Session, account: ledger.AccountRef) -> int:
    return session.execute(sa.select(_acc.c.balance_cents).where(_acc.c.id == account.id).with_for_update()
                           ).scalar_one()


def earned_for(amount_cents: int, rate: int) -> int:
    """Points for paying `amount_cents` at `rate` points per 1.00 (whole points, rounded down)."""
    return amount_cents * rate // 100


def cost_of(amount_cents: int, value: int) -> int:
    """Points that pay `amount_cents` at `value` points per 1.00 (rounded up: never a cent free)."""
    return -(-amount_cents * value // 100)


def paid_cause(order_no: str) -> str:
    return f"order:{order_no}:points_paid"


@dataclasses.dataclass(frozen=True)
class DiscountOffer:
    """What a member's points may take off an order, read before the order's transaction."""
    have: int    # the member's points
    value: int   # points worth 1.00 (points.value)
    share: int   # the most of an order's amount points may pay, in percent (points.discount_share)


def discount_offer(session: Session, member_id: int | None) -> DiscountOffer:
    """The member's points and the shop's terms for taking them off an order; InvalidRequest
    when no member is signed in or the shop takes no points off orders."""
    if member_id is None:
        raise InvalidRequest("points: sign in to the member portal to use your points")
    share = get_setting(session, "points.discount_share")
    if share <= 0:
        raise InvalidRequest("points: this shop does not take points off orders")
    return DiscountOffer(balance(session, member_id), get_setting(session, "points.value"), share)


def discount_for(amount_cents: int, offer: DiscountOffer) -> tuple[int, int]:
    """(the cents off, the points they cost) for an order of `amount_cents`: as much as the
    member's points cover (whole cents, points.value per 1.00, the points rounded up), at most
    the shop's share of the amount, and at least a cent left to pay at the gateway."""
    cents = min(amount_cents * offer.share // 100, amount_cents - 1, offer.have * 100 // offer.value)
    if cents <= 0:
        return 0, 0
    return cents, cost_of(cents, offer.value)


def discount_cause(order_no: str, step: str = "") -> str:
    return f"order:{order_no}:points_discount" + (f"_{step}" if step else "")


def spend_on_order(session: Session, *, order_no: str, member_id: int, points: int, actor: str) -> None:
    """Take the points an order was priced with from its member, in the order's transaction.
    Raises InsufficientBalance when the member has fewer now (spent meanwhile): the caller
    rolls back and the buyer places the order again."""
    account = points_ref(session, member_id)
    have = _locked_balance(session, account)
    if have < points:
        raise InsufficientBalance("points: you have %(have)s points now, fewer than the %(points)s this order "
                                  "was priced with: place it again", have=have, points=points)
    ledger.post(session, cause=discount_cause(order_no), kind="points_discount",
                legs=[(account, -points), (_shop(session), points)], actor=actor, memo=f"order {order_no}")


def _give_back(session: Session, order_id: int, order_no: str, points: int, step: str, *, actor: str,
               status: tuple[str, ...] | None = None) -> int:
    """The points an order holds go back to whoever spent them (to a points debt first), once:
    its points_held is cleared by a conditional UPDATE first (two sweeps, two servers, a
    refund beside an expiry: one gives them back). The points given back now."""
    where = [_o.c.id == order_id, _o.c.points_held.is_(True)]
    if status is not None:
        where.append(_o.c.status.in_(status))
    if not session.execute(_o.update().where(*where).values(points_held=False)).rowcount:
        return 0
    spent = _booked_to_holder(session, discount_cause(order_no))
    if spent is None:
        return 0
    holder = spent[0]
    booking = ledger.post(session, cause=discount_cause(order_no, step), kind="points_discount_back",
                          legs=[*_credit_legs(session, holder, points), (_shop(session), -points)], actor=actor,
                          memo=f"order {order_no}")
    return points if booking.booked else 0


def give_back_expired(session: Session, order_ids: list[int]) -> int:
    """The points of orders that expired unpaid go back, each order's once. The orders given back."""
    rows = session.execute(sa.select(_o.c.id, _o.c.order_no, _o.c.points_used).where(
        _o.c.id.in_(order_ids), _o.c.status == "expired", _o.c.points_held.is_(True))).all()
    return sum(_give_back(session, r.id, r.order_no, r.points_used, "back", actor="system", status=("expired",)) > 0
               for r in rows)


def take_again(session: Session, order) -> bool:
    """An expired order whose points went back is paid after all: they are taken again from the
    member who spent them. False, nothing taken, when it has fewer now."""
    if not order.points_used or order.points_held:
        return True
    spent = _booked_to_holder(session, discount_cause(order.order_no))
    if spent is None:
        return True
    account = points_ref(session, spent[0])
    if _locked_balance(session, account) < order.points_used:
        return False
    if not session.execute(_o.update().where(_o.c.id == order.id, _o.c.points_held.is_(False))
                           .values(points_held=True)).rowcount:
        return True
    ledger.post(session, cause=discount_cause(order.order_no, "again"), kind="points_discount",
                legs=[(account, -order.points_used), (_shop(session), order.points_used)], actor="system",
                memo=f"order {order.order_no}")
    return True


def paid_with_points(session: Session, order_no: str) -> bool:
    """Whether the order was paid with points (it earns neither points nor commission)."""
    return ledger.booked_before(session, paid_cause(order_no)) is not None


def earn(session: Session, *, order_no: str, member_id: int, amount_cents: int, currency: str,
         savepoint: bool = True) -> int:
    """Book the points an order's member earns on its delivery (in the delivery's transaction):
    once per order; none for an order paid with points, a free one, or one in another currency
    than the shop's. The points booked now."""
    if currency != ledger.DEFAULT_CURRENCY or amount_cents <= 0:
        return 0
    rate = get_setting(session, "points.earn_rate")
    points = earned_for(amount_cents, rate)
    if points <= 0 or paid_with_points(session, order_no):
        return 0
    booking = ledger.post(session, cause=f"order:{order_no}:points_earned", kind="points_earned",
                          legs=[*_credit_legs(session, member_id, points), (_shop(session), -points)],
                          actor="system", memo=f"order {order_no}", savepoint=savepoint)
    return points if booking.booked else 0


def pay(session: Session, *, order_no: str, member_id: int, amount_cents: int, actor: str) -> int:
    """Take the points that pay an order of `amount_cents` from the member: the points taken.
    Raises InsufficientBalance (nothing taken) when it has fewer. Once per order: a second
    call finds the first payment and takes nothing more."""
    cost = cost_of(amount_cents, get_setting(session, "points.value"))
    if cost <= 0:
        return 0
    account = points_ref(session, member_id)
    have = _locked_balance(session, account)   # (MariaDB: one payment at a time reads it)
    cause = paid_cause(order_no)
    if have < cost and ledger.booked_before(session, cause) is None:
        raise InsufficientBalance("this order costs %(cost)s points; you have %(have)s", cost=cost, have=have)
    ledger.post(session, cause=cause, kind="points_paid", legs=[(account, -cost), (_shop(session), cost)],
                actor=actor, memo=f"order {order_no}")
    return cost


@dataclasses.dataclass
class PointsRefund:
    returned: int = 0   # points the order was paid with or took off its amount, given back (a debt first)
    reversed: int = 0   # points it earned, taken back from the balance
    owed: int = 0       # points it earned that were spent already: a points debt now

    def as_details(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v}


def _booked_to_holder(session: Session, cause: str) -> tuple[ledger.AccountRef, int] | None:
    """(the holder, the points the booking for `cause` moved to or from it, debt included)."""
    booked = ledger.booked_before(session, cause)
    if booked is None:
        return None
    rows = session.execute(sa.select(_acc.c.id, _acc.c.kind, _acc.c.agent_id)
                           .where(_acc.c.id.in_(list(booked.amounts)))).all()
    holder = {r.agent_id for r in rows if r.kind in (POINTS_KIND, POINTS_DEBT_KIND)}
    if len(holder) != 1:
        return None
    return holder.pop(), sum(booked.amounts[r.id] for r in rows if r.kind in (POINTS_KIND, POINTS_DEBT_KIND))


def on_refund(session: Session, order_no: str, *, actor: str) -> PointsRefund:
    """The order was refunded (in the refund's transaction): the points it was paid with go
    back, those it earned are taken back (what was spent of them becomes a points debt). Once
    each."""
    done = PointsRefund()
    held = session.execute(sa.select(_o.c.id, _o.c.points_used).where(_o.c.order_no == order_no)).first()
    if held is not None and held.points_used:   # the points taken off it at checkout
        done.returned += _give_back(session, held.id, order_no, held.points_used, "refund", actor=actor)
    paid = _booked_to_holder(session, paid_cause(order_no))
    cause = f"order:{order_no}:points_returned"
    if paid is not None and ledger.booked_before(session, cause) is None:
        holder, moved = paid
        booking = ledger.post(session, cause=cause, kind="points_returned",
                              legs=[*_credit_legs(session, holder, -moved), (_shop(session), moved)], actor=actor,
                              memo=f"refund of order {order_no}")
        done.returned += -moved if booking.booked else 0
    earned = _booked_to_holder(session, f"order:{order_no}:points_earned")
    cause = f"order:{order_no}:points_reversed"
    if earned is not None and ledger.booked_before(session, cause) is None:
        holder, points = earned
        account = points_ref(session, holder)
        taken = min(points, _locked_balance(session, account))
        legs = [(account, -taken)] if taken else []
        if points - taken:
            legs.append((points_ref(session, holder, POINTS_DEBT_KIND), -(points - taken)))
        booking = ledger.post(session, cause=cause, kind="points_reversed", legs=[*legs, (_shop(session), points)],
                              actor=actor, memo=f"refund of order {order_no}")
        if booking.booked:
            done.reversed, done.owed = taken, points - taken
    return done


def parse_points(value, field: str = "points") -> int:
    """A signed whole number of points (not zero)."""
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    if not re.fullmatch(r"[+-]?\d{1,13}", text) or int(text) == 0 or abs(int(text)) > MAX_POINTS:
        raise InvalidRequest("%(field)s: a whole number of points other than 0, e.g. 500 or -200", field=field)
    return int(text)


def adjust(session: Session, *, username, points, reason, actor: str, reference: str | None = None,
           source_ip: str | None = None) -> tuple[Agent, int, bool]:
    """Staff grant (points > 0) or take (points < 0) a holder's points, audited: (the holder,
    its points after, whether it was booked now). A `reference` books once: the same
    reference again books nothing (a retried request); with other points it is refused."""
    holder = get_agent(session, username)
    points = parse_points(points)
    reason = str(reason or "").strip()
    if not reason or len(reason) > 200 or has_control_characters(reason):
        raise InvalidRequest("reason: 1 to 200 characters on one line are required")
    if reference is None or reference == "":
        reference = f"{utcnow():%Y%m%d%H%M%S%f}-{holder.id}"
    elif not isinstance(reference, str) or not _REFERENCE_RE.fullmatch(reference):
        raise InvalidRequest("reference: 1 to 64 letters, digits or _ . : -")
    account = points_ref(session, holder.id)
    if points < 0 and _locked_balance(session, account) < -points and \
            ledger.booked_before(session, f"points:{reference}") is None:
        raise InsufficientBalance("%(username)s has %(have)s points, fewer than %(points)s",
                                  username=holder.username, have=balance(session, holder.id), points=-points)
    legs = _credit_legs(session, holder.id, points) if points > 0 else [(account, points)]
    booking = ledger.post(session, cause=f"points:{reference}", kind="points_adjust",
                          legs=[*legs, (_shop(session), -points)], actor=actor, memo=reason)
    if booking.booked:
        record(session, "points.adjust", actor=actor, target=f"agent:{holder.username}", source_ip=source_ip,
               details={"points": points, "reason": reason, "reference": reference})
    return holder, balance(session, holder.id), booking.booked


def bonus_for(tiers_text: str, cents: int) -> int:
    """The points of the highest tier a top-up of `cents` reaches ('100.00=50, 500.00=300': kept
    in order of amount by the setting's check)."""
    tiers = []
    for item in filter(None, (part.strip() for part in (tiers_text or "").split(","))):
        least, points = item.split("=")
        tiers.append((parse_plain_money(least.strip(), field="amount"), int(points)))
    reached = [points for least, points in sorted(tiers) if cents >= least]
    return reached[-1] if reached else 0


def topup_bonus(session: Session, *, agent_id: int, cents: int, credit_cause: str, actor: str) -> int:
    """The top-up bonus of a credit of `cents` to the holder's balance (in the credit's
    transaction): once per credit (its cause). The points booked now."""
    points = bonus_for(get_setting(session, "points.topup_bonus"), cents) if cents > 0 else 0
    if not points:
        return 0
    booking = ledger.post(session, cause=f"points_bonus:{credit_cause}"[:96], kind="points_bonus",
                          legs=[*_credit_legs(session, agent_id, points), (_shop(session), -points)], actor=actor,
                          memo=f"top-up of {format_cents(cents)}")
    if not booking.booked:
        return 0
    record(session, "points.bonus", actor=actor, target=f"agent:{agent_id}",
           details={"points": points, "top_up": format_cents(cents), "credit": credit_cause})
    return points


@dataclasses.dataclass(frozen=True)
class Movement:
    at: dt.datetime
    kind: str
    points: int
    after: int
    memo: str


def statement(session: Session, agent_id: int, limit: int = 50) -> list[Movement]:
    """The holder's latest points movements, newest first."""
    rows = session.execute(
        sa.select(_entries.c.created_at, _txns.c.kind, _entries.c.amount_cents, _entries.c.balance_after_cents,
                  _txns.c.memo)
        .join(_txns, _txns.c.id == _entries.c.transaction_id)
        .join(_acc, _acc.c.id == _entries.c.account_id)
        .where(_acc.c.name == account_name(agent_id))
        .order_by(_entries.c.id.desc()).limit(limit)).all()
    return [Movement(r.created_at, r.kind, r.amount_cents, r.balance_after_cents, r.memo) for r in rows]

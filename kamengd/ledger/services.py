"""Booking money: one function (`post`) writes every movement, `verify` checks the books.

`post` books a movement once per cause. It claims the cause first (a unique
row: a second server booking the same cause waits for the first, then finds
it), moves each account's cached balance with a conditional UPDATE that
cannot take a protected account below zero, then appends the entries, all
inside a savepoint: a refused movement leaves nothing behind and the caller's
transaction goes on. The caller commits (one commit per request or job).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..database import utcnow
from ..errors import Conflict, InsufficientBalance, InvalidRequest
from ..money import format_cents
from .models import (AGENT_KINDS, DEBT, POINTS_DEBT_KIND, SHOP_ACCOUNTS, LedgerAccount, LedgerEntry,
                     LedgerTransaction)

DEFAULT_CURRENCY = "CNY"
MAX_CAUSE = 96
_CAUSE_RE = re.compile(r"[a-z_]+:[\x21-\x7e]{1,90}")

_accounts = LedgerAccount.__table__
_entries = LedgerEntry.__table__
_transactions = LedgerTransaction.__table__


def agent_account_name(agent_id: int, kind: str) -> str:
    assert kind in AGENT_KINDS, kind
    return f"agent:{agent_id}:{kind}"


def open_agent_accounts(session: Session, agent_id: int, currency: str = DEFAULT_CURRENCY) -> None:
    """An agent's accounts, made with the agent (in its transaction)."""
    for kind in AGENT_KINDS:
        session.add(LedgerAccount(name=agent_account_name(agent_id, kind), agent_id=agent_id, kind=kind,
                                  currency=currency, balance_cents=0, may_go_negative=kind == DEBT))
    session.flush()


def shop_account(session: Session, name: str, currency: str = DEFAULT_CURRENCY) -> LedgerAccount:
    """One of the shop's counter-accounts, made on first use (two first uses at once: one
    makes it, the other finds it)."""
    assert name in SHOP_ACCOUNTS, name
    found = session.scalar(sa.select(LedgerAccount).where(LedgerAccount.name == name))
    if found is not None:
        return found
    try:
        with session.begin_nested():
            session.execute(_accounts.insert().values(name=name, agent_id=None, kind="shop", currency=currency,
                                                      balance_cents=0, may_go_negative=True, created_at=utcnow()))
    except IntegrityError:
        pass
    return session.scalars(sa.select(LedgerAccount).where(LedgerAccount.name == name)).one()


def account_by_name(session: Session, name: str) -> LedgerAccount:
    found = session.scalar(sa.select(LedgerAccount).where(LedgerAccount.name == name))
    if found is None:
        raise InvalidRequest("no ledger account %(name)s", name=name)
    return found


@dataclass
class Booking:
    transaction_id: int
    cause: str
    booked: bool             # False: the cause was booked before; nothing was written now
    amounts: dict[int, int]  # account id -> amount (as booked, then or now)


@dataclass(frozen=True)
class AccountRef:
    """An account as `post` needs it (a LedgerAccount will do too)."""
    id: int
    currency: str
    kind: str = "available"


def _cached(account) -> bool:
    """Whether the account's balance is kept on its row (not for the shop's own accounts)."""
    return account.kind != "shop"


# Protected accounts never below zero; a debt never above it (more repaid than owed).
_MOVE = (_accounts.update()
         .where(_accounts.c.id == sa.bindparam("account_id"),
                sa.or_(_accounts.c.may_go_negative.is_(True),
                       _accounts.c.balance_cents + sa.bindparam("amount") >= 0),
                sa.or_(_accounts.c.kind != DEBT, _accounts.c.balance_cents + sa.bindparam("amount") <= 0))
         .values(balance_cents=_accounts.c.balance_cents + sa.bindparam("amount")))
_BALANCE = sa.select(_accounts.c.balance_cents).where(_accounts.c.id == sa.bindparam("account_id"))
_NEW_TRANSACTION = _transactions.insert()
_NEW_ENTRY = _entries.insert()


def post(session: Session, *, cause: str, kind: str, legs: list, actor: str, memo: str = "",
         savepoint: bool = True) -> Booking:
    """Book `legs` (account, signed amount in cents; they sum to zero) once for `cause`.

    A cause booked before returns that booking (booked=False) when its amounts are the
    same, and raises Conflict when they differ. A leg that would take a protected
    account below zero raises InsufficientBalance. With `savepoint` (the default)
    nothing of a refused booking stays and the caller's transaction goes on; without,
    the caller rolls its transaction back on any error (a request's hot path)."""
    if not _CAUSE_RE.fullmatch(cause):
        raise ValueError(f"bad ledger cause {cause!r}")
    amounts: dict[int, int] = {}
    uncached = set()
    for account, amount in legs:
        if not isinstance(amount, int) or isinstance(amount, bool):
            raise TypeError("ledger amounts are integer cents")
        amounts[account.id] = amounts.get(account.id, 0) + amount
        if not _cached(account):
            uncached.add(account.id)
    amounts = {a: v for a, v in amounts.items() if v}
    if not amounts or sum(amounts.values()) != 0:
        raise ValueError(f"ledger legs of {cause} must move money and sum to zero: {amounts}")
    currencies = {account.currency for account, _ in legs}
    if len(currencies) != 1:
        raise ValueError(f"ledger legs of {cause} mix currencies {sorted(currencies)}")
    try:
        if savepoint:
            with session.begin_nested():
                txn_id = _write(session, cause, kind, amounts, uncached, actor, memo)
        else:
            txn_id = _write(session, cause, kind, amounts, uncached, actor, memo)
    except IntegrityError:
        if not savepoint:
            raise
        earlier = session.execute(sa.select(_transactions.c.id).where(_transactions.c.cause == cause)).scalar()
        if earlier is None:
            raise
        booked = dict(session.execute(sa.select(_entries.c.account_id, _entries.c.amount_cents)
                                      .where(_entries.c.transaction_id == earlier)).all())
        if booked != amounts:
            raise Conflict("%(cause)s was booked before with other amounts", cause=cause) from None
        return Booking(earlier, cause, False, booked)
    # The ORM's copies of these accounts are stale now: read them again when next used.
    for account, _amount in legs:
        if isinstance(account, LedgerAccount):
            session.expire(account, ["balance_cents"])
    return Booking(txn_id, cause, True, amounts)


def _write(session: Session, cause: str, kind: str, amounts: dict[int, int], uncached: set[int], actor: str,
           memo: str) -> int:
    conn = session.connection()
    now = utcnow()
    txn_id = conn.execute(_NEW_TRANSACTION, {"cause": cause, "kind": kind, "memo": memo[:200], "actor": actor[:80],
                                             "created_at": now}).inserted_primary_key[0]
    entries = []
    # Lowest id first: two movements over the same accounts lock them in one order (no deadlock).
    for account_id in sorted(amounts):
        amount = amounts[account_id]
        after = None
        if account_id not in uncached:
            if conn.execute(_MOVE, {"account_id": account_id, "amount": amount}).rowcount != 1:
                raise InsufficientBalance("the balance does not cover %(amount)s", amount=format_cents(-amount))
            after = conn.execute(_BALANCE, {"account_id": account_id}).scalar_one()
        entries.append({"transaction_id": txn_id, "account_id": account_id, "amount_cents": amount,
                        "balance_after_cents": after, "created_at": now})
    conn.execute(_NEW_ENTRY, entries)
    return txn_id


def shop_ref(session: Session, name: str, currency: str = DEFAULT_CURRENCY) -> AccountRef:
    """The shop's account `name` as `post` needs it. Read in the caller's transaction every
    time: an id remembered across transactions could name a row a rolled-back one made."""
    account = shop_account(session, name, currency)
    return AccountRef(account.id, account.currency, account.kind)


def agent_refs(session: Session, agent_id: int) -> dict[str, AccountRef]:
    """{kind: account} of one agent."""
    rows = session.execute(sa.select(_accounts.c.kind, _accounts.c.id, _accounts.c.currency)
                           .where(_accounts.c.agent_id == agent_id)).all()
    return {kind: AccountRef(id_, currency, kind) for kind, id_, currency in rows}


def agent_credit_legs(session: Session, agent_id: int, cents: int) -> list[tuple[AccountRef, int]]:
    """Legs that give an agent `cents`: what it owes is repaid first, the rest is spendable.
    The debt's row is locked first (MariaDB: two repayments never both see the same debt)."""
    accounts = agent_refs(session, agent_id)
    owed = -session.execute(sa.select(_accounts.c.balance_cents).where(_accounts.c.id == accounts[DEBT].id)
                            .with_for_update()).scalar_one()
    repay = min(owed, cents)
    legs = [(accounts[DEBT], repay)] if repay else []
    if cents - repay:
        legs.append((accounts["available"], cents - repay))
    return legs


def booked_before(session: Session, cause: str) -> Booking | None:
    """The movement booked for `cause` (booked=False), or None."""
    earlier = session.execute(sa.select(_transactions.c.id).where(_transactions.c.cause == cause)).scalar()
    if earlier is None:
        return None
    return Booking(earlier, cause, False, dict(session.execute(
        sa.select(_entries.c.account_id, _entries.c.amount_cents).where(_entries.c.transaction_id == earlier)).all()))


def order_paid_cause(order_no: str) -> str:
    """The cause of an order's payment from a balance, whichever way it was paid (the agent API,
    or a balance channel on the storefront): one payment per order."""
    return f"order:{order_no}:paid"


def paid_from_balance(session: Session, order_no: str) -> tuple[int, int, list[tuple[AccountRef, int]]] | None:
    """What the order's payment took from an agent's (or a member's) spendable balance:
    (the agent, the cents, the shop's legs as booked), or None when it took nothing from one.
    A refund gives back exactly that, whichever way the order was paid from a balance."""
    booked = booked_before(session, order_paid_cause(order_no))
    if booked is None:
        return None
    rows = session.execute(sa.select(_accounts.c.id, _accounts.c.agent_id, _accounts.c.kind, _accounts.c.currency)
                           .where(_accounts.c.id.in_(list(booked.amounts)))).all()
    payer = [r for r in rows if r.agent_id is not None and r.kind == "available" and booked.amounts[r.id] < 0]
    if len(payer) != 1:
        return None
    shop = [(AccountRef(r.id, r.currency, r.kind), booked.amounts[r.id]) for r in rows if r.agent_id is None]
    return payer[0].agent_id, -booked.amounts[payer[0].id], shop


def balances(session: Session, agent_id: int) -> dict[str, int]:
    """{kind: cents} of an agent's accounts."""
    rows = session.execute(sa.select(LedgerAccount.kind, LedgerAccount.balance_cents)
                           .where(LedgerAccount.agent_id == agent_id)).all()
    found = dict(rows)
    return {kind: found.get(kind, 0) for kind in AGENT_KINDS}


def verify(session: Session) -> tuple[int, list[str]]:
    """(accounts checked, problems): every cached balance is the sum of its entries and the
    last entry's balance-after; every movement sums to zero; no protected account is negative;
    the shop's accounts keep no balance."""
    sums = dict(session.execute(sa.select(_entries.c.account_id, sa.func.sum(_entries.c.amount_cents))
                                .group_by(_entries.c.account_id)).all())
    last_ids = sa.select(sa.func.max(_entries.c.id)).group_by(_entries.c.account_id)
    lasts = dict(session.execute(sa.select(_entries.c.account_id, _entries.c.balance_after_cents)
                                 .where(_entries.c.id.in_(last_ids))).all())
    problems = []
    accounts = session.execute(sa.select(_accounts.c.id, _accounts.c.name, _accounts.c.balance_cents,
                                         _accounts.c.may_go_negative, _accounts.c.kind)
                               .order_by(_accounts.c.id)).all()
    for account in accounts:
        if not _cached(account):   # the shop's: no balance kept, its entries carry none
            if account.balance_cents != 0 or lasts.get(account.id) is not None:
                problems.append(f"{account.name}: a balance is kept on a shop account")
            continue
        total = int(sums.get(account.id) or 0)
        if total != account.balance_cents:
            problems.append(f"{account.name}: balance {format_cents(account.balance_cents)}, "
                            f"its entries sum to {format_cents(total)}")
        if account.id in lasts and lasts[account.id] != account.balance_cents:
            problems.append(f"{account.name}: balance {format_cents(account.balance_cents)}, "
                            f"its last entry says {format_cents(lasts[account.id])}")
        if account.balance_cents < 0 and not account.may_go_negative:
            problems.append(f"{account.name}: negative balance {format_cents(account.balance_cents)}")
        if account.kind in (DEBT, POINTS_DEBT_KIND) and account.balance_cents > 0:
            problems.append(f"{account.name}: a debt above zero ({format_cents(account.balance_cents)})")
    unbalanced = session.execute(
        sa.select(_transactions.c.cause, sa.func.sum(_entries.c.amount_cents))
        .join(_entries, _entries.c.transaction_id == _transactions.c.id)
        .group_by(_transactions.c.id, _transactions.c.cause)
        .having(sa.func.sum(_entries.c.amount_cents) != 0)).all()
    for cause, total in unbalanced:
        problems.append(f"{cause}: its entries sum to {format_cents(int(total))}, not 0")
    empty = session.execute(sa.select(_transactions.c.cause).where(
        ~sa.exists().where(_entries.c.transaction_id == _transactions.c.id))).scalars().all()
    for cause in empty:
        problems.append(f"{cause}: a movement without entries")
    return len(accounts), problems

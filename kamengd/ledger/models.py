"""The ledger: every movement of an agent's (or a member's) money, double-entry.

A transaction is one movement, named by its cause (`cause`, unique): the same
cause can never be booked twice, however often a callback, a retry or a
second server tries. Its entries move amounts between accounts and sum to
zero. An account's balance is the sum of its entries, kept on the account by
a conditional UPDATE in the same transaction; a CHECK keeps it from going
below zero unless the account may (the shop's own counter-accounts).
Entries are only ever inserted. The shop's own counter-accounts keep no
cached balance (every agent's order would wait on that one row): theirs is
the sum of their entries.
"""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from ..database import UTCDateTime, utcnow
from ..extensions import db

# What an agent's money is in: spendable, commission not yet released, held for a withdrawal,
# and what it owes (a commission reversed after it was spent: zero or below, never above).
AGENT_KINDS = ("available", "pending", "held", "debt")
DEBT = "debt"
# The shop's side of every movement (these may go negative: they are the shop's books).
SHOP_ACCOUNTS = ("shop:adjustments", "shop:sales", "shop:commission", "shop:payouts", "shop:fees",
                 # Points (kamengd.marketing.points) given and taken back: in POINTS, not money.
                 "shop:points")
# A member's (or an agent's) points: an account "agent:<id>:points" in this pseudo-currency,
# never mixed with money (the ledger refuses legs of two currencies).
POINTS_KIND = "points"
POINTS_CURRENCY = "PTS"
# Points a refund could not take back (spent already): zero or below, repaid first by the
# holder's next points, as an agent's debt is by its next money.
POINTS_DEBT_KIND = "points_debt"


class LedgerAccount(db.Model):
    __tablename__ = "ledger_accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    # "agent:<id>:<kind>" or one of SHOP_ACCOUNTS: one account per name.
    name: Mapped[str] = mapped_column(sa.String(64), unique=True)
    agent_id: Mapped[int | None] = mapped_column(sa.ForeignKey("agents.id"), index=True)
    kind: Mapped[str] = mapped_column(sa.String(16))
    currency: Mapped[str] = mapped_column(sa.String(3))
    # Kept for agents' accounts (a conditional UPDATE in each movement). The shop's own
    # accounts (kind "shop") are on the other side of every agent's order: one row all of
    # them would queue on. Theirs is not kept (it stays 0); it is the sum of their entries.
    balance_cents: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default=sa.text("0"))
    may_go_negative: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        sa.CheckConstraint("may_go_negative OR balance_cents >= 0", name="not_negative"),
    )


class LedgerTransaction(db.Model):
    __tablename__ = "ledger_transactions"

    id: Mapped[int] = mapped_column(primary_key=True)
    # What caused it, e.g. "credit:<reference>", "order:<order_no>:paid": booked once.
    cause: Mapped[str] = mapped_column(sa.String(96), unique=True)
    kind: Mapped[str] = mapped_column(sa.String(32))
    memo: Mapped[str] = mapped_column(sa.String(200), default="", server_default="")
    actor: Mapped[str] = mapped_column(sa.String(80))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class LedgerEntry(db.Model):
    __tablename__ = "ledger_entries"

    id: Mapped[int] = mapped_column(primary_key=True)
    transaction_id: Mapped[int] = mapped_column(sa.ForeignKey("ledger_transactions.id"), index=True)
    account_id: Mapped[int] = mapped_column(sa.ForeignKey("ledger_accounts.id"))
    amount_cents: Mapped[int] = mapped_column(sa.BigInteger)
    # The account's balance right after this entry: a statement reads it, verify checks it.
    # NULL on the shop's own accounts, whose balance is not kept (see LedgerAccount).
    balance_after_cents: Mapped[int | None] = mapped_column(sa.BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        sa.Index("ix_ledger_entries_account", "account_id", "id"),
        sa.CheckConstraint("amount_cents <> 0", name="not_zero"),
    )

"""An agent's statement: its ledger entries with filters, as rows or as CSV.

Read-only; the same rows feed the agent API now and the agents' portal later.
"""
from __future__ import annotations

import csv
import datetime as dt
import io

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..errors import InvalidRequest
from ..ledger.models import AGENT_KINDS, POINTS_DEBT_KIND, POINTS_KIND, LedgerAccount, LedgerEntry, LedgerTransaction
from ..money import format_cents
from ..validation import spreadsheet_cell

MAX_ROWS = 10000
_e, _t, _a = LedgerEntry.__table__, LedgerTransaction.__table__, LedgerAccount.__table__
COLUMNS = ("time", "account", "amount", "balance_after", "kind", "cause", "memo")


def _day(text, field: str) -> dt.datetime | None:
    if text in (None, ""):
        return None
    try:
        return dt.datetime.strptime(str(text), "%Y-%m-%d")
    except ValueError:
        raise InvalidRequest("%(field)s: a date such as 2026-12-01", field=field) from None


def statement(session: Session, agent_id: int, *, account=None, since=None, until=None,
              limit: int = 500) -> list[dict]:
    """The agent's entries, newest first: `account` one of its kinds, `since`/`until` days
    (UTC, inclusive), at most `limit` (up to MAX_ROWS). Its money's accounts, or its points
    (`account` "points": whole points, never mixed with money)."""
    if account not in (None, "") and account not in AGENT_KINDS + (POINTS_KIND,):
        raise InvalidRequest("account: one of %(kinds)s", kinds=", ".join(AGENT_KINDS + (POINTS_KIND,)))
    shown = format_cents if account != POINTS_KIND else str
    start, end = _day(since, "from"), _day(until, "to")
    query = (sa.select(_e.c.created_at, _a.c.kind, _e.c.amount_cents, _e.c.balance_after_cents, _t.c.kind.label("what"),
                       _t.c.cause, _t.c.memo)
             .join(_a, _a.c.id == _e.c.account_id).join(_t, _t.c.id == _e.c.transaction_id)
             .where(_a.c.agent_id == agent_id).order_by(_e.c.id.desc()).limit(max(1, min(limit, MAX_ROWS))))
    if account == POINTS_KIND:   # its points, and the points debt a refund left
        query = query.where(_a.c.kind.in_((POINTS_KIND, POINTS_DEBT_KIND)))
    else:
        query = query.where(_a.c.kind == account) if account else query.where(_a.c.kind.in_(AGENT_KINDS))
    if start is not None:
        query = query.where(_e.c.created_at >= start)
    if end is not None:
        query = query.where(_e.c.created_at < end + dt.timedelta(days=1))
    return [{"time": r.created_at.isoformat(timespec="seconds") + "Z", "account": r.kind,
             "amount": shown(r.amount_cents),
             "balance_after": None if r.balance_after_cents is None else shown(r.balance_after_cents),
             "kind": r.what, "cause": r.cause, "memo": r.memo} for r in session.execute(query)]


def as_csv(rows: list[dict]) -> str:
    """CSV with a header; a cell a spreadsheet would run as a formula is quoted with '."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([spreadsheet_cell("" if row[c] is None else str(row[c])) for c in COLUMNS])
    return out.getvalue()

"""Big lists as files: CSV and XLSX written row by row, the rows read a page at a time.

A million orders never sit in memory: a row source reads ~2,000 rows at a time by keyset
(the next page starts after the last (time, id) seen, never at an OFFSET, which MariaDB
reads from the start every page) with Core selects of only the columns it shows, and the
writers turn each row into bytes as it comes.

Cells are str, int, Decimal (money), datetime (already in the shop's time zone, naive) or
None. Text is made safe for spreadsheets (kamengd.validation.spreadsheet_cell: nothing a
spreadsheet would run as a formula). Money is a Decimal of two places: "12.34" in a CSV, a
number shown as 0.00 in a workbook (numbers, so a column can be summed; a double holds any
amount under MAX_CENTS to the cent). Points are counted in whole points (int). Times are
"2026-01-31 23:59:30" in a CSV and date-time cells in a workbook, both to the second.

Speeds (2 cores, a million orders of 14 columns, SQLite or MariaDB): the rows alone are read
in 13-18 s, the whole CSV export takes 22-25 s, under 100 MB; a workbook is written by
kamengd.reports.xlsx (openpyxl took 2.5-3.5 minutes for the same million: see there).

The row sources read in the caller's transaction; one that finds none open starts it
read-only, so on SQLite a long export reads a snapshot and never holds the write lock
(while it reads, the WAL cannot be checkpointed past that snapshot: it grows for the export's
length, then shrinks back at the next checkpoint).
"""
from __future__ import annotations

import csv
import datetime as dt
import io
from dataclasses import dataclass
from decimal import Decimal
from typing import BinaryIO, Iterable, Iterator, Sequence
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.orm import Session, scoped_session

from ..accounts.models import StaffUser
from ..agents.models import Agent
from ..catalog import inputs
from ..catalog.models import Product
from ..ledger.models import POINTS_CURRENCY, LedgerAccount, LedgerEntry, LedgerTransaction
from ..orders.models import Order
from ..payments.models import PaymentChannel
from ..validation import spreadsheet_cell
from ..vouchers.models import Redemption, Store, VoucherTerms
from . import xlsx

PAGE_SIZE = 2000
CSV_CHUNK = 64 * 1024           # characters gathered before a chunk is handed on
MONEY_FORMAT = "0.00"                 # (the workbook's number formats: kamengd.reports.xlsx)
TIME_FORMAT = "yyyy-mm-dd hh:mm:ss"

Cell = str | int | Decimal | dt.datetime | dt.date | None


@dataclass
class Export:
    """A list to write: its name (for a file or a sheet), its columns and its rows (read lazily)."""
    name: str
    header: list[str]
    rows: Iterator[list[Cell]]


# -- writers --------------------------------------------------------------------------------

def _csv_cell(value: Cell):
    if type(value) is str:
        return spreadsheet_cell(value)
    if value is None:
        return ""
    if type(value) is dt.datetime:
        return value.isoformat(" ", "seconds")
    return value   # int, Decimal (str() gives its two places), date


def csv_chunks(header: Sequence[str], rows: Iterable[Sequence[Cell]], *, chunk: int = CSV_CHUNK) -> Iterator[bytes]:
    """The CSV as UTF-8 chunks of about `chunk` characters, the first starting with a BOM (Excel
    then reads Chinese right): what a streamed Flask Response sends."""
    out = io.StringIO()
    out.write("\ufeff")
    writer = csv.writer(out)
    writer.writerow([_csv_cell(c) for c in header])
    cell = _csv_cell
    for row in rows:
        writer.writerow([cell(c) for c in row])
        if out.tell() >= chunk:
            yield out.getvalue().encode()
            out.seek(0)
            out.truncate()
    yield out.getvalue().encode()


def write_csv(header: Sequence[str], rows: Iterable[Sequence[Cell]], out: BinaryIO) -> int:
    """The CSV into `out` (a binary file); returns the rows written (the header not counted)."""
    count = 0

    def counted():
        nonlocal count
        for row in rows:
            count += 1
            yield row
    for part in csv_chunks(header, counted()):
        out.write(part)
    return count


def write_xlsx(header: Sequence[str], rows: Iterable[Sequence[Cell]], out: BinaryIO, *, sheet: str = "export") -> int:
    """The rows as a workbook into `out` (kamengd.reports.xlsx: written as they come), one sheet
    of at most a million rows after another ("sheet", "sheet (2)", …), each starting with the
    header. Returns the rows written (the headers not counted)."""
    def cell(value):
        kind = type(value)
        if kind is str:
            return spreadsheet_cell(value)
        if kind is dt.datetime and value.microsecond:
            # to the second, as the CSV says it (Excel would round 23:59:30.9 up to 23:59:31)
            return value.replace(microsecond=0)
        return value

    return xlsx.write([spreadsheet_cell(h) for h in header], ([cell(c) for c in row] for row in rows), out,
                      sheet=sheet)


# -- shared pieces --------------------------------------------------------------------------

def _snapshot(session: Session | scoped_session) -> None:
    """A read-only transaction unless the caller has one open (SQLite: no write lock held)."""
    if not (session() if isinstance(session, scoped_session) else session).in_transaction():
        session.connection(execution_options={"kamengd_readonly": True})


def _keyset(session: Session, query, when, ident, *, start: dt.datetime, end: dt.datetime, newest_first: bool,
            page_size: int) -> Iterator[list]:
    """Pages of `query`'s rows with `when` in [start, end), ordered by (when, ident); the
    query selects `when` and `ident` as its first two columns."""
    order = (when.desc(), ident.desc()) if newest_first else (when.asc(), ident.asc())
    after = None
    while True:
        if after is None:
            q = query.where(when >= start, when < end)
        else:
            # (when, ident) past the last row seen. The last time seen replaces the range's
            # bound on that side (SQLite bounds an index range by one term a side: kept beside
            # it, `end` would make every page start at the range's end again), and the rest
            # only sorts out the rows of that same instant.
            t, i = after
            q = query.where(when >= start, when <= t, sa.or_(when < t, ident < i)) if newest_first else \
                query.where(when >= t, when < end, sa.or_(when > t, ident > i))
        page = session.execute(q.order_by(*order).limit(page_size)).all()
        if page:
            yield page
        if len(page) < page_size:
            return
        after = (page[-1][0], page[-1][1])


def _unindexed(column):
    """The column as no index can serve it. A page then walks the keyset's index (time, id)
    and stops at its length whatever a filter matches; were the filter's own index used
    (orders' status or product, SQLite without statistics picks it), every page would read
    all the rows it matches and sort them again: a quadratic export."""
    return sa.func.coalesce(column, column)


def local_clock(zone: str):
    """A naive UTC time -> the same instant in `zone`, naive (None stays None). The writers
    show it to the second.

    zoneinfo takes ~3 µs a time, a tenth of an export's time per column: the offset is worked
    out once per hour of UTC (an hour with a change of offset in it is worked out per time)."""
    tz, utc = ZoneInfo(zone), dt.timezone.utc
    hours: dict[dt.datetime, dt.timedelta | None] = {}
    start, end, shift = dt.datetime.max, dt.datetime.min, dt.timedelta(0)   # the hour seen last

    def offset(value: dt.datetime) -> dt.timedelta:
        return value.replace(tzinfo=utc).astimezone(tz).utcoffset()

    def local(value: dt.datetime | None) -> dt.datetime | None:
        nonlocal start, end, shift
        if value is None:
            return None
        if start <= value < end:
            return value + shift
        hour = value.replace(minute=0, second=0, microsecond=0)
        if hour not in hours:
            first = offset(hour)
            hours[hour] = first if offset(hour + _LAST_OF_HOUR) == first else None
        if hours[hour] is None:
            return value + offset(value)
        start, end, shift = hour, hour + _HOUR, hours[hour]
        return value + shift
    return local


_HOUR = dt.timedelta(hours=1)
_LAST_OF_HOUR = _HOUR - dt.timedelta(microseconds=1)


def _money(cents: int) -> Decimal:
    return Decimal(cents).scaleb(-2)


# -- (a) orders -----------------------------------------------------------------------------

ORDER_COLUMNS = ["order_no", "created", "product", "quantity", "amount", "currency", "email", "status", "channel",
                 "pay_type", "paid", "delivered", "flag", "input"]


def orders(session: Session, *, start: dt.datetime, end: dt.datetime, tz: str, status: str | None = None,
           product_id: int | None = None, channel_id: int | None = None, newest_first: bool = True,
           page_size: int = PAGE_SIZE) -> Export:
    """Orders created in [start, end) (naive UTC), newest (or oldest) first, as the panel's
    export shows them: times in `tz`, amounts as money, product names and channel codes
    looked up once, buyer input as "label: value; …"."""
    return Export("orders", list(ORDER_COLUMNS), _order_rows(
        session, start=start, end=end, tz=tz, status=status, product_id=product_id, channel_id=channel_id,
        newest_first=newest_first, page_size=page_size))


def _order_rows(session, *, start, end, tz, status, product_id, channel_id, newest_first, page_size):
    _snapshot(session)
    o = Order.__table__.c
    products = dict(session.execute(sa.select(Product.id, Product.name)).all())
    codes = dict(session.execute(sa.select(PaymentChannel.id, PaymentChannel.code)).all())
    query = sa.select(o.created_at, o.id, o.order_no, o.product_id, o.quantity, o.amount_cents, o.currency, o.email,
                      o.status, o.channel_id, o.pay_type, o.paid_at, o.delivered_at, o.flag_reason, o.buyer_input)
    for column, value in ((o.status, status), (o.product_id, product_id), (o.channel_id, channel_id)):
        if value is not None:
            query = query.where(_unindexed(column) == value)
    local = local_clock(tz)
    for page in _keyset(session, query, o.created_at, o.id, start=start, end=end, newest_first=newest_first,
                        page_size=page_size):
        for (created, _id, order_no, pid, quantity, cents, currency, email, state, cid, pay_type, paid, delivered,
             flag, buyer_input) in page:
            yield [order_no, local(created), products.get(pid, ""), quantity, _money(cents), currency, email, state,
                   codes.get(cid, ""), pay_type or "", local(paid), local(delivered), flag or "",
                   "; ".join(f"{v['label']}: {v['value']}" for v in inputs.load(buyer_input)) if buyer_input else ""]


# -- (b) ledger entries ---------------------------------------------------------------------

LEDGER_COLUMNS = ["entry_id", "time", "transaction_id", "account", "holder", "holder_kind", "balance", "amount",
                  "currency", "balance_after", "kind", "cause", "memo", "actor"]


def ledger_entries(session: Session, *, start: dt.datetime, end: dt.datetime, tz: str, newest_first: bool = False,
                   page_size: int = PAGE_SIZE) -> Export:
    """The ledger's entries of the transactions booked in [start, end) (naive UTC), a
    transaction's legs together, oldest first by default. An entry's account is said by its
    name ("agent:12:available", "shop:sales"), its holder (the agent's or member's username,
    "" for the shop's own), the holder's kind (agent, member, shop) and which balance it is
    (available, pending, held, debt, points, …). Money in two places; points in points."""
    return Export("ledger", list(LEDGER_COLUMNS), _ledger_rows(session, start=start, end=end, tz=tz,
                                                                 newest_first=newest_first, page_size=page_size))


def _ledger_rows(session, *, start, end, tz, newest_first, page_size):
    # Paged by transaction (ledger_transactions.created_at is indexed; ledger_entries.created_at
    # is not), then the page's entries by their transaction_id index.
    _snapshot(session)
    t, e = LedgerTransaction.__table__.c, LedgerEntry.__table__.c
    query = sa.select(t.created_at, t.id, t.kind, t.cause, t.memo, t.actor)
    accounts: dict[int, tuple] = {}
    local = local_clock(tz)
    for page in _keyset(session, query, t.created_at, t.id, start=start, end=end, newest_first=newest_first,
                        page_size=page_size):
        found = {row[1]: row for row in page}
        legs: dict[int, list] = {}
        for leg in session.execute(sa.select(e.transaction_id, e.id, e.account_id, e.amount_cents,
                                             e.balance_after_cents)
                                   .where(e.transaction_id.in_(list(found))).order_by(e.transaction_id, e.id)):
            legs.setdefault(leg[0], []).append(leg)
        _learn_accounts(session, accounts, {leg[2] for entries in legs.values() for leg in entries})
        for created, tx_id, kind, cause, memo, actor in page:
            when = local(created)
            for _tx, entry_id, account_id, cents, after in legs.get(tx_id, ()):
                name, holder, holder_kind, balance, currency = accounts[account_id]
                amount = _amount(cents, currency)
                yield [entry_id, when, tx_id, name, holder, holder_kind, balance, amount, currency,
                       None if after is None else _amount(after, currency), kind, cause, memo, actor]


def _learn_accounts(session: Session, accounts: dict, wanted: set[int]) -> None:
    """The accounts of `wanted` not seen yet: (name, holder, holder kind, balance kind, currency)."""
    new = [i for i in wanted if i not in accounts]
    if not new:
        return
    a, g = LedgerAccount.__table__.c, Agent.__table__.c
    for account_id, name, kind, currency, username, agent_kind in session.execute(
            sa.select(a.id, a.name, a.kind, a.currency, g.username, g.kind)
            .outerjoin(Agent.__table__, g.id == a.agent_id).where(a.id.in_(new))):
        accounts[account_id] = (name, username or "", agent_kind or "shop", kind, currency)


def _amount(cents: int, currency: str) -> int | Decimal:
    return cents if currency == POINTS_CURRENCY else _money(cents)


# -- (c) voucher redemptions ----------------------------------------------------------------

REDEMPTION_COLUMNS = ["redemption_id", "time", "store", "product", "voucher_id", "staff", "outcome", "reason", "uses",
                      "amount", "currency", "undone", "undone_by", "undo_reason"]


def redemptions(session: Session, *, start: dt.datetime, end: dt.datetime, tz: str,
                store_ids: Sequence[int] | None = None, newest_first: bool = False,
                page_size: int = PAGE_SIZE) -> Export:
    """Redemptions (and refusals) at the stores in [start, end) (naive UTC). A voucher is
    named by its number (voucher_id), never by its code: the codes are sealed like card keys,
    and not even their lookup hash (which a refusal of an unknown code keeps) is exported."""
    return Export("redemptions", list(REDEMPTION_COLUMNS), _redemption_rows(
        session, start=start, end=end, tz=tz, store_ids=store_ids, newest_first=newest_first, page_size=page_size))


def _redemption_rows(session, *, start, end, tz, store_ids, newest_first, page_size):
    _snapshot(session)
    r = Redemption.__table__.c
    stores = dict(session.execute(sa.select(Store.id, Store.name)).all())
    products = dict(session.execute(sa.select(Product.id, Product.name)).all())
    currencies = dict(session.execute(sa.select(VoucherTerms.product_id, VoucherTerms.currency)).all())
    staff = dict(session.execute(sa.select(StaffUser.id, StaffUser.username)).all())
    query = sa.select(r.created_at, r.id, r.store_id, r.product_id, r.voucher_id, r.user_id, r.outcome, r.reason,
                      r.uses, r.amount_cents, r.undone_at, r.undone_by, r.undo_reason)
    if store_ids is not None and len(store_ids) == 1:
        query = query.where(r.store_id == store_ids[0])   # (store_id, created_at, id): its own keyset index
    elif store_ids is not None:
        query = query.where(_unindexed(r.store_id).in_(list(store_ids)))
    local = local_clock(tz)
    for page in _keyset(session, query, r.created_at, r.id, start=start, end=end, newest_first=newest_first,
                        page_size=page_size):
        for (created, rid, store_id, pid, voucher_id, user_id, outcome, reason, uses, cents, undone_at, undone_by,
             undo_reason) in page:
            yield [rid, local(created), stores.get(store_id, f"#{store_id}"), products.get(pid, "") if pid else "",
                   voucher_id, staff.get(user_id, f"#{user_id}"), outcome, reason or "", uses, _money(cents),
                   currencies.get(pid, "CNY") if pid else "", local(undone_at),
                   staff.get(undone_by, f"#{undone_by}") if undone_by else "", undo_reason or ""]

"""A big list (orders, ledger, redemptions) exported for a staff member in the background,
with its progress: the panel asks, a worker thread writes the file, the page shows how far it
has come, and the finished file is handed out from the database (any server can).

Why not in the request: a million rows take most of a minute, longer than a buyer's request
should hold a worker, and a workbook can only be sent once it is whole. Why not a scheduler
job: its jobs run one after the other with the lease's heartbeat, and a minute's export would
stop them. The file is written to a temporary file as rows come (exports: never all in
memory), then stored in parts of 1 MiB, kept a day (`prune_exports`).

Progress is written by its own session (a short transaction every PROGRESS_EVERY rows) while
the export reads (read-only: on SQLite one snapshot, never the write lock; on MariaDB, at READ
COMMITTED, each keyset page as it is then); a worker that dies (a restart) stops beating, and
its export shows failed after STALE.
"""
from __future__ import annotations

import datetime as dt
import logging
import tempfile

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..audit.services import record
from ..database import utcnow
from ..errors import Conflict, InvalidRequest, NotFound
from ..ledger.models import LedgerEntry, LedgerTransaction
from ..orders.models import Order
from ..payments.settlement import day_bounds
from ..vouchers.models import Redemption
from . import exports, figures
from .models import ReportExport, ReportExportPart

KINDS = ("orders", "ledger", "redemptions")
FORMATS = ("csv", "xlsx")
PART = 1024 * 1024
PROGRESS_EVERY = 10_000
STALE = dt.timedelta(minutes=2)
KEEP = dt.timedelta(days=1)

log = logging.getLogger("kamengd.reports")
_x, _p = ReportExport.__table__, ReportExportPart.__table__


def _bounds(first: dt.date, last: dt.date, tz: str) -> tuple[dt.datetime, dt.datetime]:
    return day_bounds(first, tz)[0], day_bounds(last, tz)[1]


def expected_rows(session: Session, kind: str, start: dt.datetime, end: dt.datetime) -> int:
    """How many rows the export will have (its progress bar's end)."""
    if kind == "orders":
        query = sa.select(sa.func.count()).select_from(Order).where(Order.created_at >= start, Order.created_at < end)
    elif kind == "ledger":
        query = (sa.select(sa.func.count()).select_from(LedgerEntry)
                 .join(LedgerTransaction, LedgerTransaction.id == LedgerEntry.transaction_id)
                 .where(LedgerTransaction.created_at >= start, LedgerTransaction.created_at < end))
    else:
        query = sa.select(sa.func.count()).select_from(Redemption).where(Redemption.created_at >= start,
                                                                        Redemption.created_at < end)
    return int(session.scalar(query) or 0)


def request_export(session: Session, *, kind: str, fmt: str, first: dt.date, last: dt.date, actor: str,
                   source_ip: str | None = None, now: dt.datetime | None = None) -> ReportExport:
    """A queued export (audited: the list leaves the shop); `run_export` writes it. One at a time
    per staff member: each holds a read snapshot and its file in the database while it runs."""
    if kind not in KINDS:
        raise InvalidRequest("list: one of %(choices)s", choices=", ".join(KINDS))
    if fmt not in FORMATS:
        raise InvalidRequest("format: one of %(choices)s", choices=", ".join(FORMATS))
    figures.check_range(first, last)
    now = now or utcnow()
    busy = session.scalar(sa.select(_x.c.id).where(_x.c.requested_by == actor[:128],
                                                   _x.c.status.in_(("queued", "running")),
                                                   _x.c.heartbeat_at >= now - STALE).limit(1))
    if busy is not None:
        raise Conflict("list %(export_id)s of yours is still being written: wait for it", export_id=busy)
    export = ReportExport(kind=kind, format=fmt, first_day=first, last_day=last, status="queued", rows_expected=0,
                          rows_done=0, size_bytes=0, requested_by=actor[:128], created_at=now, heartbeat_at=now)
    session.add(export)
    session.flush()
    record(session, "report.export", actor=actor, target=f"export:{export.id}", source_ip=source_ip,
           details={"list": kind, "from": first.isoformat(), "to": last.isoformat(), "format": fmt})
    return export


def _rows(session: Session, kind: str, first: dt.date, last: dt.date, tz: str) -> exports.Export:
    start, end = _bounds(first, last, tz)
    if kind == "orders":
        return exports.orders(session, start=start, end=end, tz=tz, newest_first=False)
    if kind == "ledger":
        return exports.ledger_entries(session, start=start, end=end, tz=tz)
    return exports.redemptions(session, start=start, end=end, tz=tz)


def run_export(session: Session, engine, export_id: int, tz: str) -> str:
    """Write the queued export `export_id` (once: claimed by a conditional UPDATE). `session`
    reads the rows; progress and the file's parts go through their own connection (`engine`).
    Returns its final status."""
    with Session(engine) as progress:
        claimed = progress.execute(_x.update().where(_x.c.id == export_id, _x.c.status == "queued")
                                   .values(status="running", heartbeat_at=utcnow())).rowcount
        progress.commit()
        if not claimed:
            return "not queued"
        export = progress.get(ReportExport, export_id)
        kind, fmt, first, last = export.kind, export.format, export.first_day, export.last_day
        progress.commit()

        def beat(done: int) -> None:
            progress.execute(_x.update().where(_x.c.id == export_id).values(rows_done=done, heartbeat_at=utcnow()))
            progress.commit()

        def counted(rows):
            done = 0
            for row in rows:
                yield row
                done += 1
                if done % PROGRESS_EVERY == 0:
                    beat(done)

        try:
            session.connection(execution_options={"kamengd_readonly": True})   # a snapshot, no write lock
            expected = expected_rows(session, kind, *_bounds(first, last, tz))
            progress.execute(_x.update().where(_x.c.id == export_id).values(rows_expected=expected))
            progress.commit()
            found = _rows(session, kind, first, last, tz)
            with tempfile.TemporaryFile() as fh:
                write = exports.write_csv if fmt == "csv" else exports.write_xlsx
                rows = write(found.header, counted(found.rows), fh, **({"sheet": kind} if fmt == "xlsx" else {}))
                session.rollback()
                size = fh.tell()
                fh.seek(0)
                seq = 0
                while chunk := fh.read(PART):
                    progress.execute(_p.insert().values(export_id=export_id, seq=seq, data=chunk))
                    progress.execute(_x.update().where(_x.c.id == export_id).values(heartbeat_at=utcnow()))
                    progress.commit()
                    seq += 1
            progress.execute(_x.update().where(_x.c.id == export_id, _x.c.status == "running")
                             .values(status="done", rows_done=rows, size_bytes=size, finished_at=utcnow(),
                                     heartbeat_at=utcnow()))
            progress.commit()
            return "done"
        except Exception as exc:
            session.rollback()
            progress.rollback()
            log.exception("export %s failed", export_id)
            # (an export holds orders and entries, never a key: its error names the failure's kind)
            progress.execute(_p.delete().where(_p.c.export_id == export_id))
            progress.execute(_x.update().where(_x.c.id == export_id)
                             .values(status="failed", error=f"{exc.__class__.__name__}"[:200], finished_at=utcnow()))
            progress.commit()
            return "failed"


def get_export(session: Session, export_id, requested_by: str | None = None,
               now: dt.datetime | None = None) -> ReportExport:
    """The export (of `requested_by` when given: another's is not found); a dead worker's is
    shown failed (not written: the page only reads)."""
    try:
        export_id = int(export_id)
    except (TypeError, ValueError):
        export_id = 0
    export = session.get(ReportExport, export_id) if 0 < export_id < 2**31 else None
    if export is None or (requested_by is not None and export.requested_by != requested_by[:128]):
        raise NotFound("export %(export_id)s not found", export_id=str(export_id)[:20])
    now = now or utcnow()
    if export.status in ("queued", "running") and export.heartbeat_at and now - export.heartbeat_at > STALE:
        session.expunge(export)
        export.status, export.error = "failed", "interrupted"
    return export


def recent(session: Session, requested_by: str, limit: int = 20) -> list[ReportExport]:
    """The staff member's own lists, newest first."""
    return list(session.scalars(sa.select(ReportExport).where(ReportExport.requested_by == requested_by[:128])
                                .order_by(ReportExport.id.desc()).limit(limit)))


def parts(session: Session, export_id: int):
    """The file's bytes, a part at a time (one in memory), each read in a read-only transaction
    of its own: a slow download never holds a lock or a snapshot between parts."""
    session.connection(execution_options={"kamengd_readonly": True})
    count = session.scalar(sa.select(sa.func.count()).select_from(_p).where(_p.c.export_id == export_id))
    session.rollback()
    for seq in range(count):
        session.connection(execution_options={"kamengd_readonly": True})
        data = session.scalar(sa.select(_p.c.data).where(_p.c.export_id == export_id, _p.c.seq == seq))
        session.rollback()
        yield data


def prune(session: Session, now: dt.datetime | None = None) -> dict:
    """Exports older than a day go, files and all; a dead worker's export is marked failed."""
    now = now or utcnow()
    old = [i for (i,) in session.execute(sa.select(_x.c.id).where(_x.c.created_at < now - KEEP))]
    for i in old:
        session.execute(_p.delete().where(_p.c.export_id == i))
        session.execute(_x.delete().where(_x.c.id == i))
    stale = session.execute(_x.update().where(_x.c.status.in_(("queued", "running")), _x.c.heartbeat_at < now - STALE)
                            .values(status="failed", error="interrupted", finished_at=now)).rowcount
    if stale:
        session.execute(_p.delete().where(_p.c.export_id.in_(
            sa.select(_x.c.id).where(_x.c.status == "failed", _x.c.error == "interrupted"))))
    return {"deleted": len(old), "interrupted": stale}

"""Batches of agent orders: up to 500 lines at once, from the API or a file in the portal.

Per-line results, not all-or-nothing: each line is an order of its own, placed in its
own transaction exactly as `POST /orders` places one (balance, stock, commission), and
the batch answers line by line: the order, or the error that refused the line. A
wholesale buyer ordering 300 products wants the 298 that are in stock, not nothing
because two are sold out; a line that must not go without another is for the agent to
put in one order.

The batch and its lines are stored first, in the transaction that spends the request's
nonce; each line's order writes its line's `order_id` in the order's own transaction
(guarded: a line placed by a concurrent run is never placed twice). So a batch sent
again with the same Idempotency-Key (after a timeout, a crash of either side) places
only the lines not done yet and answers as the first would have; another body behind
the same key is a 409.
"""
from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..database import utcnow
from ..errors import Conflict, InvalidRequest, KamengdError, NotFound
from ..orders.models import Order
from ..vault import Vault
from .auth import Caller, spend_nonce
from .checkout import IDEMPOTENCY_RE, _integer, order_of, parse_backorder, parse_ref, place_agent_order
from .models import AgentBatch, AgentBatchLine

MAX_LINES = 500
MAX_UPLOAD_BYTES = 2 * 1024 * 1024
MAX_UNPACKED_BYTES = 20 * 1024 * 1024   # what 500 lines of an XLSX never need
TEMPLATE_COLUMNS = ("product_id", "quantity", "ref")

_b, _l = AgentBatch.__table__, AgentBatchLine.__table__
_CLAIM_LINE = (_l.update().where(_l.c.id == sa.bindparam("line_id"), _l.c.order_id.is_(None),
                                 _l.c.error_code.is_(None)).values(order_id=sa.bindparam("order_id")))
_FAIL_LINE = (_l.update().where(_l.c.id == sa.bindparam("line_id"), _l.c.order_id.is_(None),
                                _l.c.error_code.is_(None))
              .values(error_code=sa.bindparam("code"), error=sa.bindparam("message")))


@dataclass(frozen=True)
class Line:
    product_id: int
    quantity: int
    ref: str = ""


class _Taken(Exception):
    """The line was placed (or refused) by a concurrent run of the same batch."""


def parse_lines(raw) -> list[Line]:
    """The API's `lines`: [{"product_id", "quantity", "ref"?}, ...], 1 to 500 of them.
    Any malformed line refuses the whole batch (nothing is stored): a batch is placed
    line by line only once every line could be read."""
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest("lines: a list of 1 to %(max)s lines is required", max=MAX_LINES)
    if len(raw) > MAX_LINES:
        raise InvalidRequest("lines: at most %(max)s lines in a batch", max=MAX_LINES)
    lines = []
    for number, item in enumerate(raw, 1):
        if not isinstance(item, dict) or set(item) - {"product_id", "quantity", "ref"}:
            raise InvalidRequest("line %(line)s: an object with product_id, quantity and an optional ref",
                                 line=number)
        try:
            lines.append(Line(_integer(item.get("product_id"), "product_id"),
                              _integer(item.get("quantity"), "quantity"), parse_ref(item.get("ref"))))
        except InvalidRequest as exc:
            raise InvalidRequest("line %(line)s: %(error)s", line=number, error=exc) from None
    return lines


def _digest(lines: list[Line], backorder: bool) -> bytes:
    body = {"backorder": backorder, "lines": [[l.product_id, l.quantity, l.ref] for l in lines]}
    return hashlib.sha256(json.dumps(body, separators=(",", ":")).encode()).digest()


def start_batch(session: Session, caller: Caller, *, idempotency_key, lines: list[Line], backorder=None,
                source: str = "api", filename: str = "", spend: bool = True,
                now: dt.datetime | None = None) -> tuple[int, bool]:
    """(the batch's id, whether it was new). Stores the batch and its lines (and spends the
    request's nonce) in one transaction, committed; the same key with the same lines finds
    the first batch, with other lines: Conflict."""
    if not isinstance(idempotency_key, str) or not IDEMPOTENCY_RE.fullmatch(idempotency_key):
        raise InvalidRequest("Idempotency-Key: a header of 1 to 64 printable characters is required")
    backorder = parse_backorder(backorder)
    digest = _digest(lines, backorder)
    now = now or utcnow()
    earlier = _earlier(session, caller.agent_id, idempotency_key)
    if earlier is None:
        if spend:
            spend_nonce(session, caller, now)
        try:
            batch_id = session.connection().execute(_b.insert().values(
                agent_id=caller.agent_id, idempotency_key=idempotency_key, request_hash=digest, source=source,
                filename=filename[:200], line_count=len(lines), created_at=now)).inserted_primary_key[0]
            session.connection().execute(_l.insert(), [
                {"batch_id": batch_id, "line_no": n, "product_id": l.product_id, "quantity": l.quantity,
                 "ref": l.ref} for n, l in enumerate(lines, 1)])
            session.commit()
            return batch_id, True
        except IntegrityError:   # the same key, stored meanwhile by a concurrent request
            session.rollback()
            earlier = _earlier(session, caller.agent_id, idempotency_key)
            if earlier is None:
                raise
    elif spend:
        spend_nonce(session, caller, now)
        session.commit()
    if bytes(earlier.request_hash) != digest:
        raise Conflict("this Idempotency-Key was used for another batch")
    return earlier.id, False


def _earlier(session: Session, agent_id: int, key: str):
    row = session.execute(sa.select(_b.c.id, _b.c.request_hash).where(
        _b.c.agent_id == agent_id, _b.c.idempotency_key == key)).first()
    session.rollback()   # a read, outside the write lock
    return row


def run_batch(session: Session, vault: Vault, caller: Caller, batch_id: int, *, backorder=None) -> None:
    """Place every line not done yet, each in its own transaction (committed here)."""
    backorder = parse_backorder(backorder)
    todo = session.execute(sa.select(_l.c.id, _l.c.product_id, _l.c.quantity, _l.c.ref).where(
        _l.c.batch_id == batch_id, _l.c.order_id.is_(None), _l.c.error_code.is_(None)).order_by(_l.c.line_no)).all()
    session.rollback()
    for line in todo:
        def claim(order_id: int, line_id=line.id) -> None:
            if session.connection().execute(_CLAIM_LINE, {"line_id": line_id, "order_id": order_id}).rowcount != 1:
                raise _Taken()
        try:
            place_agent_order(session, vault, caller, product_id=line.product_id, quantity=line.quantity,
                              idempotency_key=None, backorder=backorder, ref=line.ref or None, on_placed=claim)
            session.commit()
        except _Taken:
            session.rollback()
        except KamengdError as exc:
            session.rollback()
            session.connection().execute(_FAIL_LINE, {"line_id": line.id, "code": exc.code,
                                                      "message": exc.message[:300]})
            session.commit()
    session.execute(sa.update(AgentBatch).where(AgentBatch.id == batch_id, AgentBatch.finished_at.is_(None))
                    .values(finished_at=utcnow()))
    session.commit()


def batch_of(session: Session, agent_id: int, batch_id) -> AgentBatch:
    ok = isinstance(batch_id, int) and 0 < batch_id < 2**31   # a larger id is no row (and overflows SQLite)
    batch = session.get(AgentBatch, batch_id) if ok else None
    if batch is None or batch.agent_id != agent_id:
        raise NotFound("batch not found")
    return batch


def batch_view(session: Session, vault: Vault, agent_id: int, batch_id) -> dict:
    """The batch as the API answers it: each line with its order (keys once delivered) or its error."""
    batch = batch_of(session, agent_id, batch_id)
    rows = session.execute(sa.select(AgentBatchLine, Order.order_no)
                           .outerjoin(Order, Order.id == AgentBatchLine.order_id)
                           .where(AgentBatchLine.batch_id == batch.id).order_by(AgentBatchLine.line_no)).all()
    lines, placed, failed = [], 0, 0
    for line, order_no in rows:
        item = {"line": line.line_no, "product_id": line.product_id, "quantity": line.quantity, "ref": line.ref}
        if order_no is not None:
            item.update(result="ok", order=order_of(session, vault, agent_id, order_no))
            placed += 1
        elif line.error_code is not None:
            item.update(result="error", error={"code": line.error_code, "message": line.error})
            failed += 1
        else:
            item.update(result="pending")
        lines.append(item)
    return {"batch_id": batch.id, "source": batch.source, "created_at": batch.created_at.isoformat(timespec="seconds")
            + "Z", "finished": batch.finished_at is not None, "lines": lines, "placed": placed, "failed": failed}


def recent_batches(session: Session, agent_id: int, limit: int = 20) -> list[AgentBatch]:
    return session.scalars(sa.select(AgentBatch).where(AgentBatch.agent_id == agent_id)
                           .order_by(AgentBatch.id.desc()).limit(limit)).all()


# --- files: the portal's upload, its template and its result -----------------------------

def read_upload(filename: str, data: bytes) -> list[Line]:
    """The lines of an uploaded CSV or XLSX (columns product_id, quantity, ref; a header row)."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise InvalidRequest("the file is larger than %(max)s MB", max=MAX_UPLOAD_BYTES // (1024 * 1024))
    name = (filename or "").lower()
    rows = _xlsx_rows(data) if name.endswith(".xlsx") else _csv_rows(data)
    if not rows:
        raise InvalidRequest("the file holds no lines")
    header = [str(c or "").strip().lower() for c in rows[0]]
    if header[:2] != ["product_id", "quantity"]:
        raise InvalidRequest("the first row must be the header: product_id, quantity, ref")
    raw = []
    for row in rows[1:]:
        cells = list(row) + [None] * 3
        raw.append({"product_id": _whole(cells[0]), "quantity": _whole(cells[1]),
                    **({"ref": str(cells[2]).strip()} if len(header) > 2 and cells[2] not in (None, "") else {})})
    return parse_lines(raw)


def _whole(value):
    """A cell as an int when it holds a whole number (XLSX gives 3.0, CSV gives '3'); anything
    else as it is, for parse_lines to refuse by name."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    text = value.strip() if isinstance(value, str) else None
    if text and len(text) <= 12 and text.isascii() and text.isdigit():   # never '²' or '١'
        return int(text)
    return value


def _blank(row) -> bool:
    return not any(str(c).strip() for c in row if c is not None)


def _kept(rows) -> list[list]:
    """The non-blank rows, the header and at most MAX_LINES lines: one more is refused (a
    file cut short silently would leave its last orders unplaced)."""
    kept = []
    for row in rows:
        if _blank(row):
            continue
        if len(kept) > MAX_LINES:
            raise InvalidRequest("lines: at most %(max)s lines in a batch", max=MAX_LINES)
        kept.append(list(row))
    return kept


def _csv_rows(data: bytes) -> list[list]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidRequest("the CSV file must be UTF-8") from None
    try:
        return _kept(csv.reader(io.StringIO(text)))
    except csv.Error:   # a field longer than the csv module allows, a NUL byte
        raise InvalidRequest("this CSV file cannot be read (a line too long, or not text)") from None


def _xlsx_rows(data: bytes) -> list[list]:
    from openpyxl import load_workbook   # a tenth of a second to import: only a workbook pays it
    _refuse_inflated(data)
    try:
        book = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
        try:
            return _kept(book.worksheets[0].iter_rows(values_only=True))
        finally:
            book.close()
    except InvalidRequest:
        raise
    except Exception:   # openpyxl raises many kinds (zip, XML, its own) for a file that is not a workbook
        raise InvalidRequest("this is not an XLSX workbook") from None


def _refuse_inflated(data: bytes) -> None:
    """An XLSX is a zip: its parts, unpacked, may be a thousand times the upload (a zip
    bomb). Refused before openpyxl reads them (it reads the shared strings whole)."""
    import zipfile   # only a workbook needs it
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        raise InvalidRequest("this is not an XLSX workbook") from None
    if unpacked > MAX_UNPACKED_BYTES:
        raise InvalidRequest("the workbook unpacks to more than %(max)s MB", max=MAX_UNPACKED_BYTES // (1024 * 1024))


def template_file(kind: str) -> bytes:
    example = [TEMPLATE_COLUMNS, (1, 2, "my-order-1001"), (1, 1, "")]
    return _write(kind, example)


def result_file(view: dict, kind: str) -> bytes:
    """The batch's result: one row per key delivered (or one per line without keys)."""
    rows = [("line", "product_id", "quantity", "ref", "result", "order_no", "status", "amount", "key", "error")]
    for line in view["lines"]:
        order = line.get("order") or {}
        error = line.get("error") or {}
        base = (line["line"], line["product_id"], line["quantity"], line["ref"], line["result"],
                order.get("order_no", ""), order.get("status", ""), order.get("amount", ""))
        keys = order.get("keys") or [""]
        rows += [base + (key, f"{error.get('code')}: {error.get('message')}" if error else "") for key in keys]
    return _write(kind, rows)


def _write(kind: str, rows) -> bytes:
    if kind == "xlsx":
        # A tenth of a second to import: only a workbook pays it.
        from openpyxl import Workbook, cell as cells
        book = Workbook(write_only=True)
        sheet = book.create_sheet()

        def cell(value):
            # openpyxl writes a string that starts with "=" as a formula: a key is text, as it is.
            if isinstance(value, str) and value.startswith("="):
                written = cells.WriteOnlyCell(sheet, value=value)
                written.data_type = "s"
                return written
            return value
        for row in rows:
            sheet.append([cell(c) for c in row])
        out = io.BytesIO()
        book.save(out)
        return out.getvalue()
    out = io.StringIO()
    csv.writer(out).writerows(rows)   # data for the agent's scripts: every value exactly as it is
    return out.getvalue().encode("utf-8-sig")

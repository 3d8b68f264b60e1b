"""Importing and exporting card keys.

An import is one transaction: the whole file goes in, or (on a line that
cannot be read or is too long) nothing does. Keys stream through in batches
written with one executemany each; the database's unique (product,
fingerprint) index drops duplicates, both those already in stock and those
repeated in the file, and the batch's row count tells how many went in.

The panel imports big uploads with import_keys_in_chunks: the whole file is
checked first (so a bad file still imports nothing), then written in parts,
each its own transaction. Its downloads are audited (with the reason staff
gave) before the first key is sent: start_key_export, then
iter_plaintext_keys.
"""
from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import BinaryIO

import sqlalchemy as sa
from sqlalchemy.orm import Session, scoped_session

from ..audit.services import record
from ..catalog.models import Product
from ..catalog.services import get_product
from ..errors import InvalidRequest, KamengdError, NotFound
from ..orders.services import deliver_waiting_orders
from ..vault import FINGERPRINT_BYTES, NONCE_BYTES, Vault
from .importer import ImportFileError, check_key, iter_line_blocks, iter_lines
from ..vouchers.models import VoucherTerms
from .models import KEY_STATUSES, CardKey, KeyImport
from .sealer import Sealers, parallel_readers
from .sealing import HEAD, SealedBatch, seal_blocks, seal_lines

EXPORT_STATUSES = ("available", "sold", "all")
CHUNK_LINES = 50_000          # lines per committed part of a web import
EXPORT_REASON = (5, 500)      # characters a download's reason needs, at least and at most


class ImportInterrupted(KamengdError):
    """A chunked import failed after some of its parts were committed."""
    code = "internal_error"
    http_status = 500


@dataclass
class ImportResult:
    imported: int = 0
    duplicates: int = 0
    blank: int = 0
    encoding: str = ""
    delivered: int = 0  # waiting paid orders delivered from this import
    chunks: int = 1     # committed parts (import_keys_in_chunks)

    def as_dict(self) -> dict:
        return {"imported": self.imported, "duplicates": self.duplicates, "blank": self.blank}


_COLUMNS = ("product_id", "import_id", "status", "ciphertext", "nonce", "key_version", "fingerprint")
# Files this big (bytes left to read) are read and sealed by a child process
# while this one writes (kamengd.inventory.sealer): its start-up costs less
# than the time it saves from about this size on.
SEALER_MIN_BYTES = 4 << 20

# SQLite: batches go into a temporary table first, each with one statement that
# cuts the records apart in the database; at the end one INSERT … SELECT moves
# them into stock. A big import moves them in fingerprint order: the unique
# (product, fingerprint) index is then filled from left to right instead of at
# random, which was most of a million-key import's time. So within an import
# of SORTED_MOVE_MIN keys or more, keys are sold in that order rather than the
# file's; smaller imports keep the file's order; imports are sold oldest first.
SORTED_MOVE_MIN = 100_000
_STAGE = "kamengd_import_stage"
_STAGE_CREATE = f"CREATE TEMP TABLE {_STAGE} (nonce BLOB NOT NULL, fingerprint BLOB NOT NULL, ciphertext BLOB NOT NULL)"
_STAGE_DROP = f"DROP TABLE IF EXISTS temp.{_STAGE}"
_STAGE_BATCH = (f"INSERT INTO temp.{_STAGE} (nonce, fingerprint, ciphertext) "
                f"SELECT substr(:records, (j.value >> 32) + 1, {NONCE_BYTES}), "
                f"substr(:records, (j.value >> 32) + {NONCE_BYTES + 1}, {FINGERPRINT_BYTES}), "
                f"substr(:records, (j.value >> 32) + {HEAD + 1}, j.value & 4294967295) "
                "FROM json_each(:offsets) AS j")
# The sort before the move may use helper threads (SQLite's sorter): the
# sealer processes are done by then, the cores are free.
_SORT_THREADS = "PRAGMA threads={}"
_STAGE_ROWS = f"INSERT INTO temp.{_STAGE} (nonce, fingerprint, ciphertext) VALUES (?, ?, ?)"
_STAGE_MOVE = (f"INSERT INTO card_keys ({', '.join(_COLUMNS)}) "
               f"SELECT :product_id, :import_id, 'available', ciphertext, nonce, :key_version, fingerprint "
               f"FROM temp.{_STAGE} WHERE true ORDER BY {{}} "
               "ON CONFLICT (product_id, fingerprint) DO NOTHING")
# MySQL/MariaDB: rows bound by the driver. Values are generated here
# (fixed-size binaries, bounded ciphertext), so under strict mode the only
# error IGNORE can swallow is the duplicate.
_INSERT_MYSQL = f"INSERT IGNORE INTO card_keys ({', '.join(_COLUMNS)}) VALUES ({', '.join(['%s'] * len(_COLUMNS))})"


def _known_under_older_versions(conn, product_id: int, batch: SealedBatch, versions: int) -> set[int]:
    """Positions in the batch of keys already in stock under an older key version.

    During a key rotation rows carry fingerprints of another key version than
    the one this import writes with: a key already in stock is found by those too.
    """
    t = CardKey.__table__
    per_key = batch.older_fingerprints(versions)
    where = {fp: i for i, fps in enumerate(per_key) for fp in fps}
    known: set[int] = set()
    fps = list(where)
    for start in range(0, len(fps), 2000):
        known.update(where[bytes(fp)] for fp in conn.execute(sa.select(t.c.fingerprint).where(
            t.c.product_id == product_id, t.c.fingerprint.in_(fps[start:start + 2000]))).scalars())
    return known


class _SqliteWriter:
    def __init__(self, conn, product_id: int, import_id: int, key_version: int):
        self._conn, self._params = conn, {"product_id": product_id, "import_id": import_id,
                                          "key_version": key_version}
        conn.exec_driver_sql(_STAGE_DROP)
        conn.exec_driver_sql(_STAGE_CREATE)
        self._staged = 0

    def add(self, batch: SealedBatch, skip: set[int]) -> None:
        if not skip:
            self._conn.exec_driver_sql(_STAGE_BATCH, {"records": batch.records, "offsets": batch.offsets})
            self._staged += batch.keys
        else:
            rows = [row for i, row in enumerate(batch.rows()) if i not in skip]
            if rows:
                self._conn.exec_driver_sql(_STAGE_ROWS, rows)
                self._staged += len(rows)

    def finish(self) -> int:
        if self._staged < SORTED_MOVE_MIN:
            imported = self._conn.exec_driver_sql(_STAGE_MOVE.format("rowid"), self._params).rowcount
        else:
            self._conn.exec_driver_sql(_SORT_THREADS.format(4))
            try:
                imported = self._conn.exec_driver_sql(_STAGE_MOVE.format("fingerprint"), self._params).rowcount
            finally:
                self._conn.exec_driver_sql(_SORT_THREADS.format(0))
        self._conn.exec_driver_sql(_STAGE_DROP)
        return imported


class _MysqlWriter:
    def __init__(self, conn, product_id: int, import_id: int, key_version: int):
        self._conn, self._imported = conn, 0
        self._product_id, self._import_id, self._version = product_id, import_id, key_version

    def add(self, batch: SealedBatch, skip: set[int]) -> None:
        rows = [(self._product_id, self._import_id, "available", ct, nonce, self._version, fp)
                for i, (nonce, fp, ct) in enumerate(batch.rows()) if i not in skip]
        if rows:
            # The statement skips duplicates; its row count is what went in.
            self._imported += self._conn.exec_driver_sql(_INSERT_MYSQL, rows).rowcount

    def finish(self) -> int:
        return self._imported


def _begin_import(session: Session, product_id: int):
    """The import's connection, its product checked (and locked off SQLite)."""
    # As the transaction's first statement: on SQLite, per-row FK checks off
    # (the product is checked below, the import row is ours), a bigger cache.
    real = session() if isinstance(session, scoped_session) else session
    fresh = not real.in_transaction() and not isinstance(real.get_bind(), sa.engine.Connection)
    conn = real.connection(execution_options={"kamengd_bulk": True} if fresh else None)
    get_product(session, product_id)
    if session.get(VoucherTerms, product_id) is not None:
        # A key without a voucher row would be sold and refused at every till.
        raise InvalidRequest("product %(product_id)s is a voucher product: its codes are made by kamengd (kamengd "
                             "voucher generate), never imported", product_id=product_id)
    if conn.dialect.name != "sqlite":
        # A key rotation re-fingerprints this product's keys under the same lock:
        # the duplicate checks below never see a half-rotated product (SQLite's
        # write lock already serialises the two).
        session.execute(sa.select(Product.id).where(Product.id == product_id).with_for_update())
    return conn


def _remaining_bytes(fh: BinaryIO) -> int | None:
    """Bytes from here to the end of a real file; None for anything else."""
    try:
        return os.fstat(fh.fileno()).st_size - fh.tell()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


def import_keys(session: Session, vault: Vault, *, product_id: int, fh: BinaryIO, actor: str,
                encoding: str | None = None, max_key_length: int = 512, batch_size: int = 5000,
                source_ip: str | None = None, sealer_min_bytes: int = SEALER_MIN_BYTES) -> ImportResult:
    """Import one key per line from a seekable binary file. Flushes; the caller commits.

    A big file is read and sealed by child processes (kamengd.inventory.sealer),
    one per core, while this one writes; a smaller one here.
    """
    remaining = _remaining_bytes(fh)
    readers = parallel_readers()
    if remaining is not None and remaining >= sealer_min_bytes and vault.source is not None and readers > 1:
        vault.refresh()
        # Started before the transaction: their start-up overlaps ours.
        with Sealers(vault, fh, count=readers, product_id=product_id, encoding=encoding,
                     max_key_length=max_key_length, batch_size=batch_size) as sealers:
            conn = _begin_import(session, product_id)
            used = sealers.start()
            return _write_keys(session, vault, conn, product_id=product_id, batches=sealers.batches(),
                               encoding=used, actor=actor, source_ip=source_ip)
    conn = _begin_import(session, product_id)
    vault.refresh()   # a rotation may have added a key version since the vault was loaded
    used, blocks = iter_line_blocks(fh, encoding)
    batches = seal_blocks(vault, product_id, blocks, max_key_length=max_key_length, batch_size=batch_size)
    return _write_keys(session, vault, conn, product_id=product_id, batches=batches, encoding=used, actor=actor,
                       source_ip=source_ip)


def _write_keys(session: Session, vault: Vault, conn, *, product_id: int, batches: Iterable[SealedBatch],
                encoding: str, actor: str, source_ip: str | None, details: dict | None = None) -> ImportResult:
    """One import run (a key_imports row, one keys.import entry) of these sealed batches."""
    result = ImportResult(encoding=encoding)
    run = KeyImport(product_id=product_id, actor=actor, encoding=result.encoding)
    session.add(run)
    session.flush()
    older = len([v for v in vault.versions if v != vault.current_version])
    writer = (_SqliteWriter if conn.dialect.name == "sqlite" else _MysqlWriter)(
        conn, product_id, run.id, vault.current_version)
    attempted = 0
    for batch in batches:
        result.blank += batch.blank
        attempted += batch.keys
        if batch.keys:
            writer.add(batch, _known_under_older_versions(conn, product_id, batch, older) if older else set())
    result.imported = writer.finish()
    result.duplicates = attempted - result.imported
    run.imported, run.duplicates, run.blank = result.imported, result.duplicates, result.blank
    if result.imported:
        # Paid orders waiting for this product's stock get their keys now.
        result.delivered = deliver_waiting_orders(session, product_id)
    record(session, "keys.import", actor=actor, target=f"product:{product_id}", source_ip=source_ip,
           details={**result.as_dict(), "encoding": result.encoding, "import_id": run.id,
                    "orders_delivered": result.delivered, **(details or {})})
    return result


@dataclass
class ImportCheck:
    """What the reading pass found: the file is importable as it stands."""
    encoding: str
    lines: int
    keys: int
    blank: int


def check_import_file(fh: BinaryIO, *, encoding: str | None = None, max_key_length: int = 512) -> ImportCheck:
    """Read the whole file once, as an import would, without touching the database.

    Raises ImportFileError for a line that does not decode, a key too long or
    with control characters, or a file without a single key. Leaves ``fh``
    where it found it.
    """
    start = fh.tell()
    used, lines = iter_lines(fh, encoding)
    count = keys = blank = 0
    for count, line in lines:
        key = line.strip()
        if not key:
            blank += 1
            continue
        check_key(count, key, max_key_length)
        keys += 1
    if not keys:
        raise ImportFileError("the file holds no keys (it is empty or every line is blank); nothing imported")
    fh.seek(start)
    return ImportCheck(encoding=used, lines=count, keys=keys, blank=blank)


def import_keys_in_chunks(session: Session, vault: Vault, *, product_id: int, fh: BinaryIO, actor: str,
                          encoding: str | None = None, max_key_length: int = 512, batch_size: int = 5000,
                          chunk_lines: int = CHUNK_LINES, source_ip: str | None = None) -> ImportResult:
    """Check the whole file, then import it `chunk_lines` lines at a time, COMMITTING after each chunk.

    For big uploads in the web panel: SQLite's write lock is held for one
    chunk (about half a second for 50,000 keys), not the whole file, so the
    shop keeps selling during the import. A file that cannot be imported is
    refused by the checking pass before anything is written: all or nothing
    as for import_keys. Should the database fail half-way, the chunks already
    committed stay (each with its key_imports row and its keys.import audit
    entry, which names the chunk: {"chunk": 2, "chunks": 5}); importing the
    same file again adds the rest and counts the others as duplicates.

    Call it outside a transaction (it commits). Returns the totals.
    """
    if chunk_lines < 1:
        raise ValueError("chunk_lines must be at least 1")
    check = check_import_file(fh, encoding=encoding, max_key_length=max_key_length)
    _, lines = iter_lines(fh, check.encoding)   # the encoding the check found: no second detection
    chunks = -(-check.lines // chunk_lines)
    total = ImportResult(encoding=check.encoding)
    for number in range(1, chunks + 1):
        try:
            conn = _begin_import(session, product_id)
            vault.refresh()
            batches = seal_lines(vault, product_id, islice(lines, chunk_lines), max_key_length=max_key_length,
                                 batch_size=batch_size)
            part = _write_keys(session, vault, conn, product_id=product_id, batches=batches,
                               encoding=check.encoding, actor=actor, source_ip=source_ip,
                               details={"chunk": number, "chunks": chunks})
            session.commit()   # one part at a time: the write lock is let go between parts
        except Exception as exc:
            session.rollback()
            if number == 1:
                raise   # nothing was written
            # Parts before this one are committed and on sale: say so, in the audit log too.
            reason = "a database error" if isinstance(exc, sa.exc.SQLAlchemyError) else exc.__class__.__name__
            record(session, "keys.import_incomplete", actor=actor, target=f"product:{product_id}",
                   source_ip=source_ip, details={"part": number, "parts": chunks, "imported": total.imported,
                                                 "reason": reason})
            session.commit()   # the note stays, whatever the request's answer
            if isinstance(exc, sa.exc.SQLAlchemyError):
                raise ImportInterrupted(
                    "the import stopped at part %(part)s of %(parts)s (a database error); %(imported)s keys of "
                    "the parts before it are in stock. Import the same file again: those count as duplicates, "
                    "the rest goes in", part=number, parts=chunks, imported=total.imported) from None
            raise ImportInterrupted(
                "the import stopped at part %(part)s of %(parts)s (%(reason)s); %(imported)s keys of the parts "
                "before it are in stock. Import the same file again: those count as duplicates, the rest goes in",
                part=number, parts=chunks, reason=reason, imported=total.imported) from None
        total.imported += part.imported
        total.duplicates += part.duplicates
        total.blank += part.blank
        total.delivered += part.delivered
    next(lines, None)   # ends the reader (it lets go of fh)
    total.chunks = chunks
    return total


def iter_plaintext_keys(session: Session, vault: Vault, product_id: int,
                        statuses: Iterable[str] | None) -> Iterable[str]:
    t = CardKey.__table__
    query = (sa.select(t.c.product_id, t.c.fingerprint, t.c.nonce, t.c.ciphertext, t.c.key_version)
             .where(t.c.product_id == product_id).order_by(t.c.id))
    if statuses is not None:
        query = query.where(t.c.status.in_(list(statuses)))
    for row in session.execute(query.execution_options(yield_per=2000)):
        yield vault.decrypt_card_key(row.product_id, row.fingerprint, row.nonce, row.ciphertext,
                                     row.key_version).decode("utf-8")


def key_counts(session: Session, product_ids: Iterable[int] | None = None) -> dict[int, dict[str, int]]:
    """{product id: {status: keys}} in one grouped query (every product, or these)."""
    t = CardKey.__table__
    query = sa.select(t.c.product_id, t.c.status, sa.func.count()).group_by(t.c.product_id, t.c.status)
    if product_ids is not None:
        ids = list(product_ids)
        if not ids:
            return {}
        query = query.where(t.c.product_id.in_(ids))
    counts: dict[int, dict[str, int]] = {}
    for product_id, status, n in session.execute(query):
        counts.setdefault(product_id, {})[status] = n
    return counts


def export_statuses(status: str) -> list[str] | None:
    """The key statuses an export of `status` holds (None: every key)."""
    if status not in EXPORT_STATUSES:
        raise InvalidRequest("status: must be one of %(statuses)s", statuses=", ".join(EXPORT_STATUSES))
    return None if status == "all" else [status]


def start_key_export(session: Session, *, product_id: int, status: str, reason: str, actor: str,
                     source_ip: str | None = None) -> int:
    """Audit a download of plaintext keys before it starts; returns how many keys it holds.

    The caller commits, and only then streams iter_plaintext_keys: no key
    leaves unless the entry naming who took them, and why, is stored. The
    count is the one at this moment (a key sold meanwhile may still change
    status before the stream reaches it).
    """
    statuses = export_statuses(status)
    reason = " ".join((reason or "").split())
    low, high = EXPORT_REASON
    if len(reason) < low:
        raise InvalidRequest("reason: say why the keys are downloaded (at least %(low)s characters)", low=low)
    if len(reason) > high:
        raise InvalidRequest("reason: at most %(high)s characters", high=high)
    get_product(session, product_id)
    query = sa.select(sa.func.count()).select_from(CardKey).where(CardKey.product_id == product_id)
    if statuses is not None:
        query = query.where(CardKey.status.in_(statuses))
    count = session.scalar(query)
    record(session, "keys.export", actor=actor, target=f"product:{product_id}", source_ip=source_ip,
           details={"status": status, "count": count, "reason": reason, "via": "panel download"})
    return count


@dataclass
class ExportResult:
    count: int
    output: Path
    _tmp: Path | None = field(default=None, repr=False)

    def finish(self) -> None:
        """Move the file into place; call after the audit entry is committed."""
        if self._tmp is not None:
            os.replace(self._tmp, self.output)
            self._tmp = None

    def discard(self) -> None:
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None


def export_keys(session: Session, vault: Vault, *, product_id: int, output: Path, actor: str,
                status: str = "available", source_ip: str | None = None) -> ExportResult:
    """Write plaintext keys to a private temporary file beside ``output`` and audit it.

    The caller commits, then calls ``finish()``: no key file appears unless
    the audit entry recording it was committed.
    """
    statuses = export_statuses(status)
    get_product(session, product_id)
    output = Path(output).absolute()
    if output.is_dir():
        raise InvalidRequest("output: %(output)s is a directory", output=output)
    if not output.parent.is_dir():
        raise InvalidRequest("output: directory %(parent)s does not exist", parent=output.parent)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=".kamengd-export-", dir=output.parent)  # mode 0600
    except OSError as exc:
        raise InvalidRequest("output: cannot write in %(parent)s: %(strerror)s",
                             parent=output.parent, strerror=exc.strerror) from None
    tmp = Path(tmp_name)
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            for key in iter_plaintext_keys(session, vault, product_id, statuses):
                fh.write(key)
                fh.write("\n")
                count += 1
            fh.flush()
            os.fsync(fh.fileno())
        record(session, "keys.export", actor=actor, target=f"product:{product_id}", source_ip=source_ip,
               details={"status": status, "count": count, "output": str(output)})
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return ExportResult(count=count, output=output, _tmp=tmp)


# --- looking at keys and taking a batch back -----------------------------------

KEYS_PAGE = 50


def mask_key(key: str) -> str:
    """Enough of a key to recognise it by, never enough to use it: at most a fifth at
    each end, at most four characters, the rest dots."""
    keep = min(4, len(key) // 5)
    return key[:keep] + "•" * max(4, len(key) - 2 * keep) + (key[-keep:] if keep else "")


def list_keys(session: Session, vault: Vault, product_id: int, *, status: str = "", import_id: int | None = None,
              page: int = 1, page_size: int = KEYS_PAGE) -> tuple[list[dict], int]:
    """One page of a product's keys, masked (decrypted in memory for the mask only), newest
    first, with status, batch and order; and how many match."""
    t = CardKey.__table__
    where = [t.c.product_id == product_id]
    if status in KEY_STATUSES:
        where.append(t.c.status == status)
    if import_id is not None:
        where.append(t.c.import_id == import_id)
    total = session.scalar(sa.select(sa.func.count()).select_from(t).where(*where))
    rows = session.execute(sa.select(t.c.id, t.c.status, t.c.import_id, t.c.order_id, t.c.sold_at, t.c.fingerprint,
                                     t.c.nonce, t.c.ciphertext, t.c.key_version).where(*where)
                           .order_by(t.c.id.desc()).limit(page_size).offset((max(page, 1) - 1) * page_size)).all()
    keys = []
    for row in rows:
        plain = vault.decrypt_card_key(product_id, row.fingerprint, row.nonce, row.ciphertext, row.key_version)
        keys.append({"id": row.id, "masked": mask_key(plain.decode("utf-8", "replace")), "status": row.status,
                     "import_id": row.import_id, "order_id": row.order_id, "sold_at": row.sold_at})
    return keys, total


def import_batches(session: Session, product_id: int, limit: int = 200) -> list[tuple[KeyImport, dict[str, int]]]:
    """The product's import runs, newest first, each with its keys counted by status."""
    runs = session.scalars(sa.select(KeyImport).where(KeyImport.product_id == product_id)
                           .order_by(KeyImport.id.desc()).limit(limit)).all()
    t = CardKey.__table__
    counts: dict[int, dict[str, int]] = {}
    if runs:
        for import_id, status, n in session.execute(
                sa.select(t.c.import_id, t.c.status, sa.func.count())
                .where(t.c.product_id == product_id, t.c.import_id.in_([r.id for r in runs]))
                .group_by(t.c.import_id, t.c.status)):
            counts.setdefault(import_id, {})[status] = n
    return [(run, counts.get(run.id, {})) for run in runs]


def void_batch(session: Session, *, product_id: int, import_id: int, reason: str, actor: str,
               source_ip: str | None = None) -> dict[str, int]:
    """Take a wrongly imported batch off sale: its available keys become `void` (never
    sold, never exported as available). Keys already reserved or sold are left as they
    are (a buyer has or is paying for them): counted, for the staff to see. Audited."""
    reason = (reason or "").strip()
    if not reason:
        raise InvalidRequest("reason: required")
    if len(reason) > 500:
        raise InvalidRequest("reason: at most 500 characters")
    run = session.get(KeyImport, import_id) if 0 < import_id < 2 ** 31 else None
    if run is None or run.product_id != product_id:
        raise NotFound("import %(import_id)s of product %(product_id)s not found",
                       import_id=import_id, product_id=product_id)
    t = CardKey.__table__
    voided = session.execute(t.update().where(t.c.product_id == product_id, t.c.status == "available",
                                              t.c.import_id == import_id).values(status="void")).rowcount
    left = dict(session.execute(sa.select(t.c.status, sa.func.count()).where(
        t.c.product_id == product_id, t.c.import_id == import_id, t.c.status.in_(("reserved", "sold")))
        .group_by(t.c.status)).all())
    result = {"voided": voided, "reserved": left.get("reserved", 0), "sold": left.get("sold", 0)}
    record(session, "keys.void", actor=actor, target=f"product:{product_id}", source_ip=source_ip,
           details={"import_id": import_id, "reason": reason, **result})
    return result

"""Importing and exporting card keys.

An import is one transaction: the whole file goes in, or (on a line that
cannot be read or is too long) nothing does. Keys stream through in batches
written with one executemany each; the database's unique (product,
fingerprint) index drops duplicates, both those already in stock and those
repeated in the file, and the batch's row count tells how many went in.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import sqlalchemy as sa
from sqlalchemy.orm import Session, scoped_session

from ..audit.services import record
from ..catalog.models import Product
from ..catalog.services import get_product
from ..errors import InvalidRequest
from ..vault import NONCE_BYTES, Vault
from .importer import check_key, iter_lines
from .models import CardKey, KeyImport

EXPORT_STATUSES = ("available", "sold", "all")


@dataclass
class ImportResult:
    imported: int = 0
    duplicates: int = 0
    blank: int = 0
    encoding: str = ""
    delivered: int = 0  # waiting paid orders delivered from this import

    def as_dict(self) -> dict:
        return {"imported": self.imported, "duplicates": self.duplicates, "blank": self.blank}


_COLUMNS = ("product_id", "import_id", "status", "ciphertext", "nonce", "key_version", "fingerprint")


def _insert_sql(dialect_name: str) -> str:
    """One parameterised INSERT that skips rows whose (product, fingerprint) exists.

    Written for the driver directly: at a million rows SQLAlchemy's per-row
    parameter processing costs more than the insert itself.
    """
    cols = ", ".join(_COLUMNS)
    if dialect_name == "sqlite":
        return (f"INSERT INTO card_keys ({cols}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
                "ON CONFLICT (product_id, fingerprint) DO NOTHING")
    # Values are generated here (fixed-size binaries, bounded ciphertext), so
    # under strict mode the only error IGNORE can swallow is the duplicate.
    return f"INSERT IGNORE INTO card_keys ({cols}) VALUES ({', '.join(['%s'] * len(_COLUMNS))})"


def _not_stored_under_older_versions(conn, vault: Vault, product_id: int, keys: list[str]) -> list[str]:
    """During a key rotation rows carry fingerprints of another key version than
    the one this import writes with: a key already in stock is found by those too."""
    older = [v for v in vault.versions if v != vault.current_version]
    if not older or not keys:
        return keys
    t = CardKey.__table__
    by_fp = {vault.fingerprint(product_id, k.encode("utf-8"), v): k for k in keys for v in older}
    known = set()
    fps = list(by_fp)
    for start in range(0, len(fps), 2000):
        known.update(by_fp[bytes(fp)] for fp in conn.execute(sa.select(t.c.fingerprint).where(
            t.c.product_id == product_id, t.c.fingerprint.in_(fps[start:start + 2000]))).scalars())
    return [k for k in keys if k not in known]


def _encrypt_batch(vault: Vault, product_id: int, import_id: int, keys: list[str]) -> list[tuple]:
    fingerprint, encrypt = vault.fingerprint, vault.encrypt_card_key
    nonces = os.urandom(NONCE_BYTES * len(keys))
    rows = []
    for i, key in enumerate(keys):
        plaintext = key.encode("utf-8")
        fp = fingerprint(product_id, plaintext)
        nonce, ct, version = encrypt(product_id, plaintext, fp, nonces[i * NONCE_BYTES:(i + 1) * NONCE_BYTES])
        rows.append((product_id, import_id, "available", ct, nonce, version, fp))
    return rows


def import_keys(session: Session, vault: Vault, *, product_id: int, fh: BinaryIO, actor: str,
                encoding: str | None = None, max_key_length: int = 512, batch_size: int = 5000,
                source_ip: str | None = None) -> ImportResult:
    """Import one key per line from a seekable binary file. Flushes; the caller commits."""
    # As the transaction's first statement: on SQLite, per-row FK checks off
    # (the product is checked below, the import row is ours), a bigger cache.
    real = session() if isinstance(session, scoped_session) else session
    fresh = not real.in_transaction() and not isinstance(real.get_bind(), sa.engine.Connection)
    conn = real.connection(execution_options={"kamengd_bulk": True} if fresh else None)
    get_product(session, product_id)
    if conn.dialect.name != "sqlite":
        # A key rotation re-fingerprints this product's keys under the same lock:
        # the duplicate checks below never see a half-rotated product (SQLite's
        # write lock already serialises the two).
        session.execute(sa.select(Product.id).where(Product.id == product_id).with_for_update())
    result = ImportResult()
    result.encoding, lines = iter_lines(fh, encoding)
    run = KeyImport(product_id=product_id, actor=actor, encoding=result.encoding)
    session.add(run)
    session.flush()
    sql = _insert_sql(conn.dialect.name)
    attempted = 0
    batch: list[str] = []

    def write_batch():
        nonlocal attempted
        attempted += len(batch)
        vault.refresh()   # a rotation may have added a key version since the import began
        fresh = _not_stored_under_older_versions(conn, vault, product_id, batch)
        # The statement skips duplicates; its row count is what went in.
        if fresh:
            result.imported += conn.exec_driver_sql(sql, _encrypt_batch(vault, product_id, run.id, fresh)).rowcount
        batch.clear()

    for lineno, line in lines:
        key = line.strip()
        if not key:
            result.blank += 1
            continue
        check_key(lineno, key, max_key_length)
        batch.append(key)
        if len(batch) >= batch_size:
            write_batch()
    if batch:
        write_batch()
    result.duplicates = attempted - result.imported
    run.imported, run.duplicates, run.blank = result.imported, result.duplicates, result.blank
    if result.imported:
        # Paid orders waiting for this product's stock get their keys now.
        from ..orders.services import deliver_waiting_orders
        result.delivered = deliver_waiting_orders(session, product_id)
    record(session, "keys.import", actor=actor, target=f"product:{product_id}", source_ip=source_ip,
           details={**result.as_dict(), "encoding": result.encoding, "import_id": run.id,
                    "orders_delivered": result.delivered})
    return result


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
    if status not in EXPORT_STATUSES:
        raise InvalidRequest(f"status: must be one of {', '.join(EXPORT_STATUSES)}")
    get_product(session, product_id)
    output = Path(output).absolute()
    if output.is_dir():
        raise InvalidRequest(f"output: {output} is a directory")
    if not output.parent.is_dir():
        raise InvalidRequest(f"output: directory {output.parent} does not exist")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=".kamengd-export-", dir=output.parent)  # mode 0600
    except OSError as exc:
        raise InvalidRequest(f"output: cannot write in {output.parent}: {exc.strerror}") from None
    tmp = Path(tmp_name)
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            for key in iter_plaintext_keys(session, vault, product_id,
                                           None if status == "all" else [status]):
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

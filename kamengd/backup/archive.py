"""Backup archives: one consistent snapshot of the database, in a portable row format.

An archive is a tar.gz (optionally sealed with a passphrase, see sealed.py):

    manifest.json          format, kamengd version, schema revision, tables
                           in insertion order with row counts and the SHA-256
                           of each member
    tables/<name>.jsonl    a JSON list of the column names, then one JSON
                           list of values per row, in primary-key order

Values are JSON; bytes, datetimes and dates are tagged ({"b": base64},
{"t": iso}, {"d": iso}), so a SQLite backup restores into MySQL and back.
Card keys stay as they are in the database: ciphertexts. The data key is
never in an archive.

The snapshot: SQLite's online backup API copies the database to a private
temporary file first (the shop keeps selling meanwhile); MySQL is read in
one REPEATABLE READ transaction WITH CONSISTENT SNAPSHOT.
"""
from __future__ import annotations

import base64
import datetime as dt
import errno
import hashlib
import io
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from ..version import __version__
from ..database import make_engine, utcnow
from ..errors import KamengdError
from ..operations.schema import current_revision
from ..operations.snapshot import sqlite_path
from .sealed import OpeningReader, SealedError, SealingWriter, is_sealed

FORMAT, FORMAT_VERSION = "kamengd-backup", 1
# Runtime state, not data: the leader lease is recreated by the migrations,
# running servers register themselves.
SKIPPED_TABLES = {"alembic_version", "scheduler_lease", "server_processes"}
Progress = Callable[[str, int, int], None]   # (table, rows done, rows in all)


class BackupError(KamengdError):
    pass


def encode(value):
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"b": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, dt.datetime):
        return {"t": value.isoformat()}
    if isinstance(value, dt.date):
        return {"d": value.isoformat()}
    if isinstance(value, float):
        raise BackupError("a floating-point value in the database: kamengd stores none")
    return value


def decode(value):
    if isinstance(value, dict):
        if "b" in value:
            return base64.b64decode(value["b"])
        if "t" in value:
            return dt.datetime.fromisoformat(value["t"])
        if "d" in value:
            return dt.date.fromisoformat(value["d"])
        raise BackupError("an unknown value in the archive")
    return value


@contextmanager
def snapshot_connection(url: str, workdir: Path):
    """A connection that sees one consistent state of the whole database."""
    path = sqlite_path(url)
    if path is not None:
        copy = workdir / "snapshot.db"
        source = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        target = sqlite3.connect(copy)
        try:
            source.backup(target)   # one step: a consistent copy, writers are not blocked (WAL)
        finally:
            target.close()
            source.close()
        engine = make_engine(f"sqlite:///{copy}", pooled=False)
        try:
            with engine.connect() as conn:
                yield conn
        finally:
            engine.dispose()
        return
    engine = make_engine(url, pooled=False)
    try:
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            conn.exec_driver_sql("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            try:
                yield conn
            finally:
                if not conn.invalidated:   # a lost connection has nothing to end; its error goes up
                    conn.exec_driver_sql("COMMIT")
    finally:
        engine.dispose()


def _tables(conn) -> list[sa.Table]:
    meta = sa.MetaData()
    meta.reflect(bind=conn)
    return [t for t in meta.sorted_tables if t.name not in SKIPPED_TABLES]


WORKDIR_PREFIX = ".kamengd-backup-"


def _remove_stale_workdirs(directory: Path, older_than: float = 6 * 3600) -> None:
    """A backup killed outright (SIGKILL, out of memory) leaves its work directory
    (mode 0700) behind; the next backup in the same place removes it."""
    for path in directory.glob(WORKDIR_PREFIX + "*"):
        try:
            if path.is_dir() and time.time() - path.stat().st_mtime > older_than:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


@dataclass
class BackupResult:
    path: Path
    manifest: dict
    bytes: int


def write_backup(url: str, output: Path, *, passphrase: str | None = None,
                 progress: Progress | None = None) -> BackupResult:
    """Write the archive to `output` (a new file, mode 0600); never a partial file on failure."""
    output = Path(output)
    if output.exists():
        raise BackupError(f"{output} already exists; choose a new file name")
    if not output.parent.is_dir():
        raise BackupError(f"{output.parent} is not a directory")
    _remove_stale_workdirs(output.parent)
    workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX, dir=output.parent))
    partial = workdir / "archive.part"
    try:
        with snapshot_connection(url, workdir) as conn:
            revision = current_revision(conn)
            if revision is None:
                raise BackupError("the database has no kamengd schema")
            tables = _tables(conn)
            totals = {t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one() for t in tables}
            grand, done = sum(totals.values()), 0
            manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "kamengd_version": __version__,
                        "schema_revision": revision, "created_at": utcnow().isoformat(timespec="seconds") + "Z",
                        "source": conn.dialect.name, "tables": []}
            for table in tables:
                member = workdir / f"{table.name}.jsonl"
                digest, rows = hashlib.sha256(), 0
                with open(member, "wb") as fh:
                    line = (json.dumps([c.name for c in table.columns]) + "\n").encode()
                    fh.write(line)
                    digest.update(line)
                    order = list(table.primary_key.columns) or list(table.columns)
                    result = conn.execution_options(stream_results=True, yield_per=2000).execute(
                        sa.select(*table.columns).order_by(*order))
                    for row in result:
                        line = (json.dumps([encode(v) for v in row], ensure_ascii=False,
                                           separators=(",", ":")) + "\n").encode()
                        fh.write(line)
                        digest.update(line)
                        rows += 1
                        if progress and rows % 10000 == 0:
                            progress(table.name, done + rows, grand)
                done += rows
                if progress:
                    progress(table.name, done, grand)
                manifest["tables"].append({"name": table.name, "rows": rows, "member": f"tables/{table.name}.jsonl",
                                           "sha256": digest.hexdigest(), "bytes": member.stat().st_size})
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as raw:
            sink = SealingWriter(raw, passphrase, b"A") if passphrase else raw
            with tarfile.open(fileobj=sink, mode="w|gz", format=tarfile.PAX_FORMAT) as tar:
                body = json.dumps(manifest, indent=2, ensure_ascii=False).encode()
                _add(tar, "manifest.json", body)
                for entry in manifest["tables"]:
                    path = workdir / f"{entry['name']}.jsonl"
                    info = tarfile.TarInfo(entry["member"])
                    info.size, info.mode, info.mtime = path.stat().st_size, 0o600, int(utcnow().timestamp())
                    with open(path, "rb") as fh:
                        tar.addfile(info, fh)
                    path.unlink()
            if passphrase:
                sink.close()
            raw.flush()
            os.fsync(raw.fileno())
        try:
            os.link(partial, output)   # never replaces a file that appeared meanwhile
        except FileExistsError:
            raise BackupError(f"{output} already exists; choose a new file name") from None
        return BackupResult(output, manifest, output.stat().st_size)
    except (OSError, sqlite3.OperationalError) as exc:
        if not _out_of_space(exc):
            raise
        raise BackupError(f"no space left in {output.parent} for the backup; nothing was written") from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _out_of_space(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return "disk is full" in str(exc)   # SQLite writing the snapshot copy


def _add(tar: tarfile.TarFile, name: str, body: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(body), 0o600, int(utcnow().timestamp())
    tar.addfile(info, io.BytesIO(body))


class BackupReader:
    """Reads an archive, plain or sealed; every pass streams the file again."""

    def __init__(self, path: Path, passphrase: str | None = None):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as fh:
                self.sealed = is_sealed(fh.read(64))
        except OSError as exc:
            raise BackupError(f"cannot read {self.path}: {exc.strerror}") from None
        self.passphrase = passphrase
        self.manifest: dict | None = None

    @contextmanager
    def _tar(self):
        if self.sealed and not self.passphrase:
            raise BackupError(f"{self.path} is protected by a passphrase (give --passphrase-file)")
        with open(self.path, "rb") as raw:
            source = OpeningReader(raw, self.passphrase, b"A") if self.sealed else raw
            try:
                with tarfile.open(fileobj=source, mode="r|gz") as tar:
                    yield tar
            except SealedError as exc:
                raise BackupError(f"{self.path}: {exc.message}") from None
            except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
                raise BackupError(f"{self.path} is not a readable kamengd backup "
                                  f"(damaged or truncated: {' '.join(str(exc).split()) or type(exc).__name__})") from None

    def verify(self) -> dict:
        """Check the manifest and every member's checksum and row count; touches nothing."""
        seen = {}
        with self._tar() as tar:
            for info in tar:
                if not info.isfile():
                    continue
                fh = tar.extractfile(info)
                if info.name == "manifest.json":
                    try:
                        manifest = json.loads(fh.read(10 * 1024 * 1024))
                    except ValueError:
                        raise BackupError(f"{self.path}: the manifest is not JSON") from None
                    self._check_manifest(manifest)
                    self.manifest = manifest
                    continue
                digest, lines = hashlib.sha256(), 0
                while block := fh.read(1 << 20):
                    digest.update(block)
                    lines += block.count(b"\n")
                seen[info.name] = (digest.hexdigest(), lines - 1)
        if self.manifest is None:
            raise BackupError(f"{self.path} has no manifest.json: not a kamengd backup")
        for entry in self.manifest["tables"]:
            found = seen.pop(entry["member"], None)
            if found is None:
                raise BackupError(f"{self.path}: {entry['member']} is missing")
            if found[0] != entry["sha256"] or found[1] != entry["rows"]:
                raise BackupError(f"{self.path}: {entry['member']} does not match its checksum "
                                  "(the backup was altered or damaged)")
        if seen:
            raise BackupError(f"{self.path}: unexpected member {sorted(seen)[0]}")
        return self.manifest

    def _check_manifest(self, manifest) -> None:
        ok = (isinstance(manifest, dict) and manifest.get("format") == FORMAT
              and isinstance(manifest.get("tables"), list) and isinstance(manifest.get("schema_revision"), str)
              and all(isinstance(t, dict) and {"name", "rows", "member", "sha256"} <= set(t)
                      for t in manifest["tables"]))
        if not ok:
            raise BackupError(f"{self.path}: not a kamengd backup manifest")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise BackupError(f"{self.path}: backup format {manifest.get('format_version')} is not supported "
                              f"by kamengd {__version__}")

    def rows(self) -> Iterator[tuple[str, list[str], Iterator[list]]]:
        """(table, columns, rows) per table, in the archive's (foreign-key) order. Call verify() first."""
        with self._tar() as tar:
            for info in tar:
                if not info.isfile() or info.name == "manifest.json":
                    continue
                fh = tar.extractfile(info)
                columns = json.loads(fh.readline())
                name = info.name.removeprefix("tables/").removesuffix(".jsonl")
                yield name, columns, (json.loads(line) for line in fh)

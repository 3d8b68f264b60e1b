"""Restore an archive into the configured database.

Everything that can be checked is checked before anything is touched: the
manifest and every checksum, that the code knows the backup's schema (a
backup from a newer kamengd is refused), that the data key opens the
backup's card keys, that the target holds no shop data (unless --force) and
that no scheduler is running on it. Then the schema is created at the
backup's revision, the rows are loaded, and the migrations bring it to head.
SQLite is rebuilt in a new file that replaces the old one only at the end;
MySQL tables are dropped and rebuilt in place. Afterwards every card key is
decrypted once, and the count is reported.
"""
from __future__ import annotations

import datetime as dt
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from alembic.script import ScriptDirectory

from ..audit.services import seal_message
from ..database import make_engine, utcnow
from ..operations.processes import live_servers
from ..operations.schema import alembic_config, upgrade
from ..operations.snapshot import sqlite_path
from ..vault import DecryptionError, Vault
from ..version import __version__
from .archive import SKIPPED_TABLES, BackupError, BackupReader, Progress, decode

# Tables whose rows make a database "not empty": a fresh `kamengd install` has none.
SHOP_TABLES = ("products", "card_keys", "orders", "payments", "payment_channels")
BATCH = 5000


@dataclass
class RestoreResult:
    manifest: dict
    revision_before: str
    revision_after: str
    keys_checked: int
    rows: int


def revision_order() -> list[str]:
    script = ScriptDirectory.from_config(alembic_config())
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


def check_revision(manifest: dict) -> None:
    order = revision_order()
    if manifest["schema_revision"] not in order:
        raise BackupError(f"the backup's schema {manifest['schema_revision']} is newer than this kamengd "
                          f"({__version__}, schema {order[-1]}): upgrade kamengd first")


def check_keys(reader: BackupReader, vault: Vault, per_version: int = 5) -> int:
    """Before anything changes: the key file must hold every key version the backup
    uses and open a sample of each (card keys), every channel, 2FA and setting secret and the audit
    seal. The wrong key file is refused here, not after the tables were replaced."""
    checked, tried = 0, {}
    for table, columns, rows in reader.rows():
        col = {name: i for i, name in enumerate(columns)}
        try:
            for row in rows:
                value = {name: decode(row[i]) for name, i in col.items()}
                if table == "card_keys":
                    version = value["key_version"]
                    if tried.get(version, 0) >= per_version:
                        continue
                    tried[version] = tried.get(version, 0) + 1
                    vault.decrypt_card_key(value["product_id"], value["fingerprint"], value["nonce"],
                                           value["ciphertext"], version)
                    checked += 1
                elif table == "payment_channels" and value.get("secret_ciphertext") is not None:
                    vault.decrypt_secret(f"channel:{value['code']}", value["secret_nonce"],
                                         value["secret_ciphertext"], value["secret_key_version"])
                elif table == "staff_users" and value.get("totp_ciphertext") is not None:
                    vault.decrypt_secret(f"staff-totp:{value['id']}", value["totp_nonce"],
                                         value["totp_ciphertext"], value["totp_key_version"])
                elif table == "setting_secrets":
                    vault.decrypt_secret(f"setting:{value['key']}", value["nonce"], value["ciphertext"],
                                         value["key_version"])
                elif table == "audit_head" and value.get("seal"):
                    expected = vault.seal(seal_message(value["seq"], value["last_hash"]), value["seal_version"])
                    if not hmac.compare_digest(expected, value["seal"]):
                        raise DecryptionError("the audit log's seal does not match this key")
        except DecryptionError as exc:
            raise BackupError(f"the data key file does not open this backup ({table}: {exc.message}); install "
                              "the matching key first: kamengd key restore KEYBACKUP") from None
    return checked


def _business_rows(conn) -> int:
    names = set(sa.inspect(conn).get_table_names())
    return sum(conn.execute(sa.text(f"SELECT COUNT(*) FROM {t}")).scalar_one() for t in SHOP_TABLES if t in names)


def _running_scheduler(conn, lease_seconds: int) -> str | None:
    if "scheduler_lease" not in sa.inspect(conn).get_table_names():
        return None
    row = conn.execute(sa.text("SELECT owner, heartbeat_at FROM scheduler_lease WHERE owner IS NOT NULL")).first()
    if row is None or row.heartbeat_at is None:
        return None
    beat = row.heartbeat_at if isinstance(row.heartbeat_at, dt.datetime) else dt.datetime.fromisoformat(
        str(row.heartbeat_at))
    return row.owner if (utcnow() - beat).total_seconds() < 2 * lease_seconds else None


def running_kamengd(conn, lease_seconds: int | None) -> str | None:
    """A scheduler or `kamengd serve` that is alive on this database, described; else None."""
    servers = live_servers(conn)
    if servers:
        return f"`kamengd serve` {servers[0]}"
    owner = _running_scheduler(conn, lease_seconds) if lease_seconds else None
    return f"scheduler {owner}" if owner else None


def running_on(url: str, lease_seconds: int | None) -> str | None:
    engine = make_engine(url, pooled=False)
    try:
        with engine.connect() as conn:
            return running_kamengd(conn, lease_seconds)
    finally:
        engine.dispose()


def check_target(url: str, *, force: bool, lease_seconds: int | None) -> None:
    """Refuse a database kamengd is running on (lease_seconds=None skips that check:
    `kamengd upgrade` checked it and puts its own backup back) or one with shop
    data, unless forced."""
    engine = make_engine(url, pooled=False)
    try:
        with engine.connect() as conn:
            running = running_kamengd(conn, lease_seconds) if lease_seconds else None
            if running:
                raise BackupError(f"kamengd is running on this database ({running}); stop every "
                                  "`kamengd serve` and `kamengd scheduler` first")
            if not force and _business_rows(conn):
                raise BackupError("the database already holds shop data; restoring replaces all of it: "
                                  "add --force to do so")
    finally:
        engine.dispose()


def _drop_everything(conn) -> None:
    names = sa.inspect(conn).get_table_names()
    if conn.dialect.name == "sqlite":
        return
    conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 0")
    for name in names:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS `{name}`")
    conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 1")


def _load(url: str, reader: BackupReader, progress: Progress | None) -> int:
    engine = make_engine(url, foreign_keys=False, pooled=False)
    total = sum(t["rows"] for t in reader.manifest["tables"])
    done = 0
    try:
        with engine.begin() as conn:
            meta = sa.MetaData()
            meta.reflect(bind=conn)
            # Seed rows the migrations wrote (the audit head) give way to the backup's.
            for table in reversed(meta.sorted_tables):
                if table.name not in SKIPPED_TABLES:
                    conn.execute(table.delete())
            for name, columns, rows in reader.rows():
                table = meta.tables.get(name)
                if table is None or any(c not in table.c for c in columns):
                    raise BackupError(f"the backup's table {name} does not match schema "
                                      f"{reader.manifest['schema_revision']}")
                batch = []
                for row in rows:
                    batch.append(dict(zip(columns, (decode(v) for v in row))))
                    if len(batch) >= BATCH:
                        conn.execute(table.insert(), batch)
                        done += len(batch)
                        batch = []
                        if progress:
                            progress(name, done, total)
                if batch:
                    conn.execute(table.insert(), batch)
                    done += len(batch)
                if progress:
                    progress(name, done, total)
    finally:
        engine.dispose()
    return done


def count_decryptable(url: str, vault: Vault) -> tuple[int, int]:
    """(keys that decrypt, keys that do not): every card key, once."""
    engine = make_engine(url, pooled=False)
    good = bad = 0
    try:
        with engine.connect() as conn:
            rows = conn.execution_options(stream_results=True, yield_per=5000).execute(sa.text(
                "SELECT product_id, fingerprint, nonce, ciphertext, key_version FROM card_keys"))
            for r in rows:
                try:
                    vault.decrypt_card_key(r.product_id, bytes(r.fingerprint), bytes(r.nonce), bytes(r.ciphertext),
                                           r.key_version)
                    good += 1
                except DecryptionError:
                    bad += 1
    finally:
        engine.dispose()
    return good, bad


def restore_backup(url: str, reader: BackupReader, vault: Vault, *, force: bool, lease_seconds: int | None,
                   progress: Progress | None = None, to_head: bool = True) -> RestoreResult:
    """Restore, then migrate to head (`to_head=False` keeps the backup's schema: undoing a failed upgrade)."""
    manifest = reader.manifest or reader.verify()
    check_revision(manifest)
    check_keys(reader, vault)
    check_target(url, force=force, lease_seconds=lease_seconds)
    revision = manifest["schema_revision"]
    db_path = sqlite_path(url)
    if db_path is not None:
        building = db_path.with_name(f".{db_path.name}.restoring")
        for leftover in (building, Path(f"{building}-wal"), Path(f"{building}-shm")):
            leftover.unlink(missing_ok=True)
        os.close(os.open(building, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        target = f"sqlite:///{building}"
    else:
        target = url
        engine = make_engine(url, pooled=False)
        try:
            with engine.begin() as conn:
                _drop_everything(conn)
        finally:
            engine.dispose()
    try:
        upgrade(target, revision)
        rows = _load(target, reader, progress)
        after = upgrade(target, "head")[1] if to_head else revision
        good, bad = count_decryptable(target, vault)
        if bad:
            raise BackupError(f"{bad} of {good + bad} card keys do not decrypt with this key file")
    except (BackupError, KeyboardInterrupt):
        if db_path is not None:
            building.unlink(missing_ok=True)
        raise
    except Exception as exc:
        if db_path is not None:
            building.unlink(missing_ok=True)
            raise BackupError(f"restore failed, the database is unchanged: {' '.join(str(exc).split())}") from None
        raise BackupError(f"restore failed midway, the database is incomplete; run the restore again: "
                          f"{' '.join(str(exc).split())}") from None
    if db_path is not None:
        if db_path.exists() and os.geteuid() == 0:  # the service user must still own it when root restores
            st = db_path.stat()
            os.chown(building, st.st_uid, st.st_gid)
        os.replace(building, db_path)
        # A write-ahead log left by the old file would be replayed into the new one.
        for suffix in ("-wal", "-shm"):
            Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    return RestoreResult(manifest, revision, after, good, rows)

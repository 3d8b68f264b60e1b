from __future__ import annotations

import click

from ..audit.services import cli_actor, record
from ..backup.archive import BackupReader
from ..backup.restore import restore_backup, running_on
from ..backup.services import backup_to_dir, record_backup
from ..context import get_vault
from ..payments.services import disable_weak_channels
from ..errors import KamengdError
from ..extensions import db
from ..operations.schema import current_revision, head_revision, upgrade as run_upgrade
from ..operations.snapshot import sqlite_path
from .group import cli, emit, json_option


def _one_line(exc: Exception) -> str:
    return " ".join(str(getattr(exc, "message", exc)).split())


@cli.command()
@click.option("--skip-backup", is_flag=True, help="Migrate without taking a backup first (not advised).")
@json_option
@click.pass_obj
def upgrade(obj, skip_backup, as_json):
    """Back the database up, then apply pending migrations; a failed migration is undone."""
    config = obj.config
    with obj.app.app_context():
        before = current_revision(db.engine)
        vault = get_vault()
        db.engine.dispose()
    head = head_revision()
    if before is None:
        raise KamengdError("the database has no kamengd schema: run `kamengd install` first")
    if before == head:
        emit(as_json, {"before": before, "after": head, "backup": None},
             f"schema at {head}; nothing to upgrade")
        return

    running = running_on(config.database_url, config.scheduler.lease_seconds)
    if running:
        # A failed migration is undone from the backup taken now: sales made
        # meanwhile would be lost.
        raise KamengdError(f"kamengd is running on this database ({running}): stop every "
                           "`kamengd serve` and `kamengd scheduler` first")
    result = None if skip_backup else backup_to_dir(config, f"kamengd-pre-upgrade-{before}-")
    backup = str(result.path) if result else None
    try:
        _, after = run_upgrade(config.database_url)
    except Exception as exc:
        message = f"migration from {before} failed: {_one_line(exc)}"
        if result is None:
            raise KamengdError(f"{message}; no backup was taken (--skip-backup)") from None
        if sqlite_path(config.database_url) is not None:
            # SQLite ran the migrations in one transaction: it rolled back.
            raise KamengdError(f"{message}; the database is as it was (backup: {backup})") from None
        try:   # MySQL commits each DDL statement: put the database back from the backup
            restore_backup(config.database_url, BackupReader(result.path, config.backup_passphrase()), vault,
                           force=True, lease_seconds=None, to_head=False)
        except Exception as undo:
            raise KamengdError(f"{message}; putting the database back failed too ({_one_line(undo)}): "
                               f"restore it with `kamengd restore {backup} --force`") from None
        raise KamengdError(f"{message}; the database was put back as it was from the backup {backup}") from None
    with obj.app.app_context():
        if result is not None:
            record_backup(db.session, result, "pre-upgrade")
        record(db.session, "schema.upgrade", actor=cli_actor(), target="database",
               details={"before": before, "after": after, "backup": backup})
        # Keys accepted by older versions that anyone could guess: no longer trusted.
        disabled = disable_weak_channels(db.session, vault, actor=cli_actor())
        db.session.commit()   # upgrade's one commit, after the migration (no app context around it)
    emit(as_json, {"before": before, "after": after, "backup": backup, "disabled_channels": disabled},
         f"schema {before} -> {after}" + (f" (backup: {backup})" if backup else " (no backup)")
         + (f"; disabled channels with a weak key: {', '.join(disabled)} (enter a new key in the panel)"
            if disabled else ""))

from __future__ import annotations

import click

from ..audit.services import cli_actor, record
from ..errors import KamengdError
from ..extensions import db
from ..schema import current_revision, head_revision, upgrade as run_upgrade
from ..snapshot import snapshot_sqlite, sqlite_path
from . import cli, emit, json_option


@cli.command()
@click.option("--skip-backup", is_flag=True,
              help="Migrate without a snapshot (MySQL, until `kamengd backup` exists).")
@json_option
@click.pass_obj
def upgrade(obj, skip_backup, as_json):
    """Snapshot the database, then apply pending migrations."""
    config = obj.config
    with obj.app.app_context():
        before = current_revision(db.engine)
        db.engine.dispose()
    head = head_revision()
    if before is None:
        raise KamengdError("the database has no kamengd schema: run `kamengd install` first")
    if before == head:
        emit(as_json, {"before": before, "after": head, "backup": None},
             f"schema at {head}; nothing to upgrade")
        return
    backup = None
    path = sqlite_path(config.database_url)
    if path is not None:
        backup = str(snapshot_sqlite(path, f"pre-upgrade-{before}"))
    elif not skip_backup:
        raise KamengdError("automatic backups of MySQL databases come with `kamengd backup`; take one "
                           "(e.g. mysqldump --single-transaction) and run `kamengd upgrade --skip-backup`")
    try:
        _, after = run_upgrade(config.database_url)
    except Exception as exc:
        where = f"; the snapshot {backup} holds the database as it was" if backup else ""
        raise KamengdError(f"migration from {before} failed: {' '.join(str(exc).split())}{where}") from None
    with obj.app.app_context():
        record(db.session, "schema.upgrade", actor=cli_actor(), target="database",
               details={"before": before, "after": after, "backup": backup})
        db.session.commit()
    emit(as_json, {"before": before, "after": after, "backup": backup},
         f"schema {before} -> {after}" + (f" (snapshot: {backup})" if backup else ""))

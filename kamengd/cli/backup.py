from __future__ import annotations

import signal
import sys
from pathlib import Path

import click
from sqlalchemy.exc import SQLAlchemyError

from ..audit.services import cli_actor, record
from ..backup.archive import BackupReader, write_backup
from ..backup.restore import restore_backup
from ..backup.services import check_passphrase, key_backup, key_restore, record_backup
from ..context import get_config, get_vault
from ..errors import KamengdError
from ..extensions import db
from ..operations.rotation import retire_unused, rotate
from .group import cli, emit, json_option, with_app
from .install import read_password_file

passphrase_option = click.option("--passphrase-file", type=click.Path(dir_okay=False), metavar="F",
                                 help="File holding the passphrase (otherwise it is asked for).")


def read_passphrase(path: str | None, *, confirm: bool, required: bool = True) -> str | None:
    if path is not None:
        text = read_password_file(path)   # only the line break is dropped, as for backup.passphrase_file
        return check_passphrase(text) if confirm else text
    if not required:
        return None
    if not sys.stdin.isatty():
        raise KamengdError("a passphrase is needed: give --passphrase-file F (no terminal to ask on)")
    return check_passphrase(click.prompt("Passphrase", hide_input=True, confirmation_prompt=confirm, err=True))


def interrupt_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so the clean-up of temporary files runs."""
    def stop(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)


def terminal_progress():
    """Rows done, on the terminal only (never in a script's output)."""
    if not sys.stderr.isatty():
        return None

    def show(table: str, done: int, total: int) -> None:
        sys.stderr.write(f"\r{table:<24} {done:>12,} / {total:,} rows")
        sys.stderr.flush()
    return show


def _end_progress(progress) -> None:
    if progress:
        sys.stderr.write("\n")


@cli.command()
@click.option("--output", required=True, type=click.Path(dir_okay=False), metavar="FILE",
              help="The archive to write (a new file).")
@passphrase_option
@click.option("--encrypt", is_flag=True, help="Seal the archive with a passphrase (asked for).")
@json_option
@with_app
def backup(output, passphrase_file, encrypt, as_json):
    """One consistent archive of the whole database, while the shop keeps selling. Never the data key."""
    passphrase = read_passphrase(passphrase_file, confirm=True, required=encrypt)
    interrupt_on_sigterm()
    progress = terminal_progress()
    result = write_backup(get_config().database_url, Path(output), passphrase=passphrase, progress=progress)
    _end_progress(progress)
    record_backup(db.session, result, "manual")
    rows = {t["name"]: t["rows"] for t in result.manifest["tables"]}
    record(db.session, "backup.create", actor=cli_actor(), target=f"file:{result.path}",
           details={"bytes": result.bytes, "sealed": bool(passphrase), "revision": result.manifest["schema_revision"],
                    "card_keys": rows.get("card_keys", 0)})
    emit(as_json, {"output": str(result.path), "bytes": result.bytes, "sealed": bool(passphrase),
                   "schema_revision": result.manifest["schema_revision"], "rows": rows},
         f"backup written to {result.path} ({result.bytes:,} bytes, {sum(rows.values()):,} rows, "
         f"schema {result.manifest['schema_revision']}{', sealed' if passphrase else ''})")


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Replace a database that already holds shop data.")
@passphrase_option
@json_option
@click.pass_obj
def restore(obj, file, force, passphrase_file, as_json):
    """Restore a backup into the configured database (checked before anything changes)."""
    config = obj.config
    reader = BackupReader(Path(file))
    if reader.sealed:
        reader.passphrase = read_passphrase(passphrase_file, confirm=False)
    manifest = reader.verify()
    with obj.app.app_context():
        vault = get_vault()
        db.engine.dispose()
    interrupt_on_sigterm()
    progress = terminal_progress()
    result = restore_backup(config.database_url, reader, vault, force=force,
                            lease_seconds=config.scheduler.lease_seconds, progress=progress)
    _end_progress(progress)
    with obj.app.app_context():
        db.engine.dispose()   # connections opened before the restore may point at the old SQLite file
        record(db.session, "backup.restore", actor=cli_actor(), target=f"file:{Path(file).resolve()}",
               details={"created_at": manifest.get("created_at"), "source": manifest.get("source"),
                        "revision": result.revision_before, "upgraded_to": result.revision_after,
                        "rows": result.rows, "keys_checked": result.keys_checked, "forced": force})
        db.session.commit()   # restore's one commit, in the restored database (no app context before it)
    emit(as_json, {"restored": str(file), "rows": result.rows, "keys_decrypted": result.keys_checked,
                   "schema_revision_of_backup": result.revision_before, "schema_revision": result.revision_after},
         f"restored {result.rows:,} rows from {file} (schema {result.revision_before}"
         + (f", upgraded to {result.revision_after}" if result.revision_after != result.revision_before else "")
         + f"); all {result.keys_checked:,} card keys decrypt with the key file")


@cli.group()
def key():
    """The data-encryption key: backup, restore, rotate."""


@key.command("backup")
@click.option("--output", required=True, type=click.Path(dir_okay=False), metavar="FILE")
@passphrase_option
@json_option
@with_app
def key_backup_command(output, passphrase_file, as_json):
    """Write the data key sealed with a passphrase (scrypt + AES-256-GCM)."""
    passphrase = read_passphrase(passphrase_file, confirm=True)
    versions = key_backup(db.session, get_config(), Path(output), passphrase)
    record(db.session, "key.backup", actor=cli_actor(), target=f"file:{Path(output).resolve()}",
           details={"versions": versions})
    emit(as_json, {"output": output, "versions": versions},
         f"data key (versions {', '.join(map(str, versions))}) written to {output}, sealed with the passphrase; "
         "keep it apart from the backups")


@key.command("restore")
@click.argument("file", type=click.Path(dir_okay=False))
@passphrase_option
@json_option
@click.pass_obj
def key_restore_command(obj, file, passphrase_file, as_json):
    """Install a key written by `key backup` as this installation's data key (the old file is kept aside)."""
    passphrase = read_passphrase(passphrase_file, confirm=False)
    vault, aside = key_restore(obj.config, Path(file), passphrase)
    with obj.app.app_context():
        try:
            record(db.session, "key.restore", actor=cli_actor(), target=f"file:{Path(file).resolve()}",
                   details={"versions": vault.versions, "old_key_file": str(aside) if aside else None})
            db.session.commit()   # the command's one commit: the key is installed first, outside any app
        except (SQLAlchemyError, KamengdError):   # the key is installed either way; the database may not be ready
            db.session.rollback()
    emit(as_json, {"versions": vault.versions, "old_key_file": str(aside) if aside else None},
         f"data key (versions {', '.join(map(str, vault.versions))}) installed"
         + (f"; the previous key file is kept as {aside}" if aside else ""))


@key.command("rotate")
@click.option("--prepare", is_flag=True, help="Only add the new key version (copy the key file to every "
                                              "app server, then run `key rotate` again).")
@click.option("--batch-size", type=click.IntRange(1, 100000), default=1000, show_default=True)
@json_option
@with_app
def key_rotate_command(prepare, batch_size, as_json):
    """A new data key; re-encrypts every card key in batches while the shop keeps selling (resumable)."""
    path = get_config().security.data_key_file
    shown = terminal_progress()
    result = rotate(db.session, path, prepare=prepare, batch=batch_size,
                    progress=(lambda n: shown("card_keys", n, 0)) if shown else None)
    _end_progress(shown)
    details = {"version": result.version, "new_version": result.started, "card_keys": result.card_keys,
               "channels": result.channels, "audit_resealed": result.resealed, "prepare_only": prepare}
    record(db.session, "key.rotate", actor=cli_actor(), target="data key", details=details)
    if prepare:
        text = (f"key version {result.version} added to {path}; copy it to every app server, then run "
                "`kamengd key rotate`")
    else:
        text = (f"data key now at version {result.version}: {result.card_keys:,} card keys and {result.channels} "
                "channel secrets re-encrypted; the old version leaves the key file in an hour (or now: "
                "kamengd key retire); make a new key backup: kamengd key backup")
    emit(as_json, details, text)


@key.command("retire")
@json_option
@with_app
def key_retire_command(as_json):
    """Move key versions no row uses any more out of the key file (into a file beside it)."""
    retired, aside = retire_unused(db.session, get_config().security.data_key_file)
    if retired:
        record(db.session, "key.retire", actor=cli_actor(), target="data key",
               details={"versions": retired, "file": str(aside)})
    emit(as_json, {"retired": retired, "file": str(aside) if aside else None},
         f"key versions {', '.join(map(str, retired))} moved to {aside} (backups taken before the rotation "
         "need them)" if retired else "no key version to retire")

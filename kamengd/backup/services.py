"""Backups as the admin and the scheduler use them: named files, records, retention, key backups."""
from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

from sqlalchemy.orm import Session

from ..config import Config
from ..database import utcnow
from ..errors import KamengdError
from ..vault import Vault, key_file_lock, load_vault, parse_key_file, render_key_file, write_secret_file
from .archive import BackupResult, Progress, write_backup
from .models import note, read
from .sealed import SealedError, open_bytes, seal_bytes

DAILY_PREFIX = "kamengd-daily-"
MIN_PASSPHRASE = 8
KEY_BACKUP_FORMAT = "kamengd-key-backup"


def check_passphrase(passphrase: str) -> str:
    if len(passphrase) < MIN_PASSPHRASE:
        raise KamengdError(f"the passphrase must have at least {MIN_PASSPHRASE} characters")
    return passphrase


def backup_name(prefix: str, now: dt.datetime, sealed: bool, n: int = 1) -> str:
    """The n-th backup of this second sorts after the first ("_2" > ".")."""
    return f"{prefix}{now:%Y%m%dT%H%M%SZ}" + (f"_{n}" if n > 1 else "") + ".tar.gz" + (".sealed" if sealed else "")


def free_backup_path(directory: Path, prefix: str, now: dt.datetime, sealed: bool) -> Path:
    """A name no backup in `directory` has yet: two backups in one second both land."""
    n = 1
    while (path := directory / backup_name(prefix, now, sealed, n)).exists():
        n += 1
    return path


def record_backup(session: Session, result: BackupResult, kind: str, now: dt.datetime | None = None) -> None:
    note(session, "backup.last", {"path": str(result.path), "bytes": result.bytes, "kind": kind,
                                  "revision": result.manifest["schema_revision"],
                                  "rows": sum(t["rows"] for t in result.manifest["tables"])}, now)


def backup_to_dir(config: Config, prefix: str, progress: Progress | None = None,
                  now: dt.datetime | None = None) -> BackupResult:
    """A backup in backup.directory. Run as root (`kamengd upgrade`), the directory and
    the archive get the data directory's owner: the service's daily job writes there too."""
    directory = config.backup_dir()
    owner = config.security.data_key_file
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True)
        _give_to_owner_of(directory, owner)
    passphrase = config.backup_passphrase()
    path = free_backup_path(directory, prefix, now or utcnow(), bool(passphrase))
    result = write_backup(config.database_url, path, passphrase=passphrase, progress=progress)
    _give_to_owner_of(result.path, owner)
    return result


def _give_to_owner_of(path: Path, like: Path) -> None:
    if os.geteuid() == 0 and Path(like).exists():
        st = Path(like).stat()
        os.chown(path, st.st_uid, st.st_gid)


def prune_daily(directory: Path, keep: int) -> list[Path]:
    pattern = re.compile(re.escape(DAILY_PREFIX) + r"(\d{8}T\d{6})Z(?:_(\d+))?\.tar\.gz(\.sealed)?$")
    found = [(m.group(1), int(m.group(2) or 1), p) for p in directory.iterdir() if (m := pattern.match(p.name))]
    daily = [p for _, _, p in sorted(found)]   # by time, then by the n-th of that second
    gone = daily[:-keep] if len(daily) > keep else []
    for path in gone:
        path.unlink(missing_ok=True)
    return gone


def daily_backup(session: Session, config: Config, now: dt.datetime | None = None) -> dict:
    """The job: a backup when the last one is older than a day, then retention."""
    now = now or utcnow()
    if not config.backup.daily:
        return {"skipped": "backup.daily is off"}
    last = read(session, "backup.last")
    session.commit()   # ends the read: no transaction is held through the backup
    if last is not None and now - last[1] < dt.timedelta(hours=23, minutes=30):
        return {"skipped": "recent backup"}
    result = backup_to_dir(config, DAILY_PREFIX, now=now)
    record_backup(session, result, "daily", now)
    session.commit()   # the new backup is recorded before older ones are removed
    removed = prune_daily(config.backup_dir(), config.backup.keep)
    return {"file": result.path.name, "bytes": result.bytes, "removed": len(removed)}


# -- the data key ---------------------------------------------------------------
def key_backup(session: Session, config: Config, output: Path, passphrase: str) -> list[int]:
    """Write the data key sealed with the passphrase; returns the key versions it holds."""
    path = config.security.data_key_file
    vault = load_vault(path)
    keys = parse_key_file(Path(path).read_text(encoding="ascii"), str(path))
    payload = render_key_file(keys).encode()
    sealed = seal_bytes(KEY_BACKUP_FORMAT.encode() + b"\n" + payload, check_passphrase(passphrase), b"K")
    try:
        write_secret_file(Path(output), sealed)
    except FileExistsError:
        raise KamengdError(f"{output} already exists; choose a new file name") from None
    note(session, "key_backup.last", {"path": str(output), "versions": vault.versions})
    return vault.versions


def open_key_backup(path: Path, passphrase: str) -> dict[int, bytes]:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KamengdError(f"cannot read {path}: {exc.strerror}") from None
    try:
        plain = open_bytes(data, passphrase, b"K")
    except SealedError as exc:
        raise KamengdError(f"{path}: {exc.message}") from None
    head, _, body = plain.partition(b"\n")
    if head != KEY_BACKUP_FORMAT.encode():
        raise KamengdError(f"{path} is not a kamengd key backup")
    return parse_key_file(body.decode("ascii"), str(path))


def key_restore(config: Config, path: Path, passphrase: str) -> tuple[Vault, Path | None]:
    """Install the backed-up key as the data key; the old key file is kept beside it."""
    keys = open_key_backup(path, passphrase)
    target = Path(config.security.data_key_file)
    with key_file_lock(target):
        return _install_key(target, keys)


def _install_key(target: Path, keys: dict[int, bytes]) -> tuple[Vault, Path | None]:
    aside = None
    if target.exists():
        aside = target.with_name(f"{target.name}.replaced-{utcnow():%Y%m%dT%H%M%SZ}")
        if aside.exists():
            raise KamengdError(f"{aside} already exists; try again in a second")
        target.rename(aside)
    try:
        write_secret_file(target, render_key_file(keys), owner_like=aside)
    except BaseException:
        if aside is not None:
            aside.rename(target)
        raise
    return load_vault(target), aside


"""Pre-upgrade snapshots of a SQLite database.

Made with SQLite's online backup API, never by copying the live file (a
copy taken mid-write can be torn). The full portable backup archive, for
MySQL too, is `kamengd backup` (K4).
"""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from sqlalchemy.engine import make_url

from ..database import utcnow


def sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def snapshot_sqlite(db_path: Path, label: str) -> Path:
    """Copy the database consistently to <dir>/backups/<name>-<label>-<time>.db (mode 0600)."""
    backups = db_path.parent / "backups"
    backups.mkdir(mode=0o700, exist_ok=True)
    dest = backups / f"{db_path.stem}-{label}-{utcnow():%Y%m%dT%H%M%SZ}.db"
    os.close(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    source = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    target = sqlite3.connect(dest)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()
    return dest

"""Where a SQLite database lives on disk: the backup archive reads it with
SQLite's online backup API (never a copy of the live file, which can be torn
mid-write), restore and upgrade find it here."""
from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import make_url


def sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)

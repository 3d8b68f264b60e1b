"""A web request's transaction.

GET views call `read_only()` first: on SQLite they then read a snapshot and
never wait for the write lock (an import may be writing).
"""
from __future__ import annotations

from .extensions import db


def read_only() -> None:
    """Read a snapshot; never wait for SQLite's write lock.

    Only the first call of a request counts (the panel's guard makes it before
    the view does)."""
    if not db.session().in_transaction():
        db.session.connection(execution_options={"kamengd_readonly": True})

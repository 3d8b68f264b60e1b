from __future__ import annotations

from ..context import get_vault
from ..audit.services import verify
from ..errors import KamengdError
from ..extensions import db
from .group import cli, emit, json_option, with_app


@cli.group()
def audit():
    """The tamper-evident audit log."""


@audit.command("verify")
@json_option
@with_app(readonly=True)
def audit_verify(as_json):
    """Check the hash chain; non-zero naming the first bad entry."""
    result = verify(db.session, get_vault())
    if not result.ok:
        if as_json:
            emit(True, {"ok": False, "entries_checked": result.entries, "bad_entry": result.bad_entry_id,
                        "problem": result.problem}, "")
        raise KamengdError(f"audit log is NOT intact: {result.problem}")
    emit(as_json, {"ok": True, "entries": result.entries}, f"audit log intact: {result.entries} entries")

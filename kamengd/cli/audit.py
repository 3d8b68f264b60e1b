from __future__ import annotations

import json

import click

from ..audit.services import find_entries, verify
from ..context import get_vault
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


@audit.command("list")
@click.option("--action", default="", help="Exactly, or a prefix ending in . or * (order.*).")
@click.option("--actor", default="", help="Part of the actor (staff:boss, cli:root).")
@click.option("--target", default="", help="Part of the target (order:2026…, channel:epay).")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@json_option
@with_app(readonly=True)
def audit_list(action, actor, target, limit, as_json):
    """Recent audit entries, newest first."""
    entries = [{"seq": e.seq, "at": e.created_at.isoformat(timespec="seconds") + "Z", "actor": e.actor,
                "action": e.action, "target": e.target, "source_ip": e.source_ip, "details": json.loads(e.details)}
               for e in find_entries(db.session, action=action[:64], actor=actor[:128], target=target[:255],
                                     limit=limit)]
    lines = [f"{e['at']}  #{e['seq']}  {e['actor']}  {e['action']}  {e['target']}  "
             f"{json.dumps(e['details'], ensure_ascii=False, sort_keys=True)}" for e in entries]
    emit(as_json, {"entries": entries}, "\n".join(lines) or "no audit entries match")

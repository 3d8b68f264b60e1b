from __future__ import annotations

import click

from ..operations.doctor import Check, run_checks
from ..errors import KamengdError
from .group import cli, emit, json_option


@cli.command()
@json_option
@click.pass_obj
def doctor(obj, as_json):
    """Check config, file modes, database, schema, key file and audit log."""
    try:
        checks = run_checks(obj.config, obj.app)
    except KamengdError as exc:
        checks = [Check("config", False, exc.message)]
    ok = all(c.ok for c in checks)
    text = "\n".join(f"{('WARN' if c.warning else 'ok  ') if c.ok else 'FAIL'}  {c.name}: {c.detail}"
                     for c in checks)
    emit(as_json, {"ok": ok, "checks": [c.__dict__ for c in checks]}, text)
    if not ok:
        bad = [c.name for c in checks if not c.ok]
        raise KamengdError(f"doctor found problems: {', '.join(bad)}")

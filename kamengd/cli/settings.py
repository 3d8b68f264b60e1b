from __future__ import annotations

import click

from ..audit.services import cli_actor
from ..extensions import db
from ..settings.services import SETTINGS, all_settings, set_setting
from . import cli, emit, json_option, with_app


@cli.group()
def setting():
    """Settings changed while the shop runs (audited)."""


@setting.command("list")
@json_option
@with_app(readonly=True)
def setting_list(as_json):
    """Show every run-time setting and its value."""
    values = all_settings(db.session)
    emit(as_json, {"settings": values},
         "\n".join(f"{k} = {v!r}\t# {SETTINGS[k].doc}" for k, v in values.items()))


@setting.command("set")
@click.argument("key")
@click.argument("value")
@json_option
@with_app
def setting_set(key, value, as_json):
    """Change a setting."""
    new = set_setting(db.session, key, value, actor=cli_actor())
    emit(as_json, {"key": key, "value": new}, f"{key} = {new!r}")

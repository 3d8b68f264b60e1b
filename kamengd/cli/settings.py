from __future__ import annotations

import click

from ..audit.services import cli_actor
from ..context import get_vault
from ..errors import InvalidRequest
from ..extensions import db
from ..settings.messaging import SECRET_OF_GROUP, save_group
from ..settings.services import SECRETS, SETTINGS, all_settings, secrets_set, set_setting
from .group import cli, emit, json_option, with_app
from .install import read_password_file


@cli.group()
def setting():
    """Settings changed while the shop runs (audited)."""


@setting.command("list")
@json_option
@with_app(readonly=True)
def setting_list(as_json):
    """Show every run-time setting and its value."""
    values = all_settings(db.session)
    stored = secrets_set(db.session)
    emit(as_json, {"settings": values, "secrets": stored},
         "\n".join([f"{k} = {v!r}\t# {SETTINGS[k].doc}" for k, v in values.items()]
                   + [f"{k} = {'(set)' if stored[k] else '(not set)'}\t# {SECRETS[k][0]}" for k in SECRETS]))


@setting.command("set")
@click.argument("key")
@click.argument("value")
@json_option
@with_app
def setting_set(key, value, as_json):
    """Change a setting. Lists: items separated by commas or spaces (webhook URLs: spaces)."""
    spec = SETTINGS.get(key)
    if spec is not None and spec.group != "shop":
        # The mail server and notifications are checked as a whole, as in the panel.
        save_group(db.session, get_vault(), spec.group, {key: value}, actor=cli_actor())
        new = all_settings(db.session)[key]
    else:
        new = set_setting(db.session, key, value, actor=cli_actor())
    emit(as_json, {"key": key, "value": new}, f"{key} = {new!r}")


@setting.command("secret")
@click.argument("key", type=click.Choice(sorted(SECRETS)))
@click.option("--file", "path", metavar="FILE",
              help="File holding the value on one line (a line break at its end is dropped).")
@click.option("--clear", is_flag=True, help="Remove the stored value.")
@json_option
@with_app
def setting_secret(key, path, clear, as_json):
    """Store a secret setting (encrypted with the data key) or remove it; never printed."""
    if bool(path) == clear:
        raise InvalidRequest("give --file FILE or --clear")
    group = next(g for g, k in SECRET_OF_GROUP.items() if k == key)
    changed = save_group(db.session, get_vault(), group, {}, secret="" if clear else read_password_file(path),
                         clear_secret=clear, actor=cli_actor())
    if clear:
        emit(as_json, {"key": key, "set": False}, f"{key} removed" if changed else f"{key} was not set")
    else:
        emit(as_json, {"key": key, "set": True}, f"{key} stored (encrypted)")

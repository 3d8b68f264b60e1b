"""The `kamengd` command group and what its commands share: the app, one commit, held output.

The commands live in the modules beside this one. The group imports a
command's module only when that command runs (or help lists them all):
`kamengd keys import` does not pay for loading backup, restore and Alembic.
"""
from __future__ import annotations

import functools
import importlib
import json
from functools import cached_property

import click

from ..app import create_app
from ..config import Config, load_config
from ..errors import KamengdError
from ..extensions import db
from ..version import __version__


class CliContext:
    def __init__(self, config_path: str | None):
        self.config_path = config_path
        self.held_output: list[str] | None = None

    @cached_property
    def config(self) -> Config:
        return load_config(self.config_path)

    @cached_property
    def app(self):
        return create_app(self.config)


def with_app(fn=None, *, readonly: bool = False):
    """Run the command in an app context; commit once, then print its output.

    Output is held until the commit succeeded, so a script never reads a
    result that was rolled back. ``readonly`` commands never take SQLite's
    write lock (they read a snapshot, even during a long import).
    """
    if fn is None:
        return functools.partial(with_app, readonly=readonly)

    @functools.wraps(fn)
    @click.pass_obj
    def wrapper(obj: CliContext, *args, **kwargs):
        with obj.app.app_context():
            obj.held_output = []
            try:
                if readonly:
                    db.session.connection(execution_options={"kamengd_readonly": True})
                result = fn(*args, **kwargs)
                db.session.commit()   # the command's one commit
            except BaseException:
                db.session.rollback()
                raise
            finally:
                held, obj.held_output = obj.held_output, None
            for line in held:
                click.echo(line)
            return result
    return wrapper


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of prose.")


def emit(as_json: bool, payload: dict, text: str) -> None:
    line = json.dumps(payload, ensure_ascii=False, sort_keys=True) if as_json else text
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_object(CliContext) if ctx is not None else None
    if obj is not None and obj.held_output is not None:
        obj.held_output.append(line)  # printed by with_app after the commit
    else:
        click.echo(line)


def fail(message: str) -> None:
    raise KamengdError(message)


# Each top-level command, and the module beside this one that adds it to the group.
COMMAND_MODULES = {
    "agent": "agents", "audit": "audit", "backup": "backup", "balance": "agents", "ledger": "agents",
    "withdrawal": "agents", "member": "agents", "points": "agents",
    "restore": "backup", "key": "backup", "product": "catalog",
    "channel": "channels", "config": "config", "coupon": "coupons", "doctor": "doctor", "install": "install", "jobs": "jobs",
    "run-job": "jobs",
    "keys": "keys", "notifications": "notifications", "order": "orders", "reconcile": "reconcile", "report": "reports",
    "risk": "risk", "serve": "serve", "scheduler": "serve", "setting": "settings", "supplier": "suppliers",
    "upgrade": "upgrade",
    "user": "users", "voucher": "vouchers", "store": "vouchers", "ticket": "tickets",
}


class LazyGroup(click.Group):
    def get_command(self, ctx, name):
        if name not in self.commands and name in COMMAND_MODULES:
            importlib.import_module(f"{__package__}.{COMMAND_MODULES[name]}")   # it adds its commands
        return super().get_command(ctx, name)

    def list_commands(self, ctx):
        return sorted(set(self.commands) | set(COMMAND_MODULES))


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", metavar="PATH",
              help="Config file (default: $KAMENGD_CONFIG, then /etc/kamengd/kamengd.toml).")
@click.version_option(__version__, prog_name="kamengd")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None):
    """kamengd: a self-hosted card-key shop."""
    ctx.obj = CliContext(config_path)

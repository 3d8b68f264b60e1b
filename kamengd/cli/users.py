from __future__ import annotations

import click

from ..accounts.models import ROLES
from ..accounts.services import create_user, set_role
from ..audit.services import cli_actor
from ..extensions import db
from . import cli, emit, json_option, with_app
from .install import read_password_file


@cli.group()
def user():
    """Staff accounts."""


@user.command("create")
@click.option("--username", required=True)
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--password-file", required=True, metavar="FILE")
@json_option
@with_app
def user_create(username, role, password_file, as_json):
    """Create a staff account."""
    u = create_user(db.session, username=username, role=role,
                    password=read_password_file(password_file), actor=cli_actor())
    emit(as_json, {"id": u.id, "username": u.username, "role": u.role},
         f"created {u.role} {u.username}")


@user.command("set-role")
@click.option("--username", required=True)
@click.option("--role", type=click.Choice(ROLES), required=True)
@json_option
@with_app
def user_set_role(username, role, as_json):
    """Change a staff member's role (audited)."""
    u = set_role(db.session, username=username, role=role, actor=cli_actor())
    emit(as_json, {"id": u.id, "username": u.username, "role": u.role}, f"{u.username} is now {u.role}")

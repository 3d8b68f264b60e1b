from __future__ import annotations

import click
import sqlalchemy as sa

from ..accounts.auth import disable_totp, end_all_sessions, reset_password, unlock
from ..accounts.models import ROLES, StaffUser
from ..accounts.services import create_user, set_role
from ..audit.services import cli_actor
from ..errors import NotFound
from ..extensions import db
from .group import cli, emit, json_option, with_app
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


def _user(username: str):
    found = db.session.scalars(sa.select(StaffUser).where(StaffUser.username == username)).first()
    if found is None:
        raise NotFound(f"user {username!r} not found")
    return found


@user.command("reset-2fa")
@click.option("--username", required=True)
@json_option
@with_app
def user_reset_2fa(username, as_json):
    """Turn a lost authenticator off and end that user's sessions (audited);
    an owner or admin sets 2FA up again at the next sign-in."""
    u = _user(username)
    disable_totp(db.session, u, actor=cli_actor(), ip=None)
    end_all_sessions(db.session, u, actor=cli_actor(), ip=None)
    emit(as_json, {"id": u.id, "username": u.username, "totp_enabled": False},
         f"two-factor sign-in of {u.username} is off; their sessions are ended")


@user.command("set-password")
@click.option("--username", required=True)
@click.option("--password-file", required=True, metavar="FILE")
@json_option
@with_app
def user_set_password(username, password_file, as_json):
    """Set a staff member's password (a forgotten one) and end their sessions (audited)."""
    u = _user(username)
    reset_password(db.session, u, read_password_file(password_file), actor=cli_actor(), ip=None)
    emit(as_json, {"id": u.id, "username": u.username}, f"password of {u.username} is set; their sessions are ended")


@user.command("unlock")
@click.option("--username", required=True)
@json_option
@with_app
def user_unlock(username, as_json):
    """Lift the sign-in locks on an account name (after failed sign-ins), from every address (audited)."""
    u = _user(username)
    removed = unlock(db.session, u.username, actor=cli_actor())
    emit(as_json, {"id": u.id, "username": u.username, "cleared": removed},
         f"sign-in locks of {u.username} lifted" if removed else f"{u.username} was not locked")

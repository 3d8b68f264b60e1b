from __future__ import annotations

import re

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..audit.services import record
from ..errors import Conflict, InvalidRequest, NotFound
from .models import ROLES, StaffUser
from .passwords import hash_password

USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{1,63}$")
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024


def validate_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidRequest(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidRequest(f"password must be at most {MAX_PASSWORD_LENGTH} characters")


def create_user(session: Session, *, username: str, role: str, password: str, actor: str,
                source_ip: str | None = None) -> StaffUser:
    if not USERNAME_RE.match(username):
        raise InvalidRequest("username: 2-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    if role not in ROLES:
        raise InvalidRequest(f"role: must be one of {', '.join(ROLES)}")
    validate_password(password)
    if session.scalar(sa.select(StaffUser.id).where(StaffUser.username == username)) is not None:
        raise Conflict(f"user {username!r} already exists")
    user = StaffUser(username=username, role=role, password_hash=hash_password(password))
    session.add(user)
    session.flush()
    record(session, "user.create", actor=actor, target=f"user:{user.id}", source_ip=source_ip,
           details={"username": username, "role": role})
    return user


def set_role(session: Session, *, username: str, role: str, actor: str,
             source_ip: str | None = None) -> StaffUser:
    """Change a staff member's role; the last active owner cannot be demoted (lock-out)."""
    if role not in ROLES:
        raise InvalidRequest(f"role: must be one of {', '.join(ROLES)}")
    # Lock every owner row first, always in id order: two demotions of two
    # owners then run one after the other (no deadlock), and the second sees
    # that only its own target is left.
    owners = session.scalars(sa.select(StaffUser.id).where(
        StaffUser.role == "owner", StaffUser.is_active.is_(True)).order_by(StaffUser.id).with_for_update()).all()
    user = session.scalars(sa.select(StaffUser).where(StaffUser.username == username).with_for_update()).first()
    if user is None:
        raise NotFound(f"user {username!r} not found")
    old = user.role
    if old == "owner" and role != "owner" and not set(owners) - {user.id}:
        raise Conflict(f"{username} is the last owner; make someone else owner first")
    user.role = role
    session.flush()
    record(session, "user.role", actor=actor, target=f"user:{user.id}", source_ip=source_ip,
           details={"username": username, "old": old, "new": role})
    return user

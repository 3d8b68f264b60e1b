from __future__ import annotations

import re

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..audit.services import record
from ..errors import Conflict, InvalidRequest
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

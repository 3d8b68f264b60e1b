from __future__ import annotations

import re

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..audit.services import record
from ..errors import Collector, Conflict, InvalidRequest, NotFound
from .auth import disable_totp
from .models import ROLES, StaffUser
from .passwords import hash_password, validate_password

USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{1,63}$")


def check_new_user(session: Session, *, username: str, role: str, password: str,
                   found: Collector | None = None) -> None:
    """What create_user refuses, every mistake at once (into `found` when given, else raised)."""
    own = found is None
    found = Collector() if own else found
    valid_name = USERNAME_RE.match(username)
    if not valid_name:
        found.add(InvalidRequest("username: 2-64 letters, digits, '.', '_' or '-', starting with a letter or digit"))
    if role not in ROLES:
        found.add(InvalidRequest("role: must be one of %(roles)s", roles=", ".join(ROLES)))
    with found:
        validate_password(password)
    if valid_name and session.scalar(sa.select(StaffUser.id).where(StaffUser.username == username)) is not None:
        found.add(Conflict("user %(username)r already exists", username=username))
    if own:
        found.check()


def create_user(session: Session, *, username: str, role: str, password: str, actor: str,
                source_ip: str | None = None) -> StaffUser:
    check_new_user(session, username=username, role=role, password=password)
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
        raise InvalidRequest("role: must be one of %(roles)s", roles=", ".join(ROLES))
    # Lock every owner row first, always in id order: two demotions of two
    # owners then run one after the other (no deadlock), and the second sees
    # that only its own target is left.
    owners = session.scalars(sa.select(StaffUser.id).where(
        StaffUser.role == "owner", StaffUser.is_active.is_(True)).order_by(StaffUser.id).with_for_update()).all()
    user = session.scalars(sa.select(StaffUser).where(StaffUser.username == username).with_for_update()).first()
    if user is None:
        raise NotFound("user %(username)r not found", username=username)
    old = user.role
    if old == "owner" and role != "owner" and not set(owners) - {user.id}:
        raise Conflict("%(username)s is the last owner; make someone else owner first", username=username)
    user.role = role
    session.flush()
    record(session, "user.role", actor=actor, target=f"user:{user.id}", source_ip=source_ip,
           details={"username": username, "old": old, "new": role})
    return user


def get_user(session: Session, user_id: int) -> StaffUser:
    user = session.get(StaffUser, user_id)
    if user is None:
        raise NotFound("user %(user_id)s not found", user_id=user_id)
    return user


def _lock_active_owners(session: Session) -> set[int]:
    """Every active owner's row, locked in id order (see set_role): their ids."""
    return set(session.scalars(sa.select(StaffUser.id).where(
        StaffUser.role == "owner", StaffUser.is_active.is_(True)).order_by(StaffUser.id).with_for_update()).all())


def set_active(session: Session, *, user_id: int, active: bool, actor: str, by_user_id: int | None = None,
               source_ip: str | None = None) -> bool:
    """Activate or deactivate an account; False when it already was.

    Deactivating ends the user's sessions at once (a new session epoch);
    nobody deactivates themselves (`by_user_id`), and the last active owner
    stays active, also when two owners deactivate each other at once.
    """
    owners = _lock_active_owners(session)
    user = session.scalars(sa.select(StaffUser).where(StaffUser.id == user_id).with_for_update()).first()
    if user is None:
        raise NotFound("user %(user_id)s not found", user_id=user_id)
    if user.is_active == active:
        return False
    if not active:
        if user.id == by_user_id:
            raise Conflict("you cannot deactivate your own account")
        if user.id in owners and not owners - {user.id}:
            raise Conflict("%(username)s is the last active owner; make someone else owner first",
                           username=user.username)
        user.session_epoch = (user.session_epoch or 0) + 1
    user.is_active = active
    session.flush()
    record(session, "user.activate" if active else "user.deactivate", actor=actor, target=f"user:{user.id}",
           source_ip=source_ip, details={"username": user.username, "role": user.role})
    return True


def reset_2fa(session: Session, *, user_id: int, actor: str, by_user_id: int | None = None,
              source_ip: str | None = None) -> StaffUser:
    """Turn off a staff member's 2FA (a lost phone) and end their sessions.

    An owner or admin is asked to set it up again at the next sign-in. Your
    own 2FA is changed on your account page, with a code.
    """
    user = get_user(session, user_id)
    if user.id == by_user_id:
        raise Conflict("you cannot reset your own two-factor sign-in here; use your account page")
    disable_totp(session, user, actor=actor, ip=source_ip)
    user.session_epoch = (user.session_epoch or 0) + 1
    session.flush()
    return user

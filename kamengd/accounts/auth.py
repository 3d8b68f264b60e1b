"""Sign-in: passwords, lockout with backoff, TOTP two-factor, recovery codes, sessions.

Plain functions over a session, so the panel, the agent portal, the CLI and
the tests share one set of rules. Two kinds of account sign in by them (a
Realm each): staff, to the panel, and agents, to their portal. Every sign-in,
failure, lockout and 2FA change is audited here, in the transaction that makes it.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass

import pyotp
import sqlalchemy as sa
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from ..audit.services import record
from ..database import utcnow
from ..errors import InvalidRequest, KamengdError
from ..agents.models import Agent, AgentRecoveryCode, AgentSession
from ..vault import Vault
from .models import LoginThrottle, RecoveryCode, StaffSession, StaffUser
from .passwords import hash_password, validate_password, verify_password

# Roles that hold the shop's money and staff: they cannot work without 2FA.
ROLES_REQUIRING_2FA = ("owner", "admin")

# Failures before a lockout, and the longest lock, per scope:
# - "pair": one account name from one client address, the main brake on guessing;
# - "ip": one address, whatever the names (an office behind one address gets room);
# - "user": one account name from anywhere, against guessing spread over many
#   addresses. It refuses the right password too, so it takes many more failures
#   and never locks for long: a stranger cannot keep the owner out for hours,
#   and `kamengd user unlock` lifts it at once.
LOCK_AFTER = {"pair": 5, "ip": 20, "user": 30}
MAX_LOCK = {"pair": dt.timedelta(hours=1), "ip": dt.timedelta(hours=1), "user": dt.timedelta(minutes=15)}
FIRST_LOCK = dt.timedelta(minutes=1)
# Failures older than this are forgotten: a typo a day does not add up.
FORGET_AFTER = dt.timedelta(hours=24)

TOTP_STEP = 30
RECOVERY_CODES = 10


@dataclass(frozen=True)
class Realm:
    """One kind of account that signs in: its table, its sessions and recovery codes (and
    the column naming their owner), how the audit log names it, and a prefix that keeps
    its names apart from the other realm's in the lockout counters."""
    model: type
    sessions: type
    recovery_codes: type
    owner: str          # the sessions' and codes' column naming the account
    actor: str          # "staff:<name>" / "agent:<name>" in the audit log
    target: str         # "user:<id>" / "agent:<id>"
    throttle: str       # "" / "agent:"
    totp_context: str


STAFF = Realm(StaffUser, StaffSession, RecoveryCode, "user_id", "staff", "user", "", "staff-totp")
AGENT = Realm(Agent, AgentSession, AgentRecoveryCode, "agent_id", "agent", "agent", "agent:", "agent-totp")


Account = StaffUser | Agent


def realm_of(user: Account) -> Realm:
    return AGENT if isinstance(user, Agent) else STAFF


def _actor(user) -> str:
    return f"{realm_of(user).actor}:{user.username}"


def _target(user) -> str:
    return f"{realm_of(user).target}:{user.id}"


class LoginFailed(KamengdError):
    code = "login_failed"
    http_status = 401


class LoginLocked(KamengdError):
    code = "login_locked"
    http_status = 429

    def __init__(self, seconds: int):
        super().__init__(f"too many failed sign-ins; try again in {max(1, seconds)} seconds")
        self.seconds = max(1, seconds)


def _name_key(username: str, realm: Realm = STAFF) -> str:
    return (realm.throttle + username.strip().lower())[:64]


def _throttle_keys(username: str, ip: str | None, realm: Realm) -> list[tuple[str, str]]:
    name = _name_key(username, realm)
    keys = [("pair", f"{name}|{(ip or '-')[:63]}"), ("user", name)]
    if ip:
        keys.append(("ip", ip[:128]))
    return keys


def _throttle_row(session: Session, scope: str, key: str, now: dt.datetime) -> LoginThrottle:
    """The row, locked until the end of the transaction (created when new): two
    guesses at once wait for each other, so the second sees the first one's failure."""
    values = {"scope": scope, "key": key, "failures": 0, "last_failure_at": now}
    if session.get_bind().dialect.name in ("mysql", "mariadb"):
        # On a duplicate this takes the row's exclusive lock at once; a SELECT ... FOR
        # UPDATE of a missing row followed by an INSERT deadlocks when two guesses race.
        stmt = mysql_insert(LoginThrottle).values(**values)
        session.execute(stmt.on_duplicate_key_update(scope=stmt.inserted.scope))
    else:   # SQLite: the request's BEGIN IMMEDIATE already holds the database's write lock
        session.execute(sqlite_insert(LoginThrottle).values(**values).on_conflict_do_nothing())
    return session.scalars(sa.select(LoginThrottle).where(LoginThrottle.scope == scope, LoginThrottle.key == key)
                           .with_for_update().execution_options(populate_existing=True)).one()


def _remaining(rows: list[LoginThrottle], now: dt.datetime) -> int:
    remaining = 0
    for row in rows:
        if row.locked_until is not None and row.locked_until > now:
            remaining = max(remaining, int((row.locked_until - now).total_seconds() + 0.999))
    return remaining


def lock_remaining(session: Session, username: str, ip: str | None, now: dt.datetime | None = None,
                   realm: Realm = STAFF) -> int:
    """Seconds until this name from this address may try again (0: now); locks the rows."""
    now = now or utcnow()
    return _remaining([_throttle_row(session, scope, key, now)
                       for scope, key in _throttle_keys(username, ip, realm)], now)


def lock_duration(failures: int, threshold: int, longest: dt.timedelta = MAX_LOCK["pair"]) -> dt.timedelta | None:
    """1 minute at the threshold, doubling with each further failure, at most `longest`."""
    if failures < threshold:
        return None
    return min(FIRST_LOCK * (2 ** min(failures - threshold, 20)), longest)


def _count_failure(session: Session, scope: str, key: str, now: dt.datetime) -> LoginThrottle:
    row = _throttle_row(session, scope, key, now)
    if now - row.last_failure_at > FORGET_AFTER:
        row.failures = 0
    row.failures += 1
    row.last_failure_at = now
    lock = lock_duration(row.failures, LOCK_AFTER[scope], MAX_LOCK[scope])
    row.locked_until = now + lock if lock else None
    return row


def record_failure(session: Session, username: str, ip: str | None, reason: str,
                   now: dt.datetime | None = None, realm: Realm = STAFF) -> None:
    now = now or utcnow()
    record(session, "auth.login_failed", actor=f"anonymous@{ip or '-'}",
           target=f"login:{realm.throttle}{username[:64]}", source_ip=ip,
           details={"username": username[:64], "reason": reason, "realm": realm.actor})
    for scope, key in _throttle_keys(username, ip, realm):
        row = _count_failure(session, scope, key, now)
        if row.locked_until is not None:
            record(session, "auth.lockout", actor="system", target=f"{scope}:{key}", source_ip=ip,
                   details={"scope": scope, "failures": row.failures,
                            "seconds": int((row.locked_until - now).total_seconds())})


def _rows_of_name(name: str):
    """The throttle rows of one account name: its own and its (name, address) pairs."""
    # A prefix match (LIKE 'name|%', wildcards escaped) is a range of the primary key:
    # deleting them locks those rows only, not every row the scan passes.
    return sa.or_(sa.and_(LoginThrottle.scope == "user", LoginThrottle.key == name),
                  sa.and_(LoginThrottle.scope == "pair", LoginThrottle.key.startswith(name + "|", autoescape=True)))


def _clear_failures(session: Session, username: str, ip: str | None = None, realm: Realm = STAFF) -> None:
    """A success forgets the name's failures, and its address's: an office's typos do not
    add up to a lock for everyone there. (Guessing another name from an address that
    also signs in stays bounded by that pair's own lock.)"""
    rows = _rows_of_name(_name_key(username, realm))
    # An agent's success leaves the address's counter alone: anyone may own an agent account,
    # and must not be able to wipe the address's count of guesses at staff names with it.
    if ip and realm is STAFF:
        rows = sa.or_(rows, sa.and_(LoginThrottle.scope == "ip", LoginThrottle.key == ip[:128]))
    session.execute(sa.delete(LoginThrottle).where(rows))


def unlock(session: Session, username: str, *, actor: str, realm: Realm = STAFF) -> int:
    """Lift every lock on an account name (kamengd user unlock); returns the rows removed."""
    name = _name_key(username, realm)
    removed = session.execute(sa.delete(LoginThrottle).where(_rows_of_name(name))).rowcount
    record(session, "auth.unlock", actor=actor, target=f"login:{name}", details={"rows": removed})
    return removed


def check_password(session: Session, username: str, password: str, ip: str | None,
                   now: dt.datetime | None = None, realm: Realm = STAFF):
    """The first factor. Raises LoginLocked before looking at the password.

    The caller commits either way: a failure must be counted and audited.
    """
    now = now or utcnow()
    seconds = lock_remaining(session, username, ip, now, realm)
    if seconds:
        raise LoginLocked(seconds)
    model = realm.model
    user = session.scalars(sa.select(model).where(model.username == username.strip())).first()
    # An agent made without a password (it works through the API only) has none to match:
    # verify_password(None, ...) hashes anyway, so the answer takes as long either way.
    ok = verify_password(user.password_hash if user else None, password)
    if not ok or user is None or not user.is_active:
        record_failure(session, username, ip, "password" if ok is False or user is None else "inactive", now,
                       realm)
        raise LoginFailed("wrong username or password")
    return user


def complete_login(session: Session, user: Account, ip: str | None, method: str,
                   now: dt.datetime | None = None) -> None:
    _clear_failures(session, user.username, ip, realm_of(user))
    user.last_login_at = now or utcnow()
    record(session, "auth.login", actor=_actor(user), target=_target(user), source_ip=ip,
           details={"method": method})


# --- TOTP ---------------------------------------------------------------------

def _totp_context(user) -> str:
    return f"{realm_of(user).totp_context}:{user.id}"


def totp_secret(vault: Vault, user: Account) -> str | None:
    if user.totp_ciphertext is None:
        return None
    return vault.decrypt_secret(_totp_context(user), user.totp_nonce, user.totp_ciphertext,
                                user.totp_key_version).decode("ascii")


def start_enrolment(session: Session, vault: Vault, user: Account) -> str:
    """A new secret for a user without 2FA; shown once as a QR code, confirmed by a code."""
    if user.totp_enabled:
        raise InvalidRequest("two-factor sign-in is already on; turn it off first")
    secret = pyotp.random_base32()
    user.totp_nonce, user.totp_ciphertext, user.totp_key_version = vault.encrypt_secret(
        _totp_context(user), secret.encode("ascii"))
    session.flush()
    return secret


def provisioning_uri(secret: str, user: Account, issuer: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=user.username, issuer_name=issuer)


def _matching_step(secret: str, code: str, now: dt.datetime) -> int | None:
    code = "".join(code.split())
    if len(code) != 6 or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret)
    step = int(now.replace(tzinfo=dt.timezone.utc).timestamp()) // TOTP_STEP
    found = None
    for candidate in (step - 1, step, step + 1):   # one step of clock drift either way
        if hmac.compare_digest(totp.generate_otp(candidate), code):
            found = candidate
    return found


def check_totp(session: Session, vault: Vault, user: Account, code: str, now: dt.datetime | None = None) -> bool:
    """True once per code: the step is remembered so a seen code is refused."""
    now = now or utcnow()
    secret = totp_secret(vault, user)
    if secret is None:
        return False
    step = _matching_step(secret, code, now)
    if step is None or (user.totp_last_step is not None and step <= user.totp_last_step):
        return False
    # Conditional: two sign-ins racing with the same code, one wins.
    t = realm_of(user).model.__table__
    won = session.execute(t.update().where(t.c.id == user.id, sa.or_(
        t.c.totp_last_step.is_(None), t.c.totp_last_step < step)).values(totp_last_step=step)).rowcount
    session.expire(user, ["totp_last_step"])
    return won == 1


def confirm_enrolment(session: Session, vault: Vault, user: Account, code: str, *, ip: str | None,
                      now: dt.datetime | None = None) -> list[str]:
    """Turn 2FA on with a code from the new secret; returns fresh recovery codes."""
    if user.totp_enabled:
        raise InvalidRequest("two-factor sign-in is already on")
    if user.totp_ciphertext is None:
        raise InvalidRequest("start the set-up first")
    if not check_totp(session, vault, user, code, now):
        raise InvalidRequest("that code is not right; check the phone's clock and try the next code")
    user.totp_enabled = True
    codes = _new_recovery_codes(session, user)
    record(session, "auth.2fa_enable", actor=_actor(user), target=_target(user), source_ip=ip)
    return codes


def disable_totp(session: Session, user: Account, *, actor: str, ip: str | None) -> None:
    """Off, for the user (with a code, checked by the caller) or reset by the owner."""
    user.totp_enabled = False
    user.totp_ciphertext = user.totp_nonce = user.totp_key_version = None
    user.totp_last_step = None
    _delete_recovery_codes(session, user)
    record(session, "auth.2fa_disable", actor=actor, target=_target(user), source_ip=ip,
           details={"username": user.username})


# --- recovery codes -------------------------------------------------------------

def _code_hash(code: str) -> bytes:
    return hashlib.sha256(code.replace("-", "").strip().lower().encode()).digest()


def _codes_of(user):
    """The recovery codes' table and the column naming their owner, for this user's realm."""
    realm = realm_of(user)
    t = realm.recovery_codes.__table__
    return t, t.c[realm.owner]


def _delete_recovery_codes(session: Session, user) -> None:
    t, owner = _codes_of(user)
    session.execute(t.delete().where(owner == user.id))


def _new_recovery_codes(session: Session, user) -> list[str]:
    _delete_recovery_codes(session, user)
    realm = realm_of(user)
    codes = []
    for _ in range(RECOVERY_CODES):
        raw = base64.b32encode(os.urandom(10)).decode().lower()[:12]   # 60 bits
        codes.append(f"{raw[:4]}-{raw[4:8]}-{raw[8:]}")
        session.add(realm.recovery_codes(**{realm.owner: user.id, "code_hash": _code_hash(codes[-1])}))
    session.flush()
    return codes


def regenerate_recovery_codes(session: Session, user: Account, *, ip: str | None) -> list[str]:
    if not user.totp_enabled:
        raise InvalidRequest("turn on two-factor sign-in first")
    codes = _new_recovery_codes(session, user)
    record(session, "auth.recovery_codes", actor=_actor(user), target=_target(user), source_ip=ip)
    return codes


def remaining_recovery_codes(session: Session, user) -> int:
    t, owner = _codes_of(user)
    return session.scalar(sa.select(sa.func.count()).select_from(t).where(owner == user.id, t.c.used_at.is_(None)))


def use_recovery_code(session: Session, user: Account, code: str, *, ip: str | None,
                      now: dt.datetime | None = None) -> bool:
    t, owner = _codes_of(user)
    used = session.execute(t.update().where(owner == user.id, t.c.code_hash == _code_hash(code),
                                            t.c.used_at.is_(None)).values(used_at=now or utcnow())).rowcount
    if used:
        record(session, "auth.recovery_used", actor=_actor(user), target=_target(user),
               source_ip=ip, details={"remaining": remaining_recovery_codes(session, user)})
    return used == 1


@dataclass
class SecondFactor:
    ok: bool
    method: str = ""


def check_second_factor(session: Session, vault: Vault, user: Account, code: str, *, ip: str | None,
                        now: dt.datetime | None = None) -> SecondFactor:
    """A TOTP code or a recovery code; a wrong one counts as a failed sign-in."""
    now = now or utcnow()
    seconds = lock_remaining(session, user.username, ip, now, realm_of(user))
    if seconds:
        raise LoginLocked(seconds)
    cleaned = code.strip()
    if check_totp(session, vault, user, cleaned, now):
        return SecondFactor(True, "password+totp")
    if len(cleaned) > 6 and use_recovery_code(session, user, cleaned, ip=ip, now=now):
        return SecondFactor(True, "password+recovery_code")
    record_failure(session, user.username, ip, "second_factor", now, realm_of(user))
    return SecondFactor(False)


def check_code(session: Session, vault: Vault, user: Account, code: str, *, ip: str | None,
               now: dt.datetime | None = None) -> bool:
    """A TOTP code asked for again while signed in (turning 2FA off, new recovery
    codes): locked, counted and audited like a sign-in's, so a borrowed session
    cannot try every code."""
    now = now or utcnow()
    seconds = lock_remaining(session, user.username, ip, now, realm_of(user))
    if seconds:
        raise LoginLocked(seconds)
    if check_totp(session, vault, user, code.strip(), now):
        return True
    record_failure(session, user.username, ip, "code", now, realm_of(user))
    return False


# --- sessions and passwords -------------------------------------------------------

def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii", "replace")).digest()


def _sessions(realm: Realm):
    t = realm.sessions.__table__
    return t, t.c[realm.owner]


def open_session(session: Session, user, *, ip: str | None, user_agent: str | None) -> str:
    """A new signed-in session; returns the token for the cookie (only its hash is stored)."""
    token = secrets.token_urlsafe(32)
    realm = realm_of(user)
    session.add(realm.sessions(**{realm.owner: user.id}, token_hash=_token_hash(token),
                               ip=(ip or "")[:64] or None, user_agent=(user_agent or "")[:200] or None))
    session.flush()
    return token


def session_is_open(session: Session, user_id: int, token, realm: Realm = STAFF) -> bool:
    if not isinstance(token, str) or len(token) > 100:
        return False
    t, owner = _sessions(realm)
    return session.scalar(sa.select(t.c.id).where(
        t.c.token_hash == _token_hash(token), owner == user_id, t.c.ended_at.is_(None))) is not None


def close_session(session: Session, token, realm: Realm = STAFF) -> None:
    """Signing out: this session's row ends, whoever holds a copy of the cookie."""
    if isinstance(token, str):
        t, _owner = _sessions(realm)
        session.execute(t.update().where(t.c.token_hash == _token_hash(token), t.c.ended_at.is_(None))
                        .values(ended_at=utcnow()))


def _end_sessions(session: Session, user) -> None:
    user.session_epoch = (user.session_epoch or 0) + 1   # the epoch ends them; the rows follow
    t, owner = _sessions(realm_of(user))
    session.execute(t.update().where(owner == user.id, t.c.ended_at.is_(None)).values(ended_at=utcnow()))
    session.flush()


def end_all_sessions(session: Session, user, *, actor: str, ip: str | None) -> int:
    _end_sessions(session, user)
    record(session, "auth.logout_everywhere", actor=actor, target=_target(user), source_ip=ip)
    return user.session_epoch


def change_password(session: Session, user, *, current: str, new: str, ip: str | None) -> int:
    """Needs the current password (guesses locked and counted like sign-ins); ends the
    user's other sessions. Returns the new epoch."""
    seconds = lock_remaining(session, user.username, ip, realm=realm_of(user))
    if seconds:
        raise LoginLocked(seconds)
    if not verify_password(user.password_hash, current):
        record_failure(session, user.username, ip, "password_change", realm=realm_of(user))
        raise LoginFailed("the current password is not right")   # the caller commits the count
    validate_password(new)
    if new == current:
        raise InvalidRequest("the new password is the same as the current one")
    user.password_hash = hash_password(new)
    user.password_changed_at = utcnow()
    _end_sessions(session, user)
    record(session, "auth.password_change", actor=_actor(user), target=_target(user), source_ip=ip)
    return user.session_epoch


def reset_password(session: Session, user, new: str, *, actor: str, ip: str | None) -> None:
    """Set by someone else (the owner, the CLI, staff for an agent): no current password;
    sessions end."""
    validate_password(new)
    user.password_hash = hash_password(new)
    user.password_changed_at = utcnow()
    _end_sessions(session, user)
    _clear_failures(session, user.username, realm=realm_of(user))
    record(session, "auth.password_reset", actor=actor, target=_target(user), source_ip=ip,
           details={"username": user.username})

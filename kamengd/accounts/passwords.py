"""Staff passwords: how long they may be, and Argon2id hashing (argon2-cffi's RFC 9106
low-memory profile)."""
from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from ..errors import InvalidRequest

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024

_hasher = PasswordHasher()

_dummy_hash: str | None = None


def _dummy() -> str:
    """Verified against when the username is unknown, so a login takes as long either way."""
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = _hasher.hash("kamengd-dummy-password")
    return _dummy_hash


def validate_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidRequest("password must be at least %(length)s characters", length=MIN_PASSWORD_LENGTH)
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidRequest("password must be at most %(length)s characters", length=MAX_PASSWORD_LENGTH)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _dummy(), password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def set_cost(time_cost: int, memory_cost: int, parallelism: int = 1) -> None:
    """Tests make hashing cheap; production keeps the library defaults."""
    global _hasher
    _hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism)

"""Argon2id password hashing (argon2-cffi's RFC 9106 low-memory profile)."""
from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()

_dummy_hash: str | None = None


def _dummy() -> str:
    """Verified against when the username is unknown, so a login takes as long either way."""
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = _hasher.hash("kamengd-dummy-password")
    return _dummy_hash


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

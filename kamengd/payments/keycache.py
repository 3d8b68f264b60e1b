"""Channel secrets decrypted once per process.

Keyed by the channel and the nonce of its stored ciphertext: every change of
a secret (an edit, a key rotation) writes a new nonce, so a cached plaintext
is never used after its secret changed. The plaintext lives only in this
process's memory, like the data key it was decrypted with.
"""
from __future__ import annotations

import json
import threading

from ..errors import InvalidRequest
from ..vault import Vault
from .strength import secrets_problem

_cache: dict[tuple[int, bytes], dict[str, str]] = {}
_problems: dict[tuple[int, bytes], InvalidRequest | None] = {}
_lock = threading.Lock()
MAX_ENTRIES = 256


def has_cached(channel_id: int, nonce: bytes) -> bool:
    return (channel_id, bytes(nonce)) in _cache


def channel_secrets_cached(vault: Vault, channel_id: int, code: str, nonce: bytes | None,
                           ciphertext: bytes | None, key_version: int | None) -> dict[str, str]:
    if nonce is None or ciphertext is None:
        return {}
    entry = (channel_id, bytes(nonce))
    found = _cache.get(entry)
    if found is None:
        found = json.loads(vault.decrypt_secret(f"channel:{code}", nonce, ciphertext, key_version))
        with _lock:
            if len(_cache) >= MAX_ENTRIES:
                _cache.clear()
            _cache[entry] = found
    return found


def secrets_problem_cached(channel_type: str, channel_id: int, nonce: bytes,
                           secrets: dict[str, str]) -> InvalidRequest | None:
    """kamengd.payments.strength's verdict on these secrets, worked out once per secret
    (checkout asks on every order)."""
    entry = (channel_id, bytes(nonce))
    if entry not in _problems:
        with _lock:
            if len(_problems) >= MAX_ENTRIES:
                _problems.clear()
            _problems[entry] = secrets_problem(channel_type, secrets)
    return _problems[entry]

"""The agent API's request signature (kamengd/docs/agent-api.md).

HMAC-SHA256, keyed with the agent's secret, of
METHOD \\n PATH_WITH_QUERY \\n TIMESTAMP \\n NONCE \\n hex(SHA-256(body)), in lower-case hex.
A leaf: the agents' own scripts (and the tests) sign with the same function.
"""
from __future__ import annotations

import hashlib
import hmac
import re

WINDOW_SECONDS = 300
NONCE_RE = re.compile(r"[\x21-\x7e]{16,64}")
TIMESTAMP_RE = re.compile(r"[0-9]{1,12}")
SIGNATURE_RE = re.compile(r"[0-9a-f]{64}")


def string_to_sign(method: str, path_with_query: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    return "\n".join((method.upper(), path_with_query, timestamp, nonce,
                      hashlib.sha256(body).hexdigest())).encode("utf-8")


def sign(secret: str, method: str, path_with_query: str, timestamp: str, nonce: str, body: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), string_to_sign(method, path_with_query, timestamp, nonce, body),
                    hashlib.sha256).hexdigest()


def signature_matches(secret: str, given: str, method: str, path_with_query: str, timestamp: str, nonce: str,
                      body: bytes) -> bool:
    """Constant-time comparison with the signature the request should carry."""
    expected = sign(secret, method, path_with_query, timestamp, nonce, body)
    return hmac.compare_digest(expected.encode(), given.encode("ascii", "replace"))


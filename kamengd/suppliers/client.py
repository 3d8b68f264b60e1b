"""Signed requests to a supplier's agent API (kamengd/docs/agent-api.md), over HTTP.

An answer is `Answer(status, body)` whatever its status; only a request that got no
answer at all (refused connection, timeout, a reset, a body that is not JSON from a
proxy in between) raises `Unreachable`: the caller then cannot know whether the supplier
acted on it, and must ask again with the same Idempotency-Key.
"""
from __future__ import annotations

import http.client
import json
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from ..agents.signing import sign
from ..version import __version__

TIMEOUT_SECONDS = 10.0
MAX_ANSWER_BYTES = 4 * 1024 * 1024


class Unreachable(Exception):
    """No answer: the supplier may or may not have acted on the request."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def error_code(self) -> str:
        error = self.body.get("error") if isinstance(self.body, dict) else None
        return str(error.get("code")) if isinstance(error, dict) else f"http_{self.status}"

    @property
    def error_message(self) -> str:
        error = self.body.get("error") if isinstance(self.body, dict) else None
        return str(error.get("message"))[:200] if isinstance(error, dict) else f"HTTP {self.status}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None   # a signed request is for this path only


_opener = urllib.request.build_opener(_NoRedirect)


@dataclass(frozen=True)
class Client:
    base_url: str
    key_id: str
    secret: str
    timeout: float | None = None   # None: TIMEOUT_SECONDS as it is at each call

    def call(self, method: str, path: str, body: dict | None = None, *, query: dict | None = None,
             idempotency_key: str | None = None) -> Answer:
        path = "/api/v1/agent" + path
        if query:
            path += "?" + urllib.parse.urlencode(query)
        data = json.dumps(body, separators=(",", ":")).encode() if body is not None else b""
        timestamp, nonce = str(int(time.time())), secrets.token_hex(16)
        headers = {"X-Kamengd-Key": self.key_id, "X-Kamengd-Timestamp": timestamp, "X-Kamengd-Nonce": nonce,
                   "X-Kamengd-Signature": sign(self.secret, method, path, timestamp, nonce, data),
                   "Content-Type": "application/json", "Accept": "application/json",
                   "User-Agent": f"kamengd/{__version__} (supplier client)"}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        request = urllib.request.Request(self.base_url.rstrip("/") + path, data=data if body is not None else None,
                                         method=method, headers=headers)
        timeout = TIMEOUT_SECONDS if self.timeout is None else self.timeout
        try:
            with _opener.open(request, timeout=timeout) as response:
                return Answer(response.status, _json(response.read(MAX_ANSWER_BYTES), response.status))
        except urllib.error.HTTPError as exc:
            return Answer(exc.code, _json(exc.read(MAX_ANSWER_BYTES), exc.code, strict=False))
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Unreachable(f"{exc.__class__.__name__}: {reason}"[:200]) from None


def _json(raw: bytes, status: int, strict: bool = True) -> dict:
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        if strict and 200 <= status < 300:
            # A 2xx that is not our JSON (a captive proxy): no answer from the supplier.
            raise Unreachable(f"HTTP {status} with a body that is not JSON") from None
        return {}
    return body if isinstance(body, dict) else {}

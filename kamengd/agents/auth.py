"""Who sent an agent API request: its key, its signature, its timestamp and nonce.

Checked in this order, each refusal a 401 that changes nothing: the headers
are well-formed; the timestamp is within the window; the key is known, not
revoked, and its agent active; the signature matches (constant time); the
nonce is new. Only a request that proved its key stores its nonce (in the
request's transaction), so junk cannot fill the table.
"""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..database import utcnow
from ..errors import Unauthorized
from ..vault import Vault, VaultError
from . import signing
from .models import Agent, AgentApiKey, ApiNonce
from .services import secret_context

HEADERS = ("X-Kamengd-Key", "X-Kamengd-Timestamp", "X-Kamengd-Nonce", "X-Kamengd-Signature")
KEY_ID_MAX = 32


def authenticate(session: Session, vault: Vault, *, headers, method: str, path_with_query: str, body: bytes,
                 now: dt.datetime | None = None) -> Agent:
    now = now or utcnow()
    key_id, timestamp, nonce, signature = (str(headers.get(name, "")) for name in HEADERS)
    if not (0 < len(key_id) <= KEY_ID_MAX and signing.TIMESTAMP_RE.fullmatch(timestamp)
            and signing.NONCE_RE.fullmatch(nonce) and signing.SIGNATURE_RE.fullmatch(signature)):
        raise Unauthorized("sign the request: X-Kamengd-Key, X-Kamengd-Timestamp, X-Kamengd-Nonce (16-64 "
                           "characters) and X-Kamengd-Signature (64 hex digits) are required")
    epoch = now.replace(tzinfo=dt.timezone.utc).timestamp()
    if abs(epoch - int(timestamp)) > signing.WINDOW_SECONDS:
        raise Unauthorized("the timestamp is more than %(window)s s from the server's clock",
                           window=signing.WINDOW_SECONDS)
    row = session.execute(
        sa.select(AgentApiKey.id, AgentApiKey.secret_nonce, AgentApiKey.secret_ciphertext,
                  AgentApiKey.secret_key_version, AgentApiKey.revoked_at, Agent.id.label("agent_id"),
                  Agent.is_active)
        .join(Agent, Agent.id == AgentApiKey.agent_id).where(AgentApiKey.key_id == key_id)).first()
    if row is None or row.revoked_at is not None or not row.is_active:
        raise Unauthorized("unknown or revoked key")
    try:
        secret = vault.decrypt_secret(secret_context(key_id), row.secret_nonce, row.secret_ciphertext,
                                      row.secret_key_version).decode("utf-8")
    except VaultError:
        raise Unauthorized("this key cannot be checked: issue a new one") from None
    if not signing.signature_matches(secret, signature, method, path_with_query, timestamp, nonce, body):
        raise Unauthorized("wrong signature")
    try:
        with session.begin_nested():
            session.execute(sa.insert(ApiNonce).values(key_id=key_id, nonce=nonce, created_at=now))
    except IntegrityError:
        raise Unauthorized("this nonce was used before") from None
    return session.get(Agent, row.agent_id)


def prune_nonces(session: Session, now: dt.datetime | None = None, batch: int = 5000) -> int:
    """Nonces older than twice the window: a request that old is refused by its timestamp."""
    cutoff = (now or utcnow()) - dt.timedelta(seconds=2 * signing.WINDOW_SECONDS)
    done = 0
    while True:
        ids = session.scalars(sa.select(ApiNonce.id).where(ApiNonce.created_at < cutoff)
                              .order_by(ApiNonce.id).limit(batch)).all()
        if ids:
            done += session.execute(sa.delete(ApiNonce).where(ApiNonce.id.in_(ids))).rowcount
        session.commit()   # a batch at a time (a job: its own commits)
        if len(ids) < batch:
            return done

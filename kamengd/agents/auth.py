"""Who sent an agent API request: its key, its signature, its timestamp and nonce.

Checked in this order, each refusal a 401 that changes nothing: the headers
are well-formed; the timestamp is within the window; the key is known, not
revoked, and its agent active; the signature matches (constant time); the
nonce is new. `verify_request` only reads (outside the write lock: on SQLite
a snapshot); the nonce is spent by `spend_nonce` in the request's write
transaction, so only a request that proved its key stores one, and a replay
finds it there.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..database import utcnow
from ..errors import Forbidden, Unauthorized
from ..vault import Vault, VaultError
from . import signing
from ..ledger.models import LedgerAccount
from .models import Agent, AgentApiKey, AgentLevel, ApiNonce
from .services import SCOPES, secret_context

HEADERS = ("X-Kamengd-Key", "X-Kamengd-Timestamp", "X-Kamengd-Nonce", "X-Kamengd-Signature")
KEY_ID_MAX = 32

_keys, _agents, _levels, _nonces, _accounts = (AgentApiKey.__table__, Agent.__table__, AgentLevel.__table__,
                                               ApiNonce.__table__, LedgerAccount.__table__)
_shop = _accounts.alias("shop_account")
# The key, its agent, the agent's level and spendable account, and the shop's accounts its
# orders book against (made by migration 0020, never removed), in one read.
_CALLER = (sa.select(_keys.c.secret_nonce, _keys.c.secret_ciphertext, _keys.c.secret_key_version, _keys.c.revoked_at,
                     _keys.c.scopes,
                     _agents.c.id.label("agent_id"), _agents.c.username, _agents.c.is_active, _agents.c.level_id,
                     _agents.c.parent_id, _agents.c.has_pool,
                     _levels.c.discount_bp, _accounts.c.id.label("account_id"), _accounts.c.currency,
                     *(sa.select(_shop.c.id).where(_shop.c.name == name).scalar_subquery().label(label)
                       for name, label in (("shop:sales", "sales_id"), ("shop:commission", "commission_id"))))
           .select_from(_keys.join(_agents, _agents.c.id == _keys.c.agent_id)
                        .join(_levels, _levels.c.id == _agents.c.level_id)
                        .join(_accounts, sa.and_(_accounts.c.agent_id == _agents.c.id,
                                                 _accounts.c.kind == "available")))
           .where(_keys.c.key_id == sa.bindparam("key_id")))
_SPEND = _nonces.insert()


@dataclass(frozen=True)
class Caller:
    """The agent a request proved to come from, as read when it was checked."""
    agent_id: int
    username: str
    level_id: int
    discount_bp: int
    key_id: str
    nonce: str
    account_id: int        # its spendable ledger account
    currency: str
    parent_id: int | None = None   # None: nobody above it earns commission on its orders
    sales_account_id: int | None = None        # the shop's ledger accounts, as read with the key
    commission_account_id: int | None = None
    has_pool: bool = False                     # its orders draw on its stock pool first
    scopes: frozenset = frozenset(SCOPES)      # what the key may do

    def require(self, scope: str) -> "Caller":
        """403, and nothing changes, when the key was issued without `scope`."""
        if scope not in self.scopes:
            raise Forbidden("this API key may not %(what)s (its scopes: %(scopes)s)",
                            what=SCOPE_NEEDS[scope], scopes=", ".join(sorted(self.scopes)) or "none")
        return self


SCOPE_NEEDS = {"read": "read", "order": "place orders", "account": "change the account"}


def verify_request(session: Session, vault: Vault, *, headers, method: str, path_with_query: str, body: bytes,
                   now: dt.datetime | None = None) -> Caller:
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
    row = session.connection().execute(_CALLER, {"key_id": key_id}).first()
    if row is None or row.revoked_at is not None or not row.is_active:
        raise Unauthorized("unknown or revoked key")
    try:
        secret = vault.decrypt_secret(secret_context(key_id), row.secret_nonce, row.secret_ciphertext,
                                      row.secret_key_version).decode("utf-8")
    except VaultError:
        raise Unauthorized("this key cannot be checked: issue a new one") from None
    if not signing.signature_matches(secret, signature, method, path_with_query, timestamp, nonce, body):
        raise Unauthorized("wrong signature")
    return Caller(row.agent_id, row.username, row.level_id, row.discount_bp, key_id, nonce, row.account_id,
                  row.currency, row.parent_id, row.sales_id, row.commission_id, bool(row.has_pool),
                  frozenset(filter(None, row.scopes.split(","))))


# The same as _CALLER, for an agent signed in to the portal (no key: every scope).
_SIGNED_IN = (sa.select(_agents.c.id.label("agent_id"), _agents.c.username, _agents.c.is_active, _agents.c.level_id,
                        _agents.c.parent_id, _agents.c.has_pool, _levels.c.discount_bp,
                        _accounts.c.id.label("account_id"), _accounts.c.currency,
                        *(sa.select(_shop.c.id).where(_shop.c.name == name).scalar_subquery().label(label)
                          for name, label in (("shop:sales", "sales_id"), ("shop:commission", "commission_id"))))
              .select_from(_agents.join(_levels, _levels.c.id == _agents.c.level_id)
                           .join(_accounts, sa.and_(_accounts.c.agent_id == _agents.c.id,
                                                    _accounts.c.kind == "available")))
              .where(_agents.c.id == sa.bindparam("agent_id")))


def caller_for_agent(session: Session, agent_id: int) -> Caller:
    """The agent signed in to the portal as a Caller (its orders are placed as the API's are)."""
    row = session.connection().execute(_SIGNED_IN, {"agent_id": agent_id}).first()
    if row is None or not row.is_active:
        raise Unauthorized("this account cannot place orders")
    return Caller(row.agent_id, row.username, row.level_id, row.discount_bp, "", "", row.account_id, row.currency,
                  row.parent_id, row.sales_id, row.commission_id, bool(row.has_pool))


def spend_nonce(session: Session, caller: Caller, now: dt.datetime | None = None) -> None:
    """Record the request's nonce in the write transaction; seen before: 401."""
    try:
        session.connection().execute(_SPEND, {"key_id": caller.key_id, "nonce": caller.nonce,
                                              "created_at": now or utcnow()})
    except IntegrityError:
        raise Unauthorized("this nonce was used before") from None


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

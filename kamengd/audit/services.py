"""The audit log: an append-only SHA-256 hash chain.

Each entry's hash covers the previous entry's hash and its own content, and
the audit_head row holds the newest sequence number and hash. Altering an
entry breaks its hash; removing one breaks the next entry's link (or the
head, for the newest); reordering breaks the sequence.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import pwd
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..context import get_vault
from ..database import utcnow
from ..errors import KamengdError
from .models import AuditEntry, AuditHead

GENESIS_HASH = "0" * 64


def cli_actor() -> str:
    """cli:<os user>, from the process's real identity, not $USER/$LOGNAME."""
    uid = os.geteuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"uid{uid}"
    sudo_user = os.environ.get("SUDO_USER") if uid == 0 else None
    return f"cli:{name}" + (f" (sudo by {sudo_user})" if sudo_user and sudo_user != name else "")


def canonical_details(details: dict | None) -> str:
    return json.dumps(details or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)


def compute_hash(prev_hash: str, seq: int, created_at, actor: str, action: str, target: str,
                 source_ip: str | None, details: str) -> str:
    content = json.dumps([seq, created_at.isoformat(timespec="microseconds"), actor, action,
                          target, source_ip, details], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{prev_hash}\n{content}".encode()).hexdigest()


def seal_message(seq: int, last_hash: str) -> bytes:
    return f"kamengd-audit-head:{seq}:{last_hash}".encode()


def record(session: Session, action: str, *, actor: str, target: str = "",
           source_ip: str | None = None, details: dict | None = None) -> AuditEntry:
    """Append an entry in the caller's transaction (it commits with the change it records).

    The UPDATE of the head row comes first: it takes that row's lock (MySQL)
    so concurrent writers append one after another, never both after the same
    predecessor. Needs an app context (the seal is made with the data key).
    """
    vault = get_vault()
    head = AuditHead.__table__
    claimed = session.execute(head.update().where(head.c.id == 1).values(seq=head.c.seq + 1))
    if claimed.rowcount != 1:
        raise RuntimeError("audit_head row is missing; the schema was not created by migrations")
    seq, prev_hash = session.execute(sa.select(head.c.seq, head.c.last_hash).where(head.c.id == 1)).one()
    created_at = utcnow()
    details_json = canonical_details(details)
    entry_hash = compute_hash(prev_hash, seq, created_at, actor, action, target, source_ip, details_json)
    entry = AuditEntry(seq=seq, created_at=created_at, actor=actor, action=action, target=target,
                       source_ip=source_ip, details=details_json, prev_hash=prev_hash,
                       entry_hash=entry_hash)
    session.add(entry)
    session.execute(head.update().where(head.c.id == 1).values(
        last_hash=entry_hash, seal=vault.seal(seal_message(seq, entry_hash)),
        seal_version=vault.current_version))
    session.flush()
    return entry


@dataclass
class VerifyResult:
    ok: bool
    entries: int
    bad_entry_id: int | None = None
    problem: str = ""


def verify(session: Session, vault=None) -> VerifyResult:
    """Check the chain up to the head as it is now; entries appended while
    this runs are left for the next check. With the vault, check the seal."""
    head = session.execute(sa.select(AuditHead).where(AuditHead.id == 1)).scalar_one_or_none()
    if head is None:
        return VerifyResult(False, 0, None, "the audit head row is missing")
    head_seq, head_hash, seal, seal_version = head.seq, head.last_hash, head.seal, head.seal_version
    t = AuditEntry.__table__
    prev_hash, expected_seq, count, last_id = GENESIS_HASH, 1, 0, None
    rows = session.execute(sa.select(t).where(t.c.seq <= head_seq).order_by(t.c.id)
                           .execution_options(yield_per=2000))
    for row in rows:
        if row.seq != expected_seq:
            what = "reordered or out of sequence"
            if row.seq > expected_seq:
                what = f"entries {expected_seq}..{row.seq - 1} are missing"
            return VerifyResult(False, count, row.id, f"entry #{row.id} (seq {row.seq}): {what}")
        if row.prev_hash != prev_hash:
            return VerifyResult(False, count, row.id,
                                f"entry #{row.id} (seq {row.seq}): does not link to the entry before it")
        actual = compute_hash(row.prev_hash, row.seq, row.created_at, row.actor, row.action,
                              row.target, row.source_ip, row.details)
        if actual != row.entry_hash:
            return VerifyResult(False, count, row.id, f"entry #{row.id} (seq {row.seq}): content was altered")
        prev_hash, expected_seq, count, last_id = row.entry_hash, expected_seq + 1, count + 1, row.id
    if count == 0:
        return VerifyResult(False, 0, None, "the audit log is empty (every installation records its install)")
    if head_seq != count or head_hash != prev_hash:
        return VerifyResult(False, count, last_id,
                            f"the newest entries were removed (after entry #{last_id}; "
                            f"head says {head_seq} entries, found {count})")
    if vault is not None:
        try:
            expected = vault.seal(seal_message(head_seq, head_hash), seal_version)
        except KamengdError as exc:
            return VerifyResult(False, count, last_id, f"cannot check the seal: {exc.message}")
        if seal is None or not hmac.compare_digest(expected, seal):
            return VerifyResult(False, count, last_id,
                                "the head's seal does not match: the log was rewritten (or another data key is in use)")
    return VerifyResult(True, count)


def find_entries(session: Session, *, actor: str = "", action: str = "", target: str = "",
                 since=None, until=None, limit: int = 50, offset: int = 0) -> list[AuditEntry]:
    """Entries newest first. `actor` and `target` match anywhere in the field; `action`
    exactly, or as a prefix when it ends with '.' or '*' ("auth." or "auth.*");
    `since`/`until` (naive UTC) bound the time, `until` excluded."""
    query = sa.select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit).offset(offset)
    if actor:
        query = query.where(AuditEntry.actor.contains(actor, autoescape=True))
    if target:
        query = query.where(AuditEntry.target.contains(target, autoescape=True))
    action = action.strip()
    if action.endswith("*") or action.endswith("."):
        prefix = action.rstrip("*")
        if prefix:
            query = query.where(AuditEntry.action.startswith(prefix, autoescape=True))
    elif action:
        query = query.where(AuditEntry.action == action)
    if since is not None:
        query = query.where(AuditEntry.created_at >= since)
    if until is not None:
        query = query.where(AuditEntry.created_at < until)
    return list(session.scalars(query))

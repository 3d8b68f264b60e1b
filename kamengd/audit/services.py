"""The audit log: an append-only SHA-256 hash chain.

Each entry's hash covers the previous entry's hash and its own content, and
the audit_head row holds the newest sequence number and hash. Altering an
entry breaks its hash; removing one breaks the next entry's link (or the
head, for the newest); reordering breaks the sequence.
"""
from __future__ import annotations

import getpass
import hashlib
import json
import os
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..database import utcnow
from .models import AuditEntry, AuditHead

GENESIS_HASH = "0" * 64


def cli_actor() -> str:
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = f"uid{os.getuid()}"
    return f"cli:{name}"


def canonical_details(details: dict | None) -> str:
    return json.dumps(details or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)


def compute_hash(prev_hash: str, seq: int, created_at, actor: str, action: str, target: str,
                 source_ip: str | None, details: str) -> str:
    content = json.dumps([seq, created_at.isoformat(timespec="microseconds"), actor, action,
                          target, source_ip, details], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{prev_hash}\n{content}".encode()).hexdigest()


def record(session: Session, action: str, *, actor: str, target: str = "",
           source_ip: str | None = None, details: dict | None = None) -> AuditEntry:
    """Append an entry in the caller's transaction (it commits with the change it records).

    The UPDATE of the head row comes first: it takes that row's lock (MySQL)
    so concurrent writers append one after another, never both after the same
    predecessor.
    """
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
    session.execute(head.update().where(head.c.id == 1).values(last_hash=entry_hash))
    session.flush()
    return entry


@dataclass
class VerifyResult:
    ok: bool
    entries: int
    bad_entry_id: int | None = None
    problem: str = ""


def verify(session: Session) -> VerifyResult:
    t = AuditEntry.__table__
    prev_hash, expected_seq, count, last_id = GENESIS_HASH, 1, 0, None
    rows = session.execute(sa.select(t).order_by(t.c.id).execution_options(yield_per=2000))
    for row in rows:
        if row.seq != expected_seq:
            what = "reordered or out of sequence" if row.seq > 0 else "bad sequence number"
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
    head = session.execute(sa.select(AuditHead.seq, AuditHead.last_hash).where(AuditHead.id == 1)).first()
    if head is None:
        return VerifyResult(False, count, None, "the audit head row is missing")
    if head.seq != count or head.last_hash != prev_hash:
        where = f"after entry #{last_id}" if last_id else "at the start"
        return VerifyResult(False, count, last_id,
                            f"the newest entries were removed ({where}; head says {head.seq} entries, found {count})")
    return VerifyResult(True, count)

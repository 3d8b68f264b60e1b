"""Data-key rotation while the shop keeps selling.

1. A new key version is added to the key file (atomically; running servers
   reload the file when it changes, so they read both versions from then on
   and write new keys with the new one).
2. Card keys written under older versions are re-encrypted in small batches,
   each its own short transaction: decrypted, fingerprinted again under the
   new version (the fingerprint key rotates too) and encrypted anew. Each
   row's update is conditional on its old version and fingerprint, so a
   batch never clobbers a row someone else changed, and a second run simply
   goes on with what is left: rotation is resumable.
3. Payment channel secrets, staff 2FA secrets, secret settings and the audit log's seal follow.
4. An hour after the rotation, when no row uses an old version any more, the
   scheduler retires the old versions (`kamengd key retire` does it at once):
   they leave the key file for a file beside it (mode 0600), as backups taken
   before the rotation still need them. Deleting that file is the admin's
   call. The hour lets a long import that began with the old key commit
   first; its rows then keep the old version in use, and the next
   `key rotate` finishes them.

With several app servers, copy the key file to every server after step 1
(`kamengd key rotate --prepare`), then run the rotation.
"""
from __future__ import annotations

import datetime as dt
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..accounts.models import StaffUser
from ..agents.models import Agent, AgentApiKey, AgentWebhook
from ..agents.services import secret_context
from ..agents.webhooks import secret_context as webhook_secret_context
from ..audit.models import AuditHead
from ..audit.services import record, seal_message
from ..backup.models import note, read
from ..catalog.models import Product
from ..database import utcnow
from ..errors import KamengdError
from ..inventory.models import CardKey
from ..payments.models import PaymentChannel
from ..settings.models import SettingSecret
from ..settings.services import reencrypt_secrets
from ..suppliers.models import Supplier
from ..suppliers.services import secret_context as supplier_secret_context
from ..vouchers.codes import normalise
from ..vouchers.models import Voucher
from ..vault import (KEY_BYTES, Vault, key_file_lock, load_vault, parse_key_file, render_key_file, replace_key_file,
                    write_secret_file)


@dataclass
class RotationResult:
    version: int
    started: bool                    # a new key version was added by this run
    card_keys: int = 0
    channels: int = 0
    resealed: bool = False


def versions_in_use(session: Session) -> dict[int, int]:
    """Key version -> rows that still need it (card keys, channel and 2FA secrets, secret settings,
    agents' 2FA, API and webhook secrets, suppliers' keys, the audit seal)."""
    t = CardKey.__table__
    used = dict(session.execute(sa.select(t.c.key_version, sa.func.count()).group_by(t.c.key_version)).all())
    for version, count in session.execute(sa.select(Voucher.key_version, sa.func.count())
                                          .group_by(Voucher.key_version)):
        used[version] = used.get(version, 0) + count
    for (version,) in session.execute(sa.select(PaymentChannel.secret_key_version)
                                      .where(PaymentChannel.secret_key_version.is_not(None))):
        used[version] = used.get(version, 0) + 1
    for column in (StaffUser.totp_key_version, Agent.totp_key_version):
        for (version,) in session.execute(sa.select(column).where(column.is_not(None))):
            used[version] = used.get(version, 0) + 1
    for version, count in session.execute(sa.select(SettingSecret.key_version, sa.func.count())
                                          .group_by(SettingSecret.key_version)):
        used[version] = used.get(version, 0) + count
    for model in (AgentApiKey, AgentWebhook, Supplier):
        for version, count in session.execute(sa.select(model.secret_key_version, sa.func.count())
                                              .group_by(model.secret_key_version)):
            used[version] = used.get(version, 0) + count
    seal = session.scalar(sa.select(AuditHead.seal_version).where(AuditHead.id == 1))
    if seal is not None:
        used[seal] = used.get(seal, 0) + 1
    return used


def _keys(path: Path) -> dict[int, bytes]:
    return parse_key_file(Path(path).read_text(encoding="ascii"), str(path))


def add_key_version(path: Path) -> int:
    keys = _keys(path)
    version = max(keys) + 1
    replace_key_file(path, {**keys, version: os.urandom(KEY_BYTES)})
    return version


def reencrypt_card_keys(session: Session, vault: Vault, *, batch: int = 1000,
                        progress: Callable[[int], None] | None = None) -> int:
    t, v = CardKey.__table__, Voucher.__table__
    target, done = vault.current_version, 0
    while True:
        rows = session.execute(sa.select(t.c.id, t.c.product_id, t.c.fingerprint, t.c.nonce, t.c.ciphertext,
                                         t.c.key_version)
                               .where(t.c.key_version != target).order_by(t.c.id).limit(batch)).all()
        if not rows:
            session.commit()   # ends the last batch's read
            return done
        if session.get_bind().dialect.name != "sqlite":
            # An import of these products checks duplicates under the same lock.
            session.execute(sa.select(Product.id).where(Product.id.in_(sorted({r.product_id for r in rows})))
                            .order_by(Product.id).with_for_update())
        # The batch's keys that are voucher codes (made by kamengd: ASCII); the others have no lookup.
        codes = set(session.scalars(sa.select(v.c.card_key_id).where(v.c.card_key_id.in_([r.id for r in rows]))))
        for r in rows:
            plaintext = vault.decrypt_card_key(r.product_id, r.fingerprint, r.nonce, r.ciphertext, r.key_version)
            fp = vault.fingerprint(r.product_id, plaintext)
            nonce, ct, version = vault.encrypt_card_key(r.product_id, plaintext, fp)
            try:
                changed = session.execute(t.update().where(t.c.id == r.id, t.c.key_version == r.key_version,
                                                           t.c.fingerprint == r.fingerprint)
                                          .values(fingerprint=fp, nonce=nonce, ciphertext=ct,
                                                  key_version=version)).rowcount
                done += changed
                if changed and r.id in codes:   # a voucher's code: its lookup hash follows the key
                    session.execute(v.update().where(v.c.card_key_id == r.id, v.c.key_version != version)
                                    .values(lookup=vault.voucher_lookups(normalise(plaintext.decode("ascii")))[0][1],
                                            key_version=version))
            except IntegrityError:   # the whole batch is undone; nothing half re-encrypted stays
                session.rollback()
                raise KamengdError(f"card key #{r.id} of product {r.product_id} is the same key as another one "
                                   "of that product (stored twice before this rotation); void one of them, "
                                   "then run `kamengd key rotate` again") from None
        session.commit()   # a batch at a time: buyers and imports go on between batches (resumable)
        if progress:
            progress(done)


def _reencrypt_columns(session: Session, vault: Vault, model, prefix: str, context_of) -> int:
    """Re-encrypt the `<prefix>_nonce/_ciphertext/_key_version` secret of every row of
    `model` still under an older key version, each under its own context."""
    version = getattr(model, f"{prefix}_key_version")
    rows = session.scalars(sa.select(model).where(version.is_not(None), version != vault.current_version)).all()
    for row in rows:
        context = context_of(row)
        plaintext = vault.decrypt_secret(context, getattr(row, f"{prefix}_nonce"),
                                         getattr(row, f"{prefix}_ciphertext"), getattr(row, f"{prefix}_key_version"))
        nonce, ciphertext, new_version = vault.encrypt_secret(context, plaintext)
        setattr(row, f"{prefix}_nonce", nonce)
        setattr(row, f"{prefix}_ciphertext", ciphertext)
        setattr(row, f"{prefix}_key_version", new_version)
    session.flush()
    return len(rows)


def reencrypt_channels(session: Session, vault: Vault) -> int:
    return _reencrypt_columns(session, vault, PaymentChannel, "secret", lambda channel: f"channel:{channel.code}")


def reencrypt_totp_secrets(session: Session, vault: Vault) -> int:
    """Staff 2FA secrets follow the data key like channel secrets."""
    return _reencrypt_columns(session, vault, StaffUser, "totp", lambda user: f"staff-totp:{user.id}")


def reencrypt_agent_totp_secrets(session: Session, vault: Vault) -> int:
    return _reencrypt_columns(session, vault, Agent, "totp", lambda agent: f"agent-totp:{agent.id}")


def reencrypt_supplier_secrets(session: Session, vault: Vault) -> int:
    return _reencrypt_columns(session, vault, Supplier, "secret", lambda row: supplier_secret_context(row.name))


def reencrypt_agent_api_secrets(session: Session, vault: Vault) -> int:
    return _reencrypt_columns(session, vault, AgentApiKey, "secret", lambda key: secret_context(key.key_id))


def reencrypt_agent_webhook_secrets(session: Session, vault: Vault) -> int:
    return _reencrypt_columns(session, vault, AgentWebhook, "secret", lambda hook: webhook_secret_context(hook.id))


def reseal_audit_head(session: Session, vault: Vault) -> bool:
    """Seal the audit head with the new version, after checking the old seal."""
    head = session.scalars(sa.select(AuditHead).where(AuditHead.id == 1).with_for_update()).one_or_none()
    if head is None or head.seal_version == vault.current_version:
        return False
    if head.seal is not None and not hmac.compare_digest(
            vault.seal(seal_message(head.seq, head.last_hash), head.seal_version), head.seal):
        raise KamengdError("the audit log's seal does not match: run `kamengd audit verify` before rotating")
    head.seal, head.seal_version = vault.seal(seal_message(head.seq, head.last_hash)), vault.current_version
    session.flush()
    return True


RETIRE_AFTER = dt.timedelta(hours=1)


def retire_unused(session: Session, path: Path, *, now: dt.datetime | None = None,
                  min_age: dt.timedelta = dt.timedelta(0)) -> tuple[list[int], Path | None]:
    """Move key versions no row uses out of the key file, into a file beside it,
    once the last rotation is at least `min_age` old."""
    now = now or utcnow()
    last = read(session, "key.rotation")
    session.commit()   # ends the read: no transaction is held while waiting for the key file's lock
    if min_age and (last is None or now - last[1] < min_age):
        return [], None
    with key_file_lock(path):   # read, decide and write with no other key-file change in between
        keys = _keys(path)
        used = versions_in_use(session)
        session.commit()   # ends the read: no database lock is held while the key file is rewritten
        current = max(keys)
        old = {v: k for v, k in keys.items() if v != current and not used.get(v)}
        if not old:
            return [], None
        aside = Path(path).with_name(f"{Path(path).name}.retired-{now:%Y%m%dT%H%M%S%fZ}")
        write_secret_file(aside, render_key_file(old), owner_like=path)
        replace_key_file(path, {v: k for v, k in keys.items() if v not in old})
    return sorted(old), aside


def rotate(session: Session, key_path: Path, *, prepare: bool = False, batch: int = 1000,
           progress: Callable[[int], None] | None = None) -> RotationResult:
    with key_file_lock(key_path):   # two rotations (or a retire) never both decide on the same file
        keys = _keys(key_path)
        used = versions_in_use(session)
        session.commit()   # ends the read: no database lock is held while the key file is rewritten
        current = max(keys)
        pending = any(count for version, count in used.items() if version != current)
        missing = sorted(v for v, count in used.items() if count and v not in keys)
        if missing:
            raise KamengdError(f"the key file lacks version(s) {', '.join(map(str, missing))} that rows still use: "
                               "restore the right key file first (kamengd key restore)")
        started = False
        if not pending:   # nothing half done: a new rotation
            current, started = add_key_version(key_path), True
    result = RotationResult(current, started)
    if prepare:
        return result
    vault = load_vault(key_path)
    result.card_keys = reencrypt_card_keys(session, vault, batch=batch, progress=progress)
    result.channels = reencrypt_channels(session, vault)
    reencrypt_totp_secrets(session, vault)
    reencrypt_agent_api_secrets(session, vault)
    reencrypt_agent_webhook_secrets(session, vault)
    reencrypt_agent_totp_secrets(session, vault)
    reencrypt_supplier_secrets(session, vault)
    reencrypt_secrets(session, vault)
    session.commit()   # the re-encrypted secrets stay even if the audit seal below does not check out
    result.resealed = reseal_audit_head(session, vault)
    note(session, "key.rotation", {"version": current, "card_keys": result.card_keys})
    return result


def retire_old_keys(session: Session, path: Path, now: dt.datetime | None = None) -> dict:
    """The job: retire unused old versions an hour after a rotation."""
    retired, aside = retire_unused(session, path, now=now, min_age=RETIRE_AFTER)
    if retired:
        record(session, "key.retire", actor="scheduler", target="data key",
               details={"versions": retired, "file": str(aside)})
    return {"retired": retired, "file": aside.name if aside else None}

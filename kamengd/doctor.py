"""Health checks for `kamengd doctor`: each returns (ok, detail)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from .config import Config
from .errors import KamengdError


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def _private_file(path: Path | None) -> tuple[bool, str]:
    if path is None:
        return True, "not set"
    try:
        st = os.stat(path)
    except OSError as exc:
        return False, f"{path}: {exc.strerror}"
    mode = st.st_mode & 0o777
    if mode & 0o077:
        return False, f"{path} is mode {mode:04o}; run: chmod 600 {path}"
    return True, f"{path} (mode {mode:04o})"


def file_checks(config: Config) -> list[Check]:
    files = {"config file": config.path, "secret key file": config.security.secret_key_file,
             "data key file": config.security.data_key_file,
             "database password file": config.database.password_file,
             "smtp password file": config.smtp.password_file,
             "webhook secret file": config.notifications.webhook_secret_file}
    url = make_url(config.database.url)
    if url.get_backend_name() == "sqlite" and url.database:
        files["database file"] = Path(url.database)
    optional = ("database password file", "smtp password file", "webhook secret file")
    return [Check(name, *_private_file(path)) for name, path in files.items()
            if path is not None or name not in optional]


def database_checks(app) -> list[Check]:
    from .audit.services import verify
    from .extensions import db
    from .schema import require_current

    checks = []
    with app.app_context():
        try:
            db.session.connection(execution_options={"kamengd_readonly": True})
            db.session.execute(sa.text("SELECT 1"))
            checks.append(Check("database", True, make_url(app.extensions["kamengd.config"].database.url)
                                .render_as_string(hide_password=True)))
        except SQLAlchemyError as exc:
            detail = getattr(exc, "orig", None) or exc
            return [Check("database", False, " ".join(str(detail).split()))]
        try:
            checks.append(Check("schema", True, f"at {require_current(db.session.connection())}"))
        except KamengdError as exc:
            return checks + [Check("schema", False, exc.message)]
        checks.append(_key_check(db.session))
        checks.append(_scheduler_check(db.session, app.extensions["kamengd.config"].scheduler.lease_seconds))
        from .app import get_vault
        try:
            vault = get_vault()
        except KamengdError:
            vault = None  # reported by the data key check
        result = verify(db.session, vault)
        checks.append(Check("audit log", result.ok,
                            f"{result.entries} entries intact" if result.ok else result.problem))
        db.session.rollback()
    return checks


def _key_check(session) -> Check:
    """The key file must open the keys in this database: decrypt a sample."""
    from .app import get_vault
    from .inventory.models import CardKey
    from .vault import DecryptionError

    try:
        vault = get_vault()
    except KamengdError as exc:
        return Check("data key", False, exc.message)
    t = CardKey.__table__
    cols = (t.c.id, t.c.product_id, t.c.fingerprint, t.c.nonce, t.c.ciphertext, t.c.key_version)
    sample = session.execute(sa.select(*cols).order_by(t.c.id).limit(3)).all()
    sample += session.execute(sa.select(*cols).order_by(t.c.id.desc()).limit(3)).all()
    for row in sample:
        try:
            vault.decrypt_card_key(row.product_id, row.fingerprint, row.nonce, row.ciphertext, row.key_version)
        except DecryptionError as exc:
            return Check("data key", False, f"card key #{row.id}: {exc.message}; is this the right key file?")
    return Check("data key", True, f"versions {vault.versions}; {len({r.id for r in sample})} sample keys decrypt")


def _scheduler_check(session, lease_seconds: int) -> Check:
    from .database import utcnow
    from .scheduler.lease import leader_info

    info = leader_info(session)
    if info.heartbeat_at is None:
        return Check("scheduler", False, "no scheduler has ever run: start `kamengd serve` or `kamengd scheduler`")
    age = (utcnow() - info.heartbeat_at).total_seconds()
    if age > 2 * lease_seconds:
        return Check("scheduler", False, f"last heartbeat {age:.0f} s ago (from {info.owner or 'a stopped scheduler'}); "
                                         "is a scheduler running?")
    return Check("scheduler", True, f"leader {info.owner}, heartbeat {age:.0f} s ago")


def run_checks(config: Config, app) -> list[Check]:
    return file_checks(config) + database_checks(app)

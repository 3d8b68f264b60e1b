"""Health checks for `kamengd doctor`: each returns (ok, detail)."""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from ..audit.services import verify
from ..backup.models import read
from ..config import Config, callback_url_problem
from ..context import get_config, get_vault
from ..database import utcnow
from ..errors import KamengdError
from ..extensions import db
from ..inventory.models import CardKey
from ..payments.services import weak_channels
from ..settings.services import shop_url
from ..scheduler.lease import leader_info
from ..vault import DecryptionError
from .schema import require_current


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    warning: bool = False   # ok, but the admin should act (no backup yet): printed WARN, exit 0


def _private_file(path: Path | None, owner: int | None = None) -> tuple[bool, str]:
    if path is None:
        return True, "not set"
    try:
        st = os.stat(path)
    except OSError as exc:
        return False, f"{path}: {exc.strerror}"
    mode = st.st_mode & 0o777
    if mode & 0o077:
        return False, f"{path} is mode {mode:04o}; run: chmod 600 {path}"
    if owner is not None and st.st_uid != owner:
        return False, f"{path} is owned by uid {st.st_uid}, the data directory by uid {owner}: the service user " \
                      "must own both (chown)"
    return True, f"{path} (mode {mode:04o})"


def _data_dir_owner(config: Config) -> int | None:
    try:
        return os.stat(config.security.data_key_file.parent).st_uid
    except OSError:
        return None


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
    owner = _data_dir_owner(config)
    return [Check(name, *_private_file(path, owner)) for name, path in files.items()
            if path is not None or name not in optional] + [_disk_check(config)]


def _site_url_check(config: Config) -> Check:
    """The address pay URLs name: the panel's site.url, else the config file's."""
    url = shop_url()
    where = "" if url == config.site.url else " (set in the panel)"
    problem = callback_url_problem(url)
    return Check("site url", True, (problem + where) if problem else
                 f"{url}{where} (gateways call /pay/<code>/notify there)", warning=problem is not None)


def _disk_check(config: Config) -> Check:
    where = config.security.data_key_file.parent
    try:
        free = shutil.disk_usage(where).free
    except OSError as exc:
        return Check("free disk", False, f"{where}: {exc.strerror}")
    text = f"{free / 2**30:.1f} GiB free in {where}"
    if free < 200 * 2**20:
        return Check("free disk", False, text + ": backups and the database need room")
    return Check("free disk", True, text, warning=free < 2 * 2**30)


def database_checks(app) -> list[Check]:
    checks = []
    with app.app_context():
        try:
            db.session.connection(execution_options={"kamengd_readonly": True})
            db.session.execute(sa.text("SELECT 1"))
            checks.append(Check("database", True, make_url(get_config().database.url)
                                .render_as_string(hide_password=True)))
        except SQLAlchemyError as exc:
            detail = getattr(exc, "orig", None) or exc
            return [Check("database", False, " ".join(str(detail).split()))]
        try:
            checks.append(Check("schema", True, f"at {require_current(db.session.connection())}"))
        except KamengdError as exc:
            return checks + [Check("schema", False, exc.message)]
        checks.append(_key_check(db.session))
        checks.append(_scheduler_check(db.session, get_config().scheduler.lease_seconds))
        checks += _backup_checks(db.session, get_config())
        try:
            vault = get_vault()
        except KamengdError:
            vault = None  # reported by the data key check
        if vault is not None:
            checks.append(_channel_check(db.session, vault))
        result = verify(db.session, vault)
        checks.append(Check("audit log", result.ok,
                            f"{result.entries} entries intact" if result.ok else result.problem))
        db.session.rollback()
    return checks


def _key_check(session) -> Check:
    """The key file must open the keys in this database: decrypt a sample."""
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


def _channel_check(session, vault) -> Check:
    """A channel key anyone could guess lets anyone forge its payments: enabled, it fails
    the check; disabled (by the scheduler or the upgrade), it still wants a new key."""
    weak = weak_channels(session, vault)
    if not weak:
        return Check("channel keys", True, "every payment channel's key is strong enough")
    detail = "; ".join(f"{c.code} ({'enabled' if c.is_enabled else 'disabled'}): {problem}"
                       for c, problem in weak)
    detail += " — enter the gateway's real merchant key in the panel (Payment channels, Edit)"
    return Check("channel keys", not any(c.is_enabled for c, _ in weak), detail, warning=True)


def _scheduler_check(session, lease_seconds: int) -> Check:
    info = leader_info(session)
    if info.heartbeat_at is None:
        return Check("scheduler", False, "no scheduler has ever run: start `kamengd serve` or `kamengd scheduler`")
    age = (utcnow() - info.heartbeat_at).total_seconds()
    if age > 2 * lease_seconds:
        return Check("scheduler", False, f"last heartbeat {age:.0f} s ago (from {info.owner or 'a stopped scheduler'}); "
                                         "is a scheduler running?")
    return Check("scheduler", True, f"leader {info.owner}, heartbeat {age:.0f} s ago")


def _backup_checks(session, config: Config) -> list[Check]:
    checks = []
    last = read(session, "backup.last")
    if last is None:
        checks.append(Check("backup", True, "no backup yet: run `kamengd backup --output FILE`"
                            + (" (the scheduler takes one daily)" if config.backup.daily else ""), warning=True))
    else:
        age = utcnow() - last[1]
        detail = f"last {age.total_seconds() / 3600:.0f} h ago: {last[0].get('path')}"
        checks.append(Check("backup", True, detail, warning=age.days >= 2))
    key = read(session, "key_backup.last")
    try:
        current = get_vault().current_version
    except KamengdError:
        current = None
    if key is None:
        checks.append(Check("key backup", True, "the data key was never backed up: without it no backup is "
                            "readable; run `kamengd key backup --output FILE`", warning=True))
    elif current is not None and current not in key[0].get("versions", []):
        checks.append(Check("key backup", True, f"the last key backup lacks the current key version {current}; "
                            "run `kamengd key backup` again", warning=True))
    else:
        checks.append(Check("key backup", True, f"made {key[1]:%Y-%m-%d} ({key[0].get('path')})"))
    return checks


def run_checks(config: Config, app) -> list[Check]:
    checks = file_checks(config) + database_checks(app)
    with app.app_context():
        checks.append(_site_url_check(config))
    return checks

"""`kamengd install`: a new data directory, config, keys, schema and owner.

Everything is checked before anything is written; if a later step fails,
what this run created is removed again, so a refused or failed install
leaves the machine as it was.
"""
from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from ..accounts.passwords import validate_password
from ..accounts.services import USERNAME_RE, create_user
from ..app import create_app
from ..audit.services import cli_actor, record
from ..config import build_config, normalize_database_url, render_config
from ..database import is_sqlite, make_engine
from ..errors import ConfigError, Conflict, InvalidRequest, KamengdError
from ..extensions import db
from ..vault import generate_key_file, write_secret_file
from .schema import alembic_config, upgrade

CONFIG_NAME = "kamengd.toml"
SECRET_KEY_NAME = "secret_key"
DATA_KEY_NAME = "data.key"
SQLITE_NAME = "kamengd.db"
PASSWORD_FILE_NAME = "initial-admin-password"


@dataclass
class InstallResult:
    config_path: Path
    database_url: str
    admin_user: str
    password_file: Path | None = None  # when the owner's password was generated


def _check_database(url: str) -> None:
    """The database must answer and hold no kamengd schema yet."""
    engine = make_engine(url, pooled=False)
    try:
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
    except SQLAlchemyError as exc:
        detail = getattr(exc, "orig", None) or exc
        raise KamengdError(f"cannot use database {make_url(url).render_as_string(hide_password=True)}: "
                           f"{' '.join(str(detail).split())}") from None
    finally:
        engine.dispose()
    ours = tables & (set(db.metadata.tables) | {"alembic_version"})
    if ours:
        raise Conflict("the database already holds a kamengd installation "
                       f"(tables {', '.join(sorted(ours))}); refusing to install over it")


def _existing_files(data_dir: Path) -> list[str]:
    names = (CONFIG_NAME, SECRET_KEY_NAME, DATA_KEY_NAME, SQLITE_NAME, PASSWORD_FILE_NAME)
    return [n for n in names if (data_dir / n).exists()]


def install(data_dir: Path, *, admin_password: str | None = None, database_url: str | None = None,
            admin_user: str = "admin", site_name: str = "kamengd",
            site_url: str = "http://127.0.0.1:8000") -> InstallResult:
    data_dir = Path(data_dir).expanduser().absolute()
    if data_dir.exists() and not data_dir.is_dir():
        raise InvalidRequest(f"{data_dir} exists and is not a directory")
    found = _existing_files(data_dir) if data_dir.is_dir() else []
    if found:
        raise Conflict(f"{data_dir} already holds an installation ({', '.join(found)}); nothing changed")
    if not USERNAME_RE.match(admin_user):
        raise InvalidRequest("admin user: 2-64 letters, digits, '.', '_' or '-'")
    generated = admin_password is None
    if generated:
        admin_password = generate_password()
    validate_password(admin_password)
    if not site_name.strip():
        raise InvalidRequest("site name must not be empty")
    try:
        url = normalize_database_url(database_url or f"sqlite:///{data_dir / SQLITE_NAME}", Path.cwd())
    except ConfigError as exc:
        raise InvalidRequest(exc.message.replace("setting database.url", "database URL")) from None
    parsed = make_url(url)
    if is_sqlite(url):
        if Path(parsed.database).exists():
            raise Conflict(f"{parsed.database} already exists; nothing changed")
    else:
        _check_database(url)

    created_dir = not data_dir.exists()
    created: list[Path] = []
    try:
        try:
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise KamengdError(f"cannot create {data_dir}: {exc.strerror}") from None
        password_file = None
        if generated:
            password_file = data_dir / PASSWORD_FILE_NAME
            write_secret_file(password_file, admin_password + "\n")
            created.append(password_file)
        secret_key_path = data_dir / SECRET_KEY_NAME
        write_secret_file(secret_key_path, secrets.token_hex(32) + "\n")
        created.append(secret_key_path)
        data_key_path = data_dir / DATA_KEY_NAME
        generate_key_file(data_key_path)
        created.append(data_key_path)
        values = {
            "site": {"name": site_name.strip(), "url": site_url},
            "database": {"url": url},
            "security": {"secret_key_file": str(secret_key_path), "data_key_file": str(data_key_path)},
        }
        config_path = data_dir / CONFIG_NAME
        header = "# kamengd configuration, written by `kamengd install`.\n" \
                 "# Every setting is described in `kamengd config example` (config/kamengd.example.toml).\n\n"
        write_secret_file(config_path, header + render_config(values))
        created.append(config_path)
        config = build_config(values, env={}, path=config_path)

        if is_sqlite(url):
            created.extend(Path(parsed.database + suffix) for suffix in ("", "-wal", "-shm"))
            # SQLite gives its -wal and -shm files the database file's mode.
            os.close(os.open(parsed.database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        upgrade(config.database_url)
        app = create_app(config)
        with app.app_context():
            try:
                actor = cli_actor()
                record(db.session, "install", actor=actor, target=f"site:{site_name.strip()}",
                       details={"database": parsed.get_backend_name(), "data_dir": str(data_dir)})
                create_user(db.session, username=admin_user, role="owner", password=admin_password,
                            actor=actor)
                db.session.commit()   # install's one commit: it runs outside the CLI's app context
            finally:
                db.session.remove()
                db.engine.dispose()
    except BaseException:
        _undo(created, data_dir if created_dir else None, None if is_sqlite(url) else url)
        raise
    return InstallResult(config_path=config_path, database_url=url, admin_user=admin_user,
                         password_file=password_file)


def _undo(created: list[Path], created_dir: Path | None, mysql_url: str | None) -> None:
    if mysql_url is not None:
        try:
            from alembic import command   # Alembic costs a third of a second to import: only an undo needs it here

            engine = make_engine(mysql_url, pooled=False)
            with engine.begin() as conn:
                command.downgrade(alembic_config(conn), "base")
                conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
            engine.dispose()
        except (SQLAlchemyError, KamengdError, OSError):
            pass  # reported by the original error; the tables are ours and empty
    for path in created:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
    if created_dir is not None:
        shutil.rmtree(created_dir, ignore_errors=True)


def generate_password() -> str:
    return secrets.token_urlsafe(15)



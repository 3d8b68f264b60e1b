"""Alembic, run only from `kamengd install` / `kamengd upgrade`, never the factory."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import Connection, Engine

from ..database import make_engine
from ..errors import KamengdError

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

# Alembic is imported where it is used: every `kamengd` command and /healthz
# import this module, and Alembic alone costs a third of a second to import.


class SchemaError(KamengdError):
    pass


def migrations_dir() -> Path:
    """kamengd/migrations when installed; the repository's migrations/ in a checkout."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise SchemaError("the migrations folder is missing from this installation")


def alembic_config(connection: Connection | None = None) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig   # see above: imported where used

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory   # see above: imported where used

    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise SchemaError(f"migrations have {len(heads)} heads; expected one")
    return heads[0]


def current_revision(bind: Engine | Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext   # see above: imported where used

    if isinstance(bind, Engine):
        with bind.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    return MigrationContext.configure(bind).get_current_revision()


def upgrade(url: str, revision: str = "head") -> tuple[str | None, str | None]:
    """Apply migrations; returns (revision before, revision after)."""
    # Foreign keys off while batch mode rebuilds SQLite tables, as Alembic advises.
    engine = make_engine(url, foreign_keys=False, pooled=False)
    try:
        with engine.begin() as conn:
            before = current_revision(conn)
            from alembic import command   # see above: imported where used

            command.upgrade(alembic_config(conn), revision)
            after = current_revision(conn)
        return before, after
    finally:
        engine.dispose()


def require_current(bind: Engine | Connection) -> str:
    """Refuse to serve a database whose schema is behind (or ahead of) the code."""
    current, head = current_revision(bind), head_revision()
    if current is None:
        raise SchemaError("the database has no kamengd schema: run `kamengd install` first")
    if current != head:
        from alembic.script import ScriptDirectory   # see above: imported where used

        script = ScriptDirectory.from_config(alembic_config())
        known = {rev.revision for rev in script.walk_revisions()}
        if current not in known:
            raise SchemaError(f"the database schema ({current}) is newer than this kamengd "
                              f"({head}); install the newer kamengd")
        raise SchemaError(f"the database schema is at {current}, this kamengd needs {head}: "
                          "run `kamengd upgrade`")
    return current

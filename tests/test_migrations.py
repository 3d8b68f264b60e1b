"""Models and migrations never disagree, on every backend."""
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from kamengd import models  # noqa: F401
from kamengd.database import make_engine
from kamengd.extensions import db
from kamengd.operations.schema import alembic_config, current_revision, head_revision, upgrade


def test_one_head():
    assert len(ScriptDirectory.from_config(alembic_config()).get_heads()) == 1


def _diff(url):
    engine = make_engine(url, pooled=False)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return compare_metadata(ctx, db.metadata)
    finally:
        engine.dispose()


def test_models_match_migrations(backend, databases):
    url = databases.new_url(backend)
    before, after = upgrade(url)
    assert before is None and after == head_revision()
    assert _diff(url) == []


def test_downgrade_to_base_and_up_again(backend, databases):
    url = databases.new_url(backend)
    upgrade(url)
    engine = make_engine(url, foreign_keys=False, pooled=False)
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "base")
        tables = set(sa.inspect(conn).get_table_names()) - {"alembic_version"}
        assert tables == set()
    engine.dispose()
    upgrade(url)
    engine = make_engine(url, pooled=False)
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT seq, last_hash FROM audit_head WHERE id = 1")).one() == (0, "0" * 64)
    engine.dispose()

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


def test_the_orders_table_is_never_copied_by_a_w5_migration(tmp_path):
    """Alembic's batch mode on SQLite copies a whole table for some changes (a default that is
    an SQL expression, a new CHECK): on a shop's orders table that is a long rewrite during
    `kamengd upgrade`. From 0033 on (W4 and W5) the orders table is only ALTERed."""
    url = f"sqlite:///{tmp_path}/copy.db"
    upgrade(url, "0033")
    engine = make_engine(url, foreign_keys=False, pooled=False)
    seen = []
    sa.event.listen(engine, "before_cursor_execute", lambda conn, cursor, statement, *a: seen.append(statement))
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "head")
    engine.dispose()
    copies = [s.split("(")[0] for s in seen if "_alembic_tmp_orders" in s]
    assert copies == [], copies

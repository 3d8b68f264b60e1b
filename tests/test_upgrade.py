"""`kamengd upgrade`: snapshot first, then migrate; a failed migration changes nothing."""
import json
import shutil
import sqlite3

import pytest

from kamengd import schema
from kamengd.cli import main

PROBE_MIGRATION = '''"""probe

Revision ID: 9001
Revises: {down}
"""
import sqlalchemy as sa
from alembic import op

revision = "9001"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table("upgrade_probe", sa.Column("id", sa.Integer, primary_key=True))
    {extra}


def downgrade():
    op.drop_table("upgrade_probe")
'''


@pytest.fixture
def future_migrations(tmp_path, monkeypatch):
    """A copy of the real migrations plus one more revision."""
    def make(extra=""):
        target = tmp_path / "migrations"
        shutil.copytree(schema.migrations_dir(), target)
        down = schema.head_revision()
        (target / "versions" / "9001_probe.py").write_text(PROBE_MIGRATION.format(down=down, extra=extra))
        monkeypatch.setattr(schema, "migrations_dir", lambda: target)
        return down
    return make


def run_main(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main(list(map(str, args)))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_nothing_to_upgrade(make_install, capsys):
    cfg = make_install("sqlite")
    code, out, _ = run_main(capsys, "--config", cfg.path, "upgrade", "--json")
    assert code == 0 and json.loads(out)["backup"] is None


def test_upgrade_takes_a_snapshot_then_migrates(make_install, future_migrations, capsys):
    cfg = make_install("sqlite")
    before = future_migrations()
    code, out, err = run_main(capsys, "--config", cfg.path, "upgrade", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert (result["before"], result["after"]) == (before, "9001")
    snap = sqlite3.connect(result["backup"])
    assert snap.execute("SELECT version_num FROM alembic_version").fetchone() == (before,)
    assert snap.execute("SELECT COUNT(*) FROM staff_users").fetchone() == (1,)
    db_path = cfg.database.url.removeprefix("sqlite:///")
    live = sqlite3.connect(db_path)
    assert live.execute("SELECT version_num FROM alembic_version").fetchone() == ("9001",)
    assert live.execute("SELECT action FROM audit_log ORDER BY id DESC LIMIT 1").fetchone() == ("schema.upgrade",)


def test_failed_migration_leaves_the_database_as_it_was(make_install, future_migrations, capsys):
    cfg = make_install("sqlite")
    before = future_migrations(extra='raise RuntimeError("boom in migration")')
    code, _, err = run_main(capsys, "--config", cfg.path, "upgrade")
    assert code == 1
    assert err.count("\n") == 1 and f"migration from {before} failed: boom in migration" in err and "snapshot" in err
    live = sqlite3.connect(cfg.database.url.removeprefix("sqlite:///"))
    assert live.execute("SELECT version_num FROM alembic_version").fetchone() == (before,)
    assert live.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'upgrade_probe'").fetchone() == (0,)


def test_mysql_upgrade_needs_an_explicit_backup(mysql_backend, make_install, future_migrations, capsys):
    cfg = make_install(mysql_backend)
    future_migrations()
    code, _, err = run_main(capsys, "--config", cfg.path, "upgrade")
    assert code == 1 and "--skip-backup" in err
    code, out, err = run_main(capsys, "--config", cfg.path, "upgrade", "--skip-backup", "--json")
    assert code == 0, err
    assert json.loads(out)["after"] == "9001"

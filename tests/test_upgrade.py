"""`kamengd upgrade`: a backup first, then migrate; a failed migration changes nothing."""
import json
import shutil

import pytest
import sqlalchemy as sa

from kamengd.operations import schema
from kamengd.cli import main
from kamengd.database import make_engine

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


def test_upgrade_takes_a_backup_then_migrates(backend, make_install, future_migrations, capsys):
    from kamengd.backup.archive import BackupReader

    cfg = make_install(backend)
    before = future_migrations()
    code, out, err = run_main(capsys, "--config", cfg.path, "upgrade", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert (result["before"], result["after"]) == (before, "9001")
    manifest = BackupReader(result["backup"]).verify()
    assert manifest["schema_revision"] == before
    assert {t["name"]: t["rows"] for t in manifest["tables"]}["staff_users"] == 1
    engine = make_engine(cfg.database_url, pooled=False)
    with engine.connect() as live:
        assert live.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "9001"
        assert live.execute(sa.text("SELECT action FROM audit_log ORDER BY id DESC LIMIT 1")).scalar() == "schema.upgrade"
    engine.dispose()


def test_failed_migration_leaves_the_database_as_it_was(backend, make_install, future_migrations, capsys):
    cfg = make_install(backend)
    before = future_migrations(extra='raise RuntimeError("boom in migration")')
    code, _, err = run_main(capsys, "--config", cfg.path, "upgrade")
    assert code == 1
    assert err.count("\n") == 1 and f"migration from {before} failed: boom in migration" in err and "backup" in err
    # MySQL committed the probe's CREATE TABLE before the failure: the backup put it back.
    assert ("put back" in err) == (backend != "sqlite")
    engine = make_engine(cfg.database_url, pooled=False)
    with engine.connect() as live:
        assert live.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == before
        assert "upgrade_probe" not in sa.inspect(live).get_table_names()
        assert live.execute(sa.text("SELECT COUNT(*) FROM staff_users")).scalar() == 1
    engine.dispose()
    code, _, err = run_main(capsys, "--config", cfg.path, "audit", "verify")
    assert code == 0, err


def test_skip_backup(make_install, future_migrations, capsys):
    cfg = make_install("sqlite")
    future_migrations()
    code, out, err = run_main(capsys, "--config", cfg.path, "upgrade", "--skip-backup", "--json")
    assert code == 0, err
    assert json.loads(out) == {"before": json.loads(out)["before"], "after": "9001", "backup": None,
                               "disabled_channels": []}


def test_upgrade_refuses_while_kamengd_runs(backend, make_install, future_migrations, capsys):
    from conftest import run_cli

    cfg = make_install(backend)
    run_cli("scheduler", "--once", config=cfg.path, check=True)   # a fresh heartbeat: the shop is running
    future_migrations()
    code, _, err = run_main(capsys, "--config", cfg.path, "upgrade")
    assert code == 1 and err.count("\n") == 1 and "kamengd is running on this database" in err

"""The web app: health check, JSON errors, and real server processes."""
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import sqlalchemy as sa

from conftest import assert_one_line_error, free_port, run_cli, write_password
from kamengd.operations import schema
from kamengd.errors import KamengdError
from kamengd.operations.schema import head_revision


def test_healthz(client):
    resp = client.get("/healthz")
    assert resp.status_code == 200
    body = resp.get_json()
    assert (body["status"], body["database"], body["schema"]) == ("ok", "ok", head_revision())
    assert set(body["scheduler"]) == {"leader", "heartbeat_at", "heartbeat_age_seconds"}


def test_unknown_api_route_is_a_json_error(client):
    resp = client.get("/api/v1/nothing-here")
    assert resp.status_code == 404
    assert resp.get_json()["error"]["code"] == "not_found"
    resp = client.post("/healthz")
    assert resp.status_code == 405 and resp.get_json()["error"]["code"] == "invalid_request"


@pytest.fixture
def shop(backend, databases, tmp_path):
    args = ["install", "--data-dir", tmp_path / "data", "--admin-password-file", write_password(tmp_path), "--yes"]
    if backend != "sqlite":
        args += ["--database-url", databases.new_url(backend)]
    run_cli(*args, check=True)
    return tmp_path / "data" / "kamengd.toml"


def get_json(url):
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, json.loads(resp.read())


@pytest.mark.parametrize("server_args", [[], ["--server", "gunicorn", "--workers", "2"]],
                         ids=["waitress", "gunicorn"])
def test_serve_answers_health_checks(backend, shop, server_args):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAMENGD_")}
    proc = subprocess.Popen([sys.executable, "-m", "kamengd", "--config", str(shop), "serve",
                             "--bind", f"127.0.0.1:{port}", "--no-scheduler", *server_args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, body = get_json(f"http://127.0.0.1:{port}/healthz")
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.2)
        assert status == 200 and body["status"] == "ok" and body["schema"] == head_revision()
        # Several requests, so that every gunicorn worker answers at least once.
        for _ in range(10):
            assert get_json(f"http://127.0.0.1:{port}/healthz")[0] == 200
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_serve_refuses_a_schema_it_does_not_know(backend, shop):
    from kamengd.config import load_config
    from kamengd.database import make_engine

    engine = make_engine(load_config(shop, env={}).database_url, pooled=False)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = 'fffffffff'"))
    proc = run_cli("serve", "--bind", f"127.0.0.1:{free_port()}", config=shop)
    assert_one_line_error(proc, "newer than this kamengd")
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM alembic_version"))
    engine.dispose()
    assert_one_line_error(run_cli("serve", config=shop), "run `kamengd install`")


def test_serve_refuses_a_schema_behind_the_code(backend, app, monkeypatch):
    from kamengd.extensions import db

    monkeypatch.setattr(schema, "head_revision", lambda: "9999_future")
    with app.app_context():
        with pytest.raises(KamengdError, match=rf"schema is at {head_revision()}, this kamengd needs 9999_future: "
                                               r"run `kamengd upgrade`"):
            schema.require_current(db.engine)


def test_serve_bad_bind(shop):
    assert_one_line_error(run_cli("serve", "--bind", "nonsense", config=shop), "expected HOST:PORT")


def test_healthz_does_not_wait_for_a_writer(backend, app, client):
    """An import holding SQLite's write lock must not make health checks fail."""
    from kamengd.extensions import db

    with app.app_context():
        writer = db.engine.connect()
        writer.begin()
        writer.execute(sa.text("UPDATE audit_head SET seq = seq WHERE id = 1"))  # takes the write lock
        try:
            started = time.monotonic()
            resp = client.get("/healthz")
            assert resp.status_code == 200 and time.monotonic() - started < 5
        finally:
            writer.rollback()
            writer.close()

"""A lock wait that runs out is a 503 `busy` with Retry-After, never a 500, and changes nothing.

A real server with a one-second lock timeout; the test itself holds the lock
the server needs (SQLite's write lock; on MariaDB the order's row).
"""
import json
import sqlite3
import time
from urllib.parse import urlencode

import pytest
import sqlalchemy as sa

from test_concurrency import BUSY_SCHEDULER, callback_params, http, setup_shop

# The scheduler ticks every second, so it meets the held lock too.
FAST_TIMEOUT = {"KAMENGD_DATABASE_LOCK_TIMEOUT_SECONDS": "1", **BUSY_SCHEDULER}


def http_headers(method, url, body=None):
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read().decode(), resp.headers
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(), err.headers


def order(base, pid, i=0):
    return http_headers("POST", f"{base}/api/v1/orders",
                        {"product_id": pid, "quantity": 1, "email": f"busy{i}@example.com", "channel": "epay"})


@pytest.mark.slow
def test_sqlite_write_lock_held(tmp_path, databases, start_server):
    config, pid, _ = setup_shop("sqlite", databases, tmp_path)
    base = start_server(config, env=FAST_TIMEOUT)
    status, body, _ = order(base, pid)
    assert status == 201
    pending = json.loads(body)

    holder = sqlite3.connect(tmp_path / "data" / "kamengd.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        status, body, headers = order(base, pid, 1)
        assert status == 503, body
        assert json.loads(body)["error"]["code"] == "busy"
        assert headers["Retry-After"] and int(headers["Retry-After"]) >= 1
        assert time.monotonic() - started < 10
        # A callback that cannot be recorded asks the gateway to come again.
        answer = http("GET", f"{base}/pay/epay/notify?{urlencode(callback_params(pending['order_no']))}")
        assert answer == (200, "fail")
        time.sleep(1.5)   # the scheduler's tick waits out the lock too
    finally:
        holder.rollback()
        holder.close()

    with sqlite3.connect(tmp_path / "data" / "kamengd.db") as conn:   # the busy order left nothing
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM card_keys WHERE status != 'available'").fetchone()[0] == 1
    assert http("GET", f"{base}/pay/epay/notify?{urlencode(callback_params(pending['order_no']))}") \
        == (200, "success")
    status, body, _ = order(base, pid, 2)
    assert status == 201
    logs = start_server.stop_all()
    assert not any("Traceback" in log for log in logs.values()), list(logs.values())


@pytest.mark.slow
def test_mysql_order_row_locked(mysql_backend, tmp_path, databases, start_server):
    config, pid, _ = setup_shop(mysql_backend, databases, tmp_path)
    base = start_server(config, env=FAST_TIMEOUT)
    status, body, _ = order(base, pid)
    assert status == 201
    pending = json.loads(body)
    from kamengd.config import load_config

    engine = sa.create_engine(load_config(config, env={}).database_url)
    with engine.connect() as conn:
        trans = conn.begin()
        conn.execute(sa.text("SELECT id FROM orders WHERE order_no = :n FOR UPDATE"), {"n": pending["order_no"]})
        answer = http("GET", f"{base}/pay/epay/notify?{urlencode(callback_params(pending['order_no']))}")
        assert answer == (200, "fail")
        trans.rollback()
    engine.dispose()
    view = json.loads(http("GET", f"{base}/api/v1/orders/{pending['order_no']}?token={pending['token']}")[1])
    assert view["status"] == "pending"   # nothing changed
    assert http("GET", f"{base}/pay/epay/notify?{urlencode(callback_params(pending['order_no']))}") \
        == (200, "success")
    logs = start_server.stop_all()
    assert not any("Traceback" in log for log in logs.values()), list(logs.values())


def test_an_error_raised_because_the_database_went_away_counts_as_busy():
    """A connection lost mid-query makes the next statement fail with another error: still busy
    (503, a warning without traceback), not a crash."""
    import pymysql

    from kamengd.database import is_busy

    lost = sa.exc.OperationalError("SELECT 1", None, pymysql.err.OperationalError(2013, "Lost connection"))

    def after(first, second):
        try:
            raise first
        except Exception:
            try:
                raise second
            except Exception as exc:
                return exc

    assert is_busy(lost)
    assert is_busy(after(lost, sa.exc.PendingRollbackError("Can't reconnect until invalid transaction is rolled back")))
    assert is_busy(after(ValueError("x"), RuntimeError("y"))) is False
    assert is_busy(sa.exc.IntegrityError("INSERT", None, Exception("UNIQUE constraint failed"))) is False


@pytest.mark.backends("mysql")   # SQLite has one writer at a time: no deadlock to lose
def test_a_deadlock_inside_a_savepoint_counts_as_busy(app):
    """MariaDB ends the deadlock's loser whole, savepoints too: its rollback to the savepoint
    then fails with another error (1305), and that is what reaches the caller. Busy all the
    same (503, a retry), not a crash."""
    import threading

    from sqlalchemy.orm import Session

    from kamengd.database import is_busy
    from kamengd.extensions import db

    with app.app_context():
        engine = db.engine
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE busy_probe (id INT PRIMARY KEY) ENGINE=InnoDB"))
        conn.execute(sa.text("INSERT INTO busy_probe VALUES (1), (2)"))
    lock = sa.text("SELECT id FROM busy_probe WHERE id = :id FOR UPDATE")
    failures, sessions = [], [Session(engine), Session(engine)]
    try:
        for sess, mine in zip(sessions, (1, 2)):
            sess.execute(lock, {"id": mine})
        holding = threading.Barrier(2)

        def cross(sess, other):
            holding.wait()
            try:
                with sess.begin_nested():
                    sess.execute(lock, {"id": other})
            except Exception as exc:   # noqa: BLE001  (the loser's error is what is tested)
                failures.append(exc)
                sess.rollback()
            else:
                sess.commit()

        threads = [threading.Thread(target=cross, args=(sessions[0], 2)),
                   threading.Thread(target=cross, args=(sessions[1], 1))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(failures) == 1, failures
        assert is_busy(failures[0]), repr(failures[0])
    finally:
        for sess in sessions:
            sess.close()
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE busy_probe"))

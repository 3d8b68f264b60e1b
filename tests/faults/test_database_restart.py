"""MariaDB restarted under a purchase load: busy answers while it is away, then it heals itself.

A private MariaDB server (its own data directory and port, started by the
test; never the shared one) serves a shop in each layout, two servers on it
included. When a third of the
purchases are done, the database is stopped, left down for two seconds and
started again, while 16 clients go on buying. While it is away every answer
is the JSON `busy` error with 503 and Retry-After (a callback answers "fail",
so the gateway calls again), never a 500 or a traceback; afterwards the shop
serves again without a restart of its own, and the promises of
test_kill9 hold (reported the same way).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa

from conftest import free_port, mysql_database_name, run_cli, write_password
from test_concurrency import BUSY_SCHEDULER, KEY, wait_for_leader
from test_kill9 import PURCHASES, CLIENTS, Load, Shop, check, invariants, keep_report, start

MARIADBD = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
INSTALL_DB = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")


class PrivateMariaDB:
    """A MariaDB server of the test's own: a fresh data directory on a free port."""

    def __init__(self, directory: Path):
        self.directory, self.port = directory, free_port()
        self.proc = None
        subprocess.run([INSTALL_DB, "--no-defaults", f"--datadir={directory / 'data'}", "--user=root",
                        "--auth-root-authentication-method=normal", "--skip-test-db"],
                       check=True, capture_output=True, timeout=120)
        self.url = f"mysql+pymysql://root@127.0.0.1:{self.port}"

    def start(self) -> None:
        d = self.directory
        self.log = open(d / "mariadb.log", "ab")
        self.proc = subprocess.Popen(
            [MARIADBD, "--no-defaults", f"--datadir={d / 'data'}", f"--port={self.port}", "--bind-address=127.0.0.1",
             f"--socket={d / 'sock'}", f"--pid-file={d / 'pid'}", "--user=root", "--skip-log-bin",
             "--innodb-buffer-pool-size=64M", "--max-connections=200"],
            stdout=self.log, stderr=self.log, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                engine = sa.create_engine(self.url + "/", connect_args={"connect_timeout": 2})
                with engine.connect() as conn:
                    conn.exec_driver_sql("SELECT 1")
                engine.dispose()
                return
            except sa.exc.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("the private MariaDB did not start: "
                                         + (d / "mariadb.log").read_text(errors="replace")[-2000:])
                time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL, as the OOM killer or a power cut would: InnoDB recovers at the next start."""
        self.proc.kill()
        self.proc.wait()
        self.log.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()


@pytest.fixture
def private_mariadb(tmp_path):
    if not (os.path.exists(MARIADBD) and INSTALL_DB):
        reason = "MariaDB's server binaries (mariadbd, mariadb-install-db) are not installed"
        if os.environ.get("KAMENGD_REQUIRE_MYSQL") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    server = PrivateMariaDB(tmp_path / "mariadb")
    server.start()
    yield server
    server.stop()


def install_shop(server, tmp_path):
    name = mysql_database_name("fault")
    engine = sa.create_engine(server.url + "/")
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
    engine.dispose()
    url = f"{server.url}/{name}"
    run_cli("install", "--data-dir", tmp_path / "data", "--admin-password-file", write_password(tmp_path),
            "--database-url", url, "--yes", check=True)
    config = tmp_path / "data" / "kamengd.toml"
    import json
    import random
    pid = json.loads(run_cli("product", "create", "--name", "restart", "--price", "1.00", "--json",
                             config=config, check=True).out)["id"]
    keys = [f"RESTART-{i:04d}-{random.getrandbits(48):012x}" for i in range(100)]
    run_cli("keys", "import", "--product", pid, "-", config=config, input="\n".join(keys).encode(), check=True)
    run_cli("channel", "add", "--type", "epay", "--code", "epay", "--option", "gateway=http://127.0.0.1:9",
            "--option", "pid=3003", "--option", f"key={KEY}", config=config, check=True)
    return config, pid, url


def outage_seen(load) -> bool:
    """A client was told the database is away: a buyer's 503 busy, or a callback's "fail"."""
    return load.busy > 0 or load.callbacks_not_recorded > 0


# What a server logs about an answer it gave while the database was away: one
# line per process and outage is the promise (kamengd.database.busy_reports).
OUTAGE_LINES = ("database busy on", "the database is busy", "more busy answers", "OperationalError")


@pytest.mark.slow
@pytest.mark.mysql
@pytest.mark.parametrize("how", ["stopped", "killed"])
@pytest.mark.parametrize("layout", ["waitress", "gunicorn", "gunicorn+scheduler", "two-servers"])
def test_a_database_restart_under_load_heals_itself(layout, how, private_mariadb, tmp_path, start_server, capsys):
    config, pid, url = install_shop(private_mariadb, tmp_path)
    env = {**BUSY_SCHEDULER, "KAMENGD_DATABASE_LOCK_TIMEOUT_SECONDS": "5"}
    bases, _ = start(layout, start_server, config, env=env)
    wait_for_leader(bases[0])
    load = Load(Shop(bases), pid)
    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        futures = [pool.submit(load.purchase, i) for i in range(PURCHASES)]
        while load.done < PURCHASES // 3:
            time.sleep(0.05)
        stopped_at = load.done
        private_mariadb.kill() if how == "killed" else private_mariadb.stop()
        # Away until a client has been told the database is away (at least 2 s, at most
        # 15 s): a buyer answered "busy", or the gateway's callback answered "fail" (not
        # stored, call again) when every client was paying. A fixed pause let every
        # request of one run fall on either side of it.
        away = time.monotonic()
        while time.monotonic() - away < 2 or (not outage_seen(load) and time.monotonic() - away < 15):
            time.sleep(0.1)
        private_mariadb.start()
        for future in futures:
            future.result()
    logs = start_server.stop_all()
    tracebacks = [log[log.index("Traceback") - 300:][:3000] for log in logs.values() if "Traceback" in log]
    assert not tracebacks, tracebacks[0]
    # One line per process and outage, not one per answer: at most one for each
    # worker and master of every process started.
    outage_lines = [line for log in logs.values() for line in log.splitlines()
                    if any(mark in line for mark in OUTAGE_LINES)]
    run_cli("scheduler", "--once", config=config, env=BUSY_SCHEDULER, check=True)
    report = {"database restarted after": f"{stopped_at} of {PURCHASES} purchases", "how": how,
              "busy answers while it was away": load.busy,
              "callbacks answered fail": load.callbacks_not_recorded, "log lines about it": len(outage_lines),
              **invariants(config, url, load)}
    with capsys.disabled():
        keep_report(f"db-restart-{layout}-{how}", report)
    check(report, killed=False)
    assert outage_seen(load), report                # the outage was seen, and answered as busy or "fail"
    assert not load.bad_busy, load.bad_busy[:3]     # every 503 was the JSON busy error with Retry-After
    processes = 5 * len(logs)   # a gunicorn master and its workers (3) + its scheduler child, per process
    assert len(outage_lines) <= processes, outage_lines[:20]

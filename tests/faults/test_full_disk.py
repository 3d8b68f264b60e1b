"""A full disk during an import, a backup and a delivery: a clear error, nothing half-written,
and the shop goes on selling from what it had.

The shop's data directory (and so its SQLite database) or the backup
directory lives on a small tmpfs mounted by the test, filled up to the brim
with a filler file. Mounting needs root: CI runs as root, so these run
there (and fail if the mount does); elsewhere they are skipped with the reason.
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa

from conftest import assert_one_line_error, run_cli, write_password
from test_concurrency import KEY, callback_params, http

pytestmark = pytest.mark.slow


class SmallDisk:
    """A tmpfs of `size` at `path`, and a filler file that leaves `left` bytes free."""

    def __init__(self, path: Path, size: str):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                              capture_output=True, text=True)
        if proc.returncode:   # as root it must work: a failure is the test's, never a silent skip
            pytest.fail(f"cannot mount a tmpfs as root: {proc.stderr.strip()}")

    def free(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, left: int = 0) -> None:
        with open(self.path / "filler", "ab") as fh:
            while self.free() > left:
                try:
                    fh.write(b"\0" * min(65536, max(4096, self.free() - left)))
                    fh.flush()
                except OSError:
                    break

    def unfill(self) -> None:
        (self.path / "filler").unlink(missing_ok=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        reason = "mounting a small file system needs root (CI runs as root)"
        if os.environ.get("KAMENGD_REQUIRE_FAULTS") == "1":   # set by .ci/run: never skipped there
            pytest.fail(reason)
        pytest.skip(reason)
    disks = []

    def make(name: str, size: str = "16m") -> SmallDisk:
        disk = SmallDisk(tmp_path / name, size)
        disks.append(disk)
        return disk
    yield make
    for disk in disks:
        disk.unmount()


def shop_on(disk: SmallDisk, tmp_path: Path, keys: int = 20):
    data = disk.path / "data"
    run_cli("install", "--data-dir", data, "--admin-password-file", write_password(tmp_path), "--yes", check=True)
    config = data / "kamengd.toml"
    pid = json.loads(run_cli("product", "create", "--name", "disk", "--price", "1.00", "--json",
                             config=config, check=True).out)["id"]
    run_cli("keys", "import", "--product", pid, "-", config=config, check=True,
            input="\n".join(f"DISK-{i:05d}" for i in range(keys)).encode())
    run_cli("channel", "add", "--type", "epay", "--code", "epay", "--option", "gateway=http://127.0.0.1:9",
            "--option", "pid=3003", "--option", f"key={KEY}", config=config, check=True)
    return config, pid, data / "kamengd.db"


def stock(db: Path, pid: int) -> dict[str, int]:
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT status, count(*) FROM card_keys WHERE product_id = :p GROUP BY status"),
                            {"p": pid}).all()
        imports = conn.execute(sa.text("SELECT count(*) FROM key_imports")).scalar()
    engine.dispose()
    return {**{s: n for s, n in rows}, "imports": imports}


def buy(base, pid, i=0):
    status, body = http("POST", f"{base}/api/v1/orders", {"product_id": pid, "quantity": 1,
                                                          "email": f"d{i}@example.com", "channel": "epay"})
    assert status == 201, body
    order = json.loads(body)
    return order


def test_an_import_that_fills_the_disk_writes_nothing(small_disk, tmp_path, start_server):
    disk = small_disk("shop")
    config, pid, db = shop_on(disk, tmp_path)
    before = stock(db, pid)
    disk.fill(left=2 * 1024 * 1024)   # room for a day of selling, not for this import
    keys = "\n".join(f"FULL-{i:07d}-{'x' * 40}" for i in range(100000)).encode()   # ~10 MB in stock
    proc = run_cli("keys", "import", "--product", pid, "-", config=config, input=keys)
    assert_one_line_error(proc, "disk is full")
    assert stock(db, pid) == before
    assert disk.free() >= 2 * 1024 * 1024 - 64 * 1024   # the failed import gave its space back
    # The shop sells from what it had, on the disk as full as the import left it.
    base = start_server(config)
    order = buy(base, pid)
    status, text = http("GET", f"{base}/pay/epay/notify?" + __import__("urllib.parse").parse.urlencode(
        callback_params(order["order_no"])))
    assert (status, text) == (200, "success"), start_server.log(start_server.by_base[base])[-3000:]
    status, body = http("GET", f"{base}/api/v1/orders/{order['order_no']}?token={order['token']}")
    assert status == 200 and json.loads(body)["status"] == "delivered"


def test_a_backup_to_a_full_disk_leaves_no_file_behind(small_disk, tmp_path, backend, make_install):
    disk = small_disk("backups", size="8m")
    cfg = make_install(backend)
    from test_backup import populate
    populate(cfg, n_keys=3000)
    disk.fill(left=16 * 1024)
    output = disk.path / "shop.tar.gz"
    assert_one_line_error(run_cli("backup", "--output", output, config=cfg.path), "no space left in")
    assert sorted(p.name for p in disk.path.iterdir()) == ["filler"]   # no archive, no work directory
    disk.unfill()
    run_cli("backup", "--output", output, config=cfg.path, check=True)   # and it works once there is room


def payments_of(db: Path, order_no: str) -> int:
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        n = conn.execute(sa.text("SELECT count(*) FROM payments p JOIN orders o ON o.id = p.order_id "
                                 "WHERE o.order_no = :n"), {"n": order_no}).scalar()
    engine.dispose()
    return n


def test_a_delivery_on_a_full_disk_is_answered_busy_and_retried(small_disk, tmp_path, start_server):
    from urllib.parse import urlencode

    disk = small_disk("shop")
    config, pid, db = shop_on(disk, tmp_path)
    base = start_server(config, env={"KAMENGD_DATABASE_LOCK_TIMEOUT_SECONDS": "2"})
    refused = None
    for attempt in range(5):
        order = buy(base, pid, attempt)
        # The WAL keeps the file space its checkpointed frames used, and a write
        # would reuse it: truncate it first, so the next write needs new space.
        conn = sqlite3.connect(db, timeout=10)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        conn.close()
        disk.fill(left=0)
        status, text = http("GET", f"{base}/pay/epay/notify?{urlencode(callback_params(order['order_no']))}")
        assert status == 200, (status, text)                # never a 500
        if text != "success":                               # the gateway will call again
            refused = order
            break
        disk.unfill()   # a write of the scheduler's left the WAL room for this one: again
    assert refused is not None, "the full disk never stopped a delivery"
    # Nothing half-written: no payment, no key sold, the order still pending.
    assert payments_of(db, refused["order_no"]) == 0
    status, body = http("GET", f"{base}/api/v1/orders/{refused['order_no']}?token={refused['token']}")
    assert status in (200, 503) and (status == 503 or json.loads(body)["status"] == "pending")
    status, body = http("POST", f"{base}/api/v1/orders", {"product_id": pid, "quantity": 1,
                                                          "email": "full@example.com", "channel": "epay"})
    assert status in (201, 503) and (status == 201 or json.loads(body)["error"]["code"] == "busy")
    disk.unfill()
    status, text = http("GET", f"{base}/pay/epay/notify?{urlencode(callback_params(refused['order_no']))}")
    assert (status, text) == (200, "success")
    status, body = http("GET", f"{base}/api/v1/orders/{refused['order_no']}?token={refused['token']}")
    assert status == 200 and json.loads(body)["status"] == "delivered"
    assert payments_of(db, refused["order_no"]) == 1
    logs = start_server.stop_all()
    assert not [log for log in logs.values() if "Traceback" in log], list(logs.values())[0][-3000:]

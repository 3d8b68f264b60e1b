"""kill -9 in the middle of a purchase load: no key sold twice, no paid order lost.

16 clients buy through real server processes: order, then the gateway's
signed callback (retried, as a gateway does, until it is answered), then the
buyer's lookup. When a third of the purchases are done, the server is killed
with SIGKILL together with everything it started (gunicorn's workers, its
scheduler child) and, in the layout that has one, the separate `kamengd
scheduler` too. The clients keep trying while it is down; it is started again
and the load finishes. Then the scheduler runs and the promises are checked
from the database and the CLI, and a report of them is printed:

- no key in two orders, and every key a buyer was shown belongs to their order;
- every order whose callback was answered "success" is delivered, with its keys;
- no key is reserved for an order that is not pending or whose time is up;
- `kamengd audit verify` passes.

Each layout of W1, on SQLite and MariaDB; two servers on one MariaDB lose one
of them while the other goes on selling.
"""
from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode

import pytest
import sqlalchemy as sa

from conftest import run_cli
from test_concurrency import BUSY_SCHEDULER, callback_params, setup_shop, wait_for_leader

PURCHASES, CLIENTS = 90, 16
LAYOUTS = ("waitress", "gunicorn", "gunicorn+scheduler")


class Shop:
    """The servers' addresses as the clients see them; a base that is down is skipped."""

    def __init__(self, bases):
        self.bases, self.down = list(bases), set()
        self.lock = threading.Lock()

    def base(self, i):
        with self.lock:
            up = [b for b in self.bases if b not in self.down] or self.bases
            return up[i % len(up)]

    def replace(self, old, new):
        with self.lock:
            self.bases = [new if b == old else b for b in self.bases]
            self.down.discard(old)


def call(method, url, body=None, timeout=30):
    """(status, text, headers), or (None, error, {}) when no answer came (the server is down)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode(), resp.headers
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(), err.headers
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError) as exc:
        return None, str(exc), {}   # no answer, or half of one: the server died under it


def is_busy_error(text: str) -> bool:
    try:
        return json.loads(text)["error"]["code"] == "busy"
    except (ValueError, KeyError, TypeError):
        return False


class Load:
    def __init__(self, shop, pid):
        self.shop, self.pid = shop, pid
        self.orders = {}            # order_no -> token, every order the shop said it made
        self.paid = set()           # order_no whose callback was answered "success"
        self.shown = {}             # order_no -> keys the buyer was shown
        self.answers = []           # every HTTP status received
        self.unanswered = 0         # requests the dead server never answered (tried again)
        self.busy = 0               # 503 answers (the database away or locked)
        self.callbacks_not_recorded = 0   # callbacks answered "fail" (not stored: the gateway calls again)
        self.bad_busy = []          # 503 answers that were not the JSON busy error with Retry-After
        self.done = 0
        self.lock = threading.Lock()
        self.deadline = time.monotonic() + 180

    def _until_answered(self, i, method, path, body=None):
        while time.monotonic() < self.deadline:
            status, text, headers = call(method, self.shop.base(i) + path, body)
            if status is not None:
                with self.lock:
                    self.answers.append(status)
                if status != 503:   # busy: the shop said try again
                    return status, text
                with self.lock:
                    self.busy += 1
                    if not (is_busy_error(text) and headers.get("Retry-After")):
                        self.bad_busy.append(text[:200])
            else:
                with self.lock:
                    self.unanswered += 1
            time.sleep(0.2)
        raise AssertionError(f"{method} {path}: no answer in time")

    def purchase(self, i):
        status, text = self._until_answered(i, "POST", "/api/v1/orders",
                                            {"product_id": self.pid, "quantity": 1, "email": f"k{i}@example.com",
                                             "channel": "epay"})
        if status != 201:
            assert status == 409 and json.loads(text)["error"]["code"] == "out_of_stock", (status, text)
            return
        order = json.loads(text)
        with self.lock:
            self.orders[order["order_no"]] = order["token"]
        # The gateway calls until it hears "success" (a "fail" is retried too).
        query = urlencode(callback_params(order["order_no"]))
        for _ in range(50):
            status, text = self._until_answered(i, "GET", f"/pay/epay/notify?{query}")
            if status == 200 and text == "success":
                with self.lock:
                    self.paid.add(order["order_no"])
                break
            with self.lock:
                self.callbacks_not_recorded += 1
            time.sleep(0.1)
        status, text = self._until_answered(i, "GET", f"/api/v1/orders/{order['order_no']}?token={order['token']}")
        assert status == 200, (status, text)
        view = json.loads(text)
        with self.lock:
            self.shown[order["order_no"]] = view.get("keys", [])
            self.done += 1


def start(layout, start_server, config, env=BUSY_SCHEDULER):
    """(servers, separate scheduler or None) for one layout."""
    if layout == "waitress":
        return [start_server(config, env=env)], None
    if layout == "gunicorn":
        return [start_server(config, "--server", "gunicorn", env=env)], None
    if layout == "gunicorn+scheduler":
        scheduler = start_server.scheduler(config, env=env)
        return [start_server(config, "--server", "gunicorn", "--no-scheduler", env=env)], scheduler
    if layout == "two-servers":
        return [start_server(config, env=env), start_server(config, "--server", "gunicorn", env=env)], None
    raise AssertionError(layout)


def run_with_a_kill(layout, start_server, config, pid):
    bases, scheduler = start(layout, start_server, config)
    wait_for_leader(bases[0])
    shop = Shop(bases)
    load = Load(shop, pid)
    victim = bases[-1]
    server_args = {"waitress": (), "gunicorn": ("--server", "gunicorn"),
                   "gunicorn+scheduler": ("--server", "gunicorn", "--no-scheduler"),
                   "two-servers": ("--server", "gunicorn")}[layout]
    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        futures = [pool.submit(load.purchase, i) for i in range(PURCHASES)]
        while load.done < PURCHASES // 3:
            time.sleep(0.05)
        with shop.lock:
            shop.down.add(victim)   # the clients of a dead server keep knocking, on the others if any
        start_server.kill9(start_server.by_base[victim])
        if scheduler is not None:
            start_server.kill9(scheduler)
        killed_at = load.done
        time.sleep(1)
        if scheduler is not None:
            start_server.scheduler(config, env=BUSY_SCHEDULER)
        shop.replace(victim, start_server(config, *server_args, env=BUSY_SCHEDULER))
        for future in futures:
            future.result()
    return load, killed_at


def as_datetime(value) -> dt.datetime:
    """SQLite hands text back to a plain SQL query."""
    return dt.datetime.fromisoformat(value) if isinstance(value, str) else value


def invariants(config, url, load) -> dict:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        orders = {r.order_no: r for r in conn.execute(sa.text(
            "SELECT id, order_no, status, quantity, expires_at FROM orders"))}
        keys = conn.execute(sa.text("SELECT id, status, order_id FROM card_keys")).all()
        now = conn.execute(sa.text("SELECT CURRENT_TIMESTAMP")).scalar()
    engine.dispose()
    by_id = {o.id: o for o in orders.values()}
    sold = {}
    for k in keys:
        if k.status == "sold":
            sold.setdefault(k.order_id, []).append(k.id)
    shown = [key for ks in load.shown.values() for key in ks]
    paid_not_delivered = sorted(n for n in load.paid if orders[n].status != "delivered")
    wrong_count = sorted(o.order_no for o in orders.values()
                         if o.status == "delivered" and len(sold.get(o.id, [])) != o.quantity)
    stale_reserved = [k.id for k in keys if k.status == "reserved"
                      and (k.order_id not in by_id or by_id[k.order_id].status != "pending"
                           or as_datetime(by_id[k.order_id].expires_at) < as_datetime(now))]
    report = {
        "requests left unanswered": load.unanswered,
        "orders the buyers got": len(load.orders), "orders in the database": len(orders),
        "callbacks answered success": len(load.paid),
        "delivered": sum(o.status == "delivered" for o in orders.values()),
        "keys shown to buyers": len(shown), "distinct": len(set(shown)),
        "sold keys without an order": len(sold.get(None, [])),
        "paid but not delivered": paid_not_delivered, "delivered with a wrong key count": wrong_count,
        "keys reserved past their order": len(stale_reserved),
        "answers": {str(s): load.answers.count(s) for s in sorted(set(load.answers))},
    }
    audit = run_cli("audit", "verify", config=config)
    report["audit verify"] = "ok" if audit.returncode == 0 else audit.err.strip()
    return report


def check(report, killed=True):
    assert report["keys shown to buyers"] == report["distinct"], report           # no key in two orders
    assert report["paid but not delivered"] == [], report
    assert report["delivered with a wrong key count"] == [], report
    assert report["sold keys without an order"] == 0, report
    assert report["keys reserved past their order"] == 0, report
    assert report["audit verify"] == "ok", report
    assert "500" not in report["answers"], report                                  # never a crash answer
    assert report["delivered"] >= report["callbacks answered success"] > 0, report
    if killed:
        assert report["requests left unanswered"] > 0, report         # the kill hit the load


def settle_after(start_server, config):
    """Stop the servers (gracefully), then one scheduler tick as the leader: the expiry and
    the delivery sweep run after the restart whatever the layout's own schedulers did."""
    logs = start_server.stop_all()
    assert not [log for log in logs.values() if "Traceback" in log], [l[-2000:] for l in logs.values()]
    deadline = time.monotonic() + 20   # the killed scheduler's lease runs out (3 s)
    while True:
        out = run_cli("scheduler", "--once", config=config, env=BUSY_SCHEDULER, check=True).out
        if out.startswith("leader") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert out.startswith("leader"), out


def keep_report(name: str, report: dict) -> None:
    """Printed, and kept with the test artifacts (CI shows them)."""
    line = json.dumps(report, ensure_ascii=False)
    print(f"\n{name}: {line}")
    root = os.environ.get("KAMENGD_ARTIFACTS_DIR")
    directory = (Path(root) if root else Path(__file__).resolve().parents[2] / "test-artifacts") / "faults"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.json").write_text(line + "\n")


def config_url(config):
    from kamengd.config import load_config

    return load_config(config, env={}).database_url


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_kill9_mid_purchase_load(layout, backend, databases, tmp_path, start_server, capsys):
    config, pid, _ = setup_shop(backend, databases, tmp_path)
    load, killed_at = run_with_a_kill(layout, start_server, config, pid)
    settle_after(start_server, config)
    report = {"killed after": f"{killed_at} of {PURCHASES} purchases", **invariants(config, config_url(config), load)}
    with capsys.disabled():
        keep_report(f"kill9-{layout}-{backend}", report)
    check(report)


@pytest.mark.slow
def test_kill9_one_of_two_servers_on_one_database(mysql_backend, databases, tmp_path, start_server, capsys):
    config, pid, _ = setup_shop(mysql_backend, databases, tmp_path)
    load, killed_at = run_with_a_kill("two-servers", start_server, config, pid)
    settle_after(start_server, config)
    report = {"killed after": f"{killed_at} of {PURCHASES} purchases", **invariants(config, config_url(config), load)}
    with capsys.disabled():
        keep_report(f"kill9-two-servers-{mysql_backend}", report)
    check(report)

"""Docking (对接) with two real kamengd instances: separate data directories, databases and
ports, the downstream shop buying from the upstream one through its agent API.

100 buyers at once on the downstream shop for a product mapped to an upstream product
with 60 keys: 60 delivered with distinct upstream keys, 40 paid and flagged, the
downstream's balance upstream debited exactly 60 × cost. And kill -9 of the upstream in
the middle: after its restart every paid order ends delivered or flagged, none bought
twice. Each in every layout of the downstream shop.
"""
import json
import random
import secrets
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

import pytest

from conftest import run_cli, write_password
from test_agent_concurrency import LAYOUTS
from test_concurrency import BUSY_SCHEDULER, KEY, assert_clean_logs, callback_params, http, start_layout, \
    wait_for_leader

UP_KEYS, BUYERS = 60, 100
COST, FLOAT = "0.80", "100.00"   # the upstream's 1.00 less 20 %; the downstream's balance there


def _install(tmp_path, name, backend, databases):
    args = ["install", "--data-dir", tmp_path / name, "--admin-password-file", write_password(tmp_path), "--yes"]
    if backend != "sqlite":
        args += ["--database-url", databases.new_url(backend)]
    run_cli(*args, check=True)
    config = tmp_path / name / "kamengd.toml"
    return config, (lambda *a: json.loads(run_cli(*a, "--json", config=config, check=True).out))


def _upstream(tmp_path, backend, databases):
    """The supplier: 60 keys at 1.00, and the downstream shop as its agent at 20 % off."""
    config, cli = _install(tmp_path, "up", backend, databases)
    pid = cli("product", "create", "--name", "上游点卡", "--price", "1.00", "--max-quantity", "5")["id"]
    keys = [f"UP-{i:03d}-{random.getrandbits(48):012x}" for i in range(UP_KEYS)]
    run_cli("keys", "import", "--product", pid, "-", config=config, input="\n".join(keys).encode(), check=True)
    cli("agent", "level", "set", "--name", "wholesale", "--discount", "20")
    cli("agent", "create", "--username", "downshop", "--level", "wholesale")
    cli("balance", "credit", "--username", "downshop", "--amount", FLOAT, "--reason", "prepaid")
    key = cli("agent", "apikey", "--username", "downshop", "--scope", "read", "--scope", "order")
    return config, cli, pid, keys, key


def _downstream(tmp_path, backend, databases, up_base, key, up_pid):
    config, cli = _install(tmp_path, "down", backend, databases)
    run_cli("channel", "add", "--type", "epay", "--code", "epay", "--option", "gateway=http://127.0.0.1:9",
            "--option", "pid=3003", "--option", f"key={KEY}", config=config, check=True)
    secret_file = tmp_path / "supplier-secret"
    secret_file.write_text(key["secret"] + "\n")
    added = cli("supplier", "add", "--url", up_base, "--key-id", key["key_id"], "--secret-file", secret_file,
                "--name", "up", "--low-balance", "60.00")
    assert added["sync"]["products"] >= 1 and added["balance"] == FLOAT, added
    mapped = cli("supplier", "map", "--name", "up", "--remote-product", str(up_pid), "--create", "转售点卡",
                 "--markup-percent", "25")
    assert (mapped["cost"], mapped["price"], mapped["stock"]) == (COST, "1.00", UP_KEYS), mapped
    return config, cli, mapped["product_id"]


def _buy_and_pay(bases, pid):
    def buy(i):
        return http("POST", f"{bases[i % len(bases)]}/api/v1/orders",
                    {"product_id": pid, "quantity": 1, "email": f"b{i}@example.com", "channel": "epay"})

    with ThreadPoolExecutor(max_workers=BUYERS) as pool:
        made = list(pool.map(buy, range(BUYERS)))
    assert Counter(s for s, _ in made) == {201: BUYERS}, Counter(s for s, _ in made)
    orders = [json.loads(body) for _s, body in made]

    def pay(i):
        return http("GET", f"{bases[i % len(bases)]}/pay/epay/notify?"
                           f"{urlencode(callback_params(orders[i]['order_no']))}")

    with ThreadPoolExecutor(max_workers=50) as pool:
        assert set(pool.map(pay, range(BUYERS))) == {(200, "success")}
    return orders


def _views(base, orders):
    return [json.loads(http("GET", f"{base}/api/v1/orders/{o['order_no']}?token={o['token']}")[1]) for o in orders]


def _settled(cli, expected_refused=None, timeout=90):
    """Wait until no forward is left to try: each delivered, or refused (flagged)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = cli("supplier", "orders", "--limit", "1000")["orders"]
        states = Counter((r["status"], r["last_error"] is not None and r["status"] == "pending") for r in rows)
        unsettled = [r for r in rows if r["status"] == "waiting" or (r["status"] == "pending" and
                                                                       (r["uncertain"] or r["attempts"] == 0))]
        if len(rows) == BUYERS and not unsettled:
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"forwards not settled: {states}, e.g. {unsettled[:3]}")
        time.sleep(0.5)


def signed_get(base, key_id, secret, path):
    from kamengd.agents.signing import sign

    timestamp, nonce = str(int(time.time())), secrets.token_hex(16)
    request = urllib.request.Request(base + path, headers={
        "X-Kamengd-Key": key_id, "X-Kamengd-Timestamp": timestamp, "X-Kamengd-Nonce": nonce,
        "X-Kamengd-Signature": sign(secret, "GET", path, timestamp, nonce, b"")})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _check_books(up_cli, up_base, key, rows, up_keys, views, flagged_cli):
    delivered = [v for v in views if v["status"] == "delivered"]
    waiting = [v for v in views if v["status"] == "paid"]
    assert (len(delivered), len(waiting)) == (UP_KEYS, BUYERS - UP_KEYS), Counter(v["status"] for v in views)
    sold = [k for v in delivered for k in v["keys"]]
    assert len(sold) == len(set(sold)) == UP_KEYS and set(sold) == set(up_keys)
    # Upstream: exactly one order per delivered downstream order, and the balance debited 60 × cost.
    assert up_cli("balance", "show", "--username", "downshop")["balance"] == "52.00"
    status, upstream_orders = signed_get(up_base, key["key_id"], key["secret"], "/api/v1/agent/orders?limit=100")
    assert status == 200
    refs = Counter(o["ref"] for o in upstream_orders["orders"])
    assert len(upstream_orders["orders"]) == UP_KEYS and max(refs.values()) == 1
    assert set(refs) == {v["order_no"] for v in delivered}
    assert up_cli("ledger", "verify")["ok"] is True
    # Downstream: every order left waiting is flagged for a person, with the supplier's reason.
    flagged = {o["order_no"]: o["reason"] for o in flagged_cli("order", "flagged")["orders"]}
    assert {v["order_no"] for v in waiting} <= set(flagged)
    assert all("out_of_stock" in flagged[v["order_no"]] for v in waiting)


@pytest.mark.slow
@pytest.mark.layouts(*LAYOUTS)
def test_one_hundred_buyers_sixty_upstream_keys(layout, backend, databases, tmp_path, start_server):
    up_config, up_cli, up_pid, up_keys, key = _upstream(tmp_path, backend, databases)
    up_base = start_server(up_config)
    down_config, down_cli, pid = _downstream(tmp_path, backend, databases, up_base, key, up_pid)
    bases = start_layout(layout, start_server, down_config)
    wait_for_leader(bases[0])
    orders = _buy_and_pay(bases, pid)
    rows = _settled(down_cli)
    assert Counter(r["status"] for r in rows) == {"delivered": UP_KEYS, "pending": BUYERS - UP_KEYS}
    _check_books(up_cli, up_base, key, rows, up_keys, _views(bases[0], orders), down_cli)
    # Staff refund one that waits: it is never bought afterwards.
    waiting = next(r for r in rows if r["status"] == "pending")
    down_cli("order", "refund", waiting["order_no"], "--reason", "supplier out of stock")
    down_cli("run-job", "forward_supplier_orders")
    after = {r["order_no"]: r for r in down_cli("supplier", "orders", "--limit", "1000")["orders"]}
    assert after[waiting["order_no"]]["status"] == "cancelled"
    assert up_cli("balance", "show", "--username", "downshop")["balance"] == "52.00"
    assert_clean_logs(start_server)


@pytest.mark.slow
@pytest.mark.layouts(*LAYOUTS)
def test_the_upstream_killed_mid_way_buys_nothing_twice(layout, backend, databases, tmp_path, start_server):
    up_config, up_cli, up_pid, up_keys, key = _upstream(tmp_path, backend, databases)
    up_base = start_server(up_config)
    port = int(up_base.rsplit(":", 1)[1])
    down_config, down_cli, pid = _downstream(tmp_path, backend, databases, up_base, key, up_pid)
    bases = start_layout(layout, start_server, down_config)
    wait_for_leader(bases[0])
    orders = _buy_and_pay(bases, pid)
    # Once the upstream has taken the first orders, it dies (kill -9), mid-way through them.
    deadline = time.monotonic() + 60
    while True:
        status, placed = signed_get(up_base, key["key_id"], key["secret"], "/api/v1/agent/orders?limit=100")
        if status == 200 and len(placed["orders"]) >= 5:
            break
        assert time.monotonic() < deadline, "nothing was forwarded"
        time.sleep(0.01)
    start_server.kill9(start_server.by_base[up_base])
    assert len(placed["orders"]) < UP_KEYS, "the forwards were done before the kill: nothing was tested"
    time.sleep(3)   # the downstream tries meanwhile and gets no answer
    start_server(up_config, port=port)
    rows = _settled(down_cli, timeout=180)
    assert Counter(r["status"] for r in rows) == {"delivered": UP_KEYS, "pending": BUYERS - UP_KEYS}
    _check_books(up_cli, up_base, key, rows, up_keys, _views(bases[0], orders), down_cli)
    for log in start_server.stop_all().values():
        assert "database is locked" not in log

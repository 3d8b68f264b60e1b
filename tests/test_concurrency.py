"""No key sold twice, no payment delivered twice: real servers, real databases, many clients.

200 buyers race for 100 keys through real `kamengd serve` processes; then every
paid order gets its Epay callback three times over, all at once.
"""
import hashlib
import json
import random
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import run_cli, write_password
from kamengd.payments import epay

KEY = "concurrency-merchant-key"
BUYERS, STOCK = 200, 100


def http(method, url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def setup_shop(backend, databases, tmp_path):
    args = ["install", "--data-dir", tmp_path / "data", "--admin-password-file", write_password(tmp_path), "--yes"]
    if backend != "sqlite":
        args += ["--database-url", databases.new_url(backend)]
    run_cli(*args, check=True)
    config = tmp_path / "data" / "kamengd.toml"
    pid = json.loads(run_cli("product", "create", "--name", "race", "--price", "1.00", "--max-quantity", "5",
                             "--json", config=config, check=True).out)["id"]
    keys = [f"RACE-{i:04d}-{random.getrandbits(48):012x}" for i in range(STOCK)]
    run_cli("keys", "import", "--product", pid, "-", config=config, input="\n".join(keys).encode(), check=True)
    run_cli("channel", "add", "--type", "epay", "--code", "epay", "--option", "gateway=http://127.0.0.1:9",
            "--option", "pid=3003", "--option", f"key={KEY}", config=config, check=True)
    return config, pid, keys


def callback_params(order_no):
    params = {"pid": "3003", "trade_no": f"T{order_no}", "out_trade_no": order_no, "type": "alipay",
              "name": "race", "money": "1.00", "trade_status": "TRADE_SUCCESS"}
    params["sign"] = hashlib.md5((epay.signing_string(params) + KEY).encode()).hexdigest()
    params["sign_type"] = "MD5"
    return params


def race(bases, pid, keys):
    def buy(i):
        return http("POST", f"{bases[i % len(bases)]}/api/v1/orders",
                    {"product_id": pid, "quantity": 1, "email": f"b{i}@example.com", "channel": "epay"})

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(buy, range(BUYERS)))
    statuses = Counter(status for status, _ in results)
    assert statuses == {201: STOCK, 409: BUYERS - STOCK}, statuses
    assert all(json.loads(body)["error"]["code"] == "out_of_stock" for status, body in results if status == 409)
    orders = [json.loads(body) for status, body in results if status == 201]

    from urllib.parse import urlencode
    calls = [(o["order_no"], bases[n % len(bases)]) for o in orders for n in range(3)]
    random.shuffle(calls)

    def pay(call):
        order_no, base = call
        return http("GET", f"{base}/pay/epay/notify?{urlencode(callback_params(order_no))}")

    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(pay, calls))
    assert all(answer == (200, "success") for answer in answers), Counter(answers)

    delivered = []
    for o in orders:
        status, body = http("GET", f"{bases[0]}/api/v1/orders/{o['order_no']}?token={o['token']}")
        view = json.loads(body)
        assert status == 200 and view["status"] == "delivered" and len(view["keys"]) == 1, view
        delivered += view["keys"]
    assert sorted(delivered) == sorted(keys)  # every key sold exactly once
    products = json.loads(http("GET", f"{bases[0]}/api/v1/products")[1])["products"]
    assert next(p for p in products if p["id"] == pid)["stock"] == 0


@pytest.mark.slow
def test_race_one_server(backend, databases, tmp_path, start_server):
    config, pid, keys = setup_shop(backend, databases, tmp_path)
    race([start_server(config, "--no-scheduler")], pid, keys)


@pytest.mark.slow
def test_race_two_servers_one_database(mysql_backend, databases, tmp_path, start_server):
    config, pid, keys = setup_shop(mysql_backend, databases, tmp_path)
    bases = [start_server(config, "--no-scheduler"), start_server(config, "--no-scheduler")]
    race(bases, pid, keys)

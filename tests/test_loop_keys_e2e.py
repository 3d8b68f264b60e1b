"""Loop keys end to end (W5): real servers in each layout, on SQLite and MariaDB.

A product turned loop by the CLI (`product edit --delivery loop`), one key imported: thirty
buyers order and pay at once through every server; each order is delivered that same key,
which is still in stock afterwards; the product's keys are never sold.
"""
from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

import pytest

from conftest import install_shop, run_cli
from test_channel_stripe import http
from test_concurrency import start_layout

LAYOUTS = ("waitress", "gunicorn", "gunicorn+scheduler", "two-servers")
KEY = "loop-e2e-merchant-key-0123456789ab"


@pytest.mark.slow
@pytest.mark.layouts(*LAYOUTS)
def test_thirty_buyers_pay_at_once_and_all_get_the_one_key(layout, backend, databases, tmp_path, start_server):
    from kamengd.payments import epay

    config, pid, keys = install_shop(backend, databases, tmp_path, product="循环 loop", price="2.00", keys=1,
                                     prefix="LOOP")
    run_cli("product", "edit", pid, "--delivery", "loop", config=config, check=True)
    run_cli("channel", "add", "--type", "epay", "--code", "ep", "--option", "gateway=https://pay.example.com",
            "--option", "pid=1001", "--option", f"key={KEY}", config=config, check=True)
    bases = start_layout(layout, start_server, config)

    def buy(i):
        base = bases[i % len(bases)]
        status, _, text = http("POST", f"{base}/api/v1/orders", {"product_id": pid, "quantity": 1,
                                                                 "email": f"loop{i}@example.com", "channel": "ep"})
        placed = json.loads(text)
        assert status == 201, placed
        params = {"pid": "1001", "trade_no": f"T{placed['order_no']}", "out_trade_no": placed["order_no"],
                  "type": "alipay", "name": "x", "money": placed["amount"], "trade_status": "TRADE_SUCCESS"}
        params["sign"] = hashlib.md5((epay.signing_string(params) + KEY).encode()).hexdigest()
        _, _, answer = http("GET", f"{bases[-1 - i % len(bases)]}/pay/ep/notify?{urlencode(params)}")
        assert answer == "success", answer
        _, _, text = http("GET", f"{base}/api/v1/orders/{placed['order_no']}?token={placed['token']}")
        return json.loads(text)

    with ThreadPoolExecutor(30) as pool:
        seen = list(pool.map(buy, range(30)))
    assert all((o["status"], o["keys"]) == ("delivered", keys) for o in seen), seen[:3]
    _, _, text = http("GET", f"{bases[0]}/api/v1/products")
    mine = next(p for p in json.loads(text)["products"] if p["id"] == pid)
    assert (mine["delivery"], mine["stock"]) == ("loop", 1), mine   # the key is still in stock
    logs = start_server.stop_all()
    assert not any("Traceback" in log for log in logs.values()), logs

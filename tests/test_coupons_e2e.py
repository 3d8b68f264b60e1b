"""Coupons end to end (W5): real servers in each layout, on SQLite and MariaDB.

Fifty buyers order at once with a coupon of ten uses: exactly ten orders get it, the others
are refused saying it is used up (or busy), nothing else is written. Those ten expire unpaid
(`kamengd run-job expire_reservations`, as the scheduler would) and give their uses back: the
next ten buyers get the coupon again, and one of them pays and is delivered at the discount.
"""
from __future__ import annotations

import hashlib
import json
import secrets
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

import pytest
import sqlalchemy as sa

from conftest import install_shop, run_cli
from test_channel_stripe import http
from test_concurrency import start_layout

LAYOUTS = ("waitress", "gunicorn", "gunicorn+scheduler", "two-servers")
KEY = "coupon-e2e-merchant-key-0123456789"


def order(base: str, pid: int, coupon: str, email: str):
    status, _, text = http("POST", f"{base}/api/v1/orders", {"product_id": pid, "quantity": 1, "email": email,
                                                           "channel": "ep", "coupon": coupon})
    return status, json.loads(text)


@pytest.mark.slow
@pytest.mark.layouts(*LAYOUTS)
def test_fifty_buyers_race_for_ten_uses_and_expiry_gives_them_back(layout, backend, databases, tmp_path,
                                                                    start_server):
    from kamengd.config import load_config
    from kamengd.database import make_engine
    from kamengd.payments import epay

    config, pid, _ = install_shop(backend, databases, tmp_path, product="券 coupon", price="5.00", keys=60,
                                  prefix="CP")
    run_cli("channel", "add", "--type", "epay", "--code", "ep", "--option", "gateway=https://pay.example.com",
            "--option", "pid=1001", "--option", f"key={KEY}", config=config, check=True)
    run_cli("coupon", "add", "--code", "RACE10", "--amount-off", "1.20", "--max-uses", "10", config=config,
            check=True)
    bases = start_layout(layout, start_server, config)

    def one(i):
        return order(bases[i % len(bases)], pid, "race10", f"buyer{i}@example.com")

    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(one, range(50)))
    taken = [a for status, a in answers if status == 201]
    refused = [a["error"] for status, a in answers if status != 201]
    assert len(taken) == 10, refused[:3]
    assert {(a["amount"], a["discount"]) for a in taken} == {("3.80", "1.20")}
    assert all(e["code"] in ("invalid_request", "busy") for e in refused), refused[:3]
    assert sum("used up" in e["message"] for e in refused) >= 30, refused[:5]
    listed = json.loads(run_cli("coupon", "list", "--json", config=config, check=True).out)["coupons"]
    assert listed[0]["used"] == 10
    assert len(json.loads(run_cli("order", "list", "--json", "--limit", "200", config=config,
                                  check=True).out)["orders"]) == 10

    engine = make_engine(load_config(str(config)).database_url, pooled=False)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE orders SET expires_at = :t"), {"t": "2000-01-01 00:00:00"})
    engine.dispose()
    run_cli("run-job", "expire_reservations", config=config, check=True)
    assert json.loads(run_cli("coupon", "list", "--json", config=config, check=True).out)["coupons"][0]["used"] == 0

    with ThreadPoolExecutor(20) as pool:
        again = list(pool.map(lambda i: order(bases[i % len(bases)], pid, "RACE10", f"again{i}@example.com"),
                              range(20)))
    second = [a for status, a in again if status == 201]
    assert len(second) == 10
    paid = second[0]
    params = {"pid": "1001", "trade_no": f"T{paid['order_no']}", "out_trade_no": paid["order_no"], "type": "alipay",
              "name": "x", "money": "3.80", "trade_status": "TRADE_SUCCESS"}
    params["sign"] = hashlib.md5((epay.signing_string(params) + KEY).encode()).hexdigest()
    status, _, text = http("GET", f"{bases[0]}/pay/ep/notify?{urlencode(params)}")
    assert text == "success", text
    status, _, text = http("GET", f"{bases[-1]}/api/v1/orders/{paid['order_no']}?token={paid['token']}")
    seen = json.loads(text)
    assert (seen["status"], seen["amount"], seen["discount"], len(seen["keys"])) == ("delivered", "3.80", "1.20", 1)
    listed = json.loads(run_cli("coupon", "list", "--json", config=config, check=True).out)["coupons"][0]
    assert (listed["used"], listed["paid_orders"], listed["discount_given"], listed["sales"]) == \
        (10, 1, "1.20", "3.80")
    logs = start_server.stop_all()
    assert not any("Traceback" in log for log in logs.values()), logs

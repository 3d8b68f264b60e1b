"""Routing and failover end to end (W4): real servers in each layout, on SQLite and MariaDB.

- A failing primary and a working backup: the primary Alipay channel's gateway does not
  answer, so its pay page moves the order to the backup (another Alipay channel, on the local
  fake open platform) in the same visit; the buyer scans the backup's QR code and gets the
  keys. The move is audited (`channel.failover`), the primary is down until a check succeeds.
- Daily caps under 50 concurrent orders: the capped channel takes exactly what its cap
  allows, its backup what its own cap allows, the rest are refused; nothing passes a cap.
"""
from __future__ import annotations

import json
import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from conftest import install_shop, run_cli
from test_channel_alipay import APP_ID, SELLER, FakeAlipay, bare
from test_channel_stripe import http, view
from test_concurrency import start_layout

LAYOUTS = ("waitress", "gunicorn", "gunicorn+scheduler", "two-servers")


def install(backend, databases, tmp_path: Path, *, price: str, keys: int) -> tuple[Path, int, list[str]]:
    return install_shop(backend, databases, tmp_path, product="路由 routing", price=price, keys=keys, prefix="RT")


def order(base: str, pid: int, channel: str, pay_type: str | None = None):
    body = {"product_id": pid, "quantity": 1, "email": "route@example.com", "channel": channel}
    if pay_type:
        body["pay_type"] = pay_type
    status, _, text = http("POST", f"{base}/api/v1/orders", body)
    return status, json.loads(text)


@pytest.mark.slow
@pytest.mark.layouts(*LAYOUTS)
def test_a_failing_primary_and_a_working_backup(layout, backend, databases, tmp_path, start_server):
    config, pid, keys = install(backend, databases, tmp_path, price="8.80", keys=5)
    fake = FakeAlipay(tmp_path)
    try:
        common = ["--option", f"app_id={APP_ID}", "--option", f"private_key={fake.app_private}",
                  "--option", f"alipay_public_key={bare(fake.alipay_public)}", "--option", f"seller_id={SELLER}",
                  "--option", f"gateway={fake.base}/gateway.do"]
        run_cli("channel", "add", "--type", "alipay", "--code", "alipay", "--name", "支付宝 主", *common,
                config=config, check=True)
        run_cli("channel", "add", "--type", "alipay", "--code", "alipay-b", "--name", "支付宝 备", *common,
                config=config, check=True)
        run_cli("channel", "route", "alipay-b", "--priority", "1", config=config, check=True)
        bases = start_layout(layout, start_server, config)
        run_cli("setting", "set", "site.url", bases[0], config=config, check=True)
        base = bases[-1]

        status, placed = order(base, pid, "alipay")
        assert status == 201 and urlsplit(placed["pay_url"]).path == "/pay/alipay/start"
        fake.call("/_test/fail_creates", {"count": 1})   # the primary's create call fails, once
        url = urlsplit(placed["pay_url"])
        status, headers, _ = http("GET", base + url.path + "?" + url.query)
        assert status == 303, status   # on to the backup, in the same visit
        moved = urlsplit(headers["Location"])
        assert moved.path == "/pay/alipay-b/start" and parse_qs(moved.query)["order_no"] == [placed["order_no"]]
        status, _, page = http("GET", base + moved.path + "?" + moved.query)
        assert status == 200 and "<svg" in page and "8.80 CNY" in page
        # The old address follows the order to its new channel (a reload, another tab).
        status, headers, _ = http("GET", base + url.path + "?" + url.query)
        assert status == 303 and urlsplit(headers["Location"]).path == "/pay/alipay-b/start"

        assert fake.pay(placed["order_no"])["answers"] == [[200, "success"]]
        shown = view(base, placed)
        assert shown["status"] == "delivered" and len(shown["keys"]) == 1 and shown["keys"][0] in keys

        def audited(action):
            return json.loads(run_cli("audit", "list", "--action", action, "--json", config=config,
                                      check=True).out)["entries"]
        assert [(e["details"]["from"], e["details"]["to"], e["details"]["order_no"])
                for e in audited("channel.failover")] == [("alipay", "alipay-b", placed["order_no"])]
        assert [e["target"] for e in audited("channel.down")] == ["channel:alipay"]
        # Its gateway answers the health check: back in routing (the servers' job may be first).
        run_cli("run-job", "check_channels", config=config, check=True)
        assert json.loads(run_cli("channel", "route", "alipay", "--json", config=config,
                                  check=True).out)["health"] == "ok"
        assert [e["target"] for e in audited("channel.up")] == ["channel:alipay"]
        status, second = order(base, pid, "alipay")
        assert status == 201 and urlsplit(second["pay_url"]).path == "/pay/alipay/start"
        logs = start_server.stop_all()
        assert not any("Traceback" in log for log in logs.values()), logs
    finally:
        fake.stop()


@pytest.mark.slow
@pytest.mark.layouts(*LAYOUTS)
def test_daily_caps_hold_under_fifty_concurrent_orders(layout, backend, databases, tmp_path, start_server):
    config, pid, _ = install(backend, databases, tmp_path, price="3.00", keys=50)
    for code, cap, priority in (("capped", "30.00", "0"), ("backup", "45.00", "1")):
        run_cli("channel", "add", "--type", "epay", "--code", code, "--option", "gateway=https://pay.example.com",
                "--option", "pid=1001", "--option", f"key={secrets.token_hex(16)}", "--option", "pay_types=alipay",
                config=config, check=True)
        run_cli("channel", "route", code, "--daily-cap", cap, "--priority", priority, config=config, check=True)
    bases = start_layout(layout, start_server, config)

    def one(i):
        return order(bases[i % len(bases)], pid, "capped", "alipay")

    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(one, range(50)))
    went = [parse_qs(urlsplit(a["pay_url"]).query)["notify_url"][0].split("/pay/")[1].split("/")[0]
            for status, a in answers if status == 201]
    refused = [a for status, a in answers if status != 201]
    assert (went.count("capped"), went.count("backup"), len(refused)) == (10, 15, 25), (went, refused[:2])
    assert all(a["error"]["code"] in ("invalid_request", "busy") for a in refused), refused[:3]
    orders = json.loads(run_cli("order", "list", "--json", "--limit", "200", config=config, check=True).out)
    assert len(orders["orders"]) == 25
    logs = start_server.stop_all()
    assert not any("Traceback" in log for log in logs.values()), logs

"""Guessing a merchant key against /pay/*/notify of a real server, limits on (W9).

The adversarial run tried every printable character as the key of a channel
keyed "a" and was delivered an order on the 11th try, with no 429 in 60
refused callbacks. Now such a key cannot be stored (test_payment_integrity),
and every refused callback (a wrong signature, a foreign pid, an unknown
channel) counts against its address: past ratelimit.bad_callbacks it gets
429 for every callback. Genuine callbacks never count, so a gateway's
retries are never slowed, and addresses in ratelimit.gateway_addresses are
never limited at all.

Each layout as deployed: waitress alone (limits in its memory), gunicorn's
workers and two servers sharing Redis; on SQLite and MariaDB.
"""
from __future__ import annotations

import hashlib
import json
import secrets
import string
import urllib.error
import urllib.request
from urllib.parse import urlencode

import pytest

from conftest import run_cli
from kamengd.payments import epay
from test_concurrency import BUSY_SCHEDULER

PID = "7007"
KEY = f"brute-{secrets.token_hex(16)}"
LAYOUTS = ("waitress", "gunicorn", "two-servers")


def call(base: str, path: str, params: dict) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"{base}{path}?{urlencode(params)}", timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def callback(order_no: str, key: str, trade_no: str, pid: str = PID) -> dict:
    params = {"pid": pid, "trade_no": trade_no, "out_trade_no": order_no, "type": "alipay", "name": "x",
              "money": "5.00", "trade_status": "TRADE_SUCCESS"}
    params["sign"] = hashlib.md5((epay.signing_string(params) + key).encode()).hexdigest()
    params["sign_type"] = "MD5"
    return params


def place(base: str, product_id: int) -> dict:
    body = json.dumps({"product_id": product_id, "quantity": 1, "email": "brute@example.com",
                       "channel": "epay"}).encode()
    request = urllib.request.Request(f"{base}/api/v1/orders", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read())


def status_of(base: str, order: dict) -> str:
    return json.loads(call(base, f"/api/v1/orders/{order['order_no']}", {"token": order["token"]})[1])["status"]


def servers(layout: str, start_server, config, env: dict) -> list[str]:
    if layout == "waitress":
        return [start_server(config, env=env)]
    if layout == "gunicorn":
        return [start_server(config, "--server", "gunicorn", env=env)]
    return [start_server(config, env=env), start_server(config, "--server", "gunicorn", env=env)]


@pytest.fixture
def shop(backend, make_install):
    cfg = make_install(backend)
    product = json.loads(run_cli("product", "create", "--name", "brute", "--price", "5.00", "--json",
                                 config=cfg.path, check=True).out)["id"]
    keys = "\n".join(f"B-{secrets.token_hex(8)}" for _ in range(5))
    run_cli("keys", "import", "--product", product, "-", config=cfg.path, input=keys.encode(), check=True)
    run_cli("channel", "add", "--type", "epay", "--code", "epay", "--option", "gateway=https://pay.example.com",
            "--option", f"pid={PID}", "--option", f"key={KEY}", config=cfg.path, check=True)
    return cfg, product


def limits_env(layout: str, redis_url: str, slot: int, *, fresh: bool = True) -> dict:
    env = {**BUSY_SCHEDULER, "KAMENGD_RATELIMIT_ENABLED": "1", "KAMENGD_RATELIMIT_ORDERS": "1000/minute",
           "KAMENGD_RATELIMIT_LOOKUPS": "1000/minute"}
    if layout != "waitress":   # several processes count together only through a shared store
        import redis

        url = f"{redis_url.rstrip('/')}/{slot}"
        if fresh:
            redis.Redis.from_url(url).flushdb()
        env["KAMENGD_RATELIMIT_STORAGE_URL"] = url
    return env


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_guessing_the_key_gets_429_and_never_a_delivery(backend, layout, shop, start_server, redis_url):
    cfg, product = shop
    slot = 8 + LAYOUTS.index(layout) + 3 * (backend != "sqlite")    # Redis databases 8-13: no other test's
    bases = servers(layout, start_server, cfg.path, limits_env(layout, redis_url, slot))
    paid, target = place(bases[0], product), place(bases[0], product)

    # A gateway's retries of a genuine callback: never limited, whatever their number.
    genuine = callback(paid["order_no"], KEY, f"GW{secrets.token_hex(6)}")
    retries = [call(bases[i % len(bases)], "/pay/epay/notify", genuine) for i in range(40)]
    assert retries == [(200, "success")] * 40
    assert status_of(bases[0], paid) == "delivered"

    # The brute force: every printable character, then every pair's first hundred, as the key.
    guesses = list(string.printable.strip()) + [a + b for a in "ab" for b in string.ascii_letters][:60]
    answers = [call(bases[i % len(bases)], "/pay/epay/notify",
                    callback(target["order_no"], guess, f"F{i}")) for i, guess in enumerate(guesses)]
    refused = [a for a in answers if a[0] == 200]
    limited = [a for a in answers if a[0] == 429]
    assert all(body == "fail" for _, body in refused), refused[:3]
    assert len(refused) + len(limited) == len(answers)
    # 20 a minute, counted by the layout's store; a window turning over mid-run allows 20 more.
    assert 20 <= len(refused) <= 40, (len(refused), len(limited))
    assert len(limited) >= len(guesses) - 40
    assert status_of(bases[0], target) == "pending"
    # The address is now limited for callbacks, good or bad, until the window has passed.
    assert call(bases[0], "/pay/epay/notify", callback(target["order_no"], KEY, "GW-late"))[0] == 429


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_gateways_own_addresses_are_never_limited(backend, layout, shop, start_server, redis_url):
    cfg, product = shop
    # Nothing is counted for these addresses: every such test may share Redis database 7.
    env = {**limits_env(layout, redis_url, 7, fresh=False), "KAMENGD_RATELIMIT_GATEWAY_ADDRESSES": "127.0.0.0/8"}
    bases = servers(layout, start_server, cfg.path, env)
    order = place(bases[0], product)
    answers = [call(bases[i % len(bases)], "/pay/epay/notify", callback(order["order_no"], f"wrong{i}", f"F{i}"))
               for i in range(60)]
    assert answers == [(200, "fail")] * 60
    assert call(bases[0], "/pay/epay/notify", callback(order["order_no"], KEY, "GW-real")) == (200, "success")
    assert status_of(bases[0], order) == "delivered"

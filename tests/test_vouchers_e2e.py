"""Vouchers end to end (W6): real servers in each layout, on SQLite and MariaDB.

A voucher product made by the CLI (`voucher terms`, `voucher generate`), a store and two
verifiers (`store add`, `user create --role verifier`, `store bind`): buyers buy codes through
every server; then both verifiers, each signed in through the panel's real sign-in form on a
different server, send every code from four threads at once: each code is redeemed exactly once,
every other attempt is refused as used up.
"""
from __future__ import annotations

import hashlib
from http.cookiejar import CookieJar
import json
import re
import threading
import urllib.error
import urllib.request
from urllib.parse import urlencode

import pytest

from conftest import install_shop, run_cli
from test_channel_stripe import http
from test_concurrency import start_layout

LAYOUTS = ("waitress", "gunicorn", "gunicorn+scheduler", "two-servers")
KEY = "voucher-e2e-merchant-key-0123456789"
PASSWORD = "verifier-e2e-password"


def sign_in(base: str, username: str):
    """A verifier through the panel's form: (an opener holding its session, its CSRF token)."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))

    def token(html: str) -> str:
        return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
    page = opener.open(f"{base}/admin/login", timeout=60).read().decode()
    form = urlencode({"csrf_token": token(page), "username": username, "password": PASSWORD}).encode()
    opener.open(urllib.request.Request(f"{base}/admin/login", data=form), timeout=60).read()
    landed = opener.open(f"{base}/admin/terminal", timeout=60)
    assert landed.geturl().endswith("/admin/terminal"), landed.geturl()
    return opener, token(landed.read().decode())


@pytest.mark.slow
@pytest.mark.layouts(*LAYOUTS)
def test_codes_bought_through_every_server_are_redeemed_once_by_racing_terminals(layout, backend, databases,
                                                                                  tmp_path, start_server):
    from kamengd.payments import epay

    config, pid, _keys = install_shop(backend, databases, tmp_path, product="咖啡券 voucher", price="15.00", keys=0,
                                      prefix="V")
    run_cli("voucher", "terms", pid, "--kind", "uses", "--uses", "1", "--entitlement", "一杯咖啡", config=config,
            check=True)
    run_cli("voucher", "generate", pid, "--count", "10", config=config, check=True)
    store = json.loads(run_cli("store", "add", "--name", "东店", "--json", config=config, check=True).out)["id"]
    (tmp_path / "vpw").write_text(PASSWORD + "\n")
    for name in ("till-a", "till-b"):
        run_cli("user", "create", "--username", name, "--role", "verifier", "--password-file", tmp_path / "vpw",
                config=config, check=True)
        run_cli("store", "bind", store, name, config=config, check=True)
    run_cli("channel", "add", "--type", "epay", "--code", "ep", "--option", "gateway=https://pay.example.com",
            "--option", "pid=1001", "--option", f"key={KEY}", config=config, check=True)
    bases = start_layout(layout, start_server, config)

    codes = []
    for i in range(6):
        base = bases[i % len(bases)]
        status, _, text = http("POST", f"{base}/api/v1/orders", {"product_id": pid, "quantity": 1,
                                                                 "email": f"v{i}@example.com", "channel": "ep"})
        placed = json.loads(text)
        assert status == 201, placed
        params = {"pid": "1001", "trade_no": f"T{placed['order_no']}", "out_trade_no": placed["order_no"],
                  "type": "alipay", "name": "x", "money": placed["amount"], "trade_status": "TRADE_SUCCESS"}
        params["sign"] = hashlib.md5((epay.signing_string(params) + KEY).encode()).hexdigest()
        assert http("GET", f"{bases[-1 - i % len(bases)]}/pay/ep/notify?{urlencode(params)}")[2] == "success"
        _, _, text = http("GET", f"{base}/api/v1/orders/{placed['order_no']}?token={placed['token']}")
        codes += json.loads(text)["keys"]
    assert len(codes) == 6

    tills = [sign_in(bases[0], "till-a"), sign_in(bases[-1], "till-b")]
    answers, lock = [], threading.Lock()
    barrier = threading.Barrier(8)

    def terminal(n):
        opener, token = tills[n % 2]
        barrier.wait()
        for code in (codes if n % 2 else list(reversed(codes))):
            request = urllib.request.Request(
                f"{bases[n % len(bases)]}/admin/terminal/redeem", method="POST",
                data=json.dumps({"store": store, "code": code}).encode(),
                headers={"Content-Type": "application/json", "Accept": "application/json", "X-CSRFToken": token})
            try:
                with opener.open(request, timeout=60) as resp:
                    status, body = resp.status, json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                status, body = exc.code, json.loads(exc.read())
            with lock:
                answers.append((code, status, body.get("refusal")))
    threads = [threading.Thread(target=terminal, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 8 * 6
    for code in codes:
        mine = [(status, refusal) for c, status, refusal in answers if c == code]
        assert sorted(mine, key=str) == sorted([(200, None)] + [(409, "used_up")] * 7, key=str), (code, mine)
    logs = start_server.stop_all()
    assert not any("Traceback" in log for log in logs.values()), logs

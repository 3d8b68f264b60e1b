"""Risk rules end to end (W5): real servers in each layout, on SQLite and MariaDB, rules made
with the CLI (each server reads them within seconds).

A listed domain is refused on every server; an order from a watched address is held when
paid (not delivered) until `kamengd risk approve` lets it go on; a captcha asked in the API's
answer is solved by the client (the altcha library, as a script would) and taken once.
"""
from __future__ import annotations

import base64
import hashlib
import json
import time
from urllib.parse import urlencode

import pytest

from conftest import install_shop, run_cli
from test_channel_stripe import http
from test_concurrency import start_layout

LAYOUTS = ("waitress", "gunicorn", "gunicorn+scheduler", "two-servers")
KEY = "risk-e2e-merchant-key-0123456789ab"


def place(base, pid, email, **extra):
    status, _, text = http("POST", f"{base}/api/v1/orders", {"product_id": pid, "quantity": 1, "email": email,
                                                           "channel": "ep", **extra})
    return status, json.loads(text)


def solve(challenge: dict) -> str:
    import altcha
    found = altcha.solve_challenge_v1(challenge["challenge"], challenge["salt"], challenge["algorithm"],
                                      challenge["maxNumber"])
    return base64.b64encode(json.dumps({"algorithm": challenge["algorithm"], "challenge": challenge["challenge"],
                                        "number": found.number, "salt": challenge["salt"],
                                        "signature": challenge["signature"]}).encode()).decode()


@pytest.mark.slow
@pytest.mark.layouts(*LAYOUTS)
def test_rules_refuse_hold_and_ask_for_a_captcha_on_every_server(layout, backend, databases, tmp_path,
                                                                  start_server):
    from kamengd.payments import epay

    config, pid, _ = install_shop(backend, databases, tmp_path, product="风控 risk", price="4.00", keys=20,
                                  prefix="RK")
    run_cli("channel", "add", "--type", "epay", "--code", "ep", "--option", "gateway=https://pay.example.com",
            "--option", "pid=1001", "--option", f"key={KEY}", config=config, check=True)
    bases = start_layout(layout, start_server, config)
    for base in bases:   # every server reads the (empty) rules now: the new ones within seconds
        assert place(base, pid, "warm@example.com")[0] == 201
    run_cli("risk", "rule", "add", "--name", "blocked domain", "--kind", "email_list", "--action", "refuse",
            "--domains", "spam.example", config=config, check=True)
    run_cli("risk", "rule", "add", "--name", "watched", "--kind", "email_list", "--action", "review",
            "--emails", "watch@example.com", config=config, check=True)
    run_cli("risk", "rule", "add", "--name", "check", "--kind", "email_list", "--action", "captcha",
            "--emails", "robot@example.com", config=config, check=True)
    from kamengd.risk.engine import RULES_TTL
    time.sleep(RULES_TTL + 0.5)   # every process (each gunicorn worker) has read them again by now
    for base in bases:
        assert place(base, pid, "x@spam.example")[0] == 403
        assert place(base, pid, "fine@example.com")[0] == 201

    status, held = place(bases[0], pid, "watch@example.com")
    assert status == 201
    params = {"pid": "1001", "trade_no": f"T{held['order_no']}", "out_trade_no": held["order_no"], "type": "alipay",
              "name": "x", "money": held["amount"], "trade_status": "TRADE_SUCCESS"}
    params["sign"] = hashlib.md5((epay.signing_string(params) + KEY).encode()).hexdigest()
    assert http("GET", f"{bases[-1]}/pay/ep/notify?{urlencode(params)}")[2] == "success"
    seen = json.loads(http("GET", f"{bases[0]}/api/v1/orders/{held['order_no']}?token={held['token']}")[2])
    assert seen["status"] == "held" and "keys" not in seen
    queue = json.loads(run_cli("risk", "queue", "--json", config=config, check=True).out)["orders"]
    assert [q["order_no"] for q in queue] == [held["order_no"]]
    run_cli("risk", "approve", held["order_no"], "--reason", "known buyer", config=config, check=True)
    seen = json.loads(http("GET", f"{bases[-1]}/api/v1/orders/{held['order_no']}?token={held['token']}")[2])
    assert seen["status"] == "delivered" and len(seen["keys"]) == 1

    status, asked = place(bases[-1], pid, "robot@example.com")
    assert status == 400 and asked["error"]["code"] == "captcha_required"
    solution = solve(asked["error"]["challenge"])
    assert place(bases[0], pid, "robot@example.com", captcha=solution)[0] == 201   # any server checks it
    again = place(bases[-1], pid, "robot@example.com", captcha=solution)
    assert again[1]["error"]["code"] == "captcha_required"                        # and takes it once
    report = json.loads(run_cli("risk", "report", "--json", config=config, check=True).out)["rules"]
    outcomes = {(r["rule"], r["outcome"]): r["decisions"] for r in report}
    assert outcomes[("watched", "review")] == 1 and outcomes[("check", "passed")] == 1
    assert outcomes[("blocked domain", "refuse")] >= len(bases)
    logs = start_server.stop_all()
    assert not any("Traceback" in log for log in logs.values()), logs

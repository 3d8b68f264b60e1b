"""An agent's balance under fire: real servers, real databases, in every supported layout.

One agent holds exactly enough for 20 orders. 50 orders race for it through
the signed agent API, each of the first ten sent twice at once with its
Idempotency-Key (a client retrying a request it thinks was lost): exactly 20
orders are delivered, their keys all different, each charged once; every
other answer is 402; the balance ends at 0.00, never below; `kamengd ledger
verify` finds the books in order. Layouts as in tests/test_concurrency.py.
"""
import hashlib
import hmac
import json
import secrets
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

import pytest

from conftest import run_cli
from test_concurrency import assert_clean_logs, setup_shop, start_layout, wait_for_leader

LAYOUTS = ("waitress", "gunicorn", "gunicorn+scheduler", "two-servers")
AFFORDABLE, ORDERS, RETRIED = 20, 50, 10


def signed_post(base, key_id, secret, path, body, idempotency_key=None):
    data = json.dumps(body).encode()
    timestamp, nonce = str(int(time.time())), secrets.token_hex(16)
    text = "\n".join(["POST", path, timestamp, nonce, hashlib.sha256(data).hexdigest()])
    request = urllib.request.Request(base + path, data=data, method="POST", headers={
        "X-Kamengd-Key": key_id, "X-Kamengd-Timestamp": timestamp, "X-Kamengd-Nonce": nonce,
        "X-Kamengd-Signature": hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest(),
        "Content-Type": "application/json", **({"Idempotency-Key": idempotency_key} if idempotency_key else {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.mark.slow
@pytest.mark.layouts(*LAYOUTS)
def test_one_balance_many_orders(layout, backend, databases, tmp_path, start_server):
    config, pid, keys = setup_shop(backend, databases, tmp_path)   # 100 keys at 1.00
    cli = lambda *args: json.loads(run_cli(*args, "--json", config=config, check=True).out)   # noqa: E731
    cli("agent", "level", "set", "--name", "base", "--discount", "0")
    cli("agent", "level", "set", "--name", "above", "--discount", "10")
    cli("agent", "create", "--username", "upline", "--level", "above")
    cli("agent", "create", "--username", "racer", "--level", "base", "--parent", "upline")
    cli("balance", "credit", "--username", "racer", "--amount", f"{AFFORDABLE}.00", "--reason", "float")
    key = cli("agent", "apikey", "--username", "racer")

    bases = start_layout(layout, start_server, config)
    wait_for_leader(bases[0])
    requests = [(n, f"race-{n:03d}") for n in range(ORDERS)] + [(n, f"race-{n:03d}") for n in range(RETRIED)]

    def order(i):
        n, idempotency_key = requests[i]
        return idempotency_key, *signed_post(bases[i % len(bases)], key["key_id"], key["secret"],
                                             "/api/v1/agent/orders", {"product_id": pid, "quantity": 1},
                                             idempotency_key)

    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        answers = list(pool.map(order, range(len(requests))))
    statuses = Counter(status for _key, status, _body in answers)
    assert set(statuses) <= {201, 402}, answers
    delivered = {body["order_no"]: (idem, tuple(body["keys"])) for idem, status, body in answers if status == 201}
    assert len(delivered) == AFFORDABLE, statuses
    by_key = Counter(idem for idem, _keys in delivered.values())
    assert max(by_key.values()) == 1           # a retried request never made a second order
    sold = [k for _idem, ks in delivered.values() for k in ks]
    assert len(sold) == len(set(sold)) == AFFORDABLE and set(sold) <= set(keys)
    assert cli("balance", "show", "--username", "racer")["balance"] == "0.00"
    # The agent above earned 0.10 on each delivered order, once (retries included).
    assert cli("balance", "show", "--username", "upline")["pending"] == "2.00"
    assert cli("ledger", "verify")["ok"] is True
    assert_clean_logs(start_server)


WITHDRAWALS, FLOAT, EACH = 20, "100.00", "15.00"


@pytest.mark.slow
@pytest.mark.layouts(*LAYOUTS)
def test_twenty_withdrawals_against_one_balance(layout, backend, databases, tmp_path, start_server):
    """20 withdrawal requests of 15.00 at once against 100.00: six are held (90.00), every
    other one is refused with 402 and holds nothing; the books add up."""
    config, _pid, _keys = setup_shop(backend, databases, tmp_path)
    cli = lambda *args: json.loads(run_cli(*args, "--json", config=config, check=True).out)   # noqa: E731
    cli("agent", "level", "set", "--name", "base", "--discount", "0")
    cli("agent", "create", "--username", "payee", "--level", "base")
    cli("balance", "credit", "--username", "payee", "--amount", FLOAT, "--reason", "commission earned")
    key = cli("agent", "apikey", "--username", "payee")
    bases = start_layout(layout, start_server, config)
    wait_for_leader(bases[0])
    status, account = signed_post(bases[0], key["key_id"], key["secret"], "/api/v1/agent/payout-accounts",
                                  {"kind": "alipay", "account": "13800138000", "holder": "张三"})
    assert status == 201, account

    def withdraw(i):
        return signed_post(bases[i % len(bases)], key["key_id"], key["secret"], "/api/v1/agent/withdrawals",
                           {"payout_account_id": account["id"], "amount": EACH})

    with ThreadPoolExecutor(max_workers=WITHDRAWALS) as pool:
        answers = list(pool.map(withdraw, range(WITHDRAWALS)))
    statuses = Counter(status for status, _body in answers)
    assert statuses == {201: 6, 402: 14}, answers
    shown = cli("balance", "show", "--username", "payee")
    assert (shown["balance"], shown["held"]) == ("10.00", "90.00")
    listed = cli("withdrawal", "list", "--username", "payee")["withdrawals"]
    assert sorted(w["status"] for w in listed) == ["requested"] * 6
    # Finance pays one and rejects one: the held money leaves once, or comes back once.
    cli("withdrawal", "pay", "--id", str(listed[0]["id"]), "--reference", "ALI-2026-0001")
    cli("withdrawal", "reject", "--id", str(listed[1]["id"]), "--reason", "name does not match")
    assert run_cli("withdrawal", "pay", "--id", str(listed[0]["id"]), "--reference", "again", config=config).returncode != 0
    shown = cli("balance", "show", "--username", "payee")
    assert (shown["balance"], shown["held"]) == ("25.00", "60.00")
    assert cli("ledger", "verify")["ok"] is True
    assert_clean_logs(start_server)


SOLD, CALLS_EACH = 12, 4


@pytest.mark.slow
@pytest.mark.layouts(*LAYOUTS)
def test_a_stations_sales_earn_once_whatever_the_callbacks(layout, backend, databases, tmp_path, start_server):
    """Buyers order on an agent's sub-station (/s/<agent>); every order's Epay callback then
    arrives four times at once, spread over the servers. Each order is delivered once and
    earns its seller and the agent above it once: the seller 1.00 − 0.80, the upline
    0.80 − 0.70 a unit; the books add up."""
    from test_concurrency import callback_params, http

    config, pid, _keys = setup_shop(backend, databases, tmp_path)   # keys at 1.00
    cli = lambda *args: json.loads(run_cli(*args, "--json", config=config, check=True).out)   # noqa: E731
    cli("agent", "level", "set", "--name", "seller", "--discount", "20")
    cli("agent", "level", "set", "--name", "above", "--discount", "30")
    cli("agent", "create", "--username", "upline", "--level", "above")
    cli("agent", "create", "--username", "shopkeeper", "--level", "seller", "--parent", "upline")
    bases = start_layout(layout, start_server, config)
    wait_for_leader(bases[0])

    def buy(i):
        return http("POST", f"{bases[i % len(bases)]}/s/shopkeeper/api/v1/orders",
                    {"product_id": pid, "quantity": 1, "email": f"s{i}@example.com", "channel": "epay"})

    with ThreadPoolExecutor(max_workers=SOLD) as pool:
        placed = [json.loads(body) for status, body in pool.map(buy, range(SOLD)) if status == 201]
    assert len(placed) == SOLD
    calls = [(o["order_no"], bases[n % len(bases)]) for o in placed for n in range(CALLS_EACH)]

    def pay(call):
        order_no, base = call
        return http("GET", f"{base}/pay/epay/notify?{urlencode(callback_params(order_no))}")

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        answers = list(pool.map(pay, calls))
    assert all(answer == (200, "success") for answer in answers), Counter(answers)
    for o in placed:
        status, body = http("GET", f"{bases[0]}/api/v1/orders/{o['order_no']}?token={o['token']}")
        assert status == 200 and json.loads(body)["status"] == "delivered", body
    cents = lambda n: f"{n // 100}.{n % 100:02d}"   # noqa: E731
    assert cli("balance", "show", "--username", "shopkeeper")["pending"] == cents(SOLD * 20)
    assert cli("balance", "show", "--username", "upline")["pending"] == cents(SOLD * 10)
    assert cli("ledger", "verify")["ok"] is True
    assert_clean_logs(start_server)


REFUNDED, RELEASERS = 8, 3


@pytest.mark.slow
@pytest.mark.layouts(*LAYOUTS)
def test_refunds_racing_the_hold_job_reverse_each_commission_once(layout, backend, databases, tmp_path,
                                                                   start_server):
    """With no hold, eight delivered agent orders are refunded (`kamengd order refund`, one
    process each) while three `kamengd run-job release_commissions` run at the same moment, the
    servers' schedulers running too: each commission is reversed once, from pending or from
    available, never both and never neither; the upline ends at zero with no debt, the buyer's
    money is back, and the books add up."""
    import subprocess
    import sys

    config, pid, _keys = setup_shop(backend, databases, tmp_path)   # keys at 1.00
    cli = lambda *args: json.loads(run_cli(*args, "--json", config=config, check=True).out)   # noqa: E731
    cli("setting", "set", "agents.commission_hold_days", "0")
    cli("agent", "level", "set", "--name", "base", "--discount", "0")
    cli("agent", "level", "set", "--name", "above", "--discount", "10")
    cli("agent", "create", "--username", "upline", "--level", "above")
    cli("agent", "create", "--username", "buyer", "--level", "base", "--parent", "upline")
    cli("balance", "credit", "--username", "buyer", "--amount", "20.00", "--reason", "float")
    key = cli("agent", "apikey", "--username", "buyer")
    bases = start_layout(layout, start_server, config)
    wait_for_leader(bases[0])
    placed = []
    for n in range(REFUNDED):
        status, body = signed_post(bases[n % len(bases)], key["key_id"], key["secret"], "/api/v1/agent/orders",
                                   {"product_id": pid, "quantity": 1}, f"refund-race-{n}")
        assert status == 201 and body["status"] == "delivered", body
        placed.append(body["order_no"])
    # Some may be available already: the servers' schedulers release too, whenever they run.
    shown = cli("balance", "show", "--username", "upline")
    cents = lambda text: int(text.replace(".", ""))   # noqa: E731  ("0.80" -> 80)
    assert cents(shown["pending"]) + cents(shown["balance"]) == 80, shown

    base_cmd = [sys.executable, "-m", "kamengd", "--config", str(config)]
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("KAMENGD_")}
    commands = [base_cmd + ["order", "refund", order_no, "--reason", "race"] for order_no in placed]
    commands[REFUNDED // 2:REFUNDED // 2] = [base_cmd + ["run-job", "release_commissions"]] * RELEASERS

    def run(cmd):
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)

    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        done = list(pool.map(run, commands))
    assert all(p.returncode == 0 for p in done), [p.stderr for p in done if p.returncode]
    upline = cli("balance", "show", "--username", "upline")
    assert (upline["balance"], upline["pending"], upline["debt"]) == ("0.00", "0.00", "0.00"), upline
    assert cli("balance", "show", "--username", "buyer")["balance"] == "20.00"
    assert cli("ledger", "verify")["ok"] is True
    assert_clean_logs(start_server)


@pytest.mark.slow
@pytest.mark.layouts(*LAYOUTS)
def test_one_request_twenty_times_at_once_and_one_batch_five_times(layout, backend, databases, tmp_path,
                                                                    start_server):
    """The same signed order (one Idempotency-Key, fresh nonces) sent 20 times at once: one
    order, one charge, twenty answers naming it. The same batch of 6 lines sent 5 times at
    once: each line placed once, every answer the same lines."""
    config, pid, keys = setup_shop(backend, databases, tmp_path)   # 100 keys at 1.00
    cli = lambda *args: json.loads(run_cli(*args, "--json", config=config, check=True).out)   # noqa: E731
    cli("agent", "level", "set", "--name", "base", "--discount", "0")
    cli("agent", "create", "--username", "twin", "--level", "base")
    cli("balance", "credit", "--username", "twin", "--amount", "50.00", "--reason", "float")
    key = cli("agent", "apikey", "--username", "twin", "--scope", "order")
    bases = start_layout(layout, start_server, config)
    wait_for_leader(bases[0])

    def order(i):
        return signed_post(bases[i % len(bases)], key["key_id"], key["secret"], "/api/v1/agent/orders",
                           {"product_id": pid, "quantity": 2}, "the-same-order")

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(order, range(20)))
    assert {status for status, _body in answers} == {201}, answers
    assert len({body["order_no"] for _s, body in answers}) == 1
    assert len({tuple(body["keys"]) for _s, body in answers}) == 1
    assert cli("balance", "show", "--username", "twin")["balance"] == "48.00"

    lines = [{"product_id": pid, "quantity": 1, "ref": f"L{n}"} for n in range(6)]

    def batch(i):
        return signed_post(bases[i % len(bases)], key["key_id"], key["secret"], "/api/v1/agent/orders/batch",
                           {"lines": lines}, "the-same-batch")

    with ThreadPoolExecutor(max_workers=5) as pool:
        batches = list(pool.map(batch, range(5)))
    assert {status for status, _body in batches} == {201}, batches
    finished = [body for _s, body in batches if body["finished"]]
    assert finished, batches
    placed = {line["order"]["order_no"] for body in finished for line in body["lines"] if line["result"] == "ok"}
    assert len(placed) == 6 and all(body["placed"] == 6 for body in finished)
    sold = [k for body in finished[:1] for line in body["lines"] for k in line["order"]["keys"]]
    assert len(set(sold)) == 6 and set(sold) <= set(keys)
    assert cli("balance", "show", "--username", "twin")["balance"] == "42.00"
    assert cli("ledger", "verify")["ok"] is True
    assert_clean_logs(start_server)

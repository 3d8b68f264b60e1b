"""The Epusdt / BEpusdt channel end to end (W4): a real kamengd server, and a local Epusdt (or
BEpusdt) in its own process (tests/fake_gateways/epusdt_server.py) that checks kamengd's MD5
signatures with the API token made for the test, prices in USDT at a fixed rate of 7.2, and
signs its callbacks as the Go servers do. On SQLite and MariaDB."""
from __future__ import annotations

import datetime as dt
import json
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conftest import assert_one_line_error, free_port, install_shop, run_cli
from test_channel_stripe import http, place, view
from test_concurrency import BUSY_SCHEDULER, start_layout

FAKE = Path(__file__).parent / "fake_gateways" / "epusdt_server.py"
LAYOUTS = ("waitress", "gunicorn", "gunicorn+scheduler", "two-servers")
WALLET = "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t"


class FakeEpusdt:
    def __init__(self, flavour: str = "epusdt"):
        self.token = f"epusdt_{secrets.token_urlsafe(24)}"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, str(FAKE), str(self.port), self.token, flavour],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def call(self, path: str, payload: dict | None = None):
        data = json.dumps(payload).encode() if payload is not None else None
        with urllib.request.urlopen(urllib.request.Request(self.base + path, data=data), timeout=60) as resp:
            return json.loads(resp.read())

    def pay(self, order_no: str, **ask) -> dict:
        return self.call("/_test/pay", {"order_id": order_no, **ask})

    def state(self) -> dict:
        return self.call("/_test/state")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def flavour():
    return "epusdt"


@pytest.fixture
def shop(backend, databases, tmp_path, flavour):
    config, pid, keys = install_shop(backend, databases, tmp_path, product="USDT 月卡", price="8.80",
                                     keys=20, prefix="USDT")
    fake = FakeEpusdt(flavour)
    extra = ["--option", "trade_type=usdt.trc20"] if flavour == "bepusdt" else []
    run_cli("channel", "add", "--type", "epusdt", "--code", "usdt", "--name", "USDT (TRC20)",
            "--option", f"api_base={fake.base}", "--option", f"token={fake.token}", *extra,
            config=config, check=True)
    yield config, pid, keys, fake
    fake.stop()


def pay_page(base: str, order: dict) -> str:
    url = urlsplit(order["pay_url"])
    assert url.path == "/pay/usdt/start"
    status, _, page = http("GET", base + url.path + "?" + url.query + "&lang=en")
    assert status == 200, page
    return page


@pytest.mark.slow
@pytest.mark.layouts(*LAYOUTS)
def test_a_usdt_payment_end_to_end(layout, shop, start_server):
    """Each layout as deployed: the pay page shows the exact USDT amount, the wallet (as a QR
    code) and the rate; Epusdt's callback (and its retries, to any server) delivers once."""
    config, pid, keys, fake = shop
    bases = start_layout(layout, start_server, config)
    run_cli("setting", "set", "site.url", bases[0], config=config, check=True)   # Epusdt calls site.url
    base = bases[-1]
    order = place(base, pid, quantity=2, channel="usdt")
    assert order["amount"] == "17.60"
    page = pay_page(base, order)
    # 17.60 CNY at 7.2 = 2.44444…: 2.4444 USDT (Epusdt's %.4f); the rate 17.60 / 2.4444.
    assert "<svg" in page and "17.60 CNY" in page and 'data-seconds-left="' in page
    assert "Send exactly" in page and "2.4444 USDT (TRC20)" in page and WALLET in page
    assert "1 USDT = 7.2001 CNY" in page and f"{fake.base}/pay/checkout-counter/" in page
    assert pay_page(bases[0], order).count("<svg") == 1   # a reload: the same trade, not a second one
    assert fake.state()["calls"].count("create-transaction") == 1
    trade = fake.state()["trades"][order["order_no"]]
    assert trade["fiat"] == "17.6" and trade["actual"] == "2.4444"
    assert trade["notify_url"] == f"{bases[0]}/pay/usdt/notify" and trade["timeout"] >= 60
    # Another order of the same amount to the same wallet: Epusdt makes it 0.0001 more.
    second = place(base, pid, quantity=2, channel="usdt")
    assert "2.4445 USDT (TRC20)" in pay_page(base, second)

    answer = fake.pay(order["order_no"], times=2)
    assert answer["answers"] == [[200, "ok"], [200, "ok"]], answer
    for target in bases[1:]:   # Epusdt's retry reaching another server
        assert fake.pay(order["order_no"], notify=f"{target}/pay/usdt/notify")["answers"] == [[200, "ok"]]
    shown = view(base, order)
    assert shown["status"] == "delivered" and len(shown["keys"]) == 2 and set(shown["keys"]) <= set(keys)
    status, headers, _ = http("GET", base + urlsplit(order["pay_url"]).path + "?" + urlsplit(order["pay_url"]).query)
    assert status == 303 and f"/order/{order['order_no']}" in headers["Location"]
    raw = payment_raw(config, order["order_no"])
    assert (raw["actual_amount"], raw["rate"], raw["token"], raw["amount"]) == ("2.4444", "7.2001", WALLET, "17.6")
    assert len(raw["block_transaction_id"]) == 64 and raw["channel_type"] == "epusdt"
    logs = start_server.stop_all()
    assert not any("Traceback" in log for log in logs.values()), logs


def payment_raw(config, order_no: str) -> dict:
    import sqlalchemy as sa

    from kamengd.app import create_app
    from kamengd.config import load_config
    from kamengd.extensions import db
    from kamengd.orders.models import Order
    from kamengd.payments.models import Payment

    app = create_app(load_config(config, env={}))
    with app.app_context():
        raws = db.session.scalars(sa.select(Payment.raw).join(Order, Order.id == Payment.order_id)
                                  .where(Order.order_no == order_no)).all()
        db.session.remove()
    assert len(raws) == 1, raws
    return json.loads(raws[0])


@pytest.fixture
def served(shop, start_server):
    config, pid, keys, fake = shop
    # As deployed, its scheduler running (its jobs may reconcile before a test's run-job).
    base = start_server(config, env=BUSY_SCHEDULER)
    run_cli("setting", "set", "site.url", base, config=config, check=True)
    return config, pid, keys, base, fake


def notify(base: str, body: bytes) -> tuple[int, str]:
    """A callback's body POSTed as the gateway does: (HTTP status, answer)."""
    request = urllib.request.Request(f"{base}/pay/usdt/notify", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.parametrize("forgery", ["other token", "unsigned", "tampered amount", "not JSON", "a JSON list",
                                     "not UTF-8", "a nested value", "NaN"])
def test_a_forged_or_malformed_callback_changes_nothing(served, forgery):
    config, pid, keys, base, fake = served
    order = place(base, pid, channel="usdt")
    pay_page(base, order)
    ask = {"other token": {"token": f"epusdt_{secrets.token_urlsafe(24)}"}, "unsigned": {"unsigned": True},
           "tampered amount": {"tamper": "0.01"}}.get(forgery)
    if ask is not None:
        assert fake.pay(order["order_no"], **ask)["answers"] == [[200, "fail"]]
    else:
        genuine = json.loads(fake.pay(order["order_no"], deliver=False)["body"])
        body = {"not JSON": b"trade_id=1&status=2", "a JSON list": json.dumps([genuine]).encode(),
                "not UTF-8": b'{"order_id": "\xff\xfe"}',
                "a nested value": json.dumps({**genuine, "amount": {"v": 8.8}}).encode(),
                "NaN": json.dumps(genuine).replace('"status": 2', '"status": NaN').encode()}[forgery]
        assert notify(base, body) == (200, "fail")
    assert view(base, order)["status"] == "pending"


@pytest.mark.parametrize("case", ["wrong amount", "waiting", "expired", "another shop's order"])
def test_what_the_callback_says_is_obeyed(served, case):
    config, pid, keys, base, fake = served
    order = place(base, pid, channel="usdt")
    pay_page(base, order)
    if case == "another shop's order":   # signed by our gateway, for an order number we never had
        genuine = json.loads(fake.pay(order["order_no"], deliver=False)["body"])
        assert genuine["signature"]
        other = {**genuine, "order_id": "K" + "9" * 20}
        sys.path.insert(0, str(FAKE.parent))
        from epusdt_server import go_signature

        other["signature"] = go_signature(other, fake.token, skip_empty=False)
        assert notify(base, json.dumps(other).encode()) == (200, "fail")
        assert view(base, order)["status"] == "pending"
        return
    ask = {"wrong amount": {"amount": "8.79"}, "waiting": {"status": 1}, "expired": {"status": 3}}[case]
    assert fake.pay(order["order_no"], **ask)["answers"] == [[200, "ok"]]   # genuine: acknowledged
    shown = view(base, order)
    assert shown["status"] == ("held" if case == "wrong amount" else "pending") and "keys" not in shown


def test_an_order_in_another_currency_is_refused_when_placed(served):
    """The gateway prices in CNY (the channel's `currency`): a USD order is refused when it is
    placed (routing knows the channel's currency), nothing written, never sent to the gateway."""
    config, pid, keys, base, fake = served
    usd = json.loads(run_cli("product", "create", "--name", "USD card", "--price", "3.00", "--currency", "USD",
                             "--json", config=config, check=True).out)["id"]
    run_cli("keys", "import", "--product", usd, "-", config=config, input=b"USD-KEY-1\n", check=True)
    status, _, body = http("POST", f"{base}/api/v1/orders", {"product_id": usd, "quantity": 1,
                                                             "email": "usdt@example.com", "channel": "usdt"})
    assert status == 400 and "not in USD" in json.loads(body)["error"]["message"]
    orders = json.loads(run_cli("order", "list", "--product", str(usd), "--json", config=config, check=True).out)
    assert orders["orders"] == [] and "create-transaction" not in fake.state()["calls"]


def test_concurrent_copies_of_one_callback_deliver_once(served):
    config, pid, keys, base, fake = served
    order = place(base, pid, channel="usdt")
    pay_page(base, order)
    body = fake.pay(order["order_no"], deliver=False)["body"].encode()
    with ThreadPoolExecutor(10) as pool:
        assert set(pool.map(lambda _: notify(base, body), range(10))) == {(200, "ok")}
    shown = view(base, order)
    assert shown["status"] == "delivered" and len(shown["keys"]) == 1
    detail = json.loads(run_cli("order", "show", order["order_no"], "--json", config=config, check=True).out)
    assert len(detail["payments"]) == 1 and detail["payments"][0]["trade_no"] == json.loads(body)["trade_id"]


def backdate(config, *order_nos: str) -> None:
    """Orders placed two minutes ago, as far as reconciliation is concerned (it waits a minute)."""
    import sqlalchemy as sa

    from kamengd.app import create_app
    from kamengd.config import load_config
    from kamengd.extensions import db
    from kamengd.orders.models import Order

    app = create_app(load_config(config, env={}))
    with app.app_context():
        for order_no in order_nos:
            order = db.session.scalars(sa.select(Order).where(Order.order_no == order_no)).one()
            order.created_at -= dt.timedelta(minutes=2)
        db.session.commit()
        db.session.remove()


@pytest.mark.parametrize("flavour", ["epusdt", "bepusdt"])
def test_a_dropped_callback_is_reconciled(served, flavour):
    """The callback never comes: `kamengd run-job reconcile_payments` asks the gateway's
    check-status (each flavour's answer) and delivers the paid order once, at the amount the
    trade was created for; the unpaid one stays pending; the late callback changes nothing."""
    config, pid, keys, base, fake = served
    unpaid = place(base, pid, channel="usdt")
    pay_page(base, unpaid)
    order = place(base, pid, channel="usdt")
    pay_page(base, order)
    assert fake.pay(order["order_no"], deliver=False)["delivered"] is False
    backdate(config, unpaid["order_no"], order["order_no"])
    ran = json.loads(run_cli("run-job", "reconcile_payments", "--json", config=config, check=True).out)
    assert ran["counts"]["completed"] <= 1 and ran["counts"]["errors"] == 0, ran   # (the scheduler may be first)
    assert fake.state()["calls"].count("check-status") >= 2
    assert view(base, order)["status"] == "delivered" and view(base, unpaid)["status"] == "pending"
    assert fake.pay(order["order_no"])["answers"] == [[200, "ok"]]   # the late one: nothing more
    detail = json.loads(run_cli("order", "show", order["order_no"], "--json", config=config, check=True).out)
    assert [p["amount"] for p in detail["payments"]] == ["8.80"] and len(view(base, order)["keys"]) == 1


def test_epusdt_down_and_a_second_visit(served):
    config, pid, keys, base, fake = served
    order = place(base, pid, channel="usdt")
    fake.call("/_test/fail_creates", {"count": 1})
    url = urlsplit(order["pay_url"])
    status, _, page = http("GET", base + url.path + "?" + url.query)
    assert status == 503 and "支付通道暂时没有响应" in page
    assert "<svg" in pay_page(base, order)   # the next visit works
    assert fake.pay(order["order_no"])["answers"] == [[200, "ok"]]
    assert view(base, order)["status"] == "delivered"


def test_no_refund_through_epusdt_and_a_bad_set_up(served):
    """A crypto payment cannot be given back through the gateway: refused in one line, nothing
    changes; the order is then refunded by hand. Bad options are refused in one line, and the
    token is never listed."""
    config, pid, keys, base, fake = served
    order = place(base, pid, channel="usdt")
    pay_page(base, order)
    assert fake.pay(order["order_no"])["answers"] == [[200, "ok"]]
    refused = run_cli("order", "refund", order["order_no"], "--reason", "x", "--through-channel", config=config)
    assert_one_line_error(refused, "cannot give money back")
    assert view(base, order)["status"] == "delivered"
    done = run_cli("order", "refund", order["order_no"], "--reason", "sent back from the wallet", "--json",
                   config=config, check=True)
    assert json.loads(done.out)["status"] == "refunded"

    for option, value in [("api_base", "ftp://epusdt.example.com"), ("token", "short"), ("currency", "usd"),
                          ("trade_type", "USDT TRC20")]:
        options = {"api_base": fake.base, "token": fake.token, option: value}
        refused = run_cli("channel", "add", "--type", "epusdt", "--code", "usdt2",
                          *[a for k, v in options.items() for a in ("--option", f"{k}={v}")], config=config)
        assert_one_line_error(refused, option)
    listing = run_cli("channel", "list", "--json", config=config, check=True).out
    assert fake.token not in listing and "usdt2" not in listing


def test_the_panel_adds_and_tests_an_epusdt_channel(app, client):
    """The channel form takes Epusdt's fields (the token write-only); Test signs a request the
    gateway must check (an order without an amount: nothing is created) and says whether the
    token is the gateway's."""
    import re

    import sqlalchemy as sa

    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.payments import services as payments
    from kamengd.payments.models import PaymentChannel
    from kamengd.payments.services import channel_secrets
    from panel_support import login, make_staff

    fake = FakeEpusdt()
    try:
        client.set_cookie("lang", "en")
        login(client, make_staff(app, "admin"))
        csrf = lambda html: re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)   # noqa: E731
        form = client.get("/admin/channels/new?type=epusdt").get_data(as_text=True)
        assert 'name="token" type="password"' in form and 'name="trade_type"' in form and 'name="currency"' in form
        code = f"u{secrets.token_hex(3)}"
        added = client.post("/admin/channels/new", data={
            "csrf_token": csrf(form), "type": "epusdt", "code": code, "name": "USDT", "sort_order": "1",
            "api_base": fake.base, "token": fake.token, "trade_type": "", "currency": ""})
        assert added.status_code == 303, added.get_data(as_text=True)
        with app.app_context():
            channel = db.session.scalars(sa.select(PaymentChannel).where(PaymentChannel.code == code)).one()
            channel_id = channel.id
            assert channel_secrets(get_vault(), channel) == {"token": fake.token}
        edit = client.get(f"/admin/channels/{channel_id}").get_data(as_text=True)
        assert fake.token not in edit and fake.base in edit
        listing = client.get("/admin/channels").get_data(as_text=True)
        tested = client.post(f"/admin/channels/{channel_id}/test", data={"csrf_token": csrf(listing)},
                             follow_redirects=True).get_data(as_text=True)
        assert "Epusdt accepts the API token" in tested
        assert fake.state()["trades"] == {}   # the probe created nothing
        with app.app_context():   # another token (entered with the address, as moving it needs)
            channel = db.session.get(PaymentChannel, channel_id)
            payments.update_channel(db.session, get_vault(), channel, name="USDT", sort_order=1, actor="t",
                                    options={"api_base": fake.base, "token": f"wrong_{secrets.token_urlsafe(20)}"})
            db.session.commit()
            db.session.remove()
        tested = client.post(f"/admin/channels/{channel_id}/test", data={"csrf_token": csrf(listing)},
                             follow_redirects=True).get_data(as_text=True)
        assert "API token is not the gateway" in tested
    finally:
        fake.stop()


def test_the_documented_signature():
    """Epusdt's documented example (wiki/API.md, BEpusdt docs/api.md) signs as documented."""
    from kamengd.payments.gateways.epusdt import amount_number, go_number, sign

    fields = {"order_id": "20220201030210321", "amount": "42", "notify_url": "http://example.com/notify",
              "redirect_url": "http://example.com/redirect"}
    assert sign(fields, "epusdt_password_xasddawqe") == "1cd4b52df5587cfb1968b0c0c6e156cd"
    assert sign({**fields, "trade_type": ""}, "epusdt_password_xasddawqe") == "1cd4b52df5587cfb1968b0c0c6e156cd"
    assert [go_number(v) for v in (42.0, 28.8, 2, 0.00001)] == ["42", "28.8", "2", "0.00001"]
    assert [amount_number(c) for c in (4200, 2880, 2888, 1)] == ["42", "28.8", "28.88", "0.01"]

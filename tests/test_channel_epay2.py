"""The 彩虹易支付 V2 channel end to end (W4): a real kamengd server, and a local V2 platform in
its own process (tests/fake_gateways/epay2_server.py) that checks kamengd's RSA signatures with
the merchant's public key and signs its answers and notifications with its own private key;
both key pairs made for the test. On SQLite and MariaDB."""
from __future__ import annotations

import datetime as dt
import json
import secrets
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest

from conftest import assert_one_line_error, free_port, install_shop, run_cli
from test_channel_alipay import _pair, bare
from test_channel_stripe import http, view
from test_concurrency import BUSY_SCHEDULER, start_layout

FAKE = Path(__file__).parent / "fake_gateways" / "epay2_server.py"
LAYOUTS = ("waitress", "gunicorn", "gunicorn+scheduler", "two-servers")
PID = "1032"


class FakeEpay2:
    def __init__(self, tmp: Path):
        self.merchant_private, merchant_public = _pair()
        platform_private, self.platform_public = _pair()
        (tmp / "merchant.pub").write_text(merchant_public)
        (tmp / "platform.key").write_text(platform_private)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/"
        self.proc = subprocess.Popen([sys.executable, str(FAKE), str(self.port), PID, str(tmp / "merchant.pub"),
                                      str(tmp / "platform.key")], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def call(self, path: str, payload: dict | None = None):
        data = json.dumps(payload).encode() if payload is not None else None
        with urllib.request.urlopen(urllib.request.Request(self.base + path.lstrip("/"), data=data),
                                    timeout=60) as resp:
            return json.loads(resp.read())

    def pay(self, order_no: str, **ask) -> dict:
        return self.call("/_test/pay", {"out_trade_no": order_no, **ask})

    def state(self) -> dict:
        return self.call("/_test/state")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def shop(backend, databases, tmp_path):
    config, pid, keys = install_shop(backend, databases, tmp_path, product="易支付月卡", price="8.80",
                                     keys=20, prefix="EP2")
    fake = FakeEpay2(tmp_path)
    # The merchant's key as a PEM file gives it; the platform's as its API page shows it.
    run_cli("channel", "add", "--type", "epay2", "--code", "epay2", "--name", "彩虹易支付",
            "--option", f"gateway={fake.base}", "--option", f"pid={PID}",
            "--option", f"merchant_private_key={fake.merchant_private}",
            "--option", f"platform_public_key={bare(fake.platform_public)}",
            "--option", "pay_types=alipay,wxpay", config=config, check=True)
    yield config, pid, keys, fake
    fake.stop()


def place(base: str, pid: int, quantity: int = 1, pay_type: str | None = None) -> dict:
    status, _, body = http("POST", f"{base}/api/v1/orders", {
        "product_id": pid, "quantity": quantity, "email": "epay@example.com", "channel": "epay2",
        **({"pay_type": pay_type} if pay_type else {})})
    assert status == 201, body
    return json.loads(body)


def start(base: str, order: dict):
    url = urlsplit(order["pay_url"])
    assert url.path == "/pay/epay2/start"
    return http("GET", base + url.path + "?" + url.query)


def qr_page(base: str, order: dict) -> str:
    status, _, page = start(base, order)
    assert status == 200, page
    return page


@pytest.mark.slow
@pytest.mark.layouts(*LAYOUTS)
def test_scan_and_pay_end_to_end(layout, shop, start_server):
    """The buyer picks WeChat Pay among the channel's methods; the pay page shows the platform's
    QR code (one trade however often it is opened); the platform's notification, and its
    retries to every server, deliver the keys once."""
    config, pid, keys, fake = shop
    bases = start_layout(layout, start_server, config)
    run_cli("setting", "set", "site.url", bases[0], config=config, check=True)   # the platform notifies site.url
    base = bases[-1]
    methods = json.loads(http("GET", f"{base}/api/v1/payment-methods")[2])["methods"]
    assert [(m["channel"], m["pay_type"]) for m in methods] == [("epay2", "alipay"), ("epay2", "wxpay")]
    order = place(base, pid, quantity=2, pay_type="wxpay")
    assert order["amount"] == "17.60"
    page = qr_page(base, order)
    assert "<svg" in page and "17.60 CNY" in page and 'data-seconds-left="' in page
    assert qr_page(bases[0], order).count("<svg") == 1   # a reload: the same trade, not a second one
    state = fake.state()
    trade = state["orders"][order["order_no"]]
    assert (trade["money"], trade["type"], trade["method"], trade["device"]) == ("17.60", "wxpay", "web", "pc")
    assert trade["notify_url"] == f"{bases[0]}/pay/epay2/notify" and trade["clientip"] == "127.0.0.1"
    assert state["calls"].count("api/pay/create") == 1
    assert all("timestamp" in r and r["pid"] == PID and r["sign_type"] == "RSA" for r in state["requests"])

    answer = fake.pay(order["order_no"], times=2)
    assert answer["answers"] == [[200, "success"], [200, "success"]], answer
    for target in bases[1:]:   # the platform's retry reaching another server
        assert fake.pay(order["order_no"], notify=f"{target}/pay/epay2/notify")["answers"] == [[200, "success"]]
    shown = view(base, order)
    assert shown["status"] == "delivered" and len(shown["keys"]) == 2 and set(shown["keys"]) <= set(keys)
    status, headers, _ = start(base, order)
    assert status == 303 and f"/order/{order['order_no']}" in headers["Location"]
    logs = start_server.stop_all()
    assert not any("Traceback" in log for log in logs.values()), logs


@pytest.fixture
def served(shop, start_server):
    """The shop served as deployed, its scheduler running (its jobs may reconcile before a test's run-job)."""
    config, pid, keys, fake = shop
    base = start_server(config, env=BUSY_SCHEDULER)
    run_cli("setting", "set", "site.url", base, config=config, check=True)
    return config, pid, keys, base, fake


def test_what_the_platform_answers_decides_the_page(served):
    """`jump` sends the buyer to the platform; `urlscheme` is a QR code with the link; `html`
    (a third party's page in this shop's) is refused: the buyer is told, the order stays payable."""
    config, pid, keys, base, fake = served
    fake.call("/_test/config", {"pay_type": "jump"})
    order = place(base, pid)
    status, headers, _ = start(base, order)
    trade_no = fake.state()["orders"][order["order_no"]]["trade_no"]
    assert status == 303 and headers["Location"] == f"{fake.base}pay/{trade_no}"
    fake.call("/_test/config", {"pay_type": "urlscheme"})
    long_name = json.loads(run_cli("product", "create", "--name", "长" * 60, "--price", "1.00", "--json",
                                   config=config, check=True).out)["id"]
    run_cli("keys", "import", "--product", long_name, "-", config=config, input=b"LONG-KEY-1\n", check=True)
    scheme = place(base, long_name, pay_type="wxpay")
    page = qr_page(base, scheme)
    assert "<svg" in page and 'href="weixin://dl/business/?t=' in page
    # The platform cuts a name past 127 bytes: it is sent cut, so what it checks is what was signed.
    assert fake.state()["orders"][scheme["order_no"]]["name"] == "长" * 42
    fake.call("/_test/config", {"pay_type": "html"})
    status, _, page = start(base, place(base, pid))
    assert status == 503 and "支付通道暂时没有响应" in page and "<script>document.forms" not in page


@pytest.mark.parametrize("forgery", ["other key", "other pid", "stale", "md5 sign_type", "unsigned"])
def test_a_forged_notification_changes_nothing(served, forgery):
    config, pid, keys, base, fake = served
    order = place(base, pid)
    qr_page(base, order)
    ask = {"other key": {"forge": True}, "other pid": {"pid": "1001"}, "stale": {"age": 301},
           "md5 sign_type": {"sign_type": "MD5"}, "unsigned": {"deliver": False}}[forgery]
    if forgery == "unsigned":
        fields = {k: v for k, v in fake.pay(order["order_no"], **ask)["fields"].items() if k != "sign"}
        answers = [list(http("GET", f"{base}/pay/epay2/notify?{urlencode(fields)}")[::2])]
    else:
        answers = fake.pay(order["order_no"], **ask)["answers"]
    assert answers == [[200, "fail"]]
    assert view(base, order)["status"] == "pending"


@pytest.mark.parametrize("case", ["wrong amount", "not paid"])
def test_what_the_notification_says_is_obeyed(served, case):
    config, pid, keys, base, fake = served
    order = place(base, pid)
    qr_page(base, order)
    ask = {"wrong amount": {"money": "8.79"}, "not paid": {"status": "WAIT_BUYER_PAY"}}[case]
    assert fake.pay(order["order_no"], **ask)["answers"] == [[200, "success"]]   # genuine: acknowledged
    assert view(base, order)["status"] == ("held" if case == "wrong amount" else "pending")


def test_another_currency_is_never_sent(served):
    """The platform takes yuan: an order in another currency is refused when it is placed (routing
    knows the channel's currencies), nothing written, no trade there; the channel is not offered."""
    config, pid, keys, base, fake = served
    usd = json.loads(run_cli("product", "create", "--name", "USD card", "--price", "5.00", "--currency", "USD",
                             "--json", config=config, check=True).out)["id"]
    run_cli("keys", "import", "--product", usd, "-", config=config, input=b"USD-KEY-1\n", check=True)
    status, _, body = http("POST", f"{base}/api/v1/orders", {"product_id": usd, "quantity": 1,
                                                             "email": "epay@example.com", "channel": "epay2"})
    assert status == 400 and "not in USD" in json.loads(body)["error"]["message"]
    status, _, body = http("GET", f"{base}/api/v1/payment-methods?product_id={usd}")
    assert "epay2" not in [m["channel"] for m in json.loads(body)["methods"]]
    orders = json.loads(run_cli("order", "list", "--product", str(usd), "--json", config=config, check=True).out)
    assert orders["orders"] == [] and "api/pay/create" not in fake.state()["calls"]


def test_replayed_and_concurrent_notifications_deliver_once(served):
    config, pid, keys, base, fake = served
    order = place(base, pid)
    qr_page(base, order)
    fields = fake.pay(order["order_no"], deliver=False)["fields"]

    def send(_):
        return http("GET", f"{base}/pay/epay2/notify?{urlencode(fields)}")[2]

    with ThreadPoolExecutor(10) as pool:
        assert set(pool.map(send, range(10))) == {"success"}
    assert fake.call("/_test/notify", {"out_trade_no": order["order_no"], "times": 2})["answers"] == \
        [[200, "success"], [200, "success"]]   # replayed as it was: acknowledged, nothing more
    body = urlencode(fields).encode()   # the same notification POSTed as a form is taken too
    posted = urllib.request.Request(f"{base}/pay/epay2/notify", data=body,
                                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(posted, timeout=60) as resp:
        assert resp.read().decode() == "success"
    shown = view(base, order)
    assert shown["status"] == "delivered" and len(shown["keys"]) == 1
    detail = json.loads(run_cli("order", "show", order["order_no"], "--json", config=config, check=True).out)
    assert len(detail["payments"]) == 1 and detail["payments"][0]["trade_no"] == fields["trade_no"]


def _age(config, *order_nos, minutes=3):
    """The orders placed `minutes` ago (what the reconciliation job waits for)."""
    import sqlalchemy as sa

    from kamengd.app import create_app
    from kamengd.config import load_config
    from kamengd.database import utcnow
    from kamengd.extensions import db
    from kamengd.orders.models import Order

    app = create_app(load_config(config, env={}))
    with app.app_context():
        db.session.execute(sa.update(Order).where(Order.order_no.in_(order_nos))
                           .values(created_at=utcnow() - dt.timedelta(minutes=minutes), next_check_at=None))
        db.session.commit()
        db.session.remove()


def test_a_dropped_notification_is_reconciled_by_run_job(served):
    """The notification never arrives: `kamengd run-job reconcile_payments` asks api/pay/query
    (signed, its answer verified) and delivers the paid order once; the unpaid one stays
    pending; the late notification finds it recorded."""
    config, pid, keys, base, fake = served
    unpaid = place(base, pid)
    qr_page(base, unpaid)
    order = place(base, pid)
    qr_page(base, order)
    assert fake.pay(order["order_no"], deliver=False)["delivered"] is False
    _age(config, unpaid["order_no"], order["order_no"])
    # The server's own scheduler may get there first: either way the paid order is delivered once.
    ran = json.loads(run_cli("run-job", "reconcile_payments", "--json", config=config, check=True).out)
    assert ran["counts"]["completed"] <= 1 and ran["counts"]["errors"] == 0, ran
    assert fake.state()["calls"].count("api/pay/query") >= 2
    assert view(base, order)["status"] == "delivered" and view(base, unpaid)["status"] == "pending"
    assert fake.call("/_test/notify", {"out_trade_no": order["order_no"]})["answers"] == [[200, "success"]]
    detail = json.loads(run_cli("order", "show", order["order_no"], "--json", config=config, check=True).out)
    assert len(detail["payments"]) == 1 and len(view(base, order)["keys"]) == 1, detail


def test_platform_down_and_a_bad_set_up(served):
    config, pid, keys, base, fake = served
    order = place(base, pid)
    fake.call("/_test/fail_creates", {"count": 1})
    status, _, page = start(base, order)
    assert status == 503 and "支付通道暂时没有响应" in page
    assert "<svg" in qr_page(base, order)   # the next visit works
    for option, value in [("pid", "10x1"), ("merchant_private_key", "not-a-key"),
                          ("platform_public_key", "junk"), ("gateway", "ftp://pay.example.com"),
                          ("pay_types", "alipay,ALI PAY")]:
        options = {"gateway": fake.base, "pid": PID, "merchant_private_key": fake.merchant_private,
                   "platform_public_key": fake.platform_public, option: value}
        refused = run_cli("channel", "add", "--type", "epay2", "--code", "epay2b",
                          *[arg for k, v in options.items() for arg in ("--option", f"{k}={v}")], config=config)
        assert_one_line_error(refused, option)
    listing = run_cli("channel", "list", "--json", config=config, check=True).out
    assert bare(fake.merchant_private)[:40] not in listing and "epay2b" not in listing


def test_a_refund_of_another_amount_is_audited_and_refunds_nothing_here(served):
    """The platform confirms a refund of another amount than asked: the order is not refunded
    here, and the attempt is in the audit log with the platform's words for staff to settle."""
    config, pid, keys, base, fake = served
    order = place(base, pid)
    qr_page(base, order)
    assert fake.pay(order["order_no"])["answers"] == [[200, "success"]]
    fake.call("/_test/refund_only", {"money": "1.00"})
    refused = run_cli("order", "refund", order["order_no"], "--reason", "x", "--through-channel", config=config)
    assert_one_line_error(refused, "Epay refunded 1.00, not 8.80")
    assert view(base, order)["status"] == "delivered"
    entries = json.loads(run_cli("audit", "list", "--action", "payment.refund_failed", "--json", config=config,
                                 check=True).out)["entries"]
    assert [(e["target"], e["details"]["amount"], "1.00" in e["details"]["error"]) for e in entries] == [
        (f"order:{order['order_no']}", "8.80", True)]
    assert run_cli("audit", "verify", config=config).returncode == 0


def test_a_refund_through_the_platform_is_made_once(served):
    """`order refund --through-channel`: api/pay/refund with the payment's out_refund_no, then
    the order is refunded here; asked again: refused here, and the platform, asked twice with
    one out_refund_no, gives the money back once."""
    from kamengd.app import create_app
    from kamengd.config import load_config
    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.payments.gateways import gateway
    from kamengd.payments.models import PaymentChannel
    from kamengd.payments.services import gateway_channel
    import sqlalchemy as sa

    config, pid, keys, base, fake = served
    order = place(base, pid)
    qr_page(base, order)
    assert fake.pay(order["order_no"])["answers"] == [[200, "success"]]
    done = json.loads(run_cli("order", "refund", order["order_no"], "--reason", "wrong region",
                              "--through-channel", "--json", config=config, check=True).out)
    assert done["status"] == "refunded" and done["refunded_at_gateway"] == "8.80"
    refunds = fake.state()["refunds"]
    trade_no = fake.state()["orders"][order["order_no"]]["trade_no"]
    assert [(r["trade_no"], r["money"]) for r in refunds.values()] == [(trade_no, "8.80")]
    (refund_no,) = refunds
    assert refund_no.startswith("kamengd-refund-") and view(base, order)["status"] == "refunded"
    again = run_cli("order", "refund", order["order_no"], "--reason", "again", "--through-channel", config=config)
    assert_one_line_error(again, "refunded")
    app = create_app(load_config(config, env={}))
    with app.app_context():   # the platform's idempotency, asked by our own code
        conf = gateway_channel(get_vault(), db.session.scalars(sa.select(PaymentChannel)
                                                               .where(PaymentChannel.code == "epay2")).one())
        db.session.remove()
    first = refunds[refund_no]["answer"]["refund_no"]
    assert gateway("epay2").refund(conf, trade_no=trade_no, amount_cents=880, currency="CNY",
                                   refund_no=refund_no) == first
    assert len(fake.state()["refunds"]) == 1
    assert run_cli("audit", "verify", config=config).returncode == 0


def test_the_panel_adds_and_tests_an_epay2_channel(app, client, tmp_path):
    """The form takes the V2 fields and ticks the pay types; the merchant's private key is
    write-only (never in a page, kept when left empty); Test asks api/merchant/info."""
    import re

    import sqlalchemy as sa

    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.payments.models import PaymentChannel
    from kamengd.payments.services import channel_secrets
    from panel_support import login, make_staff

    fake = FakeEpay2(tmp_path)
    try:
        client.set_cookie("lang", "en")
        login(client, make_staff(app, "admin"))
        csrf = lambda html: re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)   # noqa: E731
        form = client.get("/admin/channels/new?type=epay2").get_data(as_text=True)
        assert 'name="merchant_private_key" type="password"' in form and 'name="pay_types" value="wxpay"' in form
        assert "Platform URL" in form
        code = f"ep{secrets.token_hex(3)}"
        added = client.post("/admin/channels/new", data={
            "csrf_token": csrf(form), "type": "epay2", "code": code, "name": "易支付", "sort_order": "2",
            "gateway": fake.base, "pid": PID, "merchant_private_key": fake.merchant_private,
            "platform_public_key": fake.platform_public, "pay_types": ["alipay", "qqpay"],
            "other_pay_types": "ecny"})
        assert added.status_code == 303, added.get_data(as_text=True)
        with app.app_context():
            channel = db.session.scalars(sa.select(PaymentChannel).where(PaymentChannel.code == code)).one()
            channel_id = channel.id
            assert json.loads(channel.options)["pay_types"] == "alipay,qqpay,ecny"
        edit = client.get(f"/admin/channels/{channel_id}").get_data(as_text=True)
        assert bare(fake.merchant_private)[:40] not in edit and fake.base in edit
        assert 'value="qqpay" checked' in edit and 'name="other_pay_types" value="ecny"' in edit
        saved = client.post(f"/admin/channels/{channel_id}", data={
            "csrf_token": csrf(edit), "name": "易支付 V2", "sort_order": "2", "gateway": fake.base, "pid": PID,
            "merchant_private_key": "", "platform_public_key": fake.platform_public, "pay_types": ["wxpay"]})
        assert saved.status_code == 303
        with app.app_context():
            channel = db.session.get(PaymentChannel, channel_id)
            assert channel.name == "易支付 V2" and json.loads(channel.options)["pay_types"] == "wxpay"
            assert channel_secrets(get_vault(), channel) == {"merchant_private_key": fake.merchant_private.strip()}
        listing = client.get("/admin/channels").get_data(as_text=True)
        tested = client.post(f"/admin/channels/{channel_id}/test", data={"csrf_token": csrf(listing)},
                             follow_redirects=True).get_data(as_text=True)
        assert "Epay accepts the merchant&#39;s key" in tested, tested
        assert fake.state()["calls"] == ["api/merchant/info"]
        client.post(f"/admin/channels/{channel_id}/toggle", data={"csrf_token": csrf(listing), "enabled": "0"})
    finally:
        fake.stop()

"""The Alipay 当面付 channel end to end (W4): a real kamengd server, and a local Alipay open
platform in its own process (tests/fake_gateways/alipay_server.py) that checks kamengd's RSA2
signatures with the app's public key and signs its answers and notifications with its own
private key; both key pairs made for the test. On SQLite and MariaDB."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import assert_one_line_error, free_port, install_shop, run_cli
from test_channel_stripe import http, place, view
from test_concurrency import BUSY_SCHEDULER, start_layout

FAKE = Path(__file__).parent / "fake_gateways" / "alipay_server.py"
LAYOUTS = ("waitress", "gunicorn", "gunicorn+scheduler", "two-servers")
APP_ID = "2021004100000001"
SELLER = "2088102177846875"


def _pair():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


def bare(pem: str) -> str:
    """A key as Alipay's console shows it: base64 on one line, no PEM lines."""
    return "".join(line for line in pem.splitlines() if not line.startswith("-----"))


class FakeAlipay:
    def __init__(self, tmp: Path):
        self.app_private, app_public = _pair()
        alipay_private, self.alipay_public = _pair()
        (tmp / "app.pub").write_text(app_public)
        (tmp / "alipay.key").write_text(alipay_private)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, str(FAKE), str(self.port), APP_ID, str(tmp / "app.pub"),
                                      str(tmp / "alipay.key"), SELLER], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def call(self, path: str, payload: dict | None = None):
        data = json.dumps(payload).encode() if payload is not None else None
        with urllib.request.urlopen(urllib.request.Request(self.base + path, data=data), timeout=60) as resp:
            return json.loads(resp.read())

    def pay(self, order_no: str, **ask) -> dict:
        return self.call("/_test/pay", {"out_trade_no": order_no, **ask})

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def shop(backend, databases, tmp_path):
    config, pid, keys = install_shop(backend, databases, tmp_path, product="支付宝月卡", price="8.80",
                                     keys=20, prefix="ALI")
    fake = FakeAlipay(tmp_path)
    # The private key as a PEM file gives it; Alipay's key as its console shows it.
    run_cli("channel", "add", "--type", "alipay", "--code", "alipay", "--name", "支付宝当面付",
            "--option", f"app_id={APP_ID}", "--option", f"private_key={fake.app_private}",
            "--option", f"alipay_public_key={bare(fake.alipay_public)}", "--option", f"seller_id={SELLER}",
            "--option", f"gateway={fake.base}/gateway.do", config=config, check=True)
    yield config, pid, keys, fake
    fake.stop()


def qr_page(base: str, order: dict) -> str:
    url = urlsplit(order["pay_url"])
    assert url.path == "/pay/alipay/start"
    status, _, page = http("GET", base + url.path + "?" + url.query)
    assert status == 200, page
    return page


@pytest.mark.slow
@pytest.mark.layouts(*LAYOUTS)
def test_scan_and_pay_end_to_end(layout, shop, start_server):
    config, pid, keys, fake = shop
    bases = start_layout(layout, start_server, config)
    run_cli("setting", "set", "site.url", bases[0], config=config, check=True)   # Alipay notifies site.url
    base = bases[-1]
    order = place(base, pid, quantity=2, channel="alipay")
    assert order["amount"] == "17.60"
    page = qr_page(base, order)
    assert "<svg" in page and "17.60 CNY" in page and 'data-seconds-left="' in page
    assert qr_page(bases[0], order).count("<svg") == 1   # a reload: the same trade, not a second one
    trade = fake.call("/_test/state")["trades"][order["order_no"]]
    assert trade["total_amount"] == "17.60" and trade["notify_url"] == f"{bases[0]}/pay/alipay/notify"
    assert fake.call("/_test/state")["calls"].count("alipay.trade.precreate") == 1

    answer = fake.pay(order["order_no"], times=2)
    assert answer["answers"] == [[200, "success"], [200, "success"]], answer
    for target in bases[1:]:   # Alipay's retry reaching another server
        assert fake.pay(order["order_no"], notify=f"{target}/pay/alipay/notify")["answers"] == [[200, "success"]]
    shown = view(base, order)
    assert shown["status"] == "delivered" and len(shown["keys"]) == 2 and set(shown["keys"]) <= set(keys)
    status, headers, _ = http("GET", base + urlsplit(order["pay_url"]).path + "?" + urlsplit(order["pay_url"]).query)
    assert status == 303 and f"/order/{order['order_no']}" in headers["Location"]
    logs = start_server.stop_all()
    assert not any("Traceback" in log for log in logs.values()), logs


@pytest.fixture
def served(shop, start_server):
    config, pid, keys, fake = shop
    base = start_server(config, env=BUSY_SCHEDULER)
    run_cli("setting", "set", "site.url", base, config=config, check=True)
    return config, pid, keys, base, fake


@pytest.mark.parametrize("forgery", ["other key", "other app", "other seller"])
def test_a_forged_notification_changes_nothing(served, forgery):
    config, pid, keys, base, fake = served
    order = place(base, pid, channel="alipay")
    qr_page(base, order)
    ask = {"other key": {"forge": True}, "other app": {"app_id": "2021000000000009"},
           "other seller": {"seller_id": "2088000000000001"}}[forgery]
    assert fake.pay(order["order_no"], **ask)["answers"] == [[200, "fail"]]
    assert view(base, order)["status"] == "pending"


@pytest.mark.parametrize("case", ["wrong amount", "closed", "waiting"])
def test_what_the_notification_says_is_obeyed(served, case):
    config, pid, keys, base, fake = served
    order = place(base, pid, channel="alipay")
    qr_page(base, order)
    ask = {"wrong amount": {"amount": "8.79"}, "closed": {"status": "TRADE_CLOSED"},
           "waiting": {"status": "WAIT_BUYER_PAY"}}[case]
    assert fake.pay(order["order_no"], **ask)["answers"] == [[200, "success"]]   # genuine: acknowledged
    assert view(base, order)["status"] == ("held" if case == "wrong amount" else "pending")


def test_concurrent_copies_of_one_notification_deliver_once(served):
    config, pid, keys, base, fake = served
    order = place(base, pid, channel="alipay")
    qr_page(base, order)
    fields = fake.pay(order["order_no"], deliver=False)["fields"]

    def send(_):
        body = urllib.parse.urlencode(fields).encode()
        request = urllib.request.Request(f"{base}/pay/alipay/notify", data=body,
                                         headers={"Content-Type": "application/x-www-form-urlencoded"})
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.read().decode()

    with ThreadPoolExecutor(10) as pool:
        assert set(pool.map(send, range(10))) == {"success"}
    shown = view(base, order)
    assert shown["status"] == "delivered" and len(shown["keys"]) == 1
    detail = json.loads(run_cli("order", "show", order["order_no"], "--json", config=config, check=True).out)
    assert len(detail["payments"]) == 1 and detail["payments"][0]["trade_no"] == fields["trade_no"]


def test_a_dropped_notification_is_reconciled(served):
    import datetime as dt

    from kamengd.app import create_app
    from kamengd.config import load_config
    from kamengd.context import get_vault
    from kamengd.database import utcnow
    from kamengd.extensions import db
    from kamengd.payments.reconcile import reconcile_pending

    config, pid, keys, base, fake = served
    unpaid = place(base, pid, channel="alipay")
    qr_page(base, unpaid)
    order = place(base, pid, channel="alipay")
    qr_page(base, order)
    assert fake.pay(order["order_no"], deliver=False)["delivered"] is False
    app = create_app(load_config(config, env={}))
    with app.app_context():
        counts = reconcile_pending(db.session, get_vault(), now=utcnow() + dt.timedelta(minutes=2))
        db.session.remove()
    assert counts["completed"] == 1 and counts["unpaid"] == 1, counts
    assert view(base, order)["status"] == "delivered" and view(base, unpaid)["status"] == "pending"
    assert fake.pay(order["order_no"])["answers"] == [[200, "success"]]   # the late one: nothing more
    assert len(view(base, order)["keys"]) == 1


def test_the_daily_settlement_asks_alipay_about_every_order(served):
    """The day's settlement queries Alipay (trade.query) about each order of the day: a payment
    whose notification was dropped and a payment of another amount are reported; a paid order,
    an unpaid QR code and an order never shown to Alipay agree."""
    from kamengd.app import create_app
    from kamengd.config import load_config
    from kamengd.context import get_vault
    from kamengd.database import utcnow
    from kamengd.extensions import db
    from kamengd.payments.settlement import report_entries, run_settlement

    config, pid, keys, base, fake = served
    day = utcnow().date()
    paid, dropped, short, unpaid, refunded = (place(base, pid, channel="alipay") for _ in range(5))
    for order in (paid, dropped, short, unpaid, refunded):
        qr_page(base, order)
    never = place(base, pid, channel="alipay")   # its pay page never opened: nothing at Alipay
    assert fake.pay(paid["order_no"])["answers"] == [[200, "success"]]
    assert fake.pay(dropped["order_no"], deliver=False)["delivered"] is False
    assert fake.pay(short["order_no"], amount="1.00")["answers"] == [[200, "success"]]
    assert view(base, short)["status"] == "held"
    # Refunded through Alipay: closed there, refunded here — they agree, Alipay is not asked.
    assert fake.pay(refunded["order_no"])["answers"] == [[200, "success"]]
    run_cli("order", "refund", refunded["order_no"], "--reason", "x", "--through-channel", config=config, check=True)
    queries = fake.call("/_test/state")["calls"].count("alipay.trade.query")
    app = create_app(load_config(config, env={}))
    with app.app_context():
        # restart: the served shop's scheduler may have settled this day already (in the shop's time
        # zone, from 16:00 UTC its "yesterday"), with none of these orders in it
        report = run_settlement(db.session, get_vault(), day, "UTC", restart=True)
        found = {e.order_no: (e.kind, e.gateway_status, e.gateway_amount_cents, e.our_amount_cents)
                 for e in report_entries(db.session, report)}
        checked, status = report.checked, report.status
        db.session.remove()
    assert status == "complete" and checked == 6
    assert found == {dropped["order_no"]: ("paid_at_gateway_only", "paid", 880, None),
                     short["order_no"]: ("amount_differs", "paid", 880, 100)}, found
    assert never["order_no"] not in found and unpaid["order_no"] not in found and refunded["order_no"] not in found
    # Asked about the four orders it had a trade for, not the fifth.
    assert fake.call("/_test/state")["calls"].count("alipay.trade.query") - queries == 4


def test_alipay_down_and_a_bad_set_up(served):
    config, pid, keys, base, fake = served
    order = place(base, pid, channel="alipay")
    fake.call("/_test/fail_creates", {"count": 1})
    url = urlsplit(order["pay_url"])
    status, _, page = http("GET", base + url.path + "?" + url.query)
    assert status == 503 and "支付通道暂时没有响应" in page
    assert "<svg" in qr_page(base, order)   # the next visit works
    refused = run_cli("channel", "add", "--type", "alipay", "--code", "alipay2", "--option", f"app_id={APP_ID}",
                      "--option", "private_key=not-a-key", "--option", "alipay_public_key=junk", config=config)
    assert_one_line_error(refused, "private_key")
    listing = run_cli("channel", "list", "--json", config=config, check=True).out
    assert bare(fake.app_private)[:40] not in listing and "alipay2" not in listing


def paid_and_signed_in(served):
    """An order paid through Alipay, the shop's app, and an admin signed in to its panel (English)."""
    from kamengd.app import create_app
    from kamengd.config import load_config
    from panel_support import login, make_staff

    config, pid, keys, base, fake = served
    order = place(base, pid, channel="alipay")
    qr_page(base, order)
    assert fake.pay(order["order_no"])["answers"] == [[200, "success"]]
    app = create_app(load_config(config, env={}))
    app.config["TESTING"] = True
    client = app.test_client()
    client.set_cookie("lang", "en")
    login(client, make_staff(app, "admin"))
    return order, app, client


def test_a_refund_through_alipay_from_the_panel(served):
    """The order page offers the refund through Alipay; it gives the money back once
    (out_request_no per payment), refunds the order and says so; the audit log has it."""
    from panel_support import csrf_of

    config, pid, keys, base, fake = served
    order, app, client = paid_and_signed_in(served)
    page = client.get(f"/admin/orders/{order['order_no']}").get_data(as_text=True)
    assert 'name="through_channel"' in page and "支付宝当面付" in page
    form = {"csrf_token": csrf_of(page), "refund_reason": "wrong region", "through_channel": "1"}
    done = client.post(f"/admin/orders/{order['order_no']}/refund", data=form, follow_redirects=True)
    assert "given back through the payment channel" in done.get_data(as_text=True)
    assert view(base, order)["status"] == "refunded"
    assert [r["amount"] for r in fake.call("/_test/state")["refunds"]] == ["8.80"]
    again = client.post(f"/admin/orders/{order['order_no']}/refund", data=form)
    assert again.status_code == 409 and len(fake.call("/_test/state")["refunds"]) == 1
    audit = run_cli("audit", "verify", config=config)
    assert audit.returncode == 0


def test_an_after_sales_refund_goes_back_through_alipay(served):
    """A buyer's ticket resolved with a refund: refused once by Alipay (nothing given back, the ticket
    stays live and unmarked, so a reissue is possible again), then the money goes back once, the
    order is refunded and the ticket resolved."""
    from kamengd.extensions import db
    from kamengd.tickets.models import Ticket
    from panel_support import csrf_of

    config, pid, keys, base, fake = served
    order, app, client = paid_and_signed_in(served)
    buyer = app.test_client()
    page = buyer.get(f"/order/{order['order_no']}", query_string={"token": order["token"]}).get_data(as_text=True)
    assert buyer.post(f"/order/{order['order_no']}/ticket", data={
        "csrf_token": csrf_of(page), "token": order["token"], "message": "我要退款"}).status_code == 303
    with app.app_context():
        ticket_id = db.session.scalar(sa.select(Ticket.id).order_by(Ticket.id.desc()).limit(1))
        db.session.remove()
    page = client.get(f"/admin/tickets/{ticket_id}").get_data(as_text=True)
    assert "goes back through" in page and 'id="refund-send"' in page and 'id="reissue-send"' in page
    fake.call("/_test/fail_refunds", {"count": 1})
    refused = client.post(f"/admin/tickets/{ticket_id}/refund", data={"csrf_token": csrf_of(page), "reason": "退款"})
    assert refused.status_code == 409 and "did not give the money back" in refused.get_data(as_text=True)
    with app.app_context():
        t = db.session.get(Ticket, ticket_id)
        assert (t.status, t.resolution) == ("open", None)
        db.session.remove()
    assert view(base, order)["status"] == "delivered" and fake.call("/_test/state")["refunds"] == []
    done = client.post(f"/admin/tickets/{ticket_id}/refund", data={"csrf_token": csrf_of(page), "reason": "退款"},
                       follow_redirects=True)
    assert "given back through the payment channel" in done.get_data(as_text=True)
    assert view(base, order)["status"] == "refunded"
    assert [r["amount"] for r in fake.call("/_test/state")["refunds"]] == ["8.80"]
    with app.app_context():
        t = db.session.get(Ticket, ticket_id)
        assert (t.status, t.resolution) == ("resolved", "refund")
        db.session.remove()
    again = client.post(f"/admin/tickets/{ticket_id}/refund", data={"csrf_token": csrf_of(page), "reason": "x"})
    assert again.status_code == 409 and len(fake.call("/_test/state")["refunds"]) == 1

"""The PayPal channel end to end (W4): a real kamengd server, and a local PayPal in its own process
(tests/fake_gateways/paypal_server.py) that speaks PayPal's REST API (OAuth2 client credentials,
Orders v2, captures, refunds) and verifies its webhooks the way PayPal does, by
verify-webhook-signature, with credentials and a signing key made for the test. On SQLite and
MariaDB."""
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
from urllib.parse import parse_qs, urlsplit

import pytest

from conftest import assert_one_line_error, free_port, install_shop, run_cli
from test_channel_stripe import http, place, view
from test_concurrency import BUSY_SCHEDULER, start_layout

FAKE = Path(__file__).parent / "fake_gateways" / "paypal_server.py"
LAYOUTS = ("waitress", "gunicorn", "gunicorn+scheduler", "two-servers")
MERCHANT = "7K3RVDFQ2MUXN"


class FakePayPal:
    def __init__(self, notify_url: str):
        self.client_id = f"AZ{secrets.token_urlsafe(30)}"
        self.client_secret = f"EL{secrets.token_urlsafe(40)}"
        self.webhook_id = "4JH86294D6297924G" + secrets.token_hex(2).upper()
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, str(FAKE), str(self.port), self.client_id, self.client_secret,
                                      self.webhook_id, MERCHANT, notify_url], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def call(self, path: str, payload: dict | None = None):
        data = json.dumps(payload).encode() if payload is not None else None
        with urllib.request.urlopen(urllib.request.Request(self.base + path, data=data), timeout=60) as resp:
            return json.loads(resp.read())

    def approve(self, order_id: str, **ask) -> str:
        return self.call("/_test/approve", {"order": order_id, **ask})["return_url"]

    def webhook(self, order_id: str, **ask) -> dict:
        return self.call("/_test/webhook", {"order": order_id, **ask})

    def state(self) -> dict:
        return self.call("/_test/state")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def add_channel(config, fake: FakePayPal, code: str = "paypal", merchant: bool = True):
    options = ["--option", f"client_id={fake.client_id}", "--option", f"client_secret={fake.client_secret}",
               "--option", f"webhook_id={fake.webhook_id}", "--option", f"api_base={fake.base}"]
    if merchant:
        options += ["--option", f"merchant_id={MERCHANT}"]
    return run_cli("channel", "add", "--type", "paypal", "--code", code, "--name", "PayPal", *options, config=config)


@pytest.fixture
def shop(backend, databases, tmp_path):
    """(config, product id, keys, port, fake PayPal): the channel `paypal` added, no server yet."""
    port = free_port()
    config, pid, keys = install_shop(backend, databases, tmp_path, product="PayPal card", price="12.30",
                                     keys=30, prefix="PP", site_url=f"http://127.0.0.1:{port}")
    fake = FakePayPal(f"http://127.0.0.1:{port}/pay/paypal/notify")
    assert add_channel(config, fake).returncode == 0
    yield config, pid, keys, port, fake
    fake.stop()


@pytest.fixture
def served(shop, start_server):
    config, pid, keys, port, fake = shop
    base = start_server(config, env=BUSY_SCHEDULER, port=port)
    return config, pid, keys, base, fake


def checkout(base: str, order: dict, fake: FakePayPal) -> str:
    """The buyer opens the pay URL: sent on to PayPal's page; the PayPal order's id."""
    url = urlsplit(order["pay_url"])
    assert url.path == "/pay/paypal/start" and parse_qs(url.query)["order_no"] == [order["order_no"]]
    status, headers, _ = http("GET", base + url.path + "?" + url.query)
    assert status == 303, status
    assert headers["Location"].startswith(f"{fake.base}/checkoutnow?token=")
    return parse_qs(urlsplit(headers["Location"]).query)["token"][0]


def payments_of(config, order_no: str) -> list:
    return json.loads(run_cli("order", "show", order_no, "--json", config=config, check=True).out)["payments"]


@pytest.mark.slow
@pytest.mark.layouts(*LAYOUTS)
def test_a_paypal_payment_end_to_end(layout, shop, start_server):
    """Each layout as deployed: the buyer is sent to PayPal and approves; the APPROVED webhook
    (to one server, its copies to the others) is verified by PayPal and captured once; the
    capture's own webhook and the buyer's return find it recorded."""
    config, pid, keys, port, fake = shop
    bases = start_layout(layout, start_server, config)
    base = bases[-1]
    order = place(base, pid, quantity=2, channel="paypal")
    assert order["amount"] == "24.60" and order["status"] == "pending"
    ref = checkout(base, order, fake)
    assert checkout(bases[0], order, fake) == ref   # a reload (on any server) shows the same payment
    created = fake.state()["orders"][ref]
    unit = created["purchase_units"][0]
    assert unit["amount"] == {"currency_code": "CNY", "value": "24.60"}
    assert unit["custom_id"] == unit["invoice_id"] == unit["reference_id"] == order["order_no"]
    assert created["_return_url"].startswith(f"http://127.0.0.1:{port}/pay/paypal/return?")
    back = fake.approve(ref)

    for target in bases:   # PayPal delivers, and delivers again
        answer = fake.webhook(ref, times=2, notify=f"{target}/pay/paypal/notify")
        assert [a[0] for a in answer["answers"]] == [200, 200], answer
    shown = view(base, order)
    assert shown["status"] == "delivered" and len(shown["keys"]) == 2 and set(shown["keys"]) <= set(keys)
    state = fake.state()
    assert state["captures_made"] == 1 and state["orders"][ref]["status"] == "COMPLETED"
    capture_id = state["orders"][ref]["purchase_units"][0]["payments"]["captures"][0]["id"]
    assert fake.webhook(ref, event_type="PAYMENT.CAPTURE.COMPLETED",
                        notify=f"{bases[0]}/pay/paypal/notify")["answers"][0][0] == 200
    back = urlsplit(back)._replace(netloc=urlsplit(base).netloc).geturl()   # (site.url's port has no server here)
    status, _, page = http("GET", back)   # the buyer's return, after it all
    assert status == 200 and order["order_no"] in page
    assert [p["trade_no"] for p in payments_of(config, order["order_no"])] == [capture_id]
    url = urlsplit(order["pay_url"])
    status, headers, _ = http("GET", base + url.path + "?" + url.query)
    assert status == 303 and f"/order/{order['order_no']}" in headers["Location"]
    logs = start_server.stop_all()
    assert not any("Traceback" in log for log in logs.values()), logs


def test_the_buyers_return_captures_and_a_cancel_asks_nothing(served):
    """No webhook yet: the buyer back from approving (PayPal adds token and PayerID) has the
    order captured and delivered at once; the late webhooks change nothing. A buyer who
    cancelled comes back without PayerID: PayPal is not asked, the order waits."""
    config, pid, keys, base, fake = served
    order = place(base, pid, channel="paypal")
    ref = checkout(base, order, fake)
    back = fake.approve(ref)
    assert parse_qs(urlsplit(back).query)["token"][1] == ref   # PayPal's own token, after ours
    status, _, page = http("GET", back)
    assert status == 200
    shown = view(base, order)
    assert shown["status"] == "delivered" and len(shown["keys"]) == 1
    assert shown["keys"][0] in page
    assert fake.state()["captures_made"] == 1
    for kind in ("CHECKOUT.ORDER.APPROVED", "PAYMENT.CAPTURE.COMPLETED"):
        assert fake.webhook(ref, event_type=kind)["answers"][0][0] == 200
    assert len(payments_of(config, order["order_no"])) == 1 and fake.state()["captures_made"] == 1

    # Captured already on PayPal's side (a request id it no longer knows): the order is read instead.
    third = place(base, pid, channel="paypal")
    third_ref = checkout(base, third, fake)
    fake.approve(third_ref)
    fake.call("/_test/capture", {"order": third_ref})
    assert fake.webhook(third_ref)["answers"][0][0] == 200
    assert view(base, third)["status"] == "delivered" and fake.state()["captures_made"] == 2

    other = place(base, pid, channel="paypal")
    other_ref = checkout(base, other, fake)
    cancel = fake.state()["orders"][other_ref]["_cancel_url"] + f"&token={other_ref}"
    asked = len(fake.state()["requests"])
    status, _, _ = http("GET", cancel)
    assert status == 200 and view(base, other)["status"] == "pending"
    assert len(fake.state()["requests"]) == asked


@pytest.mark.parametrize("forgery", ["other key", "other webhook", "tampered", "unsigned", "other merchant"])
def test_a_forged_webhook_changes_nothing(served, forgery):
    """Not verified by PayPal (another key, another webhook's, changed after signing, no
    transmission headers) or for another merchant: 400, nothing captured, nothing recorded."""
    config, pid, keys, base, fake = served
    order = place(base, pid, channel="paypal")
    ref = checkout(base, order, fake)
    fake.approve(ref)
    ask = {"other key": {"forge": "key"}, "other webhook": {"forge": "webhook"}, "tampered": {"forge": "tampered"},
           "unsigned": {"forge": "unsigned"}, "other merchant": {"merchant_id": "ZZ9PLURALZALPHA"}}[forgery]
    answer = fake.webhook(ref, **ask)
    assert answer["answers"][0][0] == 400, answer
    assert view(base, order)["status"] == "pending"
    state = fake.state()
    assert state["orders"][ref]["status"] == "APPROVED" and state["captures_made"] == 0
    if forgery == "unsigned":   # not even worth asking PayPal about
        assert "POST /v1/notifications/verify-webhook-signature" not in state["requests"]


def test_what_needs_no_call_to_paypal_is_checked_first(served):
    """A certificate URL on another host, a transmission time days old or in the future: refused
    (400) without asking PayPal's verification endpoint; an event that is no payment: answered
    200 and nothing asked, nothing changed. The genuine webhook then goes through."""
    config, pid, keys, base, fake = served
    order = place(base, pid, channel="paypal")
    ref = checkout(base, order, fake)
    fake.approve(ref)
    kept = fake.webhook(ref, deliver=False)

    def send(body: str, headers: dict) -> int:
        request = urllib.request.Request(f"{base}/pay/paypal/notify", data=body.encode(), method="POST",
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    def verify_calls() -> int:
        return fake.state()["requests"].count("POST /v1/notifications/verify-webhook-signature")

    before = verify_calls()
    for name, value in (("PAYPAL-CERT-URL", "https://evil.example/v1/notifications/certs/CERT-1"),
                        ("PAYPAL-CERT-URL", "http://api.paypal.com/v1/notifications/certs/CERT-1"),
                        ("PAYPAL-TRANSMISSION-TIME", "2020-01-01T00:00:00Z"),
                        ("PAYPAL-TRANSMISSION-TIME", "2099-01-01T00:00:00Z"),
                        ("PAYPAL-TRANSMISSION-TIME", "yesterday")):
        assert send(kept["body"], {**kept["headers"], name: value}) == 400, (name, value)
    other = json.dumps({**kept["event"], "event_type": "CUSTOMER.DISPUTE.CREATED"})
    assert send(other, kept["headers"]) == 200
    assert verify_calls() == before and view(base, order)["status"] == "pending"
    assert fake.state()["captures_made"] == 0
    assert send(kept["body"], kept["headers"]) == 200 and verify_calls() == before + 1
    assert view(base, order)["status"] == "delivered"


@pytest.mark.parametrize("case", ["wrong amount", "wrong currency", "denied", "pending capture"])
def test_what_the_webhook_says_is_obeyed(served, case):
    config, pid, keys, base, fake = served
    order = place(base, pid, channel="paypal")
    ref = checkout(base, order, fake)
    if case in ("wrong amount", "wrong currency"):
        fake.approve(ref, **({"capture_amount": "12.29"} if case == "wrong amount" else {"capture_currency": "USD"}))
        answer = fake.webhook(ref)
    else:   # captured on PayPal's side; its event says it is not (yet) money
        fake.approve(ref)
        fake.call("/_test/capture", {"order": ref})
        answer = fake.webhook(ref, **({"event_type": "PAYMENT.CAPTURE.DENIED", "status": "DECLINED"}
                                      if case == "denied" else {"event_type": "PAYMENT.CAPTURE.PENDING",
                                                                "status": "PENDING"}))
    assert answer["answers"][0][0] == 200, answer   # genuine: acknowledged
    shown = view(base, order)
    if case in ("denied", "pending capture"):
        assert shown["status"] == "pending" and payments_of(config, order["order_no"]) == []
    else:
        assert shown["status"] == "held" and "keys" not in shown
    detail = json.loads(run_cli("order", "show", order["order_no"], "--json", config=config, check=True).out)
    if case == "wrong currency":
        assert "USD" in detail["flag"], detail


def test_concurrent_copies_of_one_webhook_capture_and_deliver_once(served):
    """The same APPROVED event, verified, sent 12 times at once: PayPal is asked to capture by
    each (one PayPal-Request-Id), captures once; one payment, one key. Then the capture's event,
    12 times at once: nothing more."""
    config, pid, keys, base, fake = served
    order = place(base, pid, channel="paypal")
    ref = checkout(base, order, fake)
    fake.approve(ref)

    def send_all(kept: dict) -> set:
        def send(_):
            request = urllib.request.Request(f"{base}/pay/paypal/notify", data=kept["body"].encode(),
                                             method="POST", headers=kept["headers"])
            with urllib.request.urlopen(request, timeout=60) as resp:
                return resp.status

        with ThreadPoolExecutor(12) as pool:
            return set(pool.map(send, range(12)))

    assert send_all(fake.webhook(ref, deliver=False)) == {200}
    shown = view(base, order)
    assert shown["status"] == "delivered" and len(shown["keys"]) == 1
    assert fake.state()["captures_made"] == 1
    assert send_all(fake.webhook(ref, event_type="PAYMENT.CAPTURE.COMPLETED", deliver=False)) == {200}
    assert len(payments_of(config, order["order_no"])) == 1 and len(view(base, order)["keys"]) == 1


def test_a_dropped_webhook_is_reconciled_by_run_job(served):
    """No webhook, no return: `kamengd run-job reconcile_payments` asks PayPal about each order's
    PayPal order (a minute on): the approved one is captured and delivered once, the unapproved
    one waits; the late webhooks change nothing."""
    import sqlalchemy as sa

    from kamengd.app import create_app
    from kamengd.config import load_config
    from kamengd.database import utcnow
    from kamengd.extensions import db
    from kamengd.orders.models import Order

    config, pid, keys, base, fake = served
    unpaid = place(base, pid, channel="paypal")
    checkout(base, unpaid, fake)
    order = place(base, pid, channel="paypal")
    ref = checkout(base, order, fake)
    fake.approve(ref)
    app = create_app(load_config(config, env={}))
    with app.app_context():   # both placed two minutes ago, as the job wants them
        db.session.execute(sa.update(Order).where(Order.order_no.in_([unpaid["order_no"], order["order_no"]]))
                           .values(created_at=utcnow() - dt.timedelta(minutes=2), next_check_at=None))
        db.session.commit()
        db.session.remove()
    ran = json.loads(run_cli("run-job", "reconcile_payments", "--json", config=config, check=True).out)
    assert ran["counts"]["completed"] == 1 and ran["counts"]["unpaid"] >= 1, ran
    assert view(base, order)["status"] == "delivered" and view(base, unpaid)["status"] == "pending"
    assert fake.state()["captures_made"] == 1
    for kind in ("CHECKOUT.ORDER.APPROVED", "PAYMENT.CAPTURE.COMPLETED"):
        assert fake.webhook(ref, event_type=kind)["answers"][0][0] == 200
    assert len(payments_of(config, order["order_no"])) == 1 and len(view(base, order)["keys"]) == 1
    assert fake.state()["captures_made"] == 1


def test_the_daily_settlement_looks_at_paypal_and_never_captures(served):
    """The day's settlement reads each PayPal order: an approved one not yet captured is no
    payment (and is not captured by the settlement: money moves only where it is recorded);
    a captured one agrees with the payment recorded here."""
    from kamengd.app import create_app
    from kamengd.config import load_config
    from kamengd.context import get_vault
    from kamengd.database import utcnow
    from kamengd.extensions import db
    from kamengd.payments.settlement import report_entries, run_settlement

    config, pid, keys, base, fake = served
    day = utcnow().date()
    approved = place(base, pid, channel="paypal")
    fake.approve(checkout(base, approved, fake))
    paid = place(base, pid, channel="paypal")
    ref = checkout(base, paid, fake)
    fake.approve(ref)
    assert fake.webhook(ref, event_type="CHECKOUT.ORDER.APPROVED")["answers"][0][0] == 200
    assert view(base, paid)["status"] == "delivered" and fake.state()["captures_made"] == 1
    app = create_app(load_config(config, env={}))
    with app.app_context():
        # restart: the served shop's scheduler may have settled this day already (in the shop's time
        # zone, from 16:00 UTC its "yesterday"), with none of these orders in it
        report = run_settlement(db.session, get_vault(), day, "UTC", restart=True)
        found, checked = list(report_entries(db.session, report)), report.checked
        db.session.remove()
    assert checked == 2 and found == []
    assert fake.state()["captures_made"] == 1 and view(base, approved)["status"] == "pending"


def test_paypal_down_tokens_kept_and_a_bad_set_up(served):
    """A create PayPal fails: the buyer may try again, and the next visit works. The access token
    is fetched once and kept; one PayPal stopped honouring is fetched again. Bad options are
    refused by the CLI in one line, naming the option; no secret in `channel list`."""
    config, pid, keys, base, fake = served
    order = place(base, pid, channel="paypal")
    fake.call("/_test/fail_creates", {"count": 1})
    url = urlsplit(order["pay_url"])
    status, _, page = http("GET", base + url.path + "?" + url.query)
    assert status == 503 and "支付通道暂时没有响应" in page
    assert view(base, order)["status"] == "pending"
    ref = checkout(base, order, fake)   # the next visit works
    fake.approve(ref)
    fake.call("/_test/expire_tokens", {})
    assert fake.webhook(ref)["answers"][0][0] == 200
    assert view(base, order)["status"] == "delivered"
    assert fake.state()["tokens_issued"] == 2

    for option, value in [("client_secret", "short"), ("webhook_id", "not/an id"), ("api_base", "ftp://x"),
                          ("client_id", "x y")]:
        refused = run_cli("channel", "add", "--type", "paypal", "--code", "paypal2",
                          *[arg for name, given in [("client_id", fake.client_id),
                                                    ("client_secret", fake.client_secret),
                                                    ("webhook_id", fake.webhook_id)]
                            for arg in ("--option", f"{name}={value if name == option else given}")],
                          *(["--option", f"api_base={value}"] if option == "api_base" else []), config=config)
        assert_one_line_error(refused, option)
    missing = run_cli("channel", "add", "--type", "paypal", "--code", "paypal2", "--option",
                      f"client_id={fake.client_id}", "--option", f"client_secret={fake.client_secret}", config=config)
    assert_one_line_error(missing, "webhook_id")
    listing = run_cli("channel", "list", "--json", config=config, check=True).out
    assert fake.client_secret not in listing and "paypal2" not in listing


def test_a_refund_through_paypal_gives_the_money_back_once(served):
    """`order refund --through-channel`: PayPal refunds the capture (PayPal-Request-Id the
    payment's refund number), then the order is refunded here, audited; asked again: refused,
    nothing more given back. A refund PayPal refuses changes nothing here."""
    import sqlalchemy as sa

    from kamengd.app import create_app
    from kamengd.config import load_config
    from kamengd.extensions import db
    from kamengd.payments.models import Payment

    config, pid, keys, base, fake = served
    order = place(base, pid, channel="paypal")
    ref = checkout(base, order, fake)
    fake.approve(ref)
    assert fake.webhook(ref)["answers"][0][0] == 200
    capture_id = fake.state()["orders"][ref]["purchase_units"][0]["payments"]["captures"][0]["id"]
    done = run_cli("order", "refund", order["order_no"], "--reason", "buyer changed mind", "--through-channel",
                   "--json", config=config, check=True)
    answer = json.loads(done.out)
    assert answer["status"] == "refunded" and answer["refunded_at_gateway"] == "12.30"
    refunds = list(fake.state()["refunds"].values())
    assert [(r["capture"], r["amount"]) for r in refunds] == [(capture_id, {"value": "12.30",
                                                                            "currency_code": "CNY"})]
    assert refunds[0]["request_id"].startswith("kamengd-refund-")
    assert view(base, order)["status"] == "refunded"
    again = run_cli("order", "refund", order["order_no"], "--reason", "again", "--through-channel", config=config)
    assert_one_line_error(again, "refunded")
    assert len(fake.state()["refunds"]) == 1
    assert run_cli("audit", "verify", config=config).returncode == 0

    other = place(base, pid, channel="paypal")
    other_ref = checkout(base, other, fake)
    fake.approve(other_ref)
    fake.webhook(other_ref)
    other_capture = fake.state()["orders"][other_ref]["purchase_units"][0]["payments"]["captures"][0]["id"]
    app = create_app(load_config(config, env={}))
    with app.app_context():   # a payment recorded under a capture PayPal never made
        db.session.execute(sa.update(Payment).where(Payment.trade_no == other_capture)
                           .values(trade_no="UNKNOWN0CAPTURE"))
        db.session.commit()
        db.session.remove()
    refused = run_cli("order", "refund", other["order_no"], "--reason", "x", "--through-channel", config=config)
    assert_one_line_error(refused, "the gateway did not give the money back")
    assert view(base, other)["status"] == "delivered" and len(fake.state()["refunds"]) == 1


def test_the_panel_adds_edits_and_tests_a_paypal_channel(app, client):
    """The channel form takes PayPal's fields; the client secret is write-only (never in a page,
    kept when left empty); Test gets a token and asks PayPal about the webhook ID."""
    import re

    import sqlalchemy as sa

    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.payments.models import PaymentChannel
    from kamengd.payments.services import channel_secrets
    from panel_support import login, make_staff

    fake = FakePayPal("http://127.0.0.1:9/unused")
    try:
        client.set_cookie("lang", "en")
        login(client, make_staff(app, "admin"))
        csrf = lambda html: re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)   # noqa: E731
        form = client.get("/admin/channels/new?type=paypal").get_data(as_text=True)
        assert 'name="client_secret" type="password"' in form and 'name="webhook_id"' in form
        assert "Client ID of the REST app" in form
        code = f"pp{secrets.token_hex(3)}"
        fields = {"client_id": fake.client_id, "webhook_id": fake.webhook_id, "api_base": fake.base,
                  "merchant_id": MERCHANT}
        added = client.post("/admin/channels/new", data={
            "csrf_token": csrf(form), "type": "paypal", "code": code, "name": "PayPal", "sort_order": "2",
            "client_secret": fake.client_secret, **fields})
        assert added.status_code == 303, added.get_data(as_text=True)
        with app.app_context():
            channel_id = db.session.scalars(sa.select(PaymentChannel).where(PaymentChannel.code == code)).one().id
        edit = client.get(f"/admin/channels/{channel_id}").get_data(as_text=True)
        assert fake.client_secret not in edit and fake.client_id in edit
        saved = client.post(f"/admin/channels/{channel_id}", data={
            "csrf_token": csrf(edit), "name": "PayPal checkout", "sort_order": "2", "client_secret": "", **fields})
        assert saved.status_code == 303
        with app.app_context():
            channel = db.session.get(PaymentChannel, channel_id)
            assert channel.name == "PayPal checkout" and json.loads(channel.options) == fields
            assert channel_secrets(get_vault(), channel) == {"client_secret": fake.client_secret}
        listing = client.get("/admin/channels").get_data(as_text=True)
        tested = client.post(f"/admin/channels/{channel_id}/test", data={"csrf_token": csrf(listing)},
                             follow_redirects=True).get_data(as_text=True)
        assert "PayPal accepts the client credentials and knows the webhook" in tested
        assert f"GET /v1/notifications/webhooks/{fake.webhook_id}" in fake.state()["requests"]
    finally:
        fake.stop()


def test_amounts_in_paypal_decimals():
    """PayPal's amount strings: two places, none for JPY, HUF and TWD; what cannot be sent is refused."""
    from kamengd.payments.gateways.paypal_orders import cents_of, paypal_value

    assert paypal_value(1230, "USD") == "12.30" and paypal_value(500000, "JPY") == "5000"
    assert paypal_value(500050, "JPY") is None and paypal_value(100, "KWD") is None
    assert cents_of("12.30", "USD") == 1230 and cents_of("5000", "JPY") == 500000
    for junk in ("12.3.0", "-1.00", "1e3", " 12.30", 12.3, None, "5000.00"):
        assert cents_of(junk, "JPY") is None
    assert cents_of("0.00", "USD") is None and cents_of("１２.３０", "USD") is None

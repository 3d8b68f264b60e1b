"""The Stripe channel end to end (W4): a real kamengd server, and a local Stripe in its own
process (tests/fake_gateways/stripe_server.py) that speaks Stripe's API and signs its webhooks
as Stripe does, with a key and a signing secret made for the test. On SQLite and MariaDB."""
from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from conftest import assert_one_line_error, free_port, install_shop, run_cli
from test_concurrency import BUSY_SCHEDULER, start_layout

FAKE = Path(__file__).parent / "fake_gateways" / "stripe_server.py"
LAYOUTS = ("waitress", "gunicorn", "gunicorn+scheduler", "two-servers")


class FakeStripe:
    def __init__(self, notify_url: str):
        self.secret_key = f"sk_test_{secrets.token_urlsafe(24)}"
        self.webhook_secret = f"whsec_{secrets.token_urlsafe(24)}"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, str(FAKE), str(self.port), self.secret_key,
                                      self.webhook_secret, notify_url], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def call(self, path: str, payload: dict | None = None):
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(self.base + path, data=data, method="POST" if data else "GET")
        with urllib.request.urlopen(request, timeout=60) as resp:
            return json.loads(resp.read())

    def pay(self, session: str, **ask) -> dict:
        return self.call("/_test/pay", {"session": session, **ask})

    def state(self) -> dict:
        return self.call("/_test/state")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def http(method: str, url: str, body: dict | None = None, headers: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=60) as resp:
            return resp.status, resp.headers, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode()


@pytest.fixture
def shop(backend, databases, tmp_path, start_server):
    """(config, product id, keys, port, fake Stripe): the channel `stripe` added, no server yet."""
    port = free_port()
    config, pid, keys = install_shop(backend, databases, tmp_path, product="Stripe card", price="12.30",
                                     keys=30, prefix="STR", site_url=f"http://127.0.0.1:{port}")
    fake = FakeStripe(f"http://127.0.0.1:{port}/pay/stripe/notify")
    run_cli("channel", "add", "--type", "stripe", "--code", "stripe", "--name", "Card (Stripe)",
            "--option", f"secret_key={fake.secret_key}", "--option", f"webhook_secret={fake.webhook_secret}",
            "--option", f"api_base={fake.base}", config=config, check=True)
    yield config, pid, keys, port, fake
    fake.stop()


def place(base: str, pid: int, quantity: int = 1, channel: str = "stripe") -> dict:
    status, _, body = http("POST", f"{base}/api/v1/orders", {"product_id": pid, "quantity": quantity,
                                                              "email": "card@example.com", "channel": channel})
    assert status == 201, body
    return json.loads(body)


def view(base: str, order: dict) -> dict:
    return json.loads(http("GET", f"{base}/api/v1/orders/{order['order_no']}?token={order['token']}")[2])


def checkout(base: str, order: dict, fake: FakeStripe) -> str:
    """The buyer opens the pay URL: sent on to Stripe's page; the session id."""
    url = urlsplit(order["pay_url"])
    assert url.path == "/pay/stripe/start" and parse_qs(url.query)["order_no"] == [order["order_no"]]
    status, headers, _ = http("GET", base + url.path + "?" + url.query)
    assert status == 303, status
    assert headers["Location"].startswith(f"{fake.base}/checkout/cs_test_")
    return headers["Location"].rsplit("/", 1)[-1]


@pytest.mark.slow
@pytest.mark.layouts(*LAYOUTS)
def test_a_card_payment_end_to_end(layout, shop, start_server):
    """Each layout as deployed: the buyer is sent to Stripe, pays; Stripe's webhook (to one
    server, its retries to another) delivers the keys once."""
    config, pid, keys, port, fake = shop
    bases = start_layout(layout, start_server, config)
    base = bases[-1]
    order = place(base, pid, quantity=2)
    assert order["amount"] == "24.60" and order["status"] == "pending"
    session = checkout(base, order, fake)
    assert checkout(bases[0], order, fake) == session   # a reload (on any server) shows the same payment
    created = fake.state()["sessions"][session]
    assert (created["amount_total"], created["currency"], created["client_reference_id"]) == (
        2460, "cny", order["order_no"])

    for target in bases:   # Stripe delivers, and delivers again
        answer = fake.pay(session, times=2, notify=f"{target}/pay/stripe/notify")
        assert [a[0] for a in answer["answers"]] == [200, 200], answer
    shown = view(base, order)
    assert shown["status"] == "delivered" and len(shown["keys"]) == 2 and set(shown["keys"]) <= set(keys)
    # The pay URL of a paid order leads to the order.
    url = urlsplit(order["pay_url"])
    status, headers, _ = http("GET", base + url.path + "?" + url.query)
    assert status == 303 and f"/order/{order['order_no']}" in headers["Location"]
    logs = start_server.stop_all()
    assert not any("Traceback" in log for log in logs.values()), logs


@pytest.fixture
def served(shop, start_server):
    config, pid, keys, port, fake = shop
    base = start_server(config, env=BUSY_SCHEDULER, port=port)
    return config, pid, keys, base, fake


@pytest.mark.parametrize("forgery", ["other secret", "other mode", "stale", "unsigned"])
def test_a_forged_webhook_changes_nothing(served, forgery):
    config, pid, keys, base, fake = served
    order = place(base, pid)
    session = checkout(base, order, fake)
    ask = {"other secret": {"secret": f"whsec_{secrets.token_urlsafe(24)}"}, "other mode": {"livemode": True},
           "stale": {"age": 301}, "unsigned": {"secret": ""}}[forgery]
    answer = fake.pay(session, **ask)
    assert answer["answers"][0][0] == 400, answer
    assert view(base, order)["status"] == "pending"


@pytest.mark.parametrize("case", ["wrong amount", "wrong currency", "failed"])
def test_what_the_webhook_says_is_obeyed(served, case):
    config, pid, keys, base, fake = served
    order = place(base, pid)
    session = checkout(base, order, fake)
    ask = {"wrong amount": {"amount": 1229}, "wrong currency": {"currency": "usd"},
           "failed": {"event_type": "checkout.session.async_payment_failed", "payment_status": "unpaid",
                      "mark_paid": False}}[case]
    answer = fake.pay(session, **ask)
    assert answer["answers"][0][0] == 200, answer   # genuine: acknowledged
    shown = view(base, order)
    if case == "failed":
        assert shown["status"] == "pending"
    else:
        assert shown["status"] == "held" and "keys" not in shown
    detail = json.loads(run_cli("order", "show", order["order_no"], "--json", config=config, check=True).out)
    if case == "wrong currency":
        assert "USD" in detail["flag"], detail


def test_concurrent_copies_of_one_webhook_deliver_once(served):
    config, pid, keys, base, fake = served
    order = place(base, pid)
    session = checkout(base, order, fake)
    answers = fake.pay(session, times=1, deliver=False)
    assert answers["delivered"] is False
    # The same event, signed, sent 12 times at once (Stripe retries while we answer).
    body = json.dumps({"id": "evt_same", "object": "event", "type": "checkout.session.completed",
                       "livemode": False, "data": {"object": {**fake.state()["sessions"][session]}}}).encode()
    sys.path.insert(0, str(FAKE.parent))
    from stripe_server import sign

    header = sign(body, fake.webhook_secret, int(time.time()))

    def send(_):
        request = urllib.request.Request(f"{base}/pay/stripe/notify", data=body, method="POST",
                                         headers={"Content-Type": "application/json", "Stripe-Signature": header})
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status

    with ThreadPoolExecutor(12) as pool:
        assert set(pool.map(send, range(12))) == {200}
    shown = view(base, order)
    assert shown["status"] == "delivered" and len(shown["keys"]) == 1
    detail = json.loads(run_cli("order", "show", order["order_no"], "--json", config=config, check=True).out)
    assert len(detail["payments"]) == 1, detail


def test_a_dropped_webhook_is_reconciled(served):
    """The webhook never comes: the reconciliation job asks Stripe about the session (a minute
    on, as the scheduler would) and delivers the order once; the late webhook changes nothing."""
    import datetime as dt

    from kamengd.app import create_app
    from kamengd.config import load_config
    from kamengd.context import get_vault
    from kamengd.database import utcnow
    from kamengd.extensions import db
    from kamengd.payments.reconcile import reconcile_pending

    config, pid, keys, base, fake = served
    order = place(base, pid)
    unpaid = checkout(base, order, fake)
    other = place(base, pid)
    session = checkout(base, other, fake)
    assert fake.pay(session, deliver=False)["delivered"] is False
    assert view(base, other)["status"] == "pending"
    app = create_app(load_config(config, env={}))
    with app.app_context():
        counts = reconcile_pending(db.session, get_vault(), now=utcnow() + dt.timedelta(minutes=2))
        db.session.remove()
    assert counts["completed"] == 1 and counts["unpaid"] >= 1, counts
    assert view(base, other)["status"] == "delivered" and view(base, order)["status"] == "pending"
    late = fake.pay(session, notify=f"{base}/pay/stripe/notify")
    assert late["answers"][0][0] == 200
    detail = json.loads(run_cli("order", "show", other["order_no"], "--json", config=config, check=True).out)
    assert len(detail["payments"]) == 1 and len(view(base, other)["keys"]) == 1, detail
    assert unpaid in fake.state()["sessions"]


def test_the_channel_refuses_a_bad_set_up(served):
    config, pid, keys, base, fake = served
    refused = run_cli("channel", "add", "--type", "stripe", "--code", "stripe2", "--option", "secret_key=pk_test_x",
                      "--option", "webhook_secret=abc", config=config)
    assert_one_line_error(refused, "secret_key")
    assert "stripe2" not in run_cli("channel", "list", config=config, check=True).out
    listing = run_cli("channel", "list", "--json", config=config, check=True).out
    assert fake.secret_key not in listing and fake.webhook_secret not in listing


def test_stripe_down_leaves_the_order_payable_later(served):
    config, pid, keys, base, fake = served
    order = place(base, pid)
    fake.call("/_test/fail_creates", {"count": 1})
    url = urlsplit(order["pay_url"])
    status, _, page = http("GET", base + url.path + "?" + url.query)
    assert status == 503 and "支付通道暂时没有响应" in page
    assert view(base, order)["status"] == "pending"
    session = checkout(base, order, fake)   # the next visit works
    assert fake.pay(session)["answers"][0][0] == 200
    assert view(base, order)["status"] == "delivered"


def test_the_panel_adds_edits_and_tests_a_stripe_channel(app, client):
    """The channel form takes Stripe's fields; the secrets are write-only (never in a page,
    kept when left empty); Test asks Stripe whether it takes the key."""
    import re

    import sqlalchemy as sa

    from kamengd.extensions import db
    from kamengd.payments.models import PaymentChannel
    from kamengd.payments.services import channel_secrets
    from kamengd.context import get_vault
    from panel_support import login, make_staff

    fake = FakeStripe("http://127.0.0.1:9/unused")
    try:
        client.set_cookie("lang", "en")
        login(client, make_staff(app, "admin"))
        csrf = lambda html: re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)   # noqa: E731
        form = client.get("/admin/channels/new?type=stripe").get_data(as_text=True)
        assert 'name="secret_key" type="password"' in form and 'name="webhook_secret"' in form
        code = f"st{secrets.token_hex(3)}"
        added = client.post("/admin/channels/new", data={
            "csrf_token": csrf(form), "type": "stripe", "code": code, "name": "Card", "sort_order": "3",
            "secret_key": fake.secret_key, "webhook_secret": fake.webhook_secret, "api_base": fake.base})
        assert added.status_code == 303, added.get_data(as_text=True)
        with app.app_context():
            channel = db.session.scalars(sa.select(PaymentChannel).where(PaymentChannel.code == code)).one()
            channel_id = channel.id
        edit = client.get(f"/admin/channels/{channel_id}").get_data(as_text=True)
        assert fake.secret_key not in edit and fake.webhook_secret not in edit and fake.base in edit
        saved = client.post(f"/admin/channels/{channel_id}", data={
            "csrf_token": csrf(edit), "name": "Card payments", "sort_order": "3", "secret_key": "",
            "webhook_secret": "", "api_base": fake.base})
        assert saved.status_code == 303
        with app.app_context():
            channel = db.session.get(PaymentChannel, channel_id)
            assert channel.name == "Card payments" and json.loads(channel.options) == {"api_base": fake.base}
            assert channel_secrets(get_vault(), channel) == {"secret_key": fake.secret_key,
                                                             "webhook_secret": fake.webhook_secret}
        listing = client.get("/admin/channels").get_data(as_text=True)
        tested = client.post(f"/admin/channels/{channel_id}/test", data={"csrf_token": csrf(listing)},
                             follow_redirects=True).get_data(as_text=True)
        assert "Stripe accepts the secret key" in tested
        assert "GET /v1/balance" in fake.state()["requests"]
        client.post(f"/admin/channels/{channel_id}/toggle", data={"csrf_token": csrf(listing), "enabled": "0"})
    finally:
        fake.stop()


def test_a_refund_through_stripe_gives_the_money_back_once(served):
    """`order refund --through-channel`: Stripe refunds the PaymentIntent (its idempotency key
    the payment's), then the order is refunded here, audited; asked again: refused, nothing more
    given back. A refund Stripe refuses changes nothing here."""
    config, pid, keys, base, fake = served
    order = place(base, pid)
    session = checkout(base, order, fake)
    assert fake.pay(session)["answers"][0][0] == 200
    intent = fake.state()["sessions"][session]["payment_intent"]
    done = run_cli("order", "refund", order["order_no"], "--reason", "buyer changed mind", "--through-channel",
                   "--json", config=config, check=True)
    answer = json.loads(done.out)
    assert answer["status"] == "refunded" and answer["refunded_at_gateway"] == "12.30"
    refunds = list(fake.state()["refunds"].values())
    assert [(r["payment_intent"], r["amount"]) for r in refunds] == [(intent, 1230)]
    assert view(base, order)["status"] == "refunded"
    again = run_cli("order", "refund", order["order_no"], "--reason", "again", "--through-channel", config=config)
    assert_one_line_error(again, "refunded")
    assert len(fake.state()["refunds"]) == 1
    audit = run_cli("audit", "verify", config=config)
    assert audit.returncode == 0

    # An order whose PaymentIntent Stripe does not know: Stripe refuses, nothing changes here.
    other = place(base, pid)
    session = checkout(base, other, fake)
    fake.pay(session)
    import sqlalchemy as sa

    from kamengd.app import create_app
    from kamengd.config import load_config
    from kamengd.extensions import db
    from kamengd.payments.models import Payment

    app = create_app(load_config(config, env={}))
    with app.app_context():   # a payment recorded under a trade Stripe never made (a staff fix-up gone wrong)
        db.session.execute(sa.update(Payment).where(Payment.trade_no == fake.state()["sessions"][session]
                                                    ["payment_intent"]).values(trade_no="pi_unknown"))
        db.session.commit()
        db.session.remove()
    refused = run_cli("order", "refund", other["order_no"], "--reason", "x", "--through-channel", config=config)
    assert_one_line_error(refused, "the gateway did not give the money back")
    assert view(base, other)["status"] == "delivered" and len(fake.state()["refunds"]) == 1



def test_a_new_signing_secret_works_at_once_and_the_address_keeps_the_key(served):
    """A webhook secret changed (by another process than the server's): the server's next
    webhook is checked with the new one, the old one is refused. Moving api_base without
    entering the secrets again is refused: the stored key never goes to an address it was not
    typed in for. A body that is not UTF-8 is refused, never a 500."""
    from kamengd.app import create_app
    from kamengd.config import load_config
    from kamengd.context import get_vault
    from kamengd.errors import InvalidRequest
    from kamengd.extensions import db
    from kamengd.payments import services as payments
    import sqlalchemy as sa
    from kamengd.payments.models import PaymentChannel

    config, pid, keys, base, fake = served
    first = place(base, pid)
    session = checkout(base, first, fake)
    assert fake.pay(session)["answers"][0][0] == 200   # the server has cached the channel now
    app = create_app(load_config(config, env={}))
    new_secret = f"whsec_{secrets.token_urlsafe(24)}"
    with app.app_context():
        channel = db.session.scalars(sa.select(PaymentChannel).where(PaymentChannel.code == "stripe")).one()
        with pytest.raises(InvalidRequest, match="api_base"):
            payments.update_channel(db.session, get_vault(), channel, name=channel.name, sort_order=0,
                                    options={"api_base": "http://127.0.0.1:9/elsewhere"}, actor="t")
        db.session.rollback()
        channel = db.session.scalars(sa.select(PaymentChannel).where(PaymentChannel.code == "stripe")).one()
        payments.update_channel(db.session, get_vault(), channel, name=channel.name, sort_order=0,
                                options={"api_base": fake.base, "webhook_secret": new_secret}, actor="t")
        db.session.commit()
        db.session.remove()
    order = place(base, pid)
    session = checkout(base, order, fake)
    assert fake.pay(session, secret=fake.webhook_secret)["answers"][0][0] == 400   # the old secret
    assert view(base, order)["status"] == "pending"
    assert fake.pay(session, secret=new_secret)["answers"][0][0] == 200
    assert view(base, order)["status"] == "delivered"
    request = urllib.request.Request(f"{base}/pay/stripe/notify", data=b"\xff\xfe\x00junk", method="POST",
                                     headers={"Content-Type": "application/json", "Stripe-Signature": "t=1,v1=ab"})
    try:
        urllib.request.urlopen(request, timeout=30)
        status = 200
    except urllib.error.HTTPError as exc:
        status = exc.code
    assert status == 400

"""The WeChat Pay (API v3, Native) channel end to end (W4): a real kamengd server, and a local
WeChat Pay in its own process (tests/fake_gateways/wechatpay_server.py) that checks kamengd's
WECHATPAY2-SHA256-RSA2048 requests with the merchant's public key, signs its answers and
notifications with the platform's key and encrypts their resource with the APIv3 key; the key
pairs, the platform certificate and the APIv3 key are all made for the test. On SQLite and MariaDB."""
from __future__ import annotations

import datetime as dt
import json
import re
import secrets
import string
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from conftest import assert_one_line_error, free_port, install_shop, run_cli
from test_channel_stripe import http, place, view
from test_concurrency import BUSY_SCHEDULER, start_layout

FAKE = Path(__file__).parent / "fake_gateways" / "wechatpay_server.py"
LAYOUTS = ("waitress", "gunicorn", "gunicorn+scheduler", "two-servers")
MCHID = "1900009191"
APPID = "wxd678efh567hg6787"


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_private(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _pem_public(key) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _certificate(key) -> tuple[str, str]:
    """A platform certificate as WeChat Pay issues one (self-signed here): its PEM and serial."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Tenpay.com Root CA"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tenpay.com")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1825)).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode(), format(cert.serial_number, "X")


def _apiv3_key() -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(32))


class FakeWeChatPay:
    """The merchant's credentials and WeChat Pay's, made here, and WeChat Pay itself in a process.
    `public_key_mode`: the platform key as the newer 微信支付公钥 (PUB_KEY_ID_…) instead of a
    platform certificate."""

    def __init__(self, tmp: Path, *, public_key_mode: bool = False):
        merchant, platform = _key(), _key()
        self.platform = platform   # (only the fake and a test that signs garbage use it)
        self.private_key = _pem_private(merchant)
        self.merchant_serial = secrets.token_hex(20).upper()
        if public_key_mode:
            self.platform_key = _pem_public(platform)
            self.platform_serial = f"PUB_KEY_ID_0119000091912025{secrets.randbelow(10**12):012d}"
        else:
            self.platform_key, self.platform_serial = _certificate(platform)
        self.apiv3_key = _apiv3_key()
        config = tmp / f"wechatpay-{secrets.token_hex(4)}.json"
        config.write_text(json.dumps({
            "mchid": MCHID, "appid": APPID, "merchant_serial": self.merchant_serial,
            "merchant_public_pem": _pem_public(merchant), "platform_private_pem": _pem_private(platform),
            "platform_serial": self.platform_serial, "apiv3_key": self.apiv3_key}))
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, str(FAKE), str(self.port), str(config)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def options(self, **change) -> list[str]:
        given = {"mchid": MCHID, "appid": APPID, "merchant_serial_no": self.merchant_serial,
                 "private_key": self.private_key, "apiv3_key": self.apiv3_key,
                 "platform_public_key": self.platform_key, "platform_serial": self.platform_serial,
                 "api_base": self.base, **change}
        return [part for name, value in given.items() for part in ("--option", f"{name}={value}")]

    def call(self, path: str, payload: dict | None = None):
        data = json.dumps(payload).encode() if payload is not None else None
        with urllib.request.urlopen(urllib.request.Request(self.base + path, data=data), timeout=60) as resp:
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
    """(config, product id, keys, fake WeChat Pay): the channel `wxpay` added, no server yet."""
    config, pid, keys = install_shop(backend, databases, tmp_path, product="微信月卡 · 会员", price="6.60",
                                     keys=20, prefix="WX")
    fake = FakeWeChatPay(tmp_path)
    run_cli("channel", "add", "--type", "wechatpay", "--code", "wxpay", "--name", "微信支付",
            *fake.options(), config=config, check=True)
    yield config, pid, keys, fake
    fake.stop()


def qr_page(base: str, order: dict) -> str:
    url = urlsplit(order["pay_url"])
    assert url.path == "/pay/wxpay/start"
    status, _, page = http("GET", base + url.path + "?" + url.query)
    assert status == 200, page
    return page


def order_detail(config, order_no: str) -> dict:
    return json.loads(run_cli("order", "show", order_no, "--json", config=config, check=True).out)


@pytest.mark.slow
@pytest.mark.layouts(*LAYOUTS)
def test_scan_and_pay_end_to_end(layout, shop, start_server):
    """Each layout as deployed: the pay page shows the Native order's code_url as a QR code;
    the buyer pays; WeChat Pay's notification (to one server, its retries to another) delivers
    the keys once."""
    config, pid, keys, fake = shop
    bases = start_layout(layout, start_server, config)
    run_cli("setting", "set", "site.url", bases[0], config=config, check=True)   # WeChat Pay notifies site.url
    base = bases[-1]
    order = place(base, pid, quantity=2, channel="wxpay")
    assert order["amount"] == "13.20"
    page = qr_page(base, order)
    assert "<svg" in page and "13.20 CNY" in page and 'data-seconds-left="' in page
    assert qr_page(bases[0], order).count("<svg") == 1   # a reload: the same Native order, not a second one
    state = fake.state()
    trade = state["trades"][order["order_no"]]
    assert trade["total"] == 1320 and trade["notify_url"] == f"{bases[0]}/pay/wxpay/notify"
    assert trade["description"] == "微信月卡 · 会员" and trade["time_expire"].endswith("+08:00")
    assert state["requests"].count("POST /v3/pay/transactions/native") == 1

    answer = fake.pay(order["order_no"], times=2)
    assert answer["answers"] == [[204, ""], [204, ""]], answer
    for target in bases[1:]:   # WeChat Pay's retry reaching another server
        assert fake.pay(order["order_no"], notify=f"{target}/pay/wxpay/notify")["answers"] == [[204, ""]]
    shown = view(base, order)
    assert shown["status"] == "delivered" and len(shown["keys"]) == 2 and set(shown["keys"]) <= set(keys)
    payments = order_detail(config, order["order_no"])["payments"]
    assert [p["trade_no"] for p in payments] == [answer["transaction"]["transaction_id"]]
    url = urlsplit(order["pay_url"])
    status, headers, _ = http("GET", base + url.path + "?" + url.query)
    assert status == 303 and f"/order/{order['order_no']}" in headers["Location"]
    logs = start_server.stop_all()
    assert not any("Traceback" in log for log in logs.values()), logs


@pytest.fixture
def served(shop, start_server):
    config, pid, keys, fake = shop
    base = start_server(config, env=BUSY_SCHEDULER)
    run_cli("setting", "set", "site.url", base, config=config, check=True)
    return config, pid, keys, base, fake


FORGERIES = {"other key": {"forge": True}, "unknown serial": {"serial": "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"},
             "stale": {"age": 301}, "unsigned": {"unsigned": True}, "other APIv3 key": {"apiv3_key": _apiv3_key()},
             "other mchid": {"mchid": "1900000109"}, "other appid": {"appid": "wx8888888888888888"}}


@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_a_forged_notification_changes_nothing(served, forgery):
    config, pid, keys, base, fake = served
    order = place(base, pid, channel="wxpay")
    qr_page(base, order)
    answers = fake.pay(order["order_no"], **FORGERIES[forgery])["answers"]
    assert answers[0][0] == 400 and json.loads(answers[0][1])["code"] == "FAIL", answers
    assert view(base, order)["status"] == "pending"
    assert order_detail(config, order["order_no"])["payments"] == []


def test_garbage_at_the_notify_address_is_refused_cleanly(served):
    """Not UTF-8, not JSON, bad headers, and bodies signed by the platform that hold no resource
    our APIv3 key opens: 400 {"code": "FAIL"} (WeChat Pay sends again), never a 500."""
    config, pid, keys, base, fake = served
    order = place(base, pid, channel="wxpay")
    qr_page(base, order)
    genuine = fake.pay(order["order_no"], deliver=False)
    sys.path.insert(0, str(FAKE.parent))
    from wechatpay_server import platform_headers   # the fake's signing, to sign what is no event

    signed = lambda body: (body, platform_headers(body, fake.platform, fake.platform_serial))   # noqa: E731
    attempts = [(b"\xff\xfe\x00junk", genuine["headers"]),
                (genuine["body"].encode(), {**genuine["headers"], "Wechatpay-Timestamp": "-1"}),
                (genuine["body"].encode(), {**genuine["headers"], "Wechatpay-Timestamp": "9" * 40}),
                (genuine["body"].encode(), {**genuine["headers"], "Wechatpay-Signature": "not base64!"}),
                (genuine["body"].encode(), {**genuine["headers"], "Wechatpay-Nonce": "another"}),
                signed(b"\xff\xfe\x00junk"), signed(b"{}"), signed(b"[1, 2]"), signed(b'{"resource": "x"}'),
                signed(json.dumps({"resource": {**json.loads(genuine["body"])["resource"],
                                                "algorithm": "AEAD_AES_128_GCM"}}).encode()),
                signed(json.dumps({"resource": {**json.loads(genuine["body"])["resource"],
                                                "ciphertext": "bm90IGEgY2lwaGVydGV4dA=="}}).encode())]
    for body, headers in attempts:
        status, _, text = http_raw(f"{base}/pay/wxpay/notify", body, headers)
        assert status == 400 and json.loads(text)["code"] == "FAIL", (body[:40], status, text)
    assert view(base, order)["status"] == "pending"
    assert order_detail(config, order["order_no"])["payments"] == []


def http_raw(url: str, body: bytes, headers: dict):
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, resp.headers, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode()


@pytest.mark.parametrize("case", ["wrong amount", "wrong currency", "closed", "not paid"])
def test_what_the_notification_says_is_obeyed(served, case):
    config, pid, keys, base, fake = served
    order = place(base, pid, channel="wxpay")
    qr_page(base, order)
    ask = {"wrong amount": {"amount": 659}, "wrong currency": {"currency": "USD"},
           "closed": {"status": "CLOSED"}, "not paid": {"status": "NOTPAY"}}[case]
    assert fake.pay(order["order_no"], **ask)["answers"] == [[204, ""]]   # genuine: acknowledged
    shown = view(base, order)
    if case in ("closed", "not paid"):
        assert shown["status"] == "pending"
        assert order_detail(config, order["order_no"])["payments"] == []
    else:
        assert shown["status"] == "held" and "keys" not in shown
    if case == "wrong currency":
        assert "USD" in order_detail(config, order["order_no"])["flag"]


def test_concurrent_copies_of_one_notification_deliver_once(served):
    config, pid, keys, base, fake = served
    order = place(base, pid, channel="wxpay")
    qr_page(base, order)
    genuine = fake.pay(order["order_no"], deliver=False)
    body = genuine["body"].encode()

    def send(_):
        return http_raw(f"{base}/pay/wxpay/notify", body, genuine["headers"])[0]

    with ThreadPoolExecutor(10) as pool:
        assert set(pool.map(send, range(10))) == {204}
    shown = view(base, order)
    assert shown["status"] == "delivered" and len(shown["keys"]) == 1
    detail = order_detail(config, order["order_no"])
    assert len(detail["payments"]) == 1
    assert detail["payments"][0]["trade_no"] == genuine["transaction"]["transaction_id"]
    # WeChat Pay's replay, minutes later, through its own sender: acknowledged, nothing more.
    again = fake.call("/_test/send", {"notify": f"{base}/pay/wxpay/notify", "body": genuine["body"],
                                      "headers": genuine["headers"], "times": 2})
    assert again["answers"] == [[204, ""], [204, ""]]
    assert len(view(base, order)["keys"]) == 1 and len(order_detail(config, order["order_no"])["payments"]) == 1


def test_a_dropped_notification_is_reconciled_by_run_job(shop, start_server):
    """The notification never comes: `kamengd run-job reconcile_payments` (the orders a few
    minutes old, as the scheduler would find them) asks WeChat Pay about each order, delivers
    the paid one once and leaves the unpaid one; the late notification changes nothing."""
    import sqlalchemy as sa

    from kamengd.app import create_app
    from kamengd.config import load_config
    from kamengd.extensions import db
    from kamengd.orders.models import Order

    config, pid, keys, fake = shop
    base = start_server(config, env=BUSY_SCHEDULER)   # as deployed: its scheduler may reconcile first
    run_cli("setting", "set", "site.url", base, config=config, check=True)
    unpaid = place(base, pid, channel="wxpay")
    qr_page(base, unpaid)
    order = place(base, pid, channel="wxpay")
    qr_page(base, order)
    never_opened = place(base, pid, channel="wxpay")   # no Native order made: nothing to ask
    assert fake.pay(order["order_no"], deliver=False)["delivered"] is False
    app = create_app(load_config(config, env={}))
    with app.app_context():
        for row in db.session.scalars(sa.select(Order).where(Order.order_no.in_(
                [unpaid["order_no"], order["order_no"], never_opened["order_no"]]))):
            row.created_at -= dt.timedelta(minutes=3)   # (in Python: SQLite has no datetime arithmetic)
        db.session.commit()
        db.session.remove()
    ran = json.loads(run_cli("run-job", "reconcile_payments", "--json", config=config, check=True).out)
    assert ran["counts"]["completed"] <= 1 and ran["counts"]["errors"] == 0, ran
    assert view(base, order)["status"] == "delivered" and view(base, unpaid)["status"] == "pending"
    assert fake.state()["requests"].count("GET /v3/pay/transactions/out-trade-no/" + order["order_no"]) >= 1
    late = fake.pay(order["order_no"])
    assert late["answers"] == [[204, ""]]
    assert len(view(base, order)["keys"]) == 1
    detail = order_detail(config, order["order_no"])
    assert [p["trade_no"] for p in detail["payments"]] == [late["transaction"]["transaction_id"]]
    logs = start_server.stop_all()
    assert not any("Traceback" in log for log in logs.values()), logs


def test_wechatpay_down_a_forged_answer_and_a_bad_set_up(served):
    """WeChat Pay failing, or an answer not signed by the platform key: the buyer gets the
    "try again" page and nothing is shown to scan; the next visit works. Bad options are
    refused by the CLI in one line, the secrets never listed."""
    config, pid, keys, base, fake = served
    order = place(base, pid, channel="wxpay")
    url = urlsplit(order["pay_url"])
    for trouble in ("/_test/fail_creates", "/_test/forge_answers"):
        fake.call(trouble, {"count": 1})
        status, _, page = http("GET", base + url.path + "?" + url.query)
        assert status == 503 and "支付通道暂时没有响应" in page and "<svg" not in page
    assert "<svg" in qr_page(base, order)   # the next visit works
    assert fake.pay(order["order_no"])["answers"] == [[204, ""]]
    assert view(base, order)["status"] == "delivered"

    cases = {"private_key": {"private_key": "not-a-key"}, "apiv3_key": {"apiv3_key": "short-key-1234"},
             "platform_public_key": {"platform_public_key": "junk"},
             "platform_serial": {"platform_serial": "ABCDEF0123456789"},   # not the certificate's serial
             "mchid": {"mchid": "19000x"}, "api_base": {"api_base": "ftp://example.com"}}
    for option, change in cases.items():
        refused = run_cli("channel", "add", "--type", "wechatpay", "--code", "wx2", *fake.options(**change),
                          config=config)
        assert_one_line_error(refused, option)
    missing = run_cli("channel", "add", "--type", "wechatpay", "--code", "wx2", "--option", f"mchid={MCHID}",
                      config=config)
    assert_one_line_error(missing, "required")
    listing = run_cli("channel", "list", "--json", config=config, check=True).out
    assert "wx2" not in listing and fake.apiv3_key not in listing
    body = "".join(fake.private_key.splitlines()[1:-1])
    assert body[:40] not in listing


def test_a_refund_through_wechatpay_gives_the_money_back_once(served):
    """`order refund --through-channel`: WeChat Pay refunds the transaction (out_refund_no the
    payment's own), then the order is refunded here, audited; asked again: refused, nothing more
    given back. A refund WeChat Pay refuses changes nothing here."""
    import sqlalchemy as sa

    from kamengd.app import create_app
    from kamengd.config import load_config
    from kamengd.extensions import db
    from kamengd.payments.models import Payment

    config, pid, keys, base, fake = served
    order = place(base, pid, channel="wxpay")
    qr_page(base, order)
    paid = fake.pay(order["order_no"])
    assert paid["answers"] == [[204, ""]]
    done = run_cli("order", "refund", order["order_no"], "--reason", "买家退款", "--through-channel", "--json",
                   config=config, check=True)
    answer = json.loads(done.out)
    assert answer["status"] == "refunded" and answer["refunded_at_gateway"] == "6.60"
    refunds = list(fake.state()["refunds"].values())
    assert [(r["transaction_id"], r["amount"]["refund"], r["amount"]["total"]) for r in refunds] == [
        (paid["transaction"]["transaction_id"], 660, 660)]
    assert re.fullmatch(r"kamengd-refund-\d+", refunds[0]["out_refund_no"])
    assert view(base, order)["status"] == "refunded"
    again = run_cli("order", "refund", order["order_no"], "--reason", "again", "--through-channel", config=config)
    assert_one_line_error(again, "refunded")
    assert len(fake.state()["refunds"]) == 1
    assert run_cli("audit", "verify", config=config).returncode == 0

    other = place(base, pid, channel="wxpay")
    qr_page(base, other)
    made = fake.pay(other["order_no"])["transaction"]["transaction_id"]
    app = create_app(load_config(config, env={}))
    with app.app_context():   # a payment recorded under a transaction WeChat Pay never made
        db.session.execute(sa.update(Payment).where(Payment.trade_no == made)
                           .values(trade_no="4200000000000000000000000000"))
        db.session.commit()
        db.session.remove()
    refused = run_cli("order", "refund", other["order_no"], "--reason", "x", "--through-channel", config=config)
    assert_one_line_error(refused, "the gateway did not give the money back")
    assert view(base, other)["status"] == "delivered" and len(fake.state()["refunds"]) == 1


def test_the_panel_adds_edits_and_tests_a_wechatpay_channel(app, client, tmp_path):
    """The form takes WeChat Pay's fields (the 微信支付公钥 this time); the private key and the
    APIv3 key are write-only (never in a page, kept when left empty); Test asks WeChat Pay about
    an order that cannot exist and checks its signed answer."""
    import sqlalchemy as sa

    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.payments.models import PaymentChannel
    from kamengd.payments.services import channel_secrets
    from panel_support import login, make_staff

    fake = FakeWeChatPay(tmp_path, public_key_mode=True)
    try:
        client.set_cookie("lang", "en")
        login(client, make_staff(app, "admin"))
        csrf = lambda html: re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)   # noqa: E731
        form = client.get("/admin/channels/new?type=wechatpay").get_data(as_text=True)
        assert 'name="private_key" type="password"' in form and 'name="apiv3_key" type="password"' in form
        assert "APIv3 key" in form and 'name="platform_public_key"' in form
        code = f"wx{secrets.token_hex(3)}"
        # Pasted into one-line fields, the PEM's line breaks are lost: still read.
        one_line = lambda pem: " ".join(pem.split("\n"))   # noqa: E731
        fields = {"mchid": MCHID, "appid": APPID, "merchant_serial_no": fake.merchant_serial,
                  "private_key": one_line(fake.private_key), "apiv3_key": fake.apiv3_key,
                  "platform_public_key": one_line(fake.platform_key), "platform_serial": fake.platform_serial,
                  "api_base": fake.base}
        added = client.post("/admin/channels/new", data={"csrf_token": csrf(form), "type": "wechatpay", "code": code,
                                                          "name": "WeChat", "sort_order": "2", **fields})
        assert added.status_code == 303, added.get_data(as_text=True)
        with app.app_context():
            channel_id = db.session.scalars(sa.select(PaymentChannel.id).where(PaymentChannel.code == code)).one()
        edit = client.get(f"/admin/channels/{channel_id}").get_data(as_text=True)
        assert fake.apiv3_key not in edit and fake.private_key.splitlines()[1] not in edit
        assert fake.platform_serial in edit
        saved = client.post(f"/admin/channels/{channel_id}", data={
            "csrf_token": csrf(edit), "name": "微信支付", "sort_order": "2",
            **{**fields, "private_key": "", "apiv3_key": ""}})
        assert saved.status_code == 303, saved.get_data(as_text=True)
        with app.app_context():
            channel = db.session.get(PaymentChannel, channel_id)
            assert channel.name == "微信支付"
            assert channel_secrets(get_vault(), channel) == {"private_key": one_line(fake.private_key).strip(),
                                                             "apiv3_key": fake.apiv3_key}
        listing = client.get("/admin/channels").get_data(as_text=True)
        tested = client.post(f"/admin/channels/{channel_id}/test", data={"csrf_token": csrf(listing)},
                             follow_redirects=True).get_data(as_text=True)
        assert "verifies with the platform key" in tested, tested
        assert "GET /v3/pay/transactions/out-trade-no/KAMENGDPROBE0" in fake.state()["requests"]
        fake.call("/_test/forge_answers", {"count": 1})
        tested = client.post(f"/admin/channels/{channel_id}/test", data={"csrf_token": csrf(listing)},
                             follow_redirects=True).get_data(as_text=True)
        assert "does not verify with the platform key" in tested
    finally:
        fake.stop()

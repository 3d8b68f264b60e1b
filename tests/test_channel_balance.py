"""The balance channel (W4, CONTRACT §5): a buyer pays an order from its own balance, signed in
to the portal as a member or an agent, on SQLite and MariaDB.

The debit (a ledger movement whose cause names the order) and the payment (recorded by the
path every callback ends in, which delivers the order) are one transaction: a balance that
does not cover the order changes nothing, a second press charges nothing, a refund gives the
money back to the balance that paid. End to end in every layout: one member paying five
orders at once from a balance that covers three, and one order paid from five requests at once.
"""
from __future__ import annotations

import http.cookiejar
import io
import json
import re
import secrets
import threading
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa

from conftest import PASSWORD, assert_one_line_error, install_shop, run_cli, write_password
from panel_support import login, make_staff
from test_agent_portal import sign_in
from test_concurrency import start_layout
from test_sandbox import csrf_of, place, view

LAYOUTS = ("waitress", "gunicorn", "gunicorn+scheduler", "two-servers")


@pytest.fixture
def shop(app):
    """A product at 9.90 (`id`) with five keys, a balance channel, a member holding 25.00 and one holding 5.00."""
    from kamengd.agents import services as agents
    from kamengd.catalog.services import create_product
    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.inventory.services import import_keys
    from kamengd.payments.models import PaymentChannel
    from kamengd.payments.services import add_channel

    t = secrets.token_hex(3)
    with app.app_context():
        product = create_product(db.session, name=f"balance {t}", price_cents=990, actor="t")
        stock = [f"BAL-{t}-{i}-{secrets.token_hex(4)}" for i in range(5)]
        import_keys(db.session, get_vault(), product_id=product.id, fh=io.BytesIO("\n".join(stock).encode()),
                    actor="t")
        channel = add_channel(db.session, get_vault(), channel_type="balance", code=f"bal{t}", actor="t",
                              name="余额")
        rich = agents.create_member(db.session, username=f"rich-{t}", password=PASSWORD, actor="t")
        agents.credit_balance(db.session, rich, 2500, reason="top-up", actor="t")
        poor = agents.create_member(db.session, username=f"poor-{t}", password=PASSWORD, actor="t")
        agents.credit_balance(db.session, poor, 500, reason="top-up", actor="t")
        db.session.commit()
        found = {"id": product.id, "keys": stock, "channel": channel.code, "channel_id": channel.id,
                 "rich": (rich.id, rich.username), "poor": (poor.id, poor.username)}
        db.session.remove()
    yield found
    with app.app_context():   # the shared shop offers it to no later test
        db.session.execute(sa.update(PaymentChannel).where(PaymentChannel.id == found["channel_id"])
                           .values(is_enabled=False))
        db.session.commit()
        db.session.remove()


def balance_of(app, agent_id: int) -> int:
    from kamengd.extensions import db
    from kamengd.ledger import services as ledger

    with app.app_context():
        found = ledger.balances(db.session, agent_id)["available"]
        db.session.remove()
        return found


def books_ok(app) -> None:
    from kamengd.extensions import db
    from kamengd.ledger import services as ledger

    with app.app_context():
        _, problems = ledger.verify(db.session)
        db.session.remove()
    assert problems == []


def payments_of(app, order_no: str) -> list:
    from kamengd.extensions import db
    from kamengd.orders.models import Order
    from kamengd.payments.models import Payment

    with app.app_context():
        rows = db.session.execute(sa.select(Payment.trade_no, Payment.amount_cents, Payment.status, Payment.source)
                                  .join(Order, Order.id == Payment.order_id).where(Order.order_no == order_no)).all()
        db.session.remove()
        return [tuple(r) for r in rows]


def test_a_member_signs_in_pays_from_its_balance_and_gets_the_keys(backend, app, client, shop):
    client.set_cookie("lang", "en")
    order = place(client, shop, quantity=2)
    pay = urlsplit(order["pay_url"])
    assert pay.path == f"/pay/{shop['channel']}/balance"
    page = client.get(f"{pay.path}?{pay.query}")
    html = page.get_data(as_text=True)
    # Not signed in: the page asks for it, and the sign-in comes back here.
    assert page.status_code == 200 and "19.80 CNY" in html and "Sign in to pay" in html
    login_url = re.search(r'href="(/agent/login\?next=[^"]+)"', html).group(1).replace("&amp;", "&")
    login_page = client.get(login_url).get_data(as_text=True)
    signed = client.post("/agent/login", data={"csrf_token": csrf_of(login_page), "username": shop["rich"][1],
                                                "password": PASSWORD,
                                                "next": urllib.parse.unquote(login_url.split("next=", 1)[1])})
    assert signed.status_code == 302 and urlsplit(signed.headers["Location"]).path == pay.path

    html = client.get(f"{pay.path}?{pay.query}").get_data(as_text=True)
    assert "25.00 CNY" in html and shop["rich"][1] in html and "Pay from my balance" in html
    form = {"csrf_token": csrf_of(html), "order_no": order["order_no"], "token": order["token"]}
    paid = client.post(pay.path, data=form)
    assert paid.status_code == 303 and f"/order/{order['order_no']}" in paid.headers["Location"]
    shown = view(client, order)
    assert shown["status"] == "delivered" and len(shown["keys"]) == 2 and set(shown["keys"]) <= set(shop["keys"])
    assert balance_of(app, shop["rich"][0]) == 2500 - 1980
    # Pressed again (a double click, the back button): nothing charged twice.
    assert client.post(pay.path, data=form).status_code == 303
    assert balance_of(app, shop["rich"][0]) == 2500 - 1980
    assert payments_of(app, order["order_no"]) == [(f"balance-{order['order_no']}", 1980, "received", "balance")]
    # The member's statement names the order.
    statement = client.get("/agent/ledger").get_data(as_text=True)
    assert order["order_no"] in statement and "-19.80" in statement
    books_ok(app)


def test_a_balance_that_does_not_cover_the_order_changes_nothing(backend, app, client, shop):
    client.set_cookie("lang", "en")
    order = place(client, shop)
    assert sign_in(client, shop["poor"][1]).status_code == 302
    pay = urlsplit(order["pay_url"])
    html = client.get(f"{pay.path}?{pay.query}").get_data(as_text=True)
    assert "5.00 CNY" in html and "does not cover" in html and "Pay from my balance" not in html
    # Posted all the same (a stale page): refused with the reason, nothing moved.
    token = csrf_of(client.get("/agent/account").get_data(as_text=True))
    refused = client.post(pay.path, data={"csrf_token": token, "order_no": order["order_no"],
                                          "token": order["token"]})
    assert refused.status_code == 402 and "does not cover" in refused.get_data(as_text=True)
    assert view(client, order)["status"] == "pending"
    assert balance_of(app, shop["poor"][0]) == 500 and payments_of(app, order["order_no"]) == []
    books_ok(app)


def test_only_the_orders_buyer_and_a_signed_in_account_can_pay(backend, app, client, shop):
    client.set_cookie("lang", "en")
    order = place(client, shop)
    pay = urlsplit(order["pay_url"])
    assert "Sign in to pay" in client.get(f"{pay.path}?{pay.query}").get_data(as_text=True)
    # Signed out, a POST is sent to sign in first; nothing is paid.
    html = client.get(f"/product/{shop['id']}").get_data(as_text=True)
    answer = client.post(pay.path, data={"csrf_token": csrf_of(html), "order_no": order["order_no"],
                                         "token": order["token"]})
    assert answer.status_code == 303 and urlsplit(answer.headers["Location"]).path == "/agent/login"
    assert view(client, order)["status"] == "pending"
    # A signed-in stranger without the order's token sees no order.
    stranger = app.test_client()
    assert sign_in(stranger, shop["rich"][1]).status_code == 302
    assert stranger.get(f"{pay.path}?order_no={order['order_no']}").status_code == 404
    page = stranger.get("/agent/").get_data(as_text=True)
    assert stranger.post(pay.path, data={"csrf_token": csrf_of(page), "order_no": order["order_no"],
                                         "token": "wrong"}).status_code == 404
    # The channel has no callback: anything sent to it is refused and changes nothing.
    forged = client.get(f"/pay/{shop['channel']}/notify?out_trade_no={order['order_no']}&trade_no=x&money=9.90"
                        "&trade_status=TRADE_SUCCESS")
    assert forged.get_data(as_text=True) == "fail"
    # Another channel's address for the order: not found either.
    assert client.get(f"/pay/nosuch/balance?{pay.query}").status_code == 404
    assert view(client, order)["status"] == "pending" and balance_of(app, shop["rich"][0]) == 2500
    # The sign-in's `next` goes back to a balance page only, never elsewhere.
    for evil in ("https://evil.example/pay/x/balance", "//evil.example/pay/x/balance", "/pay/x/start"):
        page = stranger.get("/agent/login?next=" + urllib.parse.quote(evil)).get_data(as_text=True)
        assert evil not in page


def test_refund_gives_the_money_back_to_the_balance_once(backend, app, client, shop):
    from kamengd.errors import Conflict, InvalidRequest
    from kamengd.extensions import db
    from kamengd.orders import staff as order_staff
    from kamengd.payments.refunds import refund_through_channel
    from kamengd.context import get_vault

    client.set_cookie("lang", "en")
    order = place(client, shop)
    assert sign_in(client, shop["rich"][1]).status_code == 302
    pay = urlsplit(order["pay_url"])
    html = client.get(f"{pay.path}?{pay.query}").get_data(as_text=True)
    client.post(pay.path, data={"csrf_token": csrf_of(html), "order_no": order["order_no"], "token": order["token"]})
    assert balance_of(app, shop["rich"][0]) == 2500 - 990
    with app.app_context():
        with pytest.raises(InvalidRequest, match="paid from a balance"):
            refund_through_channel(db.session, get_vault(), order_no=order["order_no"], reason="x", actor="t")
        db.session.rollback()
        done = order_staff.refund_order(db.session, order_no=order["order_no"], reason="wrong game", actor="t")
        assert done.to_balance_cents == 990
        db.session.commit()
        with pytest.raises(Conflict):
            order_staff.refund_order(db.session, order_no=order["order_no"], reason="again", actor="t")
        db.session.rollback()
        db.session.remove()
    assert balance_of(app, shop["rich"][0]) == 2500
    assert view(client, order)["status"] == "refunded"
    books_ok(app)


def test_an_expired_or_unpaid_elsewhere_order_is_refused(backend, app, client, shop):
    import datetime as dt

    from kamengd.agents.models import Agent
    from kamengd.errors import Conflict, InvalidRequest
    from kamengd.extensions import db
    from kamengd.orders.models import Order
    from kamengd.payments.balance import pay_from_balance

    order = place(client, shop)
    with app.app_context():
        row = db.session.scalars(sa.select(Order).where(Order.order_no == order["order_no"])).one()
        payer = db.session.get(Agent, shop["rich"][0])
        with pytest.raises(InvalidRequest, match="not paid from a balance"):
            pay_from_balance(db.session, code="other", order=row, payer=payer)
        db.session.rollback()
        late = row.expires_at + dt.timedelta(seconds=1)
        with pytest.raises(Conflict, match="expired"):
            pay_from_balance(db.session, code=shop["channel"], order=row, payer=payer, now=late)
        db.session.rollback()
        db.session.remove()
    assert balance_of(app, shop["rich"][0]) == 2500 and view(client, order)["status"] == "pending"


def test_one_order_paid_from_ten_threads_at_once_is_charged_once(backend, app, client, shop):
    """Ten presses at once, each in its own transaction: one payment, one debit, the rest see it paid."""
    from kamengd.agents.models import Agent
    from kamengd.errors import KamengdError
    from kamengd.extensions import db
    from kamengd.orders.models import Order
    from kamengd.payments.balance import pay_from_balance

    order = place(client, shop)
    barrier = threading.Barrier(10)

    def press(_):
        with app.app_context():
            try:
                row = db.session.scalars(sa.select(Order).where(Order.order_no == order["order_no"])).one()
                payer = db.session.get(Agent, shop["rich"][0])
                db.session.rollback()   # SQLite: no write lock held while the others get here
                barrier.wait(10)
                outcome = pay_from_balance(db.session, code=shop["channel"], order=row, payer=payer)
                db.session.commit()
                return outcome.reason
            except KamengdError as exc:
                db.session.rollback()
                return exc.code
            finally:
                db.session.remove()

    with ThreadPoolExecutor(10) as pool:
        said = list(pool.map(press, range(10)))
    assert said.count("paid") == 1 and all(s in ("paid", "already recorded", "conflict", "busy") for s in said), said
    assert balance_of(app, shop["rich"][0]) == 2500 - 990
    assert view(client, order)["status"] == "delivered"
    assert len(payments_of(app, order["order_no"])) == 1
    books_ok(app)


def test_an_order_on_a_sub_station_is_paid_on_the_shops_own_address(backend, app, client, shop):
    """A sub-station has no portal (its sign-in is the shop's): a balance order placed there is
    paid on the shop's own address, where the buyer can sign in; the seller stays on the order."""
    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.orders.models import Order
    from kamengd.payments.models import PaymentChannel
    from kamengd.payments.services import build_pay_url

    order = place(client, shop)
    with app.app_context():
        row = db.session.scalars(sa.select(Order).where(Order.order_no == order["order_no"])).one()
        channel = db.session.get(PaymentChannel, shop["channel_id"])
        url = build_pay_url(get_vault(), channel, row, site_url="https://shop.example.com", product_name="x",
                            token=order["token"], return_site="https://alice.example.net/s/alice")
        db.session.remove()
    assert url.startswith(f"https://shop.example.com/pay/{shop['channel']}/balance?")


def test_the_panel_adds_and_tests_a_balance_channel(backend, app, client):
    from kamengd.extensions import db
    from kamengd.payments.models import PaymentChannel

    staff = make_staff(app, "admin")
    client.set_cookie("lang", "en")
    login(client, staff)
    form = client.get("/admin/channels/new?type=balance").get_data(as_text=True)
    assert "Balance (members and agents)" in form and 'name="key"' not in form
    code = f"b{secrets.token_hex(3)}"
    added = client.post("/admin/channels/new", data={"csrf_token": csrf_of(form), "type": "balance", "code": code,
                                                     "name": "余额支付", "sort_order": "5"})
    assert added.status_code == 303
    listing = client.get("/admin/channels").get_data(as_text=True)
    assert code in listing and "WeChat Pay (Native)" in listing and "PayPal" in listing
    with app.app_context():
        channel = db.session.scalars(sa.select(PaymentChannel).where(PaymentChannel.code == code)).one()
        channel_id = channel.id
        db.session.remove()
    tested = client.post(f"/admin/channels/{channel_id}/test", data={"csrf_token": csrf_of(listing)},
                         follow_redirects=True).get_data(as_text=True)
    assert "pay from their balance" in tested
    with app.app_context():
        db.session.execute(sa.update(PaymentChannel).where(PaymentChannel.id == channel_id).values(is_enabled=False))
        db.session.commit()
        db.session.remove()


def test_the_cli_adds_a_balance_channel(backend, make_install, tmp_path):
    cfg = make_install(backend)
    cli = lambda *a: json.loads(run_cli(*a, "--json", config=cfg.path, check=True).out)   # noqa: E731
    assert cli("channel", "add", "--type", "balance", "--code", "yue", "--name", "余额")["type"] == "balance"
    assert_one_line_error(run_cli("channel", "add", "--type", "balance", "--code", "yue2", "--option", "key=x",
                                  config=cfg.path), "not an option of balance")
    methods = [c for c in cli("channel", "list")["channels"] if c["code"] == "yue"]
    assert methods and methods[0]["type"] == "balance"


# --- end to end, in every layout ------------------------------------------------------------


class Browser:
    """One buyer's browser against a real server: cookies kept, redirects not followed."""

    def __init__(self):
        self.jar = http.cookiejar.CookieJar()

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kwargs):
                return None

        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), NoRedirect)

    def open(self, method: str, url: str, form: dict | None = None, json_body: dict | None = None):
        data = headers = None
        if form is not None:
            data, headers = urllib.parse.urlencode(form).encode(), {"Content-Type": "application/x-www-form-urlencoded"}
        elif json_body is not None:
            data, headers = json.dumps(json_body).encode(), {"Content-Type": "application/json"}
        request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
        try:
            with self.opener.open(request, timeout=60) as resp:
                return resp.status, resp.headers, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, exc.read().decode()


@pytest.mark.slow
@pytest.mark.layouts(*LAYOUTS)
def test_five_orders_at_once_from_a_balance_that_covers_three(layout, backend, databases, tmp_path, start_server):
    config, pid, keys = install_shop(backend, databases, tmp_path, product="余额 balance", price="9.90", keys=8,
                                     prefix="BE")
    cli = lambda *a: json.loads(run_cli(*a, "--json", config=config, check=True).out)   # noqa: E731
    cli("channel", "add", "--type", "balance", "--code", "yue", "--name", "余额")
    cli("member", "create", "--username", "mei", "--password-file", write_password(tmp_path))
    cli("balance", "credit", "--username", "mei", "--amount", "30.00", "--reason", "top-up")
    bases = start_layout(layout, start_server, config)

    buyer = Browser()
    placed = []
    for i in range(6):
        status, _, text = buyer.open("POST", f"{bases[i % len(bases)]}/api/v1/orders",
                                     json_body={"product_id": pid, "quantity": 1, "email": "b@example.com",
                                                "channel": "yue"})
        assert status == 201, text
        placed.append(json.loads(text))
    status, _, page = buyer.open("GET", f"{bases[0]}/agent/login")
    status, headers, _ = buyer.open("POST", f"{bases[0]}/agent/login",
                                    form={"csrf_token": csrf_of(page), "username": "mei", "password": PASSWORD})
    assert status == 302, status

    # The session's form token, read once: a page read once the balance is spent has no form.
    token = csrf_of(buyer.open("GET", f"{bases[0]}/agent/account")[2])

    def pay(args):
        index, order = args
        base = bases[index % len(bases)]
        url = urlsplit(order["pay_url"])
        assert buyer.open("GET", f"{base}{url.path}?{url.query}")[0] == 200
        return buyer.open("POST", f"{base}{url.path}", form={"csrf_token": token,
                                                             "order_no": order["order_no"],
                                                             "token": order["token"]})[0]

    # Five different orders at once: 3 × 9.90 fit in 30.00, the other two are refused whole.
    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(pay, enumerate(placed[:5])))
    assert sorted(answers) == [303, 303, 303, 402, 402], answers
    # The sixth order, from five requests at once: paid once (the balance covers no second one
    # anyway: the refusals are its own payment seen, or the balance).
    cli("balance", "credit", "--username", "mei", "--amount", "9.90", "--reason", "top-up")
    with ThreadPoolExecutor(5) as pool:
        again = list(pool.map(pay, [(i, placed[5]) for i in range(5)]))
    assert again.count(303) >= 1 and set(again) <= {303, 409}, again

    statuses = [json.loads(buyer.open("GET", f"{bases[0]}/api/v1/orders/{o['order_no']}?token={o['token']}")[2])
                for o in placed]
    delivered = [s for s in statuses if s["status"] == "delivered"]
    assert len(delivered) == 4 and [s["status"] for s in statuses].count("pending") == 2
    sold = [k for s in delivered for k in s["keys"]]
    assert len(sold) == len(set(sold)) == 4 and set(sold) <= set(keys)
    assert cli("balance", "show", "--username", "mei")["balance"] == "0.30"
    refunded = cli("order", "refund", delivered[0]["order_no"], "--reason", "a mistake")
    assert refunded["refunded_to_balance"] == "9.90"
    assert cli("balance", "show", "--username", "mei")["balance"] == "10.20"
    assert run_cli("ledger", "verify", config=config).returncode == 0
    logs = start_server.stop_all()
    assert not any("Traceback" in log for log in logs.values()), logs

"""Points taken off an order at checkout (积分抵扣, W5): a member signed in on the storefront pays
up to points.discount_share of an order with its points (points.value per 1.00), the rest at
the gateway. The points are spent in the order's transaction (never below zero, two orders at
once cannot both spend them), go back exactly once when the order expires unpaid or is
refunded, and are taken again when an expired order is paid after all; on SQLite and MariaDB,
and end to end in every layout.
"""
from __future__ import annotations

import datetime as dt
import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa

from conftest import PASSWORD, install_shop, run_cli, write_password
from test_agent_portal import sign_in
from test_channel_balance import Browser, books_ok
from test_concurrency import start_layout
from test_points import LAYOUTS, _set, grant, pay_in_sandbox, points_of, refund, shop  # noqa: F401 (a fixture)
from test_sandbox import csrf_of


@pytest.fixture
def share(app, shop):  # noqa: F811 (the fixture above)
    """Half of an order may be paid with points (the shop's default is none)."""
    _set(app, "points.discount_share", "50")
    yield 50
    _set(app, "points.discount_share", "0")


def form_of(client, product_id: int) -> str:
    return client.get(f"/product/{product_id}").get_data(as_text=True)


def buy(client, product_id: int, channel: str, *, use_points=True, html: str | None = None):
    html = html or form_of(client, product_id)
    data = {"csrf_token": csrf_of(html), "quantity": "1", "email": "mei@example.com", "channel": channel}
    if use_points:
        data["use_points"] = "1"
    return client.post(f"/product/{product_id}", data=data)


def order_no_of(answer) -> str:
    assert answer.status_code == 303, answer.get_data(as_text=True)[:800]
    return re.search(r"order_no=(\d+)", answer.headers["Location"]).group(1)


def says(answer, zh: str, en: str) -> bool:
    """A refusal (400) of the product form, in the page's language."""
    text = answer.get_data(as_text=True)
    return answer.status_code == 400 and (zh in text or en in text)


def row(app, order_no: str):
    from kamengd.extensions import db
    from kamengd.orders.models import Order

    with app.app_context():
        found = db.session.execute(sa.select(Order.id, Order.status, Order.amount_cents, Order.points_used,
                                              Order.points_discount_cents, Order.points_held, Order.member_id,
                                              Order.flag_reason)
                                   .where(Order.order_no == order_no)).one()
        db.session.remove()
        return found


def orders_of(app, product_id: int) -> int:
    from kamengd.extensions import db
    from kamengd.orders.models import Order

    with app.app_context():
        n = db.session.scalar(sa.select(sa.func.count()).select_from(Order).where(Order.product_id == product_id))
        db.session.remove()
        return n


def expire(app, order_no: str) -> None:
    from kamengd.database import utcnow
    from kamengd.extensions import db
    from kamengd.orders.models import Order
    from kamengd.orders.services import expire_orders

    with app.app_context():
        db.session.execute(sa.update(Order).where(Order.order_no == order_no)
                           .values(expires_at=utcnow() - dt.timedelta(minutes=1)))
        db.session.commit()
        assert expire_orders(db.session) >= 1
        db.session.commit()
        db.session.remove()


def pay_late(app, order_no: str, channel: str, more_cents: int = 0) -> str:
    """The gateway's payment of an order that has expired (the buyer kept its page open)."""
    from kamengd.extensions import db
    from kamengd.orders.models import Order
    from kamengd.payments.models import PaymentChannel
    from kamengd.payments.services import record_payment

    with app.app_context():
        order = db.session.scalar(sa.select(Order).where(Order.order_no == order_no))
        chan = db.session.scalar(sa.select(PaymentChannel).where(PaymentChannel.code == channel))
        outcome = record_payment(db.session, chan, order, trade_no=f"LATE{order_no}",
                                 amount_cents=order.amount_cents + more_cents, raw={"late": True})
        db.session.commit()
        db.session.remove()
        return outcome.reason


def test_points_take_the_shops_share_off_an_order_and_the_gateway_takes_the_rest(backend, app, client, shop,
                                                                                  share):  # noqa: F811
    member_id, username = shop["mei"]
    grant(app, username, 2000)
    assert sign_in(client, username).status_code == 302
    html = form_of(client, shop["id"])
    assert 'name="use_points"' in html and "2000" in html
    order_no = order_no_of(buy(client, shop["id"], shop["sandbox"], html=html))
    # 9.90: half is 4.95, 495 points at 100 per 1.00; the gateway is asked for the other 4.95.
    found = row(app, order_no)
    assert (found.amount_cents, found.points_used, found.points_discount_cents, found.points_held) == (495, 495, 495,
                                                                                                         True)
    assert points_of(app, member_id) == 2000 - 495
    page = client.get(f"/order/{order_no}").get_data(as_text=True)
    assert "495" in page and "4.95" in page
    pay_in_sandbox(client, order_no, shop["sandbox"])
    assert row(app, order_no).status == "delivered"
    assert points_of(app, member_id) == 2000 - 495 + 49     # it earns on what it paid: 4.95 at 10 per 1.00
    given = refund(app, order_no)
    assert (given.returned, given.reversed, given.owed) == (495, 49, 0)
    assert points_of(app, member_id) == 2000 and row(app, order_no).points_held is False
    books_ok(app)


def test_a_member_uses_the_points_it_has_and_a_guest_or_a_shop_without_a_share_takes_none(backend, app, client,
                                                                                         shop, share):  # noqa: F811
    member_id, username = shop["mei"]
    grant(app, username, 120)
    guest = app.test_client()
    assert 'name="use_points"' not in form_of(guest, shop["id"])
    before = orders_of(app, shop["id"])
    refused = buy(guest, shop["id"], shop["sandbox"])             # the choice sent all the same
    assert says(refused, "请先登录会员中心再使用积分", "sign in to the member portal to use your points")
    assert orders_of(app, shop["id"]) == before
    assert sign_in(client, username).status_code == 302
    order_no = order_no_of(buy(client, shop["id"], shop["sandbox"]))
    found = row(app, order_no)
    assert (found.amount_cents, found.points_used, found.member_id) == (870, 120, member_id)
    assert points_of(app, member_id) == 0
    # Without points the choice is not offered; sent all the same (points spent in another tab),
    # it is refused: never an order at full price instead. A shop that takes none refuses it too.
    assert 'name="use_points"' not in form_of(client, shop["id"])
    before = orders_of(app, shop["id"])
    spent = buy(client, shop["id"], shop["sandbox"])
    assert spent.status_code == 402 and orders_of(app, shop["id"]) == before
    order_no = order_no_of(buy(client, shop["id"], shop["sandbox"], use_points=False))
    assert row(app, order_no).points_used == 0
    _set(app, "points.discount_share", "0")
    grant(app, username, 500)
    assert 'name="use_points"' not in form_of(client, shop["id"])
    before = orders_of(app, shop["id"])
    refused = buy(client, shop["id"], shop["sandbox"])
    assert says(refused, "本店未开启积分抵扣", "this shop does not take points off orders")
    assert orders_of(app, shop["id"]) == before and points_of(app, member_id) == 500
    books_ok(app)


def test_an_order_that_expires_gives_its_points_back_once_and_takes_them_again_when_paid_late(
        backend, app, client, shop, share):  # noqa: F811
    member_id, username = shop["mei"]
    grant(app, username, 1000)
    assert sign_in(client, username).status_code == 302
    late = order_no_of(buy(client, shop["id"], shop["sandbox"]))
    assert points_of(app, member_id) == 505
    expire(app, late)
    assert points_of(app, member_id) == 1000 and row(app, late).points_held is False
    assert pay_late(app, late, shop["sandbox"]) == "paid"         # the points are there: taken again
    assert row(app, late).status == "delivered" and row(app, late).points_held is True
    assert points_of(app, member_id) == 505 + 49
    # Again, but the member spends its points while the first order's page is open.
    late = order_no_of(buy(client, shop["id"], shop["sandbox"]))
    assert points_of(app, member_id) == 554 - 495
    expire(app, late)
    assert points_of(app, member_id) == 554
    grant(app, username, -500)
    assert pay_late(app, late, shop["sandbox"]) == "held"         # never points it no longer has
    found = row(app, late)
    assert found.status == "held" and found.points_held is False and found.flag_reason.startswith(
        "paid after it expired")
    assert points_of(app, member_id) == 54
    # Paid late and of the wrong amount: held; released by a person, the points are taken again.
    from kamengd.extensions import db
    from kamengd.orders.staff import release_held
    grant(app, username, 1000)
    late = order_no_of(buy(client, shop["id"], shop["sandbox"]))
    expire(app, late)
    assert points_of(app, member_id) == 1054
    assert pay_late(app, late, shop["sandbox"], more_cents=1) == "held"
    with app.app_context():
        assert release_held(db.session, order_no=late, reason="paid a cent more", actor="t") == "delivered"
        db.session.commit()
        db.session.remove()
    assert row(app, late).points_held is True and points_of(app, member_id) == 1054 - 495 + 49
    books_ok(app)


def test_two_orders_at_once_never_spend_the_same_points(backend, app, shop, share):  # noqa: F811
    """Six orders at once from one member whose points cover one: exactly one is placed with
    them, the others are refused (402) and write nothing; the points never go below zero."""
    member_id, username = shop["mei"]
    grant(app, username, 600)
    clients = []
    for _ in range(6):
        c = app.test_client()
        assert sign_in(c, username).status_code == 302
        clients.append((c, form_of(c, shop["id"])))
    before = orders_of(app, shop["id"])
    start = threading.Barrier(6)

    def one(pair):
        c, html = pair
        start.wait()
        return buy(c, shop["id"], shop["sandbox"], html=html)

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(one, clients))
    codes = sorted(a.status_code for a in answers)
    assert set(codes) <= {303, 402, 503}, codes
    placed = [order_no_of(a) for a in answers if a.status_code == 303]
    used = sorted((row(app, n).points_used for n in placed), reverse=True)
    # The first spends 495; an order that read the points after it may take the 105 left.
    assert used in ([495], [495, 105]), used
    assert points_of(app, member_id) == 600 - sum(used)
    assert orders_of(app, shop["id"]) == before + len(placed)   # the refused wrote nothing
    books_ok(app)


# --- end to end, in every layout ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.layouts(*LAYOUTS)
def test_members_take_points_off_orders_at_once_on_every_server(layout, backend, databases, tmp_path, start_server):
    """Four storefront orders at once by one member whose points cover two discounts, through
    every server: two go to the gateway for 2.50 of 5.00, two are refused and write nothing;
    the points are all spent once, and the books balance."""
    config, pid, _ = install_shop(backend, databases, tmp_path, product="抵扣 test", price="5.00", keys=6,
                                  prefix="PD")
    cli = lambda *a: json.loads(run_cli(*a, "--json", config=config, check=True).out)   # noqa: E731
    run_cli("channel", "add", "--type", "epay", "--code", "ep", "--option", "gateway=https://pay.example.com",
            "--option", "pid=1001", "--option", "key=points-discount-key-0123456789abcdef", config=config, check=True)
    run_cli("setting", "set", "points.discount_share", "50", config=config, check=True)
    cli("member", "create", "--username", "mei", "--password-file", write_password(tmp_path))
    cli("points", "grant", "--username", "mei", "--points", "500", "--reason", "welcome")
    bases = start_layout(layout, start_server, config)

    buyer = Browser()
    status, _, page = buyer.open("GET", f"{bases[0]}/agent/login")
    assert buyer.open("POST", f"{bases[0]}/agent/login", form={"csrf_token": csrf_of(page), "username": "mei",
                                                                "password": PASSWORD})[0] == 302
    status, _, html = buyer.open("GET", f"{bases[-1]}/product/{pid}")
    assert status == 200 and 'name="use_points"' in html and "500" in html
    channel = re.search(r'name="channel" value="([^"]+)"', html).group(1)
    token = csrf_of(html)

    def order(index):
        return buyer.open("POST", f"{bases[index % len(bases)]}/product/{pid}",
                          form={"csrf_token": token, "quantity": "1", "email": "mei@example.com",
                                "channel": channel, "use_points": "1"})

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(order, range(4)))
    assert sorted(a[0] for a in answers) == [303, 303, 402, 402], (
        [(a[0], re.findall(r"money=[0-9.]+", a[1].get("Location") or "")) for a in answers],
        cli("points", "show", "--username", "mei")["balance"])
    gateway = [a[1]["Location"] for a in answers if a[0] == 303]
    assert all(url.startswith("https://pay.example.com") and "money=2.50" in url for url in gateway), gateway
    assert cli("points", "show", "--username", "mei")["balance"] == 0
    for url in gateway:   # each order's page (where the gateway sends the buyer back) says what its points took off
        back = urlsplit(parse_qs(urlsplit(url).query)["return_url"][0])
        status, _, text = buyer.open("GET", f"{bases[0]}{back.path}?{back.query}")
        assert status == 200 and "250" in text and "2.50" in text, text[:500]
    logs = start_server.stop_all()
    assert not any("Traceback" in log for log in logs.values()), logs
    assert run_cli("ledger", "verify", config=config).returncode == 0

"""Points (积分, W5): earned on delivery by a member signed in when it orders (or paying from its
balance), taken back on refund, spent through a points channel (a product sold through it only
is a points-only product), granted and taken by staff; on SQLite and MariaDB.

Every movement is a ledger entry with a cause naming its order (or the staff's reference):
booked once however often a delivery, a press or a refund tries, and `ledger verify` stays clean.
End to end in every layout: one member paying five orders at once with points for three.
"""
from __future__ import annotations

import io
import json
import re
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa

from conftest import PASSWORD, assert_one_line_error, install_shop, run_cli, write_password
from panel_support import login, make_staff
from test_agent_portal import sign_in
from test_channel_balance import Browser, balance_of, books_ok, payments_of
from test_concurrency import start_layout
from test_sandbox import csrf_of, place, view

LAYOUTS = ("waitress", "gunicorn", "gunicorn+scheduler", "two-servers")


def _set(app, key: str, value: str) -> None:
    from kamengd.extensions import db
    from kamengd.settings.services import set_setting

    with app.app_context():
        set_setting(db.session, key, value, actor="t")
        db.session.commit()
        db.session.remove()


@pytest.fixture
def shop(app):
    """A product at 9.90 with six keys sold through a sandbox and a balance channel; a points-only
    product at 5.00 (the points channel only) with three keys; a member `mei` with 30.00 of
    balance and no points; earning at 10 points per 1.00, paying at 100 points per 1.00."""
    from kamengd.agents import services as agents
    from kamengd.catalog.services import create_product
    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.inventory.services import import_keys
    from kamengd.payments.models import PaymentChannel
    from kamengd.payments.services import add_channel, set_product_channels

    t = secrets.token_hex(3)
    with app.app_context():
        product = create_product(db.session, name=f"points {t}", price_cents=990, actor="t")
        stock = [f"PTS-{t}-{i}-{secrets.token_hex(4)}" for i in range(6)]
        import_keys(db.session, get_vault(), product_id=product.id, fh=io.BytesIO("\n".join(stock).encode()),
                    actor="t")
        gift = create_product(db.session, name=f"gift {t}", price_cents=500, actor="t")
        gifts = [f"GIFT-{t}-{i}-{secrets.token_hex(4)}" for i in range(3)]
        import_keys(db.session, get_vault(), product_id=gift.id, fh=io.BytesIO("\n".join(gifts).encode()),
                    actor="t")
        sandbox = add_channel(db.session, get_vault(), channel_type="sandbox", code=f"sbx{t}", actor="t",
                              name="Sandbox", options={}, site_url="http://127.0.0.1:5000")
        balance = add_channel(db.session, get_vault(), channel_type="balance", code=f"bal{t}", actor="t", name="余额")
        points = add_channel(db.session, get_vault(), channel_type="points", code=f"pts{t}", actor="t", name="积分")
        set_product_channels(db.session, gift.id, points.code, actor="t")
        mei = agents.create_member(db.session, username=f"mei-{t}", password=PASSWORD, actor="t")
        agents.credit_balance(db.session, mei, 3000, reason="top-up", actor="t")
        db.session.commit()
        found = {"id": product.id, "keys": stock, "gift": gift.id, "gifts": gifts, "sandbox": sandbox.code,
                 "balance": balance.code, "points": points.code, "mei": (mei.id, mei.username),
                 "channel_ids": [sandbox.id, balance.id, points.id]}
        db.session.remove()
    _set(app, "points.earn_rate", "10")
    _set(app, "points.value", "100")
    yield found
    _set(app, "points.earn_rate", "0")
    with app.app_context():   # the shared shop offers them to no later test
        db.session.execute(sa.update(PaymentChannel).where(PaymentChannel.id.in_(found["channel_ids"]))
                           .values(is_enabled=False))
        db.session.commit()
        db.session.remove()


def points_of(app, agent_id: int) -> int:
    from kamengd.extensions import db
    from kamengd.marketing import points

    with app.app_context():
        found = points.balance(db.session, agent_id)
        db.session.remove()
        return found


def owed_by(app, agent_id: int) -> int:
    from kamengd.extensions import db
    from kamengd.marketing import points

    with app.app_context():
        found = points.owed(db.session, agent_id)
        db.session.remove()
        return found


def grant(app, username: str, n: int, reference: str | None = None):
    from kamengd.extensions import db
    from kamengd.marketing import points

    with app.app_context():
        done = points.adjust(db.session, username=username, points=n, reason="welcome", actor="t",
                             reference=reference)
        db.session.commit()
        db.session.remove()
        return done[1:]


def buy_on_the_storefront(client, product_id: int, channel: str) -> str:
    """The product page's form, as a browser sends it: the order's number."""
    html = client.get(f"/product/{product_id}").get_data(as_text=True)
    answer = client.post(f"/product/{product_id}", data={"csrf_token": csrf_of(html), "quantity": "1",
                                                         "email": "mei@example.com", "channel": channel})
    assert answer.status_code == 303, answer.get_data(as_text=True)[:500]
    return re.search(r"order_no=(\d+)", answer.headers["Location"]).group(1)


def order_row(app, order_no: str):
    from kamengd.extensions import db
    from kamengd.orders.models import Order

    with app.app_context():
        row = db.session.execute(sa.select(Order.status, Order.member_id, Order.amount_cents)
                                 .where(Order.order_no == order_no)).one()
        db.session.remove()
        return row


def refund(app, order_no: str):
    from kamengd.extensions import db
    from kamengd.orders import staff as order_staff

    with app.app_context():
        done = order_staff.refund_order(db.session, order_no=order_no, reason="asked", actor="t")
        db.session.commit()
        given = done.points
        db.session.remove()
        return given


def pay_in_sandbox(client, order_no: str, channel: str) -> None:
    page = client.get(f"/pay/{channel}/sandbox?order_no={order_no}").get_data(as_text=True)
    paid = client.post(f"/pay/{channel}/sandbox", data={"csrf_token": csrf_of(page), "order_no": order_no})
    assert paid.status_code == 303, paid.get_data(as_text=True)[:500]


def test_a_buyer_signed_in_earns_points_on_delivery_and_a_refund_takes_them_back(backend, app, client, shop):
    member_id, username = shop["mei"]
    assert sign_in(client, username).status_code == 302
    order_no = buy_on_the_storefront(client, shop["id"], shop["sandbox"])
    assert order_row(app, order_no).member_id == member_id
    assert points_of(app, member_id) == 0            # placed, not paid: nothing yet
    pay_in_sandbox(client, order_no, shop["sandbox"])
    assert order_row(app, order_no).status == "delivered"
    assert points_of(app, member_id) == 99           # 9.90 at 10 points per 1.00
    # The member's dashboard and its points statement say so.
    assert 'id="points"' in (dash := client.get("/agent/").get_data(as_text=True)) and ">99<" in dash
    statement = client.get("/agent/ledger?account=points").get_data(as_text=True)
    assert order_no in statement and "points_earned" in statement and ">99<" in statement
    # Its money statement holds no points (they are not money).
    assert "points_earned" not in client.get("/agent/ledger").get_data(as_text=True)
    given = refund(app, order_no)
    assert (given.reversed, given.returned, given.owed) == (99, 0, 0)
    assert points_of(app, member_id) == 0
    # Refunded once: a second refund is refused, and the points stay as they are.
    with pytest.raises(Exception, match="refund"):
        refund(app, order_no)
    assert points_of(app, member_id) == 0
    books_ok(app)


def test_a_guest_earns_nothing_and_a_shop_without_a_rate_gives_nothing(backend, app, client, shop):
    member_id, username = shop["mei"]
    order_no = buy_on_the_storefront(client, shop["id"], shop["sandbox"])   # not signed in
    pay_in_sandbox(client, order_no, shop["sandbox"])
    assert order_row(app, order_no).member_id is None and points_of(app, member_id) == 0
    _set(app, "points.earn_rate", "0")
    signed = app.test_client()
    assert sign_in(signed, username).status_code == 302
    order_no = buy_on_the_storefront(signed, shop["id"], shop["sandbox"])
    pay_in_sandbox(signed, order_no, shop["sandbox"])
    assert order_row(app, order_no).status == "delivered" and points_of(app, member_id) == 0
    books_ok(app)


def test_paying_from_the_balance_earns_the_payer_its_points(backend, app, client, shop):
    member_id, username = shop["mei"]
    order = place(client, {"id": shop["id"], "channel": shop["balance"]}, quantity=2)   # placed as a guest
    assert sign_in(client, username).status_code == 302
    pay = urlsplit(order["pay_url"])
    html = client.get(f"{pay.path}?{pay.query}").get_data(as_text=True)
    paid = client.post(pay.path, data={"csrf_token": csrf_of(html), "order_no": order["order_no"],
                                       "token": order["token"]})
    assert paid.status_code == 303 and view(client, order)["status"] == "delivered"
    assert order_row(app, order["order_no"]).member_id == member_id
    assert points_of(app, member_id) == 198 and balance_of(app, member_id) == 3000 - 1980
    given = refund(app, order["order_no"])
    assert given.reversed == 198 and points_of(app, member_id) == 0 and balance_of(app, member_id) == 3000
    books_ok(app)


def test_points_pay_a_points_only_product_and_a_refund_gives_them_back(backend, app, client, shop):
    from kamengd.context import get_vault
    from kamengd.errors import InvalidRequest
    from kamengd.extensions import db
    from kamengd.payments.refunds import refund_through_channel

    member_id, username = shop["mei"]
    client.set_cookie("lang", "en")
    # The points-only product is offered through the points channel alone, at its cost in points.
    page = client.get(f"/product/{shop['gift']}").get_data(as_text=True)
    assert f'value="{shop["points"]}"' in page and f'value="{shop["sandbox"]}"' not in page
    assert "500 points" in page
    assert client.post("/api/v1/orders", json={"product_id": shop["gift"], "quantity": 1, "email": "m@example.com",
                                               "channel": shop["sandbox"]}).status_code == 400
    order = place(client, {"id": shop["gift"], "channel": shop["points"]})
    pay = urlsplit(order["pay_url"])
    assert pay.path == f"/pay/{shop['points']}/points"
    html = client.get(f"{pay.path}?{pay.query}").get_data(as_text=True)
    assert "Sign in to pay" in html and "500" in html          # 5.00 at 100 points per 1.00
    # The sign-in comes back to this page (a points page is a safe `next`).
    login_url = re.search(r'href="(/agent/login\?next=[^"]+)"', html).group(1).replace("&amp;", "&")
    assert f'name="next" value="{pay.path}?' in client.get(login_url).get_data(as_text=True)
    assert sign_in(client, username).status_code == 302
    html = client.get(f"{pay.path}?{pay.query}").get_data(as_text=True)
    assert "do not cover" in html and "Pay with my points" not in html
    assert grant(app, username, 700) == (700, True)
    html = client.get(f"{pay.path}?{pay.query}").get_data(as_text=True)
    assert "Pay with my points" in html and ">700<" in html
    form = {"csrf_token": csrf_of(html), "order_no": order["order_no"], "token": order["token"]}
    paid = client.post(pay.path, data=form)
    assert paid.status_code == 303 and view(client, order)["status"] == "delivered"
    assert set(view(client, order)["keys"]) <= set(shop["gifts"])
    # Pressed again: nothing taken twice; and an order paid with points earns none.
    assert client.post(pay.path, data=form).status_code == 303
    assert points_of(app, member_id) == 200
    assert payments_of(app, order["order_no"]) == [(f"points-{order['order_no']}", 500, "received", "points")]
    with app.app_context():
        with pytest.raises(InvalidRequest, match="paid with points"):
            refund_through_channel(db.session, get_vault(), order_no=order["order_no"], reason="x", actor="t")
        db.session.rollback()
        db.session.remove()
    given = refund(app, order["order_no"])
    assert (given.returned, given.reversed) == (500, 0) and points_of(app, member_id) == 700
    books_ok(app)


def test_an_order_held_for_review_is_paid_with_points_and_waits_for_a_person(backend, app, client, shop):
    from test_risk import rule

    member_id, username = shop["mei"]
    grant(app, username, 600)
    ip = f"203.0.113.{secrets.randbelow(250) + 1}"
    rule(app, "ip_list", "review", ranges=ip, name=f"watch {shop['points']}")
    answer = client.post("/api/v1/orders", json={"product_id": shop["gift"], "quantity": 1, "email": "m@example.com",
                                                 "channel": shop["points"]}, environ_base={"REMOTE_ADDR": ip})
    assert answer.status_code == 201, answer.get_json()
    order = answer.get_json()
    assert sign_in(client, username).status_code == 302
    pay = urlsplit(order["pay_url"])
    html = client.get(f"{pay.path}?{pay.query}").get_data(as_text=True)
    paid = client.post(pay.path, data={"csrf_token": csrf_of(html), "order_no": order["order_no"],
                                       "token": order["token"], "cost": "500"})
    assert paid.status_code == 303   # paid, held for a person: no keys yet
    assert view(client, order)["status"] == "held" and points_of(app, member_id) == 100
    books_ok(app)
    from kamengd.extensions import db
    from kamengd.risk.models import RiskRule
    from kamengd.risk.rules import cache

    with app.app_context():   # the rule watches no later test
        db.session.execute(sa.update(RiskRule).where(RiskRule.name == f"watch {shop['points']}")
                           .values(is_active=False))
        db.session.commit()
        db.session.remove()
    cache.clear()


def test_a_cost_changed_since_the_page_was_shown_is_not_charged(backend, app, client, shop):
    member_id, username = shop["mei"]
    client.set_cookie("lang", "en")
    grant(app, username, 1000)
    order = place(client, {"id": shop["gift"], "channel": shop["points"]})
    assert sign_in(client, username).status_code == 302
    pay = urlsplit(order["pay_url"])
    html = client.get(f"{pay.path}?{pay.query}").get_data(as_text=True)
    assert 'name="cost" value="500"' in html
    _set(app, "points.value", "150")
    refused = client.post(pay.path, data={"csrf_token": csrf_of(html), "order_no": order["order_no"],
                                          "token": order["token"], "cost": "500"})
    assert refused.status_code == 409 and "costs 750 points now" in refused.get_data(as_text=True)
    assert points_of(app, member_id) == 1000 and view(client, order)["status"] == "pending"
    books_ok(app)


def test_points_that_do_not_cover_the_order_change_nothing(backend, app, client, shop):
    member_id, username = shop["mei"]
    client.set_cookie("lang", "en")
    grant(app, username, 499)
    order = place(client, {"id": shop["gift"], "channel": shop["points"]})
    assert sign_in(client, username).status_code == 302
    pay = urlsplit(order["pay_url"])
    token = csrf_of(client.get("/agent/account").get_data(as_text=True))
    refused = client.post(pay.path, data={"csrf_token": token, "order_no": order["order_no"],
                                          "token": order["token"]})
    assert refused.status_code == 402 and "costs 500 points" in refused.get_data(as_text=True)
    assert view(client, order)["status"] == "pending" and points_of(app, member_id) == 499
    assert payments_of(app, order["order_no"]) == []
    # Signed out: sent to sign in, nothing paid.
    stranger = app.test_client()
    html = stranger.get(f"/product/{shop['id']}").get_data(as_text=True)
    answer = stranger.post(pay.path, data={"csrf_token": csrf_of(html), "order_no": order["order_no"],
                                           "token": order["token"]})
    assert answer.status_code == 303 and urlsplit(answer.headers["Location"]).path == "/agent/login"
    books_ok(app)


def test_points_spent_before_a_refund_become_a_debt_the_next_points_repay(backend, app, client, shop):
    member_id, username = shop["mei"]
    assert sign_in(client, username).status_code == 302
    order_no = buy_on_the_storefront(client, shop["id"], shop["sandbox"])
    pay_in_sandbox(client, order_no, shop["sandbox"])
    assert points_of(app, member_id) == 99
    grant(app, username, -60)
    given = refund(app, order_no)
    assert (given.reversed, given.owed) == (39, 60) and points_of(app, member_id) == 0
    assert owed_by(app, member_id) == 60
    # The next points repay the debt first: 99 earned, 60 of them repay it.
    again = buy_on_the_storefront(client, shop["id"], shop["sandbox"])
    pay_in_sandbox(client, again, shop["sandbox"])
    assert points_of(app, member_id) == 39 and owed_by(app, member_id) == 0
    books_ok(app)


def test_no_order_of_refunds_leaves_points_that_were_not_kept(backend, app, client, shop):
    """Earn on one order, spend those points on another, refund the first then the second: the
    points come back to where they were (none), not to what was spent."""
    member_id, username = shop["mei"]
    _set(app, "points.earn_rate", "100")   # 9.90 earns 990 points; the gift costs 500
    assert sign_in(client, username).status_code == 302
    first = buy_on_the_storefront(client, shop["id"], shop["sandbox"])
    pay_in_sandbox(client, first, shop["sandbox"])
    assert points_of(app, member_id) == 990
    gift = place(client, {"id": shop["gift"], "channel": shop["points"]})
    pay = urlsplit(gift["pay_url"])
    html = client.get(f"{pay.path}?{pay.query}").get_data(as_text=True)
    assert client.post(pay.path, data={"csrf_token": csrf_of(html), "order_no": gift["order_no"],
                                       "token": gift["token"], "cost": "500"}).status_code == 303
    assert points_of(app, member_id) == 490
    given = refund(app, first)
    assert (given.reversed, given.owed) == (490, 500) and points_of(app, member_id) == 0
    given = refund(app, gift["order_no"])
    assert given.returned == 500 and points_of(app, member_id) == 0 and owed_by(app, member_id) == 0
    books_ok(app)


def test_five_orders_paid_with_points_for_three_at_once(backend, app, client, shop):
    """Five threads, each paying its own order in its own transaction: exactly three are paid."""
    from kamengd.agents.models import Agent
    from kamengd.errors import KamengdError
    from kamengd.extensions import db
    from kamengd.orders.models import Order
    from kamengd.payments.points import pay_with_points

    from kamengd.catalog.services import create_product
    from kamengd.context import get_vault
    from kamengd.inventory.services import import_keys
    from kamengd.payments.services import set_product_channels

    member_id, username = shop["mei"]
    with app.app_context():   # more gifts than points
        more = [f"MORE-{secrets.token_hex(5)}" for _ in range(5)]
        import_keys(db.session, get_vault(), product_id=shop["gift"], fh=io.BytesIO("\n".join(more).encode()),
                    actor="t")
        db.session.commit()
        db.session.remove()
    grant(app, username, 1500)
    orders = [place(client, {"id": shop["gift"], "channel": shop["points"]}) for _ in range(5)]
    barrier = threading.Barrier(5)

    def press(order):
        with app.app_context():
            try:
                row = db.session.scalars(sa.select(Order).where(Order.order_no == order["order_no"])).one()
                payer = db.session.get(Agent, member_id)
                db.session.rollback()   # SQLite: no write lock held while the others get here
                barrier.wait(10)
                outcome = pay_with_points(db.session, code=shop["points"], order=row, payer=payer)
                db.session.commit()
                return outcome.reason
            except KamengdError as exc:
                db.session.rollback()
                return exc.code
            finally:
                db.session.remove()

    with ThreadPoolExecutor(5) as pool:
        said = list(pool.map(press, orders))
    assert sorted(said) == ["insufficient_balance"] * 2 + ["paid"] * 3, said
    assert points_of(app, member_id) == 0
    assert [view(client, o)["status"] for o in orders].count("delivered") == 3
    books_ok(app)


def test_staff_grant_and_take_points_once_per_reference(backend, app, client, shop):
    from kamengd.audit.models import AuditEntry
    from kamengd.errors import InsufficientBalance, InvalidRequest
    from kamengd.extensions import db
    from kamengd.marketing import points

    member_id, username = shop["mei"]
    reference = f"gift-{secrets.token_hex(3)}"
    assert grant(app, username, 300, reference) == (300, True)
    assert grant(app, username, 300, reference) == (300, False)   # a retried request books nothing
    with app.app_context():
        for bad in ("0", "1.5", "abc", "", "+", "9" * 14, True):
            with pytest.raises(InvalidRequest):
                points.adjust(db.session, username=username, points=bad, reason="x", actor="t")
            db.session.rollback()
        for reason in (" ", "two\nlines", "x" * 201):
            with pytest.raises(InvalidRequest, match="reason"):
                points.adjust(db.session, username=username, points=5, reason=reason, actor="t")
            db.session.rollback()
        with pytest.raises(InsufficientBalance):
            points.adjust(db.session, username=username, points=-301, reason="x", actor="t")
        db.session.rollback()
        logged = db.session.scalars(sa.select(AuditEntry).where(AuditEntry.action == "points.adjust",
                                                                AuditEntry.target == f"agent:{username}")).all()
        assert len(logged) == 1 and json.loads(logged[0].details)["points"] == 300
        db.session.remove()
    assert points_of(app, member_id) == 300
    # The panel: finance staff see the points and grant more; the form's reference books once.
    staff = make_staff(app, "finance")
    client.set_cookie("lang", "en")
    login(client, staff)
    page = client.get(f"/admin/agents/{member_id}").get_data(as_text=True)
    assert re.search(r'id="points">300<', page)
    form = {"csrf_token": csrf_of(page), "reference": re.search(r'name="reference" value="([^"]+)"', page).group(1),
            "points": "-100", "reason": "correction"}
    assert client.post(f"/admin/agents/{member_id}/points", data=form).status_code == 303
    assert client.post(f"/admin/agents/{member_id}/points", data=form).status_code == 303
    assert points_of(app, member_id) == 200
    bad = client.post(f"/admin/agents/{member_id}/points", data={**form, "reference": "r2", "points": "-999"},
                      follow_redirects=True)
    assert bad.status_code == 200 and "fewer than 999" in bad.get_data(as_text=True)
    assert points_of(app, member_id) == 200
    books_ok(app)


def test_the_cli_grants_and_shows_points(backend, make_install, tmp_path):
    config = make_install(backend).path
    run_cli("member", "create", "--username", "lin", "--password-file", write_password(tmp_path), config=config,
            check=True)
    granted = json.loads(run_cli("points", "grant", "--username", "lin", "--points", "250", "--reason", "welcome",
                                 "--reference", "w1", "--json", config=config, check=True).out)
    assert granted == {"username": "lin", "points": 250, "balance": 250, "booked": True}
    again = run_cli("points", "grant", "--username", "lin", "--points", "250", "--reason", "welcome",
                    "--reference", "w1", config=config, check=True)
    assert "booked before" in again.out
    assert_one_line_error(run_cli("points", "grant", "--username", "lin", "--points", "-900", "--reason", "x",
                                  config=config))
    assert_one_line_error(run_cli("points", "grant", "--username", "lin", "--points", "1.5", "--reason", "x",
                                  config=config))
    assert_one_line_error(run_cli("points", "grant", "--username", "nobody", "--points", "5", "--reason", "x",
                                  config=config))
    shown = json.loads(run_cli("points", "show", "--username", "lin", "--json", config=config, check=True).out)
    assert shown["balance"] == 250 and shown["movements"][0]["points"] == 250
    assert run_cli("ledger", "verify", config=config).returncode == 0


def test_a_top_up_over_a_tier_gives_its_bonus_points_once(backend, app, client, shop):
    from kamengd.agents import services as agents
    from kamengd.agents.models import Agent
    from kamengd.errors import InvalidRequest
    from kamengd.extensions import db
    from kamengd.marketing import points
    from kamengd.settings.services import set_setting

    member_id, username = shop["mei"]
    with app.app_context():
        for bad in ("100", "100=0", "abc=5", "100=5, 100=6"):
            with pytest.raises(InvalidRequest):
                set_setting(db.session, "points.topup_bonus", bad, actor="t")
            db.session.rollback()
        set_setting(db.session, "points.topup_bonus", "500＝300，100 = 50", actor="t")
        db.session.commit()
        assert points.bonus_for("100.00=50, 500.00=300", 9999) == 0
        assert points.bonus_for("100.00=50, 500.00=30", 50000) == 30   # the highest tier reached, as it says
        db.session.remove()
    try:
        with app.app_context():
            from kamengd.settings.services import get_setting
            assert get_setting(db.session, "points.topup_bonus") == "100.00=50, 500.00=300"
            db.session.remove()
        # Through the panel's credit form: 200.00 reaches the 100.00 tier; the same form again books nothing.
        staff = make_staff(app, "finance")
        login(client, staff)
        page = client.get(f"/admin/agents/{member_id}").get_data(as_text=True)
        form = {"csrf_token": csrf_of(page), "amount": "200.00", "reason": "top-up",
                "reference": re.search(r'name="reference" value="([^"]+)"', page).group(1)}
        assert client.post(f"/admin/agents/{member_id}/credit", data=form).status_code == 303
        assert client.post(f"/admin/agents/{member_id}/credit", data=form).status_code == 303
        assert points_of(app, member_id) == 50 and balance_of(app, member_id) == 3000 + 20000
        # A debit earns nothing; 600.00 reaches the highest tier.
        with app.app_context():
            mei = db.session.get(Agent, member_id)
            for cents in (-1000, 60000):
                booking = agents.credit_balance(db.session, mei, cents, reason="x", actor="t")
                assert points.topup_bonus(db.session, agent_id=member_id, cents=cents, credit_cause=booking.cause,
                                          actor="t") == (300 if cents > 0 else 0)
            db.session.commit()
            db.session.remove()
        assert points_of(app, member_id) == 350
        with app.app_context():
            from kamengd.audit.models import AuditEntry
            bonuses = db.session.scalars(sa.select(AuditEntry).where(AuditEntry.action == "points.bonus",
                                                                     AuditEntry.target == f"agent:{member_id}")).all()
            assert sorted(json.loads(b.details)["points"] for b in bonuses) == [50, 300]
            db.session.remove()
        books_ok(app)
    finally:
        _set(app, "points.topup_bonus", "")


# --- end to end, in every layout ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.layouts(*LAYOUTS)
def test_five_orders_at_once_with_points_for_three(layout, backend, databases, tmp_path, start_server):
    config, pid, keys = install_shop(backend, databases, tmp_path, product="积分 gift", price="5.00", keys=6,
                                     prefix="PE")
    cli = lambda *a: json.loads(run_cli(*a, "--json", config=config, check=True).out)   # noqa: E731
    cli("channel", "add", "--type", "points", "--code", "jifen", "--name", "积分")
    cli("member", "create", "--username", "mei", "--password-file", write_password(tmp_path))
    cli("points", "grant", "--username", "mei", "--points", "1500", "--reason", "welcome")
    bases = start_layout(layout, start_server, config)

    buyer = Browser()
    placed = []
    for i in range(5):
        status, _, text = buyer.open("POST", f"{bases[i % len(bases)]}/api/v1/orders",
                                     json_body={"product_id": pid, "quantity": 1, "email": "b@example.com",
                                                "channel": "jifen"})
        assert status == 201, text
        placed.append(json.loads(text))
    status, _, page = buyer.open("GET", f"{bases[0]}/agent/login")
    status, _, _ = buyer.open("POST", f"{bases[0]}/agent/login",
                              form={"csrf_token": csrf_of(page), "username": "mei", "password": PASSWORD})
    assert status == 302, status
    token = csrf_of(buyer.open("GET", f"{bases[0]}/agent/account")[2])

    def pay(args):
        index, order = args
        base = bases[index % len(bases)]
        url = urlsplit(order["pay_url"])
        assert buyer.open("GET", f"{base}{url.path}?{url.query}")[0] == 200
        return buyer.open("POST", f"{base}{url.path}", form={"csrf_token": token, "order_no": order["order_no"],
                                                             "token": order["token"]})[0]

    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(pay, enumerate(placed)))
    assert sorted(answers) == [303, 303, 303, 402, 402], answers
    statuses = [json.loads(buyer.open("GET", f"{bases[0]}/api/v1/orders/{o['order_no']}?token={o['token']}")[2])
                for o in placed]
    delivered = [s for s in statuses if s["status"] == "delivered"]
    sold = [k for s in delivered for k in s["keys"]]
    assert len(delivered) == 3 and len(sold) == len(set(sold)) == 3 and set(sold) <= set(keys)
    assert cli("points", "show", "--username", "mei")["balance"] == 0
    refunded = cli("order", "refund", delivered[0]["order_no"], "--reason", "a mistake")
    assert refunded["points"] == {"returned": 500}
    assert cli("points", "show", "--username", "mei")["balance"] == 500
    assert run_cli("ledger", "verify", config=config).returncode == 0
    logs = start_server.stop_all()
    assert not any("Traceback" in log for log in logs.values()), logs

"""The sandbox channel (W4 §5): a pretend gateway whose "pay" button completes an order through
the same signed callback path as a real gateway, on a shop only this machine reaches (or when
forced, with a red banner in the panel)."""
from __future__ import annotations

import io
import json
import re
import secrets
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa

from conftest import assert_one_line_error, run_cli
from kamengd.payments import sandbox
from panel_support import login, make_staff

LOOPBACK = "http://127.0.0.1:8000"


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def _add_sandbox(app, *, site_url: str = LOOPBACK, options: dict | None = None, keys: int = 3) -> dict:
    from kamengd.catalog.services import create_product
    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.inventory.services import import_keys
    from kamengd.payments.services import add_channel

    with app.app_context():
        p = create_product(db.session, name=f"sandbox {secrets.token_hex(3)}", price_cents=990, actor="t")
        stock = [f"SBX-{secrets.token_hex(6)}" for _ in range(keys)]
        import_keys(db.session, get_vault(), product_id=p.id, fh=io.BytesIO("\n".join(stock).encode()), actor="t")
        code = f"sbx{secrets.token_hex(3)}"
        channel = add_channel(db.session, get_vault(), channel_type="sandbox", code=code, actor="t",
                              name="Sandbox", options=options or {}, site_url=site_url)
        db.session.commit()
        found = {"id": p.id, "keys": stock, "channel": code, "channel_id": channel.id}
        db.session.remove()
    return found


@pytest.fixture
def item(app):
    from kamengd.extensions import db
    from kamengd.payments.models import PaymentChannel

    found = _add_sandbox(app)
    yield found
    with app.app_context():   # the shared shop offers it to no later test
        db.session.execute(sa.update(PaymentChannel).where(PaymentChannel.id == found["channel_id"])
                           .values(is_enabled=False))
        db.session.commit()


def secret_of(app, code: str) -> str:
    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.payments.models import PaymentChannel
    from kamengd.payments.services import channel_secrets

    with app.app_context():
        channel = db.session.scalars(sa.select(PaymentChannel).where(PaymentChannel.code == code)).one()
        return channel_secrets(get_vault(), channel)["secret"]


def place(client, item, quantity: int = 1) -> dict:
    resp = client.post("/api/v1/orders", json={"product_id": item["id"], "quantity": quantity,
                                               "email": "sandbox@example.com", "channel": item["channel"]})
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()


def view(client, order: dict) -> dict:
    return client.get(f"/api/v1/orders/{order['order_no']}?token={order['token']}").get_json()


def payments_of(app, order_no: str) -> list:
    from kamengd.extensions import db
    from kamengd.orders.models import Order
    from kamengd.payments.models import Payment

    with app.app_context():
        rows = db.session.execute(sa.select(Payment.trade_no, Payment.amount_cents, Payment.status)
                                  .join(Order, Order.id == Payment.order_id).where(Order.order_no == order_no)).all()
        db.session.remove()
        return [tuple(r) for r in rows]


def test_browse_buy_press_pay_and_get_the_keys(app, client, item):
    client.set_cookie("lang", "en")
    order = place(client, item, quantity=2)
    pay = urlsplit(order["pay_url"])
    assert f"{pay.scheme}://{pay.netloc}" == LOOPBACK and pay.path == f"/pay/{item['channel']}/sandbox"
    page = client.get(f"{pay.path}?{pay.query}")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "19.80 CNY" in html and "no money moves" in html
    assert "Pay (sandbox)" in html and order["order_no"] in html

    form = {"csrf_token": csrf_of(html), "order_no": order["order_no"], "token": order["token"]}
    paid = client.post(pay.path, data=form)
    assert paid.status_code == 303 and f"/order/{order['order_no']}" in paid.headers["Location"]
    shown = view(client, order)
    assert shown["status"] == "delivered" and sorted(shown["keys"]) == sorted(
        k for k in item["keys"] if k in shown["keys"]) and len(shown["keys"]) == 2
    # Pressed again (a double click, the back button): the same trade, recorded once.
    assert client.post(pay.path, data=form).status_code == 303
    assert payments_of(app, order["order_no"]) == [(f"SANDBOX-{order['order_no']}", 1980, "received")]
    # The page of a paid order offers nothing more to pay.
    assert "Pay (sandbox)" not in client.get(f"{pay.path}?{pay.query}").get_data(as_text=True)


def test_only_the_buyer_can_press_pay(app, client, item):
    order = place(client, item)
    path = f"/pay/{item['channel']}/sandbox"
    html = client.get(f"/product/{item['id']}").get_data(as_text=True)
    stranger = app.test_client()
    token = csrf_of(stranger.get(f"/product/{item['id']}").get_data(as_text=True))
    assert stranger.get(f"{path}?order_no={order['order_no']}").status_code == 404
    assert stranger.post(path, data={"csrf_token": token, "order_no": order["order_no"],
                                     "token": "wrong"}).status_code == 404
    assert client.post(path, data={"order_no": order["order_no"], "token": order["token"]}).status_code == 400
    assert csrf_of(html)   # (the buyer's own page has its token: the refusal above was the missing one)
    assert view(client, order)["status"] == "pending" and payments_of(app, order["order_no"]) == []


def test_an_order_of_another_channel_is_not_paid_by_the_sandbox(app, client, item):
    other = _add_sandbox(app)
    order = place(client, item)
    path = f"/pay/{other['channel']}/sandbox"
    assert client.get(f"{path}?order_no={order['order_no']}&token={order['token']}").status_code == 404
    html = client.get(f"/product/{item['id']}").get_data(as_text=True)
    refused = client.post(path, data={"csrf_token": csrf_of(html), "order_no": order["order_no"],
                                      "token": order["token"]})
    assert refused.status_code == 404 or refused.status_code == 409
    assert view(client, order)["status"] == "pending"


@pytest.mark.parametrize("tamper", ["secret", "pid", "money", "status"])
def test_the_callback_is_checked_like_a_gateways(app, client, item, tamper):
    """Signed with the channel's own secret (HMAC-SHA256), its pid the channel's code: a forged
    one changes nothing; a wrong amount holds the order; a failed status changes nothing."""
    order = place(client, item)
    secret = secret_of(app, item["channel"])
    params = sandbox.callback(code=item["channel"], secret=secret, order_no=order["order_no"], amount_cents=990,
                              trade_no=f"T-{order['order_no']}")
    if tamper == "secret":
        params = sandbox.callback(code=item["channel"], secret=secrets.token_urlsafe(32),
                                  order_no=order["order_no"], amount_cents=990, trade_no="T-x")
    elif tamper == "pid":
        params = {**params, "pid": "someone-else"}
        params["sign"] = sandbox.sign(params, secret)
    elif tamper == "money":
        params = sandbox.callback(code=item["channel"], secret=secret, order_no=order["order_no"],
                                  amount_cents=1, trade_no=f"T-{order['order_no']}")
    else:
        params = {**params, "trade_status": "WAIT_BUYER_PAY"}
        params["sign"] = sandbox.sign(params, secret)
    answer = client.get(f"/pay/{item['channel']}/notify", query_string=params).get_data(as_text=True)
    if tamper == "money":
        assert answer == "success" and view(client, order)["status"] == "held"
    else:
        assert answer != "success" and view(client, order)["status"] == "pending"
        assert payments_of(app, order["order_no"]) == []
    # The genuine callback, twice: delivered once (a held order stays held).
    good = sandbox.callback(code=item["channel"], secret=secret, order_no=order["order_no"], amount_cents=990,
                            trade_no=f"G-{order['order_no']}")
    for _ in range(2):
        assert client.post(f"/pay/{item['channel']}/notify", data=good).get_data(as_text=True) == "success"
    assert view(client, order)["status"] == ("held" if tamper == "money" else "delivered")


def test_on_a_public_site_the_sandbox_takes_nothing_unless_forced(backend, make_install, tmp_path):
    """Added on a loopback site, then site.url made public: no orders, no callbacks, not offered.
    Adding one on a public site is refused unless forced; a forced one shows a red banner on
    every panel page."""
    from kamengd.app import create_app
    from kamengd.extensions import db
    from kamengd.settings.services import set_setting

    cfg = make_install(backend)
    app = create_app(cfg)
    app.config["TESTING"] = True
    item = _add_sandbox(app)
    with app.app_context():
        set_setting(db.session, "site.url", "https://shop.example.com", actor="t")
        db.session.commit()
    client = app.test_client()
    resp = client.post("/api/v1/orders", json={"product_id": item["id"], "quantity": 1,
                                               "email": "b@example.com", "channel": item["channel"]})
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "invalid_request"
    methods = client.get("/api/v1/payment-methods").get_json()
    assert item["channel"] not in json.dumps(methods)

    # An order placed while the site was loopback: its callback is refused now.
    with app.app_context():
        set_setting(db.session, "site.url", LOOPBACK, actor="t")
        db.session.commit()
    order = place(client, item)
    with app.app_context():
        set_setting(db.session, "site.url", "https://shop.example.com", actor="t")
        db.session.commit()
    good = sandbox.callback(code=item["channel"], secret=secret_of(app, item["channel"]),
                            order_no=order["order_no"], amount_cents=990, trade_no="T-public")
    assert client.get(f"/pay/{item['channel']}/notify", query_string=good).get_data(as_text=True) != "success"
    assert view(client, order)["status"] == "pending"

    # The command line: refused in one line, nothing added; forced: added.
    refused = run_cli("channel", "add", "--type", "sandbox", "--code", "sbx-public", config=cfg.path)
    assert_one_line_error(refused, "sandbox", "force=yes")
    assert "sbx-public" not in run_cli("channel", "list", config=cfg.path, check=True).out
    staff = make_staff(app, "admin")
    panel = app.test_client()
    panel.set_cookie("lang", "en")
    login(panel, staff)
    assert "sandbox-banner" not in panel.get("/admin/channels").get_data(as_text=True)
    run_cli("channel", "add", "--type", "sandbox", "--code", "sbx-public", "--option", "force=yes",
            config=cfg.path, check=True)
    for page in ("/admin/dashboard", "/admin/channels", "/admin/orders"):
        html = panel.get(page).get_data(as_text=True)
        assert 'id="sandbox-banner"' in html and "sbx-public" in html, page
    forced = client.post("/api/v1/orders", json={"product_id": item["id"], "quantity": 1,
                                                 "email": "b@example.com", "channel": "sbx-public"})
    assert forced.status_code == 201
    assert urlsplit(forced.get_json()["pay_url"]).netloc == "shop.example.com"
    # The secret was made for it and never shown: not in the listing, not in the audit log.
    secret = secret_of(app, "sbx-public")
    listing = run_cli("channel", "list", "--json", config=cfg.path, check=True).out
    assert secret not in listing and "secret" not in json.loads(listing)["channels"][-1]
    with app.app_context():
        audit = db.session.execute(sa.text("SELECT details FROM audit_log")).scalars().all()
    assert not any(secret in (d or "") for d in audit)


def test_the_panel_adds_and_tests_a_sandbox(app, client, item):
    staff = make_staff(app, "admin")
    client.set_cookie("lang", "en")
    login(client, staff)
    form = client.get("/admin/channels/new?type=sandbox").get_data(as_text=True)
    assert 'name="type" value="sandbox"' in form and 'name="gateway"' not in form
    code = f"sbp{secrets.token_hex(3)}"
    added = client.post("/admin/channels/new", data={"csrf_token": csrf_of(form), "type": "sandbox",
                                                     "code": code, "name": "Try it", "sort_order": "5"})
    assert added.status_code == 303, added.get_data(as_text=True)
    secret_of(app, code)   # made and sealed
    from kamengd.extensions import db
    from kamengd.payments.models import PaymentChannel

    with app.app_context():
        channel = db.session.scalars(sa.select(PaymentChannel).where(PaymentChannel.code == code)).one()
        assert channel.type == "sandbox" and json.loads(channel.options) == {}
        channel_id = channel.id
    listing = client.get("/admin/channels").get_data(as_text=True)
    tested = client.post(f"/admin/channels/{channel_id}/test", data={"csrf_token": csrf_of(listing)},
                         follow_redirects=True).get_data(as_text=True)
    assert "the sandbox completes payments on this shop" in tested
    client.post(f"/admin/channels/{channel_id}/toggle", data={"csrf_token": csrf_of(listing), "enabled": "0"})

"""The buyer's order page and the gateway's return page (W10 §1), both backends.

The gateway often sends the buyer back before its callback: the return page
is the order's own page, says the payment is being confirmed, and watches
the order (a script polls /order/<no>/status; without JavaScript a
<noscript> refresh) until the keys are there. The browser side, with a
callback 3 s after the return, is in test_browser_shop.py.
"""
import hashlib
import secrets
from urllib.parse import urlencode

import pytest

from conftest import epay_shop
from kamengd.payments import epay

PID, KEY = "4004", "order-page-merchant-key-0123"
REFRESH = '<noscript><meta http-equiv="refresh" content="5"></noscript>'


@pytest.fixture
def shop(app):
    return epay_shop(app, name="返回页 return page", price_cents=250,
                     keys=[f"R-{secrets.token_hex(8)}" for _ in range(3)], pid=PID, key=KEY, prefix="rp")


def order(client, shop):
    answer = client.post("/api/v1/orders", json={"product_id": shop["id"], "quantity": 1,
                                                "email": "r@example.com", "channel": shop["channel"]})
    assert answer.status_code == 201
    return answer.get_json()


def pay(client, shop, order_no):
    params = {"pid": PID, "trade_no": f"GW{order_no}", "out_trade_no": order_no, "type": "alipay", "name": "x",
              "money": "2.50", "trade_status": "TRADE_SUCCESS"}
    params["sign"] = hashlib.md5((epay.signing_string(params) + KEY).encode()).hexdigest()
    assert client.get(f"/pay/{shop['channel']}/notify?{urlencode(params)}").data == b"success"


def test_back_from_the_gateway_before_the_callback(backend, app, shop):
    buyer = app.test_client()
    placed = order(buyer, shop)
    no = placed["order_no"]
    page = buyer.get(f"/pay/{shop['channel']}/return", query_string={"order_no": no, "token": placed["token"]})
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "正在确认支付" in html and "返回页 return page" in html and "付款期限" in html and "去付款" in html
    assert REFRESH in html and 'id="watch"' in html and "order.js" in html
    assert 'data-status="pending"' in html

    # The return page remembered the order in this browser: the status needs no token.
    status = buyer.get(f"/order/{no}/status")
    assert status.get_json() == {"status": "pending"} and status.headers["Cache-Control"] == "no-store"
    # The order's own page watches too, without the refresh (the buyer has not been to pay yet).
    plain = buyer.get(f"/order/{no}").get_data(as_text=True)
    assert 'id="watch"' in plain and REFRESH not in plain and "正在确认支付" not in plain
    # Another browser learns nothing.
    stranger = app.test_client()
    missing = stranger.get(f"/order/{no}/status")
    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "not_found"

    pay(app.test_client(), shop, no)
    assert buyer.get(f"/order/{no}/status").get_json() == {"status": "delivered"}
    done = buyer.get(f"/pay/{shop['channel']}/return", query_string={"order_no": no}).get_data(as_text=True)
    assert 'id="keys"' in done and 'id="watch"' not in done and REFRESH not in done
    assert "正在确认支付" not in done


def test_the_return_page_in_english(backend, app, shop):
    buyer = app.test_client()
    placed = order(buyer, shop)
    html = buyer.get(f"/pay/{shop['channel']}/return", query_string={
        "order_no": placed["order_no"], "token": placed["token"], "lang": "en"}).get_data(as_text=True)
    assert "Confirming your payment" in html and "Pay before" in html


def test_a_status_with_a_wrong_token_is_404(backend, app, shop):
    placed = order(app.test_client(), shop)
    answer = app.test_client().get(f"/order/{placed['order_no']}/status", query_string={"token": "x" * 32})
    assert answer.status_code == 404


def test_the_pages_promise_mail_only_when_it_can_be_sent(backend, make_install):
    """W10 §2: with no SMTP server every delivery mail is skipped, so no page promises one."""
    import dataclasses

    from kamengd.app import create_app
    import io

    from kamengd.catalog.services import create_product
    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.inventory.services import import_keys
    from kamengd.payments.services import add_channel

    cfg = make_install(backend)
    cfg = dataclasses.replace(cfg, ratelimit=dataclasses.replace(cfg.ratelimit, enabled=False))
    quiet = create_app(cfg)
    with quiet.app_context():
        product_id = create_product(db.session, name="mail test", price_cents=100, actor="t").id
        import_keys(db.session, get_vault(), product_id=product_id, fh=io.BytesIO(b"MAIL-1\nMAIL-2"), actor="t")
        add_channel(db.session, get_vault(), channel_type="epay", code="mail", actor="t",
                    options={"gateway": "https://pay.example.com", "pid": PID, "key": KEY})
        db.session.commit()
    for path in ("/", f"/product/{product_id}"):
        html = quiet.test_client().get(path).get_data(as_text=True)
        assert "发送到邮箱" not in html and "接收订单和卡密" not in html, path
    assert "请收藏订单页地址" in quiet.test_client().get("/").get_data(as_text=True)
    assert "用于查询订单" in quiet.test_client().get(f"/product/{product_id}").get_data(as_text=True)

    mailing = create_app(dataclasses.replace(cfg, smtp=dataclasses.replace(cfg.smtp, host="smtp.example.com")))
    assert "发送到邮箱" in mailing.test_client().get("/").get_data(as_text=True)
    assert "接收订单和卡密" in mailing.test_client().get(f"/product/{product_id}").get_data(as_text=True)


def csrf(client) -> str:
    import re

    return re.search(r'name="csrf_token" value="([^"]+)"', client.get("/lookup").get_data(as_text=True)).group(1)


@pytest.fixture
def big_shop(app):
    return epay_shop(app, name="查询 lookup", price_cents=250, keys=[f"L-{secrets.token_hex(8)}" for _ in range(12)],
                     pid=PID, key=KEY, prefix="lk")


def test_lookup_this_browser_pages_and_one_order_by_number(backend, app, big_shop):
    """W10 §2: the browser's own orders; an e-mail + password lookup paged beyond the first
    page; one order by its number and e-mail (its status; its keys with the password)."""
    buyer = app.test_client()
    email = f"pages{secrets.token_hex(3)}@example.com"
    placed = []
    for _ in range(12):      # more than a page (10)
        answer = buyer.post("/api/v1/orders", json={"product_id": big_shop["id"], "quantity": 1, "email": email,
                                                    "channel": big_shop["channel"], "query_password": "pw-1234"})
        assert answer.status_code == 201, answer.get_json()
        placed.append(answer.get_json())
    # The API hands out tokens; the storefront's browser remembers what it opened.
    for p in placed[:2]:
        buyer.get(f"/order/{p['order_no']}", query_string={"token": p["token"]})
    page = buyer.get("/lookup").get_data(as_text=True)
    assert "本浏览器的订单" in page and all(p["order_no"] in page for p in placed[:2])
    assert placed[2]["order_no"] not in page
    assert "本浏览器的订单" not in app.test_client().get("/lookup").get_data(as_text=True)

    first = buyer.post("/lookup", data={"csrf_token": csrf(buyer), "email": email, "query_password": "pw-1234"})
    html = first.get_data(as_text=True)
    shown = [p["order_no"] for p in placed if p["order_no"] in html.split('id="this-browser"')[-1].split("</section>", 1)[-1]]
    assert len(shown) == 10 and "第 1 / 2 页" in html
    second = buyer.get("/lookup", query_string={"page": 2}).get_data(as_text=True)
    rest = [p["order_no"] for p in placed if f'class="order-no">{p["order_no"]}</a></h3>' in second]
    assert len(rest) == 2 and not set(rest) & set(shown) and "pw-1234" not in second
    # Another browser has no lookup to page through.
    assert "找到的订单" not in app.test_client().get("/lookup?page=2").get_data(as_text=True)

    # One order by number + e-mail: its status; with the password, its keys.
    target = placed[0]["order_no"]
    pay(app.test_client(), big_shop, target)
    stranger = app.test_client()
    status_only = stranger.post("/lookup", data={"csrf_token": csrf(stranger), "email": email.upper(),
                                                 "order_no": target}).get_data(as_text=True)
    assert target in status_only and "只显示订单状态" in status_only and 'id="keys-1"' not in status_only
    with_keys = stranger.post("/lookup", data={"csrf_token": csrf(stranger), "email": email, "order_no": target,
                                               "query_password": "pw-1234"}).get_data(as_text=True)
    assert 'id="keys-1"' in with_keys and "只显示订单状态" not in with_keys
    wrong = stranger.post("/lookup", data={"csrf_token": csrf(stranger), "email": "other@example.com",
                                           "order_no": target}).get_data(as_text=True)
    assert f'class="order-no">{target}</a></h3>' not in wrong and "没有找到订单" in wrong
    missing = stranger.get(f"/order/{target}")
    assert missing.status_code == 404 and "无法在此验证订单" in missing.get_data(as_text=True)


def test_customer_service_and_footer_on_every_page(backend, make_install):
    """W10 §10: the shop's contact and footer, set by staff, on every storefront page."""
    import dataclasses

    from kamengd.app import create_app
    from kamengd.extensions import db
    from kamengd.settings.services import set_setting

    cfg = make_install(backend)
    app = create_app(dataclasses.replace(cfg, ratelimit=dataclasses.replace(cfg.ratelimit, enabled=False)))
    client = app.test_client()
    assert 'id="contact"' not in client.get("/").get_data(as_text=True)      # nothing set: nothing shown
    with app.app_context():
        for key, value in (("site.contact_qq", "123456789"), ("site.contact_wechat", "kami_kefu"),
                           ("site.contact_telegram", "@kami_help"), ("site.contact_email", "help@example.com"),
                           ("site.footer", "客服时间 9:00–23:00 <b>x</b>")):
            set_setting(db.session, key, value, actor="t")
        db.session.commit()
    for path in ("/", "/lookup", "/order/nope"):
        html = client.get(path).get_data(as_text=True)
        assert 'id="contact"' in html and "uin=123456789" in html and "kami_kefu" in html, path
        assert 'href="https://t.me/kami_help"' in html and "mailto:help@example.com" in html, path
        assert "客服时间 9:00–23:00 &lt;b&gt;x&lt;/b&gt;" in html, path        # text, never markup

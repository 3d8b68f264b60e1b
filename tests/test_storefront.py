"""Storefront pages through Flask's test client: buy, pay, see keys, look up; all escaped."""
import hashlib
import io
import re
import secrets

import pytest

from kamengd.payments import epay

KEY = "shop-merchant-key"
HOSTILE = '<script>alert("x")</script>&"\''


@pytest.fixture
def item(app, backend):
    from kamengd.app import get_vault
    from kamengd.catalog.services import create_product
    from kamengd.extensions import db
    from kamengd.inventory.services import import_keys
    from kamengd.payments.services import add_channel

    with app.app_context():
        p = create_product(db.session, name=f"{HOSTILE} 月卡 {secrets.token_hex(3)}", price_cents=500,
                           actor="t", description=HOSTILE)
        keys = [f"SHOP-{secrets.token_hex(5)}" for _ in range(2)]
        import_keys(db.session, get_vault(), product_id=p.id, fh=io.BytesIO("\n".join(keys).encode()), actor="t")
        code = f"sf{secrets.token_hex(3)}"
        add_channel(db.session, get_vault(), channel_type="epay", code=code, name=HOSTILE, actor="t",
                    options={"gateway": "https://pay.example.com", "pid": "4004", "key": KEY})
        db.session.commit()
        pid = p.id
        db.session.remove()
    return {"id": pid, "keys": keys, "channel": code}


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def paid(order_no, money):
    params = {"pid": "4004", "trade_no": f"T{order_no}", "out_trade_no": order_no, "type": "alipay",
              "name": "x", "money": money, "trade_status": "TRADE_SUCCESS"}
    params["sign"] = hashlib.md5((epay.signing_string(params) + KEY).encode()).hexdigest()
    return params


def test_pages_escape_hostile_text(client, item):
    for url in ("/", f"/product/{item['id']}"):
        html = client.get(url).get_data(as_text=True)
        assert "<script>alert" not in html
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html


def test_buy_pay_and_see_keys(client, item):
    page = client.get(f"/product/{item['id']}").get_data(as_text=True)
    resp = client.post(f"/product/{item['id']}", data={
        "csrf_token": csrf_of(page), "quantity": "2", "email": "buyer@example.com",
        "channel": item["channel"], "query_password": "lookup-pw"})
    assert resp.status_code == 303
    pay_url = resp.headers["Location"]
    assert pay_url.startswith("https://pay.example.com/submit.php?")
    order_no = re.search(r"out_trade_no=(\d+)", pay_url).group(1)

    pending = client.get(f"/order/{order_no}")  # the browser's cookie proves it is the buyer
    assert pending.status_code == 200 and 'data-status="pending"' in pending.get_data(as_text=True)
    assert client.get(f"/pay/{item['channel']}/notify", query_string=paid(order_no, "10.00")).get_data(
        as_text=True) == "success"
    html = client.get(f"/order/{order_no}").get_data(as_text=True)
    assert all(k in html for k in item["keys"]) and 'data-status="delivered"' in html

    # another browser: nothing without the token
    stranger = client.application.test_client()
    assert stranger.get(f"/order/{order_no}").status_code == 404

    # e-mail + query password find it; e-mail alone or a wrong password do not
    lookup = stranger.get("/lookup").get_data(as_text=True)
    found = stranger.post("/lookup", data={"csrf_token": csrf_of(lookup), "email": "buyer@example.com",
                                           "query_password": "lookup-pw"}).get_data(as_text=True)
    assert order_no in found and item["keys"][0] in found
    wrong = stranger.post("/lookup", data={"csrf_token": csrf_of(lookup), "email": "buyer@example.com",
                                           "query_password": "nope"}).get_data(as_text=True)
    assert order_no not in wrong and item["keys"][0] not in wrong


def test_forms_need_the_csrf_token(client, item):
    resp = client.post(f"/product/{item['id']}", data={"quantity": "1", "email": "b@example.com",
                                                        "channel": item["channel"]})
    assert resp.status_code == 400


def test_bad_form_input_shows_the_form_again(client, item):
    page = client.get(f"/product/{item['id']}").get_data(as_text=True)
    resp = client.post(f"/product/{item['id']}", data={"csrf_token": csrf_of(page), "quantity": "3",
                                                        "email": "b@example.com", "channel": item["channel"]})
    assert resp.status_code == 409 and "not enough stock" in resp.get_data(as_text=True)
    resp = client.post(f"/product/{item['id']}", data={"csrf_token": csrf_of(page), "quantity": "abc",
                                                        "email": "b@example.com", "channel": item["channel"]})
    assert resp.status_code == 400


def test_english_switch(client, item):
    html = client.get("/?lang=en").get_data(as_text=True)
    assert "Find my order" in html and 'lang="en"' in html
    assert "Find my order" in client.get("/").get_data(as_text=True)  # remembered in a cookie
    assert "查询订单" in client.get("/?lang=zh").get_data(as_text=True)


def test_search(client, item):
    html = client.get("/", query_string={"q": "月卡"}).get_data(as_text=True)
    assert f"/product/{item['id']}" in html
    assert f"/product/{item['id']}" not in client.get("/", query_string={"q": "zzz-none"}).get_data(as_text=True)

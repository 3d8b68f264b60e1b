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
    from kamengd.context import get_vault
    from kamengd.catalog.services import create_product
    from kamengd.extensions import db
    from kamengd.inventory.services import import_keys
    from kamengd.payments.services import add_channel

    with app.app_context():
        tag = secrets.token_hex(3)
        p = create_product(db.session, name=f"{HOSTILE} 月卡 {tag}", price_cents=500,
                           actor="t", description=HOSTILE)
        keys = [f"SHOP-{secrets.token_hex(5)}" for _ in range(2)]
        import_keys(db.session, get_vault(), product_id=p.id, fh=io.BytesIO("\n".join(keys).encode()), actor="t")
        code = f"sf{secrets.token_hex(3)}"
        add_channel(db.session, get_vault(), channel_type="epay", code=code, name=HOSTILE, actor="t",
                    options={"gateway": "https://pay.example.com", "pid": "4004", "key": KEY})
        db.session.commit()
        pid = p.id
        db.session.remove()
    return {"id": pid, "keys": keys, "channel": code, "tag": tag}


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def paid(order_no, money):
    params = {"pid": "4004", "trade_no": f"T{order_no}", "out_trade_no": order_no, "type": "alipay",
              "name": "x", "money": money, "trade_status": "TRADE_SUCCESS"}
    params["sign"] = hashlib.md5((epay.signing_string(params) + KEY).encode()).hexdigest()
    return params


def test_pages_escape_hostile_text(client, item):
    # (a search keeps it on the index's first page, whatever else the shared shop holds)
    for url in (f"/?q={item['tag']}", f"/product/{item['id']}"):
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
    assert resp.status_code == 409 and "库存不足" in resp.get_data(as_text=True)
    assert "not enough stock" not in resp.get_data(as_text=True)     # the buyer's language only (W10 §5)
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


@pytest.fixture
def catalog(app, backend):
    """Two categories (one hidden), a product in each, and one without a category."""
    from kamengd.catalog.services import create_category, create_product
    from kamengd.extensions import db

    tag = secrets.token_hex(3)
    with app.app_context():
        shown = create_category(db.session, name=f"shown {tag}", actor="t", sort_order=1)
        hidden = create_category(db.session, name=f"hidden {tag}", actor="t", is_active=False)
        ids = {"tag": tag, "shown": shown.id, "hidden": hidden.id}
        for key, category in (("in_shown", shown.id), ("in_hidden", hidden.id), ("loose", None)):
            ids[key] = create_product(db.session, name=f"{key} {tag}", price_cents=100, actor="t",
                                      category_id=category).id
        db.session.commit()
        db.session.remove()
    return ids


def test_categories_on_the_index(client, catalog):
    tag = catalog["tag"]
    # These products have no keys: sold out, shown when asked for (the shared shop holds
    # other tests' products too: the search keeps these on the first page).
    html = client.get("/", query_string={"q": tag}).get_data(as_text=True)
    assert f"/?category={catalog['shown']}" in html and f"<h2>shown {tag}</h2>" in html
    assert f"in_shown {tag}" in html and f"loose {tag}" in html
    # A hidden category hides its products (the product page still answers a direct link).
    assert f"hidden {tag}" not in html and f"in_hidden {tag}" not in html
    assert client.get(f"/product/{catalog['in_hidden']}").status_code == 200
    # One category: only its products, the link marked; a search stays inside it.
    html = client.get("/", query_string={"category": catalog["shown"], "all": 1}).get_data(as_text=True)
    assert f"in_shown {tag}" in html and f"loose {tag}" not in html
    assert f'aria-current="page">shown {tag}</a>' in html
    html = client.get("/", query_string={"category": catalog["shown"], "q": "loose"}).get_data(as_text=True)
    assert f"loose {tag}" not in html and 'name="category"' in html
    # A hidden, unknown or malformed category shows everything.
    for bad in (catalog["hidden"], 2**40, "x", "-1", "9" * 5000):
        html = client.get("/", query_string={"category": bad, "q": tag}).get_data(as_text=True)
        assert f"in_shown {tag}" in html and f"loose {tag}" in html


def test_language_link_keeps_the_page_and_its_query(client, catalog):
    html = client.get("/", query_string={"category": catalog["shown"], "q": "in"}).get_data(as_text=True)
    link = re.search(r'href="([^"]*)" hreflang="en"', html).group(1)
    assert link.startswith("/?") and f"category={catalog['shown']}" in link and "q=in" in link and "lang=en" in link
    html = client.get(f"/product/{catalog['loose']}").get_data(as_text=True)
    assert f'href="/product/{catalog["loose"]}?lang=en"' in html
    assert client.get("/favicon.ico").status_code == 301


def test_product_page_explains_limits_and_marks_the_bad_field(client, item):
    page = client.get(f"/product/{item['id']}").get_data(as_text=True)
    assert 'max="2"' in page                      # no more than in stock
    resp = client.post(f"/product/{item['id']}", data={"csrf_token": csrf_of(page), "quantity": "1",
                                                        "email": "nope", "channel": item["channel"]})
    html = resp.get_data(as_text=True)
    assert resp.status_code == 400 and "请填写有效的邮箱地址" in html and "(email: " not in html
    assert re.search(r'<input id="email"[^>]*value="nope"[^>]*aria-invalid="true"', html)
    resp = client.post(f"/product/{item['id']}?lang=en", data={"csrf_token": csrf_of(page), "quantity": "0",
                                                                 "email": "b@example.com", "channel": item["channel"]})
    html = resp.get_data(as_text=True)
    assert resp.status_code == 400 and "Choose a quantity from 1 to 100" in html
    assert re.search(r'<input id="quantity"[^>]*aria-invalid="true"', html)
    assert client.post(f"/product/{2**40}", data={"csrf_token": csrf_of(page)}).status_code == 404


def test_pending_order_offers_the_payment_page_again(client, item):
    page = client.get(f"/product/{item['id']}").get_data(as_text=True)
    resp = client.post(f"/product/{item['id']}", data={"csrf_token": csrf_of(page), "quantity": "1",
                                                        "email": "b@example.com", "channel": item["channel"]})
    order_no = re.search(r"out_trade_no=(\d+)", resp.headers["Location"]).group(1)
    html = client.get(f"/order/{order_no}").get_data(as_text=True)
    link = re.search(r'<a class="button" href="([^"]+)"', html).group(1).replace("&amp;", "&")
    assert link.startswith("https://pay.example.com/submit.php?") and f"out_trade_no={order_no}" in link
    assert client.get(f"/pay/{item['channel']}/notify", query_string=paid(order_no, "5.00")).get_data(
        as_text=True) == "success"
    html = client.get(f"/order/{order_no}").get_data(as_text=True)
    assert "submit.php" not in html and 'class="copy copy-all"' not in html   # one key: no "copy all"
    assert html.count('class="copy"') == 1


def test_product_page_states_one_quantity_limit_and_a_total(client, item):
    """W10 §4: the limit beside the field is the one the field takes; the total is shown."""
    html = client.get(f"/product/{item['id']}").get_data(as_text=True)
    assert 'max="2"' in html and re.search(r'id="per-order">1 – 2 ', html) and "受库存限制" in html
    assert re.search(r'<output id="total"[^>]*>\d+\.\d\d</output>', html)
    assert 'autocomplete="new-password"' not in html


def test_wechat_and_qq_browsers_are_told_to_open_the_system_browser(client, item):
    wechat = "Mozilla/5.0 (iPhone) AppleWebKit/605.1.15 Mobile/15E148 MicroMessenger/8.0.47(0x18002f2c)"
    qq = "Mozilla/5.0 (Linux; Android 13) Mobile Safari/537.36 V1_AND_SQ_8.9.0 QQ/8.9.0.9450"
    for agent in (wechat, qq):
        html = client.get(f"/product/{item['id']}", headers={"User-Agent": agent}).get_data(as_text=True)
        assert "在浏览器打开" in html, agent
    assert "在浏览器打开" not in client.get("/", headers={"User-Agent": "Mozilla/5.0 Chrome/120"}).get_data(as_text=True)


def test_the_contact_text_on_every_page_and_beside_the_keys(client, item, shared_setting):
    """site.contact: in the footer of every storefront page and on the order page, as text, its lines kept."""
    text = f"客服 9:00–22:00 {HOSTILE}\nhttps://help.example.com/kf"
    shown = "客服 9:00–22:00 &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&amp;&#34;&#39;\nhttps://help.example.com/kf"
    assert "order-help" not in client.get("/lookup").get_data(as_text=True)      # nothing set: nothing shown
    shared_setting("site.contact", text)
    page = client.get(f"/product/{item['id']}").get_data(as_text=True)
    resp = client.post(f"/product/{item['id']}", data={"csrf_token": csrf_of(page), "quantity": "1",
                                                        "email": "b@example.com", "channel": item["channel"]})
    order_no = re.search(r"out_trade_no=(\d+)", resp.headers["Location"]).group(1)
    client.get(f"/pay/{item['channel']}/notify", query_string=paid(order_no, "5.00"))
    for path in ("/", f"/product/{item['id']}", "/lookup", "/order/nope", f"/order/{order_no}"):
        html = client.get(path).get_data(as_text=True)
        footer = html[html.index('<footer class="site">'):]
        assert 'id="contact"' in footer and f'<span class="contact-text">{shown}</span>' in footer, path
        assert "<script>alert" not in html and 'href="https://help.example.com' not in html, path   # never a link
    order = client.get(f"/order/{order_no}").get_data(as_text=True)
    help_block = order[order.index('<div class="order-help">'):order.index("</main>")]
    assert order.index('id="keys"') < order.index('<div class="order-help">')
    assert "对这个订单有疑问？" in help_block and f'<p class="contact-text">{shown}</p>' in help_block
    assert 'href="#contact"' in help_block
    assert "Questions about this order?" in client.get(f"/order/{order_no}?lang=en").get_data(as_text=True)
    shared_setting("site.contact", "")
    assert "order-help" not in client.get(f"/order/{order_no}").get_data(as_text=True)

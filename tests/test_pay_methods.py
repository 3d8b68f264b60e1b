"""Payment methods as buyers know them (W10 §4): one Epay channel offers several pay
types (支付宝, 微信支付, QQ 钱包 …), the buyer picks one, the order keeps it and its
pay URL asks the gateway for it; a type the channel does not offer is refused and
nothing is written."""
import io
import json
import re
import secrets
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa

from kamengd.errors import InvalidRequest
from kamengd.payments import methods
from panel_support import csrf_of

KEY = "methods-merchant-key-0123"


def test_pay_types_are_parsed_and_chosen():
    assert methods.parse_pay_types("alipay, wxpay，qqpay") == ["alipay", "wxpay", "qqpay"]
    assert methods.parse_pay_types("") == []
    for bad, message in (("alipay,alipay", "twice"), ("Ali Pay", "not a pay type"), ("x" * 17, "not a pay type"),
                         (",".join(f"t{i}" for i in range(9)), "at most 8")):
        with pytest.raises(InvalidRequest, match=message):
            methods.parse_pay_types(bad)
    assert methods.pay_types("epay", {}) == ["alipay"]                       # as before: the default
    assert methods.pay_types("epay", {"pay_type": "wxpay"}) == ["wxpay"]     # an older channel's one type
    assert methods.pay_types("epay", {"pay_types": "qqpay,usdt", "pay_type": "wxpay"}) == ["qqpay", "usdt"]
    assert methods.pay_types("stripe", {}) == []                             # the channel is the method
    options = {"pay_types": "alipay,wxpay"}
    assert methods.choose("epay", options, None) == "alipay"
    assert methods.choose("epay", options, "wxpay") == "wxpay"
    with pytest.raises(InvalidRequest, match="not offered"):
        methods.choose("epay", options, "qqpay")
    assert (methods.label("wxpay", "zh"), methods.label("wxpay", "en"), methods.label("tenpay", "zh")) == \
        ("微信支付", "WeChat Pay", None)


@pytest.fixture
def shop(app):
    from kamengd.catalog.services import create_product
    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.inventory.services import import_keys
    from kamengd.payments.services import add_channel

    with app.app_context():
        product = create_product(db.session, name=f"点卡 {secrets.token_hex(3)}", price_cents=990, actor="t")
        keys = "\n".join(f"PM-{secrets.token_hex(8)}" for _ in range(5)).encode()
        import_keys(db.session, get_vault(), product_id=product.id, fh=io.BytesIO(keys), actor="t")
        code = f"pm{secrets.token_hex(3)}"
        add_channel(db.session, get_vault(), channel_type="epay", code=code, name="易支付", actor="t",
                    options={"gateway": "https://pay.example.com", "pid": "1", "key": KEY,
                             "pay_types": "alipay,wxpay,tenpay"})
        db.session.commit()
        return {"id": product.id, "channel": code}


def order(client, shop, **extra):
    return client.post("/api/v1/orders", json={"product_id": shop["id"], "quantity": 1, "email": "m@example.com",
                                              "channel": shop["channel"], **extra})


def pay_type_of(pay_url):
    return parse_qs(urlsplit(pay_url).query)["type"][0]


def count_orders(app):
    from kamengd.extensions import db
    from kamengd.orders.models import Order

    with app.app_context():
        return db.session.scalar(sa.select(sa.func.count()).select_from(Order))


def test_the_api_lists_methods_and_orders_keep_the_chosen_type(backend, app, client, shop):
    listed = client.get("/api/v1/payment-methods").get_json()["methods"]
    ours = [m for m in listed if m["channel"] == shop["channel"]]
    assert [(m["pay_type"], m["name"]) for m in ours] == [("alipay", "支付宝"), ("wxpay", "微信支付"),
                                                          ("tenpay", "易支付")]   # unknown: the channel's name
    english = client.get("/api/v1/payment-methods?lang=en").get_json()["methods"]
    assert [m["name"] for m in english if m["channel"] == shop["channel"]][:2] == ["Alipay", "WeChat Pay"]

    placed = order(client, shop, pay_type="wxpay")
    assert placed.status_code == 201, placed.get_json()
    answer = placed.get_json()
    assert answer["pay_type"] == "wxpay" and pay_type_of(answer["pay_url"]) == "wxpay"
    seen = client.get(f"/api/v1/orders/{answer['order_no']}?token={answer['token']}").get_json()
    assert seen["pay_type"] == "wxpay"

    default = order(client, shop).get_json()
    assert default["pay_type"] == "alipay" and pay_type_of(default["pay_url"]) == "alipay"

    before = count_orders(app)
    for bad, message in (("qqpay", "not offered"), (7, "pay_type"), ("WX PAY", "pay_type"), ("", "pay_type")):
        refused = order(client, shop, pay_type=bad)
        assert refused.status_code == 400, (bad, refused.get_json())
        error = refused.get_json()["error"]
        assert error["code"] == "invalid_request" and message in error["message"], (bad, error)
    assert count_orders(app) == before   # nothing written, nothing reserved


def test_the_product_page_offers_methods_by_name_and_the_order_shows_it(backend, app, client, shop):
    from kamengd.extensions import db
    from kamengd.payments.services import set_product_channels

    # Paid through its own channel only (the shared shop has other channels offering 支付宝 too:
    # a method several channels offer is shown once and routed, see test_the_page_routes_a_shared_method).
    with app.app_context():
        set_product_channels(db.session, shop["id"], shop["channel"], actor="t")
        db.session.commit()
        db.session.remove()
    page = client.get(f"/product/{shop['id']}").get_data(as_text=True)
    values = re.findall(r'name="channel" value="([^"]+)"', page)
    assert [v for v in values if v.startswith(shop["channel"])] == [
        f"{shop['channel']}:alipay", f"{shop['channel']}:wxpay", f"{shop['channel']}:tenpay"]
    assert "支付宝" in page and "微信支付" in page and 'class="pay-icon pay-wxpay"' in page
    answer = client.post(f"/product/{shop['id']}", data={
        "csrf_token": csrf_of(page), "quantity": "1", "email": "m@example.com",
        "channel": f"{shop['channel']}:wxpay"})
    assert answer.status_code == 303 and pay_type_of(answer.headers["Location"]) == "wxpay"
    order_no = parse_qs(urlsplit(parse_qs(urlsplit(answer.headers["Location"]).query)["return_url"][0]).query)[
        "order_no"][0]
    order_page = client.get(f"/order/{order_no}").get_data(as_text=True)
    assert "支付方式" in order_page and "微信支付" in order_page
    # "去付款" later still asks the gateway for WeChat Pay
    pay_again = re.search(r'href="([^"]+submit\.php[^"]+)"', order_page).group(1).replace("&amp;", "&")
    assert pay_type_of(pay_again) == "wxpay"

    before = count_orders(app)
    refused = client.post(f"/product/{shop['id']}", data={
        "csrf_token": csrf_of(page), "quantity": "1", "email": "m@example.com",
        "channel": f"{shop['channel']}:qqpay"})
    text = refused.get_data(as_text=True)
    assert refused.status_code == 400 and "请选择一种可用的支付方式" in text and count_orders(app) == before


def test_channel_options_refuse_bad_pay_types(backend, app):
    from kamengd.context import get_vault
    from kamengd.errors import InvalidRequest
    from kamengd.extensions import db
    from kamengd.payments.services import add_channel

    base = {"gateway": "https://pay.example.com", "pid": "1", "key": KEY}
    with app.app_context():
        for options, message in (({"pay_types": "alipay,alipay"}, "listed twice"),
                                 ({"pay_types": "支付宝"}, "not a pay type"),
                                 ({"pay_type": "alipay,wxpay"}, "several go in pay_types")):
            with pytest.raises(InvalidRequest, match=message):
                add_channel(db.session, get_vault(), channel_type="epay", code=f"pb{secrets.token_hex(3)}",
                            actor="t", options={**base, **options})
            db.session.rollback()
        channel = add_channel(db.session, get_vault(), channel_type="epay", code=f"pb{secrets.token_hex(3)}",
                              actor="t", options={**base, "pay_types": "usdt"})
        db.session.commit()
        assert json.loads(channel.options)["pay_types"] == "usdt"


def test_the_page_routes_a_shared_method(backend, app, client, shop):
    """Two channels offer 支付宝: the page shows it once, and the shop picks the channel."""
    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.payments.services import add_channel, set_product_channels

    other = f"pm{secrets.token_hex(3)}"
    with app.app_context():
        add_channel(db.session, get_vault(), channel_type="epay", code=other, name="易支付二", actor="t",
                    options={"gateway": "https://pay.example.com", "pid": "2", "key": KEY, "pay_types": "alipay"})
        set_product_channels(db.session, shop["id"], f"{shop['channel']},{other}", actor="t")
        db.session.commit()
        db.session.remove()
    page = client.get(f"/product/{shop['id']}").get_data(as_text=True)
    values = re.findall(r'name="channel" value="([^"]+)"', page)
    assert values == [":alipay", f"{shop['channel']}:wxpay", f"{shop['channel']}:tenpay"]
    answer = client.post(f"/product/{shop['id']}", data={
        "csrf_token": csrf_of(page), "quantity": "1", "email": "m@example.com", "channel": ":alipay"})
    assert answer.status_code == 303 and pay_type_of(answer.headers["Location"]) == "alipay"

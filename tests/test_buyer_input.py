"""What a buyer fills in for manual goods (W10 §3): a product declares fields (label, kind,
required), the buyer fills them on the product page or in the API's `input`, staff see
them on the order; bad values are refused and nothing is written."""
import csv
import io
import json
import re
import secrets

import pytest
import sqlalchemy as sa

from kamengd.catalog import inputs
from kamengd.errors import InvalidRequest

FIELDS = "充值QQ号 | qq | required\n游戏账号 | account | optional\n手机 | phone"


def test_fields_are_parsed_from_the_panels_text_and_back():
    fields = inputs.parse_fields(FIELDS)
    assert [(f["key"], f["label"], f["kind"], f["required"]) for f in fields] == [
        ("f1", "充值QQ号", "qq", True), ("f2", "游戏账号", "account", False), ("f3", "手机", "phone", False)]
    assert inputs.parse_fields(inputs.fields_text(fields)) == fields
    for bad, message in (("x | regex:.*", "not one of"), ("a\na", "same label"), (" | qq", "a label"),
                         ("x | qq | maybe", "required or optional"), ("\n".join(f"f{i}" for i in range(6)), "at most 5")):
        with pytest.raises(InvalidRequest, match=message):
            inputs.parse_fields(bad)


@pytest.mark.parametrize("given, error", [
    ({}, "充值QQ号: required"), ({"f1": "0123"}, "a QQ number"), ({"f1": "12345", "f2": "a b"}, "an account name"),
    ({"f1": "12345", "f3": "12-34"}, "a phone number"), ({"f1": "12345", "f9": "x"}, "not a field"),
    ({"f1": 12345}, "text is required"), ({"f1": "12345\n"}, None), ({"f1": "123456", "f2": "x" * 300}, "an account name"),
    ("12345", "an object"),
])
def test_values_are_checked_against_their_kind(given, error):
    fields = inputs.parse_fields(FIELDS)
    if error is None:
        assert inputs.check_values(fields, given) == [{"label": "充值QQ号", "value": "12345"}]
    else:
        with pytest.raises(InvalidRequest, match=error):
            inputs.check_values(fields, given)


@pytest.fixture
def manual(app):
    from kamengd.catalog.services import create_product
    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.payments.services import add_channel

    with app.app_context():
        product = create_product(db.session, name=f"代充 {secrets.token_hex(3)}", price_cents=1000, actor="t",
                                 delivery_mode="manual", input_fields=FIELDS)
        code = f"in{secrets.token_hex(3)}"
        add_channel(db.session, get_vault(), channel_type="epay", code=code, actor="t",
                    options={"gateway": "https://pay.example.com", "pid": "1", "key": "input-merchant-key-0123"})
        db.session.commit()
        return {"id": product.id, "channel": code}


def order(client, manual, **extra):
    return client.post("/api/v1/orders", json={"product_id": manual["id"], "quantity": 1, "email": "q@example.com",
                                              "channel": manual["channel"], **extra})


def test_the_api_takes_the_products_input_and_staff_see_it(backend, app, client, manual):
    from kamengd.extensions import db
    from kamengd.orders.models import Order
    from panel_support import login, make_staff

    listed = next(p for p in client.get("/api/v1/products").get_json()["products"] if p["id"] == manual["id"])
    assert listed["input_fields"] == [{"key": "f1", "label": "充值QQ号", "kind": "qq", "required": True},
                                      {"key": "f2", "label": "游戏账号", "kind": "account", "required": False},
                                      {"key": "f3", "label": "手机", "kind": "phone", "required": False}]
    with app.app_context():
        before = db.session.scalar(sa.select(sa.func.count()).select_from(Order))
    for bad, message in (({}, "input: 充值QQ号: required"), ({"input": {"f1": "abc"}}, "a QQ number"),
                         ({"input": ["12345"]}, "an object")):
        answer = order(client, manual, **bad)
        assert answer.status_code == 400 and message in answer.get_json()["error"]["message"], answer.get_json()
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Order)) == before   # nothing written
    placed = order(client, manual, input={"f1": " 987654321 ", "f2": "hero_01"})
    assert placed.status_code == 201
    no = placed.get_json()["order_no"]
    with app.app_context():
        stored = db.session.scalar(sa.select(Order.buyer_input).where(Order.order_no == no))
        assert json.loads(stored) == [{"label": "充值QQ号", "value": "987654321"}, {"label": "游戏账号", "value": "hero_01"}]
    page = client.get(f"/order/{no}", query_string={"token": placed.get_json()["token"]}).get_data(as_text=True)
    assert "充值QQ号" in page and "987654321" in page
    staff = app.test_client()
    login(staff, make_staff(app, "support"))
    detail = staff.get(f"/admin/orders/{no}").get_data(as_text=True)
    assert re.search(r'class="buyer-input">充值QQ号</dt><dd class="buyer-input"><code>987654321</code>', detail)
    boss = app.test_client()
    login(boss, make_staff(app, "admin"))
    exported = boss.get("/admin/orders/export.csv", query_string={"product": manual["id"]}).get_data(as_text=True)
    row = next(r for r in csv.DictReader(io.StringIO(exported.lstrip("\ufeff"))) if r["order_no"] == no)
    assert row["input"] == "充值QQ号: 987654321; 游戏账号: hero_01"


def test_the_product_page_asks_for_the_fields(backend, client, manual):
    html = client.get(f"/product/{manual['id']}").get_data(as_text=True)
    assert 'name="input_f1"' in html and 'pattern="[1-9][0-9]{4,11}"' in html and 'inputmode="numeric"' in html
    assert re.search(r'name="input_f1"[^>]* required', html) and not re.search(r'name="input_f2"[^>]* required', html)


def test_a_product_without_fields_refuses_input(backend, client, app):
    from conftest import epay_shop

    shop = epay_shop(app, name="plain", price_cents=100, keys=["P-1"], pid="1", key="plain-merchant-key-0123",
                     prefix="pl")
    answer = client.post("/api/v1/orders", json={"product_id": shop["id"], "quantity": 1, "email": "p@example.com",
                                                "channel": shop["channel"], "input": {"f1": "x"}})
    assert answer.status_code == 400 and "not a field of this product" in answer.get_json()["error"]["message"]

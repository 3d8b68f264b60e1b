"""The member price (会员价, W5): a buyer signed in to the portal (a member or an agent) pays it on
the shop's own site when it is lower than what applies; a guest pays the shop's price. Checked
again by the order's INSERT (a price changed since the offer was read is never charged); on
SQLite and MariaDB.
"""
from __future__ import annotations

import io
import json
import re
import secrets

import pytest
import sqlalchemy as sa

from conftest import PASSWORD, assert_one_line_error, run_cli
from test_agent_portal import sign_in
from test_sandbox import csrf_of


@pytest.fixture
def shop(app):
    """A product at 10.00 with a member price of 8.00, tiers from 5 units at 7.50, ten keys; a
    sandbox channel; a member."""
    from kamengd.agents import services as agents
    from kamengd.catalog.services import create_product
    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.inventory.services import import_keys
    from kamengd.payments.models import PaymentChannel
    from kamengd.payments.services import add_channel

    t = secrets.token_hex(3)
    with app.app_context():
        product = create_product(db.session, name=f"member price {t}", price_cents=1000, actor="t",
                                 member_price_cents=800, price_tiers="5=7.50")
        import_keys(db.session, get_vault(), product_id=product.id, actor="t",
                    fh=io.BytesIO("\n".join(f"MP-{t}-{i}-{secrets.token_hex(4)}" for i in range(10)).encode()))
        channel = add_channel(db.session, get_vault(), channel_type="sandbox", code=f"sbx{t}", actor="t",
                              name="Sandbox", options={}, site_url="http://127.0.0.1:5000")
        member = agents.create_member(db.session, username=f"lin-{t}", password=PASSWORD, actor="t")
        db.session.commit()
        found = {"id": product.id, "name": product.name, "channel": channel.code, "channel_id": channel.id,
                 "member": member.username}
        db.session.remove()
    yield found
    with app.app_context():
        db.session.execute(sa.update(PaymentChannel).where(PaymentChannel.id == found["channel_id"])
                           .values(is_enabled=False))
        db.session.commit()
        db.session.remove()


def buy(client, product_id: int, channel: str, quantity: int = 1) -> str:
    html = client.get(f"/product/{product_id}").get_data(as_text=True)
    answer = client.post(f"/product/{product_id}", data={"csrf_token": csrf_of(html), "quantity": str(quantity),
                                                         "email": "lin@example.com", "channel": channel})
    assert answer.status_code == 303, answer.get_data(as_text=True)[:500]
    return re.search(r"order_no=(\d+)", answer.headers["Location"]).group(1)


def amount_of(app, order_no: str) -> tuple[int, int]:
    from kamengd.extensions import db
    from kamengd.orders.models import Order

    with app.app_context():
        row = db.session.execute(sa.select(Order.unit_price_cents, Order.amount_cents)
                                 .where(Order.order_no == order_no)).one()
        db.session.remove()
        return tuple(row)


def test_a_signed_in_member_pays_the_member_price_and_a_guest_does_not(backend, app, client, shop):
    client.set_cookie("lang", "en")
    page = client.get(f"/product/{shop['id']}")
    html = page.get_data(as_text=True)
    assert "Member price" in html and "8.00 CNY" in html and "sign in as a member" in html
    assert 'data-price-cents="1000"' in html and "private" not in page.headers.get("Cache-Control", "")
    # A member price that is not below what applies (here: the sale price) is not offered.
    from kamengd.catalog import services as catalog
    from kamengd.catalog.models import Product
    from kamengd.extensions import db

    with app.app_context():
        catalog.update_product(db.session, db.session.get(Product, shop["id"]), actor="t", sale_price_cents=700)
        db.session.commit()
        assert "Member price" not in client.get(f"/product/{shop['id']}").get_data(as_text=True)
        catalog.update_product(db.session, db.session.get(Product, shop["id"]), actor="t", sale_price_cents=None)
        db.session.commit()
        db.session.remove()
    assert amount_of(app, buy(client, shop["id"], shop["channel"])) == (1000, 1000)
    assert sign_in(client, shop["member"]).status_code == 302
    page = client.get(f"/product/{shop['id']}")
    html = page.get_data(as_text=True)
    assert 'data-price-cents="800"' in html and "yours" in html
    assert page.headers["Cache-Control"] == "private, no-store"   # a member's prices: never kept for others
    assert amount_of(app, buy(client, shop["id"], shop["channel"])) == (800, 800)
    # The lowest that applies: from 5 units the tier's 7.50 is below the member price.
    assert amount_of(app, buy(client, shop["id"], shop["channel"], quantity=5)) == (750, 3750)
    # The index shows the member the member price too.
    card = client.get("/", query_string={"q": shop["name"]}).get_data(as_text=True)
    assert '<span class="price">8.00 CNY</span>' in card


def test_a_member_price_changed_since_the_offer_was_read_is_not_charged(backend, app, client, shop):
    from kamengd.catalog import services as catalog
    from kamengd.catalog.models import Product
    from kamengd.extensions import db

    assert sign_in(client, shop["member"]).status_code == 302
    assert amount_of(app, buy(client, shop["id"], shop["channel"])) == (800, 800)   # the offer is kept now
    with app.app_context():
        catalog.update_product(db.session, db.session.get(Product, shop["id"]), actor="t", member_price_cents=650)
        db.session.commit()
        db.session.remove()
    assert amount_of(app, buy(client, shop["id"], shop["channel"])) == (650, 650)
    with app.app_context():
        catalog.update_product(db.session, db.session.get(Product, shop["id"]), actor="t", member_price_cents=None)
        db.session.commit()
        db.session.remove()
    assert amount_of(app, buy(client, shop["id"], shop["channel"])) == (1000, 1000)


def test_the_api_says_the_member_price_and_the_cli_sets_it(backend, app, client, make_install, shop):
    listed = {p["id"]: p for p in client.get("/api/v1/products").get_json()["products"]}
    assert listed[shop["id"]]["member_price"] == "8.00" and listed[shop["id"]]["price"] == "10.00"
    cfg = make_install(backend)
    cli = lambda *a: json.loads(run_cli(*a, "--json", config=cfg.path, check=True).out)   # noqa: E731
    made = cli("product", "create", "--name", "Card", "--price", "10.00")
    assert cli("product", "edit", str(made["id"]), "--member-price", "9.50")["member_price"] == "9.50"
    assert_one_line_error(run_cli("product", "edit", str(made["id"]), "--member-price", "0", config=cfg.path),
                          "member price")
    assert_one_line_error(run_cli("product", "edit", str(made["id"]), "--member-price", "abc", config=cfg.path))
    assert cli("product", "edit", str(made["id"]), "--no-member-price")["member_price"] is None

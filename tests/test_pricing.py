"""Wholesale tiers and a time-window price (W5): the buyer pays the lowest of the price, the
window's price while it is open and the tier for the quantity — in the order's amount, the
pay URL, the products list and the product page; a change between the read and the write is
priced again; from the CLI and the panel."""
from __future__ import annotations

import datetime as dt
import io
import json
import re
import secrets
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa

from kamengd.database import utcnow


def _db():
    from kamengd.extensions import db
    return db


@pytest.fixture
def shop(app):
    from kamengd.catalog.services import create_product
    from kamengd.context import get_vault
    from kamengd.inventory.services import import_keys
    from kamengd.payments.services import add_channel
    tag = secrets.token_hex(4)
    db = _db()
    with app.app_context():
        p = create_product(db.session, name=f"tiered {tag}", price_cents=1000, actor="t", max_quantity=100,
                           price_tiers="10=8.50, 50=8.00")
        import_keys(db.session, get_vault(), product_id=p.id, actor="t",
                    fh=io.BytesIO("\n".join(f"P-{secrets.token_hex(8)}" for _ in range(200)).encode()))
        code = f"pr{tag}"
        add_channel(db.session, get_vault(), channel_type="epay", code=code, actor="t",
                    options={"gateway": "https://pay.example.com", "pid": "7007", "key": "pricing-key-0123456789ab"})
        db.session.commit()
        found = {"product": p.id, "channel": code}
        db.session.remove()
    return found


def order(client, shop, quantity):
    answer = client.post("/api/v1/orders", json={"product_id": shop["product"], "quantity": quantity,
                                                 "email": "p@example.com", "channel": shop["channel"]})
    assert answer.status_code == 201, answer.get_json()
    return answer.get_json()


def edit(app, product_id, **changes):
    from kamengd.catalog.services import get_product, update_product
    db = _db()
    with app.app_context():
        update_product(db.session, get_product(db.session, product_id), actor="t", **changes)
        db.session.commit()
        db.session.remove()


def test_tiers_price_by_quantity(app, client, shop):
    assert order(client, shop, 9)["amount"] == "90.00"
    assert order(client, shop, 10)["amount"] == "85.00"
    placed = order(client, shop, 50)
    assert placed["amount"] == "400.00"
    assert parse_qs(urlsplit(placed["pay_url"]).query)["money"] == ["400.00"]
    listed = [p for p in client.get("/api/v1/products").get_json()["products"] if p["id"] == shop["product"]][0]
    assert listed["price"] == "10.00" and listed["tiers"] == [{"min_quantity": 10, "price": "8.50"},
                                                             {"min_quantity": 50, "price": "8.00"}]


def test_a_time_window_price_applies_only_inside_it(app, client, shop):
    now = utcnow()
    edit(app, shop["product"], sale_price_cents=700, sale_starts_at=now + dt.timedelta(hours=1))
    assert order(client, shop, 1)["amount"] == "10.00"        # not yet
    edit(app, shop["product"], sale_starts_at=now - dt.timedelta(hours=1), sale_ends_at=now + dt.timedelta(hours=1))
    assert order(client, shop, 1)["amount"] == "7.00"
    assert order(client, shop, 60)["amount"] == "420.00"      # 7.00 beats the 8.00 tier
    listed = [p for p in client.get("/api/v1/products").get_json()["products"] if p["id"] == shop["product"]][0]
    assert (listed["price"], listed["list_price"]) == ("7.00", "10.00") and listed["sale_ends_at"].endswith("Z")
    page = client.get(f"/product/{shop['product']}").get_data(as_text=True)
    assert "7.00" in page and "<s class=\"muted\">10.00</s>" in page and "限时价" in page
    edit(app, shop["product"], sale_ends_at=now - dt.timedelta(minutes=1), sale_starts_at=None)
    assert order(client, shop, 1)["amount"] == "10.00"        # over


def test_the_product_page_shows_tiers_and_the_total_follows_them(app, client, shop):
    import html
    page = client.get(f"/product/{shop['product']}?quantity=1").get_data(as_text=True)
    assert "10 件起 8.50/件" in page and "50 件起 8.00/件" in page
    tiers = re.search(r'data-tiers="([^"]+)"', page).group(1)
    assert json.loads(html.unescape(tiers)) == [[10, 850], [50, 800]]   # buy.js prices the total with them


def test_a_price_changed_between_the_read_and_the_write_is_priced_again(app, client, shop):
    from kamengd.orders import checkout
    real = checkout._prepare
    calls = []

    def prepare_then_edit(row, *args, **kwargs):
        answer = real(row, *args, **kwargs)
        if not calls:
            calls.append(1)
            edit(app, shop["product"], price_tiers="10=7.00")
        return answer

    checkout._prepare = prepare_then_edit
    try:
        placed = order(client, shop, 10)
    finally:
        checkout._prepare = real
    assert placed["amount"] == "70.00"


@pytest.mark.parametrize("tiers, words", [
    ("10", "QUANTITY=PRICE"), ("1=5.00", "2 units or more"), ("10=5,10=4", "twice"),
    ("10=5.00,20=6.00", "lower unit price"), ("10=abc", "tiers"),
])
def test_bad_tiers_are_refused(app, shop, tiers, words):
    from kamengd.errors import InvalidRequest
    with pytest.raises(InvalidRequest, match=words):
        edit(app, shop["product"], price_tiers=tiers)


def test_tiers_and_sales_from_the_command_line(app, client, installed, shop):
    from conftest import assert_one_line_error, run_cli
    config = installed.path
    shown = json.loads(run_cli("product", "edit", str(shop["product"]), "--tiers", "5=9.00", "--sale-price", "6.50",
                               "--sale-until", "2999-01-01 00:00", "--json", config=config, check=True).out)
    assert (shown["tiers"], shown["sale_price"], shown["sale_until"]) == ("5=9.00", "6.50", "2998-12-31T16:00:00Z")
    assert order(client, shop, 1)["amount"] == "6.50"
    shown = json.loads(run_cli("product", "edit", str(shop["product"]), "--no-sale", "--tiers", "", "--json",
                               config=config, check=True).out)
    assert (shown["tiers"], shown["sale_price"]) == (None, None)
    assert order(client, shop, 5)["amount"] == "50.00"
    assert_one_line_error(run_cli("product", "edit", str(shop["product"]), "--tiers", "5=x", config=config), "tiers")
    assert_one_line_error(run_cli("product", "edit", str(shop["product"]), "--sale-from", "2030-01-02",
                                  "--sale-until", "2030-01-01", config=config), "sale until")


def test_a_description_in_markdown_is_shown_safely(app, client, shop):
    hostile = ("**粗体 bold** and a [link](https://example.com/x)\n\n- one\n- two\nline\nbreak\n\n"
               "<script>alert(1)</script> <img src=x onerror=alert(2)> [bad](javascript:alert(3)) "
               "![pixel](https://tracker.example/p.gif)")
    edit(app, shop["product"], description=hostile)
    page = client.get(f"/product/{shop['product']}").get_data(as_text=True)
    body = page.split('<div class="description">', 1)[1].split("</div>", 1)[0]
    assert "<strong>粗体 bold</strong>" in body and "<li>one</li>" in body and "line<br" in body
    assert '<a href="https://example.com/x" rel="nofollow noreferrer">link</a>' in body
    assert "<script>" not in body and "&lt;script&gt;" in body and "<img" not in body
    assert 'href="javascript' not in body and 'src="https://tracker' not in body   # an image is only a link

"""Variants (SKUs, 规格, W5): a product sold in several options, each its own product with its own
price, cost and stock; on SQLite and MariaDB.

The storefront lists the main product (its card: the group's stock, its lowest price "and up"),
its page and each variant's offer the group's options; an order of a variant is an order of
that product (its keys, its price). Hiding the main product hides the group.
"""
from __future__ import annotations

import io
import json
import re
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from conftest import assert_one_line_error, run_cli
from panel_support import login, make_staff
from test_sandbox import csrf_of


def _keys(app, product_id: int, n: int, prefix: str) -> list[str]:
    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.inventory.services import import_keys

    stock = [f"{prefix}-{secrets.token_hex(6)}" for _ in range(n)]
    with app.app_context():
        import_keys(db.session, get_vault(), product_id=product_id, fh=io.BytesIO("\n".join(stock).encode()),
                    actor="t")
        db.session.commit()
        db.session.remove()
    return stock


@pytest.fixture
def group(app):
    """Main product "Netflix <t>" (1 个月, 15.00, 3 keys) with variants 3 个月 (40.00, 2 keys) and
    12 个月 (120.00, no keys); a sandbox channel."""
    from kamengd.catalog.services import create_product
    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.payments.models import PaymentChannel
    from kamengd.payments.services import add_channel

    t = secrets.token_hex(3)
    with app.app_context():
        main = create_product(db.session, name=f"Netflix {t}", price_cents=1500, actor="t", variant_name="1 个月",
                              description="**Shared** words")
        three = create_product(db.session, name=f"Netflix {t} · 3 个月", price_cents=4000, actor="t",
                               variant_of=main.id, variant_name="3 个月", cost_price_cents=3000)
        year = create_product(db.session, name=f"Netflix {t} · 12 个月", price_cents=12000, actor="t",
                              variant_of=main.id, variant_name="12 个月", sort_order=1)
        channel = add_channel(db.session, get_vault(), channel_type="sandbox", code=f"sbx{t}", actor="t",
                              name="Sandbox", options={}, site_url="http://127.0.0.1:5000")
        db.session.commit()
        found = {"t": t, "main": main.id, "three": three.id, "year": year.id, "channel": channel.code,
                 "channel_id": channel.id}
        db.session.remove()
    found["main_keys"] = _keys(app, found["main"], 3, "M1")
    found["three_keys"] = _keys(app, found["three"], 2, "M3")
    yield found
    with app.app_context():
        db.session.execute(sa.update(PaymentChannel).where(PaymentChannel.id == found["channel_id"])
                           .values(is_enabled=False))
        db.session.commit()
        db.session.remove()


def test_the_rules_of_a_variant(backend, app, group):
    from kamengd.audit.models import AuditEntry
    from kamengd.catalog import services as catalog
    from kamengd.catalog.models import Product
    from kamengd.errors import InvalidRequest
    from kamengd.extensions import db

    with app.app_context():
        s = db.session
        main, three = s.get(Product, group["main"]), s.get(Product, group["three"])
        cases = [
            (dict(variant_of=group["three"], variant_name="x"), "itself a variant of product"),
            (dict(variant_of=group["main"], variant_name=""), "name the option"),
            (dict(variant_of=2**31 - 1, variant_name="x"), "does not exist"),
            (dict(variant_of=group["main"], variant_name="x" * 65), "at most 64"),
        ]
        for given, words in cases:
            with pytest.raises(InvalidRequest, match=words):
                catalog.create_product(s, name="v", price_cents=100, actor="t", **given)
            s.rollback()
        with pytest.raises(InvalidRequest, match="priced in CNY"):
            catalog.create_product(s, name="v", price_cents=100, actor="t", currency="USD",
                                   variant_of=group["main"], variant_name="x")
        s.rollback()
        main = s.get(Product, group["main"])
        with pytest.raises(InvalidRequest, match="no variant of itself"):
            catalog.update_product(s, main, actor="t", variant_of=main.id, variant_name="x")
        s.rollback()
        other = catalog.create_product(s, name=f"other {group['t']}", price_cents=100, actor="t")
        main = s.get(Product, group["main"])
        with pytest.raises(InvalidRequest, match="has variants of its own"):
            catalog.update_product(s, main, actor="t", variant_of=other.id, variant_name="x")
        s.rollback()
        # Hiding the main product hides the group, in one audited change; a variant is not shown
        # again while its main product is hidden.
        main = s.get(Product, group["main"])
        catalog.set_product_visible(s, main, False, actor="t")
        s.commit()
        assert [p.is_active for p in s.scalars(sa.select(Product).where(
            Product.id.in_([group["three"], group["year"]])).execution_options(populate_existing=True))] == [False] * 2
        entry = s.scalars(sa.select(AuditEntry).where(AuditEntry.target == f"product:{group['main']}")
                          .order_by(AuditEntry.id.desc())).first()
        assert sorted(json.loads(entry.details)["variants_hidden"]) == sorted([group["three"], group["year"]])
        three = s.get(Product, group["three"])
        with pytest.raises(InvalidRequest, match="is hidden: show that one first"):
            catalog.set_product_visible(s, three, True, actor="t")
        s.rollback()
        for pid in (group["main"], group["three"], group["year"]):
            catalog.set_product_visible(s, s.get(Product, pid), True, actor="t")
        # A variant becomes a product of its own again.
        year = s.get(Product, group["year"])
        assert catalog.update_product(s, year, actor="t", variant_of=None)["variant_of"] == {
            "old": group["main"], "new": None}
        s.rollback()
        db.session.remove()


def test_the_storefront_lists_the_group_once_and_each_option_has_its_page(backend, app, client, group):
    client.set_cookie("lang", "en")
    html = client.get("/?q=" + group["t"]).get_data(as_text=True)
    # One card: the main product, the group's stock (3 + 2), its lowest price and up.
    assert html.count(f'href="/product/{group["main"]}"') == 1
    assert f'href="/product/{group["three"]}"' not in html and f'href="/product/{group["year"]}"' not in html
    assert "15.00 CNY and up" in html and "in stock: 5" in html
    # A search by an option finds its group.
    assert f'href="/product/{group["main"]}"' in client.get("/?q=12%20%E4%B8%AA%E6%9C%88").get_data(as_text=True)
    page = client.get(f"/product/{group['three']}").get_data(as_text=True)
    options = re.search(r'<nav class="options".*?</nav>', page, re.S).group(0)
    assert [int(i) for i in re.findall(r'href="/product/(\d+)"', options)] == [group["main"], group["three"],
                                                                               group["year"]]
    assert re.search(rf'href="/product/{group["three"]}" aria-current="page"', options)
    assert "1 个月" in options and "40.00" in options and re.search(r'class="sold">12 个月', options)
    assert '<span id="stock">2</span>' in page and "<strong>Shared</strong> words" in page   # the main's words
    assert f'action="/product/{group["three"]}"' in page
    # Once its variants are hidden, the main product has no options to offer.
    from kamengd.catalog import services as catalog
    from kamengd.catalog.models import Product
    from kamengd.extensions import db

    with app.app_context():
        for pid in (group["three"], group["year"]):
            catalog.set_product_visible(db.session, db.session.get(Product, pid), False, actor="t")
        db.session.commit()
        db.session.remove()
    page = client.get(f"/product/{group['main']}").get_data(as_text=True)
    assert '<nav class="options"' not in page and "15.00 CNY and up" not in client.get(
        "/?q=" + group["t"]).get_data(as_text=True)


def test_a_group_with_an_option_by_hand_is_never_sold_out_and_its_own_option_is_searched(backend, app, client,
                                                                                          group):
    from kamengd.catalog import services as catalog
    from kamengd.catalog.models import Product
    from kamengd.extensions import db
    from kamengd.inventory.models import CardKey

    client.set_cookie("lang", "en")
    with app.app_context():   # the keyed options sold out; a new option delivered by hand
        db.session.execute(sa.update(CardKey).where(CardKey.product_id.in_([group["main"], group["three"]]))
                           .values(status="void"))
        catalog.create_product(db.session, name=f"Netflix {group['t']} · family", price_cents=9000, actor="t",
                               variant_of=group["main"], variant_name="family", delivery_mode="manual")
        # (in a category of its own: the shop's first page may be full of other tests' products)
        category = catalog.create_category(db.session, name=f"streaming {group['t']}", actor="t")
        catalog.update_product(db.session, db.session.get(Product, group["main"]), actor="t", category_id=category.id)
        db.session.commit()
        category_id = category.id
        db.session.remove()
    html = client.get(f"/?category={category_id}").get_data(as_text=True)   # (sold out is hidden here)
    card = re.search(rf'<li class="product[^"]*">(?:(?!</li>).)*href="/product/{group["main"]}".*?</li>', html, re.S)
    assert card is not None and "manual delivery" in card.group(0)
    assert "90.00 CNY" in card.group(0)   # (the lowest price among the options on sale: the one by hand)
    # The main product's own option finds it too.
    found = client.get("/", query_string={"q": "1 个月"}).get_data(as_text=True)
    assert f'href="/product/{group["main"]}"' in found


def test_the_panel_shows_a_variant_of_a_hidden_group_with_a_message(backend, app, client, group):
    from kamengd.catalog import services as catalog
    from kamengd.catalog.models import Product
    from kamengd.extensions import db

    with app.app_context():
        catalog.set_product_visible(db.session, db.session.get(Product, group["main"]), False, actor="t")
        db.session.commit()
        db.session.remove()
    staff = make_staff(app, "operator")
    client.set_cookie("lang", "en")
    login(client, staff)
    page = client.get("/admin/products?q=" + group["t"]).get_data(as_text=True)
    answer = client.post(f"/admin/products/{group['three']}/visibility",
                         data={"csrf_token": csrf_of(page), "visible": "1"}, follow_redirects=True)
    assert answer.status_code == 200 and "is hidden: show that one first" in answer.get_data(as_text=True)


def test_buying_an_option_sells_its_own_keys_at_its_own_price(backend, app, client, group):
    answer = client.post("/api/v1/orders", json={"product_id": group["three"], "quantity": 2, "email": "v@example.com",
                                                 "channel": group["channel"]})
    assert answer.status_code == 201, answer.get_json()
    order = answer.get_json()
    assert order["amount"] == "80.00"
    page = client.get(f"/pay/{group['channel']}/sandbox?order_no={order['order_no']}&token={order['token']}")
    paid = client.post(f"/pay/{group['channel']}/sandbox",
                       data={"csrf_token": csrf_of(page.get_data(as_text=True)), "order_no": order["order_no"],
                             "token": order["token"]})
    assert paid.status_code == 303
    shown = client.get(f"/api/v1/orders/{order['order_no']}?token={order['token']}").get_json()
    assert shown["status"] == "delivered" and sorted(shown["keys"]) == sorted(group["three_keys"])
    # The option is sold out now; the others are not.
    assert client.post("/api/v1/orders", json={"product_id": group["three"], "quantity": 1, "email": "v@example.com",
                                               "channel": group["channel"]}).status_code == 409
    assert client.post("/api/v1/orders", json={"product_id": group["main"], "quantity": 1, "email": "v@example.com",
                                               "channel": group["channel"]}).status_code == 201


def test_the_api_names_each_variant_and_hides_a_hidden_group(backend, app, client, group):
    from kamengd.catalog import services as catalog
    from kamengd.catalog.models import Product
    from kamengd.extensions import db

    from kamengd.agents import services as agents
    from kamengd.context import get_vault
    from test_agent_api import signed

    with app.app_context():   # an agent with an API key: its product list names them too
        level, _ = agents.set_level(db.session, name=f"sku-{group['main']}", discount="10", actor="t")
        agent = agents.create_agent(db.session, username=f"sku-agent-{group['main']}", level=level.name, actor="t")
        key_id, secret = agents.issue_api_key(db.session, get_vault(), agent, actor="t")
        db.session.commit()
        db.session.remove()
    caller = {"key_id": key_id, "secret": secret}

    def agents_list():
        answer = signed(client, caller, "GET", "/api/v1/agent/products")
        assert answer.status_code == 200, answer.get_json()
        return {p["id"]: p for p in answer.get_json()["products"]}

    for listed in ({p["id"]: p for p in client.get("/api/v1/products").get_json()["products"]}, agents_list()):
        assert listed[group["main"]]["variant"] == "1 个月" and "variant_of" not in listed[group["main"]]
        assert listed[group["three"]]["variant_of"] == group["main"] and listed[group["three"]]["variant"] == "3 个月"
    assert client.get("/api/v1/products").get_json()["products"] and agents_list()[group["three"]]["price"] == "36.00"
    listed = {p["id"]: p for p in client.get("/api/v1/products").get_json()["products"]}
    assert listed[group["three"]]["price"] == "40.00"
    with app.app_context():
        catalog.set_product_visible(db.session, db.session.get(Product, group["main"]), False, actor="t")
        db.session.commit()
        db.session.remove()
    listed = {p["id"] for p in client.get("/api/v1/products").get_json()["products"]}
    assert not listed & {group["main"], group["three"], group["year"]}
    assert not set(agents_list()) & {group["main"], group["three"], group["year"]}
    assert client.get(f"/product/{group['three']}").status_code == 404
    assert client.post("/api/v1/orders", json={"product_id": group["three"], "quantity": 1, "email": "v@example.com",
                                               "channel": group["channel"]}).status_code == 404


def test_twenty_buyers_at_once_on_two_options_never_cross_their_stock(backend, app, group):
    """Two options sold at once from ten threads each: each sells exactly its own keys."""
    from kamengd.context import get_vault
    from kamengd.errors import KamengdError
    from kamengd.extensions import db
    from kamengd.orders.checkout import place_order

    barrier = threading.Barrier(20)

    def buy(product_id):
        with app.app_context():
            try:
                barrier.wait(10)
                placed = place_order(db.session, get_vault(), product_id=product_id, quantity=1,
                                     email="c@example.com", channel_code=group["channel"],
                                     site_url="http://127.0.0.1:5000")
                db.session.commit()
                return product_id, placed.order_id
            except KamengdError as exc:
                db.session.rollback()
                return product_id, exc.code
            finally:
                db.session.remove()

    with ThreadPoolExecutor(20) as pool:
        said = list(pool.map(buy, [group["main"]] * 10 + [group["three"]] * 10))
    won = {pid: [r for p, r in said if p == pid and isinstance(r, int)] for pid in (group["main"], group["three"])}
    assert len(won[group["main"]]) == 3 and len(won[group["three"]]) == 2, said
    assert all(r in ("out_of_stock", "busy") for _p, r in said if not isinstance(r, int)), said
    from kamengd.inventory.models import CardKey
    from kamengd.orders.models import Order

    with app.app_context():
        rows = db.session.execute(sa.select(Order.product_id, CardKey.product_id)
                                  .join(CardKey, CardKey.order_id == Order.id)
                                  .where(Order.id.in_(won[group["main"]] + won[group["three"]]))).all()
        db.session.remove()
    assert len(rows) == 5 and all(o == k for o, k in rows)


def test_the_cli_and_the_panel_make_variants(backend, app, client, make_install, group):
    cfg = make_install(backend)
    cli = lambda *a: json.loads(run_cli(*a, "--json", config=cfg.path, check=True).out)   # noqa: E731
    main = cli("product", "create", "--name", "Game card", "--price", "10.00", "--variant", "10 元")
    made = cli("product", "create", "--name", "Game card 50", "--price", "48.00", "--variant-of", str(main["id"]),
               "--variant", "50 元")
    assert made["variant_of"] == main["id"] and made["variant"] == "50 元"
    assert_one_line_error(run_cli("product", "create", "--name", "x", "--price", "1.00", "--variant-of",
                                  str(made["id"]), "--variant", "y", config=cfg.path), "itself a variant")
    assert_one_line_error(run_cli("product", "create", "--name", "x", "--price", "1.00", "--variant-of",
                                  str(main["id"]), config=cfg.path), "name the option")
    alone = cli("product", "edit", str(made["id"]), "--no-variant-of")
    assert "variant_of" not in alone and alone["changed"] == {"variant_of": {"old": main["id"], "new": None}}

    # The panel's product form makes one too.
    staff = make_staff(app, "operator")
    client.set_cookie("lang", "en")
    login(client, staff)
    form_page = client.get("/admin/products/new").get_data(as_text=True)
    assert f'<option value="{group["main"]}">' in form_page and f'<option value="{group["three"]}">' not in form_page
    answer = client.post("/admin/products/new", data={
        "csrf_token": csrf_of(form_page), "name": f"Netflix {group['t']} · 6 个月", "price": "75.00",
        "delivery_mode": "auto", "min_quantity": "1", "max_quantity": "10", "low_stock_threshold": "0",
        "sort_order": "0", "is_active": "1", "variant_of": str(group["main"]), "variant_name": "6 个月"})
    assert answer.status_code == 303, answer.get_data(as_text=True)[:300]
    refused = client.post("/admin/products/new", data={
        "csrf_token": csrf_of(form_page), "name": "bad", "price": "1.00", "delivery_mode": "auto",
        "min_quantity": "1", "max_quantity": "10", "low_stock_threshold": "0", "sort_order": "0", "is_active": "1",
        "variant_of": str(group["three"]), "variant_name": "x"})
    assert refused.status_code == 400 and "itself a variant" in refused.get_data(as_text=True)
    listing = client.get("/admin/products?q=" + group["t"]).get_data(as_text=True)
    assert f"variant of #{group['main']}: 6 个月" in listing
    page = client.get(f"/product/{group['main']}").get_data(as_text=True)
    assert "6 个月" in re.search(r'<nav class="options".*?</nav>', page, re.S).group(0)


# --- end to end, in every layout ------------------------------------------------------------

LAYOUTS = ("waitress", "gunicorn", "gunicorn+scheduler", "two-servers")
KEY = "variant-e2e-merchant-key-0123456789"


@pytest.mark.slow
@pytest.mark.layouts(*LAYOUTS)
def test_buyers_of_two_options_at_once_each_get_their_options_keys(layout, backend, databases, tmp_path,
                                                                   start_server):
    """A main product (4 keys) and its variant made by the CLI (3 keys): 16 buyers order and pay
    at once through every server, 8 for each option: exactly 4 and 3 are delivered, each with
    its own option's keys, none sold twice; the others are refused out of stock."""
    import hashlib
    from urllib.parse import urlencode

    from conftest import install_shop
    from test_channel_stripe import http
    from test_concurrency import start_layout
    from kamengd.payments import epay

    config, main, main_keys = install_shop(backend, databases, tmp_path, product="点卡 10 元", price="10.00", keys=4,
                                           prefix="V10")
    cli = lambda *a: json.loads(run_cli(*a, "--json", config=config, check=True).out)   # noqa: E731
    cli("product", "edit", str(main), "--variant", "10 元")
    fifty = cli("product", "create", "--name", "点卡 50 元", "--price", "48.00", "--variant-of", str(main),
                "--variant", "50 元")["id"]
    fifty_keys = [f"V50-{i}-{secrets.token_hex(5)}" for i in range(3)]
    run_cli("keys", "import", "--product", fifty, "-", config=config, input="\n".join(fifty_keys).encode(), check=True)
    run_cli("channel", "add", "--type", "epay", "--code", "ep", "--option", "gateway=https://pay.example.com",
            "--option", "pid=1001", "--option", f"key={KEY}", config=config, check=True)
    bases = start_layout(layout, start_server, config)

    def buy(i):
        base, product = bases[i % len(bases)], (main, fifty)[i % 2]
        status, _, text = http("POST", f"{base}/api/v1/orders", {"product_id": product, "quantity": 1,
                                                                 "email": f"v{i}@example.com", "channel": "ep"})
        placed = json.loads(text)
        if status == 409:
            return product, None
        assert status == 201, placed
        params = {"pid": "1001", "trade_no": f"T{placed['order_no']}", "out_trade_no": placed["order_no"],
                  "type": "alipay", "name": "x", "money": placed["amount"], "trade_status": "TRADE_SUCCESS"}
        params["sign"] = hashlib.md5((epay.signing_string(params) + KEY).encode()).hexdigest()
        _, _, answer = http("GET", f"{bases[-1 - i % len(bases)]}/pay/ep/notify?{urlencode(params)}")
        assert answer == "success", answer
        _, _, text = http("GET", f"{base}/api/v1/orders/{placed['order_no']}?token={placed['token']}")
        return product, json.loads(text)

    with ThreadPoolExecutor(16) as pool:
        seen = list(pool.map(buy, range(16)))
    got = {pid: [k for p, o in seen if p == pid and o is not None for k in o["keys"]] for pid in (main, fifty)}
    assert sorted(got[main]) == sorted(main_keys) and sorted(got[fifty]) == sorted(fifty_keys), got
    assert all(o is None or o["status"] == "delivered" for _p, o in seen)
    _, _, text = http("GET", f"{bases[0]}/api/v1/products")
    listed = {p["id"]: p for p in json.loads(text)["products"]}
    assert listed[fifty]["variant_of"] == main and listed[fifty]["variant"] == "50 元" and listed[fifty]["stock"] == 0
    logs = start_server.stop_all()
    assert not any("Traceback" in log for log in logs.values()), logs

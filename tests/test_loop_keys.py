"""Loop keys (循环卡密, W5): a product whose one key every buyer gets. Orders of one at a time;
each paid order delivered the product's oldest available key, which stays in stock; the
order keeps which key it got (its page, the lookup, the mail, staff's search by key); no
key: refused, or a paid order waits and the next import delivers it; concurrent buyers all
get it; an agent's order too. SQLite and MariaDB.
"""
from __future__ import annotations

import hashlib
import io
import secrets
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from kamengd.errors import InvalidRequest

KEY = "loop-merchant-key-0123456789abcdef"


def _db():
    from kamengd.extensions import db
    return db


@pytest.fixture
def loop_shop(app):
    """A loop-key product at 5.00 with one key, an Epay channel."""
    from kamengd.catalog.services import create_product
    from kamengd.context import get_vault
    from kamengd.inventory.services import import_keys
    from kamengd.payments.services import add_channel

    tag = secrets.token_hex(3)
    db = _db()
    with app.app_context():
        p = create_product(db.session, name=f"loop {tag}", price_cents=500, actor="t", delivery_mode="loop",
                           max_quantity=100)
        key = f"SHARED-{tag}-{secrets.token_hex(6)}"
        import_keys(db.session, get_vault(), product_id=p.id, actor="t", fh=io.BytesIO(key.encode()))
        code = f"lp{tag}"
        add_channel(db.session, get_vault(), channel_type="epay", code=code, actor="t",
                    options={"gateway": "https://pay.example.com", "pid": "7007", "key": KEY})
        db.session.commit()
        found = {"product": p.id, "key": key, "channel": code, "tag": tag,
                 "limits": (p.min_quantity, p.max_quantity)}
        db.session.remove()
    return found


def place(client, shop, email="loop@example.com", quantity=1):
    return client.post("/api/v1/orders", json={"product_id": shop["product"], "quantity": quantity, "email": email,
                                               "channel": shop["channel"]})


def pay(client, shop, answer):
    from kamengd.payments import epay
    params = {"pid": "7007", "trade_no": f"T{answer['order_no']}", "out_trade_no": answer["order_no"],
              "type": "alipay", "name": "x", "money": answer["amount"], "trade_status": "TRADE_SUCCESS"}
    params["sign"] = hashlib.md5((epay.signing_string(params) + KEY).encode()).hexdigest()
    assert client.get(f"/pay/{shop['channel']}/notify", query_string=params).get_data(as_text=True) == "success"


def seen(client, answer):
    return client.get(f"/api/v1/orders/{answer['order_no']}", query_string={"token": answer["token"]}).get_json()


def key_statuses(app, product_id):
    from kamengd.inventory.models import CardKey
    db = _db()
    with app.app_context():
        rows = db.session.execute(sa.select(CardKey.status, sa.func.count()).where(CardKey.product_id == product_id)
                                  .group_by(CardKey.status)).all()
        db.session.remove()
    return dict(rows)


def test_every_buyer_gets_the_same_key_and_it_stays_in_stock(app, client, loop_shop):
    s = loop_shop
    assert s["limits"] == (1, 1)                      # one at a time, whatever was asked
    answers = [place(client, s, email=f"b{n}@example.com") for n in range(3)]
    assert all(a.status_code == 201 for a in answers), [a.get_json() for a in answers]
    for a in answers:
        pay(client, s, a.get_json())
    for a in answers:
        shown = seen(client, a.get_json())
        assert (shown["status"], shown["keys"]) == ("delivered", [s["key"]])
    assert key_statuses(app, s["product"]) == {"available": 1}
    # Two at once: the product's limits say one.
    two = place(client, s, quantity=2)
    assert two.status_code == 400 and "quantity" in two.get_json()["error"]["message"]
    # The buyer API says so, and its stock.
    listed = next(p for p in client.get("/api/v1/products").get_json()["products"] if p["id"] == s["product"])
    assert (listed["delivery"], listed["stock"]) == ("loop", 1)
    # Counted: three deliveries.
    from kamengd.catalog.services import loop_deliveries
    db = _db()
    with app.app_context():
        assert loop_deliveries(db.session, [s["product"]]) == {s["product"]: 3}
        db.session.remove()


def test_staff_find_every_order_a_loop_key_went_to(app, client, loop_shop):
    from kamengd.context import get_vault
    from kamengd.orders.models import Order
    from kamengd.orders.staff import orders_with_key
    s = loop_shop
    placed = [place(client, s, email=f"f{n}@example.com").get_json() for n in range(2)]
    for a in placed:
        pay(client, s, a)
    db = _db()
    with app.app_context():
        ids = orders_with_key(db.session, get_vault(), s["key"])
        numbers = set(db.session.scalars(sa.select(Order.order_no).where(Order.id.in_(ids))))
        db.session.remove()
    assert numbers == {a["order_no"] for a in placed}


def test_no_key_refuses_then_a_waiting_order_gets_the_next_one(app, client, loop_shop):
    from kamengd.context import get_vault
    from kamengd.inventory.models import CardKey
    from kamengd.inventory.services import import_keys
    s = loop_shop
    placed = place(client, s).get_json()
    db = _db()
    with app.app_context():   # staff void the key (leaked) before the buyer pays
        db.session.execute(sa.update(CardKey).where(CardKey.product_id == s["product"]).values(status="void"))
        db.session.commit()
        db.session.remove()
    refused = place(client, s, email="late@example.com")
    assert refused.status_code == 409 and refused.get_json()["error"]["code"] == "out_of_stock"
    pay(client, s, placed)
    assert seen(client, placed)["status"] == "paid"   # waiting for a key
    fresh = f"NEW-{secrets.token_hex(6)}"
    with app.app_context():
        import_keys(db.session, get_vault(), product_id=s["product"], actor="t", fh=io.BytesIO(fresh.encode()))
        db.session.commit()
        db.session.remove()
    shown = seen(client, placed)
    assert (shown["status"], shown["keys"]) == ("delivered", [fresh])
    assert key_statuses(app, s["product"]) == {"void": 1, "available": 1}


def test_concurrent_buyers_all_get_the_key(app, loop_shop):
    s = loop_shop

    def buy(n):
        client = app.test_client()
        answer = place(client, s, email=f"c{n}@example.com")
        assert answer.status_code == 201, answer.get_json()
        pay(client, s, answer.get_json())
        return seen(client, answer.get_json())

    with ThreadPoolExecutor(8) as pool:
        shown = list(pool.map(buy, range(16)))
    assert all((o["status"], o["keys"]) == ("delivered", [s["key"]]) for o in shown), shown
    assert key_statuses(app, s["product"]) == {"available": 1}


def test_a_product_turned_loop_lets_go_of_the_keys_its_pending_orders_held(app, client, loop_shop):
    from kamengd.catalog.services import create_product, update_product
    from kamengd.context import get_vault
    from kamengd.inventory.services import import_keys
    s = loop_shop
    db = _db()
    with app.app_context():
        p = create_product(db.session, name=f"turned {s['tag']}", price_cents=300, actor="t")
        keys = [f"TURN-{n}-{secrets.token_hex(4)}" for n in range(3)]
        import_keys(db.session, get_vault(), product_id=p.id, actor="t", fh=io.BytesIO("\n".join(keys).encode()))
        db.session.commit()
        product = p.id
        db.session.remove()
    shop = {**s, "product": product}
    placed = place(client, shop).get_json()
    pair = place(client, shop, email="pair@example.com", quantity=2).get_json()   # two keys, placed before
    assert key_statuses(app, product) == {"reserved": 3}
    with app.app_context():
        from kamengd.catalog.models import Product
        changes = update_product(db.session, db.session.get(Product, product), actor="t", delivery_mode="loop")
        assert set(changes) >= {"delivery", "max_quantity"}
        with pytest.raises(InvalidRequest, match="one at a time"):
            update_product(db.session, db.session.get(Product, product), actor="t", max_quantity=5)
        db.session.commit()
        db.session.remove()
    pay(client, shop, placed)
    shown = seen(client, placed)
    assert shown["status"] == "delivered" and len(shown["keys"]) == 1 and shown["keys"][0] == keys[0]
    # The order for two still holds its own two keys: it gets them (never one shared key for two paid).
    pay(client, shop, pair)
    shown = seen(client, pair)
    assert shown["status"] == "delivered" and sorted(shown["keys"]) == sorted(keys[1:])
    assert key_statuses(app, product) == {"available": 1, "sold": 2}   # the first one's reserved key back


def test_an_agent_buys_a_loop_key(app, client, loop_shop):
    from kamengd.agents import services as agents
    from kamengd.context import get_vault
    from test_agent_api import signed
    s = loop_shop
    db = _db()
    with app.app_context():
        level, _ = agents.set_level(db.session, name=f"loop-{s['tag']}", discount="10", actor="t")
        agent = agents.create_agent(db.session, username=f"looper-{s['tag']}", level=level.name, actor="t")
        key_id, secret = agents.issue_api_key(db.session, get_vault(), agent, actor="t")
        agents.credit_balance(db.session, agent, 1000, reason="t", actor="t")
        db.session.commit()
        caller = {"key_id": key_id, "secret": secret}
        db.session.remove()
    for n in range(2):
        answer = signed(client, caller, "POST", "/api/v1/agent/orders", {"product_id": s["product"], "quantity": 1},
                        idempotency_key=f"loop-{n}")
        assert answer.status_code == 201, answer.get_json()
        assert (answer.get_json()["status"], answer.get_json()["keys"]) == ("delivered", [s["key"]])
    again = signed(client, caller, "GET", f"/api/v1/agent/orders/{answer.get_json()['order_no']}")
    assert again.get_json()["keys"] == [s["key"]]
    assert key_statuses(app, s["product"]) == {"available": 1}


def test_the_panel_offers_loop_keys_and_counts_them(app, client, loop_shop):
    from panel_support import login, make_staff
    s = loop_shop
    placed = place(client, s).get_json()
    pay(client, s, placed)
    staff = make_staff(app, "operator")
    client.set_cookie("lang", "en")
    assert login(client, staff).status_code == 302
    page = client.get("/admin/products", query_string={"q": f"loop {s['tag']}"}).get_data(as_text=True)
    assert "Loop key" in page and "1 delivery" in page
    assert 'value="loop"' in client.get("/admin/products/new").get_data(as_text=True)

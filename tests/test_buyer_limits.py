"""A product's buyer daily limit (W5): at most N units to one buyer (e-mail, any case) a shop
day; taken atomically in the order's transaction (concurrent orders of one buyer never pass
it, on SQLite and MariaDB); given back once when an order expires; from the CLI."""
from __future__ import annotations

import datetime as dt
import io
import json
import secrets
from concurrent.futures import ThreadPoolExecutor

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
        p = create_product(db.session, name=f"limited {tag}", price_cents=100, actor="t", max_quantity=10,
                           buyer_daily_limit=5)
        import_keys(db.session, get_vault(), product_id=p.id, actor="t",
                    fh=io.BytesIO("\n".join(f"L-{secrets.token_hex(8)}" for _ in range(60)).encode()))
        code = f"lm{tag}"
        add_channel(db.session, get_vault(), channel_type="epay", code=code, actor="t",
                    options={"gateway": "https://pay.example.com", "pid": "7007", "key": "limit-key-0123456789abcdef"})
        db.session.commit()
        found = {"product": p.id, "channel": code, "email": f"lim{tag}@example.com"}
        db.session.remove()
    return found


def order(client, shop, quantity, email=None):
    return client.post("/api/v1/orders", json={"product_id": shop["product"], "quantity": quantity,
                                               "email": email or shop["email"], "channel": shop["channel"]})


def test_one_buyer_gets_at_most_the_limit_a_day(app, client, shop):
    assert order(client, shop, 3).status_code == 201
    too_many = order(client, shop, 3, shop["email"].upper())      # the same buyer in capitals
    assert too_many.status_code == 400
    assert too_many.get_json()["error"]["message"] == "quantity: at most 5 a day for one buyer; 2 left today"
    assert order(client, shop, 6).get_json()["error"]["message"] == "quantity: at most 5 a day for one buyer"
    assert order(client, shop, 2).status_code == 201
    assert order(client, shop, 1).status_code == 400
    assert order(client, shop, 5, "other@example.com").status_code == 201   # another buyer


def test_concurrent_orders_of_one_buyer_never_pass_the_limit(app, shop):
    def one(_):
        with app.test_client() as c:
            return order(c, shop, 1)

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(one, range(12)))
    assert sum(a.status_code == 201 for a in answers) == 5
    assert all(a.get_json()["error"]["code"] in ("invalid_request", "busy") for a in answers if a.status_code != 201)


def test_an_expired_order_gives_its_units_back_once(app, client, shop):
    from kamengd.catalog.limits import give_back_expired
    from kamengd.orders.models import Order
    from kamengd.orders.services import expire_orders
    placed = order(client, shop, 5).get_json()
    assert order(client, shop, 1).status_code == 400
    db = _db()
    with app.app_context():
        db.session.execute(sa.update(Order).where(Order.order_no == placed["order_no"])
                           .values(expires_at=utcnow() - dt.timedelta(minutes=1)))
        db.session.commit()
        expire_orders(db.session)
        db.session.commit()
        oid = db.session.scalar(sa.select(Order.id).where(Order.order_no == placed["order_no"]))
        assert give_back_expired(db.session, [oid]) == 0
        db.session.commit()
        db.session.remove()
    assert order(client, shop, 5).status_code == 201
    assert order(client, shop, 1).status_code == 400


def test_the_daily_limit_from_the_command_line(app, client, installed, shop):
    from conftest import assert_one_line_error, run_cli
    config = installed.path
    made = json.loads(run_cli("product", "create", "--name", "cli limit", "--price", "1.00", "--daily-limit", "2",
                              "--json", config=config, check=True).out)
    assert made["daily_limit"] == 2
    edited = json.loads(run_cli("product", "edit", str(shop["product"]), "--daily-limit", "1", "--json",
                                config=config, check=True).out)
    assert edited["daily_limit"] == 1
    assert order(client, shop, 1).status_code == 201 and order(client, shop, 1).status_code == 400
    run_cli("product", "edit", str(shop["product"]), "--no-daily-limit", config=config, check=True)
    assert order(client, shop, 8).status_code == 201
    assert_one_line_error(run_cli("product", "edit", str(shop["product"]), "--daily-limit", "0", config=config),
                          "daily-limit")


def test_an_order_paid_after_it_expired_counts_again_or_waits_for_a_person(app, client, shop):
    import hashlib
    from kamengd.orders.models import Order
    from kamengd.orders.services import expire_orders
    from kamengd.payments import epay
    late = order(client, shop, 4).get_json()
    db = _db()
    with app.app_context():
        db.session.execute(sa.update(Order).where(Order.order_no == late["order_no"])
                           .values(expires_at=utcnow() - dt.timedelta(minutes=1)))
        db.session.commit()
        expire_orders(db.session)
        db.session.commit()
        db.session.remove()
    assert order(client, shop, 3).status_code == 201          # the 4 went back: 3 bought meanwhile
    params = {"pid": "7007", "trade_no": f"T{late['order_no']}", "out_trade_no": late["order_no"], "type": "alipay",
              "name": "x", "money": late["amount"], "trade_status": "TRADE_SUCCESS"}
    params["sign"] = hashlib.md5((epay.signing_string(params) + "limit-key-0123456789abcdef").encode()).hexdigest()
    assert client.get(f"/pay/{shop['channel']}/notify", query_string=params).get_data(as_text=True) == "success"
    seen = client.get(f"/api/v1/orders/{late['order_no']}?token={late['token']}").get_json()
    assert seen["status"] == "held"                            # 3 + 4 would pass 5: a person decides
    assert order(client, shop, 2).status_code == 201           # and nothing was counted for it

"""The offer (a product with its channel) is kept per process; an order never trusts it blindly.

Each server process keeps what it read of a product and a channel, and the
order's INSERT checks in the write lock that it still holds. Here the shop is
changed behind the cache's back (another session, as another process would)
after an order has filled it: every next order follows the change at once.
"""
import hashlib
import secrets
from urllib.parse import parse_qs, urlsplit

import pytest

from conftest import epay_shop
from kamengd.payments import epay

KEY = "offer-merchant-key-0123456789ab"


@pytest.fixture
def shop(app):
    return epay_shop(app, name="offer", price_cents=500, keys=[f"O-{secrets.token_hex(8)}" for _ in range(20)],
                     pid="5005", key=KEY, prefix="off")


def order(client, shop, **extra):
    return client.post("/api/v1/orders", json={"product_id": shop["id"], "quantity": 1, "email": "o@example.com",
                                               "channel": shop["channel"], **extra})


def behind_the_cache(app, change):
    """Run change(session) in a session of its own and commit it, as another process would."""
    from kamengd.extensions import db

    with app.app_context():
        change(db.session)
        db.session.commit()
        db.session.remove()


def orders_count(app):
    import sqlalchemy as sa

    from kamengd.extensions import db
    from kamengd.orders.models import Order

    with app.app_context():
        return db.session.scalar(sa.select(sa.func.count()).select_from(Order))


def signed_with(url, key):
    params = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    expected = hashlib.md5((epay.signing_string(params) + key).encode()).hexdigest()
    return params["sign"] == expected


def test_a_new_price_is_charged_at_once(app, client, shop):
    from kamengd.catalog.models import Product

    assert order(client, shop).get_json()["amount"] == "5.00"   # the offer is cached now
    behind_the_cache(app, lambda s: setattr(s.get(Product, shop["id"]), "price_cents", 700))
    answer = order(client, shop).get_json()
    assert answer["amount"] == "7.00"
    assert parse_qs(urlsplit(answer["pay_url"]).query)["money"] == ["7.00"]


def test_a_hidden_product_is_not_sold_from_the_cache(app, client, shop):
    from kamengd.catalog.models import Product

    assert order(client, shop).status_code == 201
    before = orders_count(app)
    behind_the_cache(app, lambda s: setattr(s.get(Product, shop["id"]), "is_active", False))
    answer = order(client, shop)
    assert answer.status_code == 404 and answer.get_json()["error"]["code"] == "not_found"
    assert orders_count(app) == before


def test_a_disabled_channel_is_not_used_from_the_cache(app, client, shop):
    import sqlalchemy as sa

    from kamengd.payments.models import PaymentChannel

    assert order(client, shop).status_code == 201
    before = orders_count(app)
    behind_the_cache(app, lambda s: s.execute(sa.update(PaymentChannel).where(PaymentChannel.code == shop["channel"])
                                              .values(is_enabled=False)))
    answer = order(client, shop)
    assert answer.status_code == 400 and "channel" in answer.get_json()["error"]["message"]
    assert orders_count(app) == before


def test_a_new_merchant_key_signs_the_next_pay_url(app, client, shop):
    import sqlalchemy as sa

    from kamengd.context import get_vault
    from kamengd.payments.models import PaymentChannel
    from kamengd.payments.services import update_channel

    assert signed_with(order(client, shop).get_json()["pay_url"], KEY)
    new_key = "offer-new-merchant-key-98765432"

    def rotate(s):
        channel = s.scalar(sa.select(PaymentChannel).where(PaymentChannel.code == shop["channel"]))
        update_channel(s, get_vault(), channel, name=None, sort_order=0, actor="t",
                       options={"gateway": "https://pay.example.com", "pid": "5005", "key": new_key})
    behind_the_cache(app, rotate)
    assert signed_with(order(client, shop).get_json()["pay_url"], new_key)


def test_a_new_order_timeout_applies_at_once(app, client, shop):
    import datetime as dt

    from kamengd.settings.models import Setting
    from kamengd.settings.services import set_setting

    first = order(client, shop).get_json()
    behind_the_cache(app, lambda s: set_setting(s, "orders.timeout_minutes", 90, actor="t"))
    try:
        second = order(client, shop).get_json()
    finally:   # the app's database is shared by the other tests: back to the default
        behind_the_cache(app, lambda s: s.delete(s.get(Setting, "orders.timeout_minutes")))
    expires = [dt.datetime.fromisoformat(o["expires_at"].rstrip("Z")) for o in (first, second)]
    assert expires[1] - expires[0] > dt.timedelta(minutes=60)


def test_a_paid_buyer_waiting_comes_first_even_when_cached(app, client, shop):
    import sqlalchemy as sa

    from kamengd.orders.models import Order

    waiting = order(client, shop).get_json()
    behind_the_cache(app, lambda s: s.execute(sa.update(Order).where(Order.order_no == waiting["order_no"])
                                              .values(status="paid")))
    before = orders_count(app)
    answer = order(client, shop)
    assert answer.status_code == 409 and answer.get_json()["error"]["code"] == "out_of_stock"
    assert orders_count(app) == before

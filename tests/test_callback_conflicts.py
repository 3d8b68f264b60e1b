"""A gateway that reports one trade for two orders reaches a person, and stops calling.

The trade is recorded once, for the first order. A callback naming it for a
second order cannot be recorded; answered "fail", the gateway would call
again forever and nobody would hear. The second order is flagged once, with
an order.held event for the webhooks and the mail, and the gateway gets
"success".
"""
import hashlib
import json
import secrets
from urllib.parse import urlencode

import pytest
import sqlalchemy as sa

from conftest import epay_shop
from kamengd.payments import epay

KEY = "conflict-merchant-key-0123456789"


@pytest.fixture
def shop(app):
    return epay_shop(app, name="conflict", price_cents=300, keys=[f"C-{secrets.token_hex(8)}" for _ in range(5)],
                     pid="6006", key=KEY, prefix="cfl")


def order(client, shop):
    answer = client.post("/api/v1/orders", json={"product_id": shop["id"], "quantity": 1,
                                                "email": "c@example.com", "channel": shop["channel"]})
    assert answer.status_code == 201, answer.get_json()
    return answer.get_json()


def notify(client, shop, order_no, trade_no, money="3.00"):
    params = {"pid": "6006", "trade_no": trade_no, "out_trade_no": order_no, "type": "alipay", "name": "c",
              "money": money, "trade_status": "TRADE_SUCCESS"}
    params["sign"] = hashlib.md5((epay.signing_string(params) + KEY).encode()).hexdigest()
    params["sign_type"] = "MD5"
    return client.get(f"/pay/{shop['channel']}/notify?{urlencode(params)}").data


def state(app, order_no):
    from kamengd.extensions import db
    from kamengd.notifications.models import Event
    from kamengd.orders.models import Order
    from kamengd.payments.models import Payment

    with app.app_context():
        o = db.session.scalar(sa.select(Order).where(Order.order_no == order_no))
        held = [e for e in db.session.scalars(sa.select(Event).where(Event.type == "order.held")).all()
                if json.loads(e.payload)["order_no"] == order_no]
        payments = db.session.scalar(sa.select(sa.func.count()).select_from(Payment)
                                     .where(Payment.order_id == o.id))
        result = (o.status, o.flag_reason, len(held), payments)
        db.session.remove()
    return result


def test_a_trade_reported_for_a_second_order_flags_it_once_and_answers_success(app, client, shop):
    first, second = order(client, shop), order(client, shop)
    trade = f"T{secrets.token_hex(6)}"
    assert notify(client, shop, first["order_no"], trade) == b"success"
    assert state(app, first["order_no"])[0] == "delivered"

    for _ in range(3):   # the gateway's retries: the same answer, one flag, one event
        assert notify(client, shop, second["order_no"], trade) == b"success"
    status, reason, events, payments = state(app, second["order_no"])
    assert status == "pending" and payments == 0
    assert reason is not None and trade in reason and first["order_no"] in reason
    assert events == 1
    # The first order is untouched, and its own trade is still answered "success".
    assert notify(client, shop, first["order_no"], trade) == b"success"
    assert state(app, first["order_no"])[1:] == (None, 0, 1)


def test_a_forged_conflict_changes_nothing(app, client, shop):
    first, second = order(client, shop), order(client, shop)
    trade = f"T{secrets.token_hex(6)}"
    assert notify(client, shop, first["order_no"], trade) == b"success"
    params = {"pid": "6006", "trade_no": trade, "out_trade_no": second["order_no"], "type": "alipay",
              "name": "c", "money": "3.00", "trade_status": "TRADE_SUCCESS", "sign": "0" * 32, "sign_type": "MD5"}
    assert client.get(f"/pay/{shop['channel']}/notify?{urlencode(params)}").data != b"success"
    assert state(app, second["order_no"])[1:] == (None, 0, 0)


def limited_app(make_install, **ratelimit):
    import dataclasses

    from kamengd.app import create_app

    cfg = make_install("sqlite")
    return create_app(dataclasses.replace(cfg, ratelimit=dataclasses.replace(cfg.ratelimit, enabled=True,
                                                                              **ratelimit)))


def forged(i):
    return urlencode({"pid": "6006", "trade_no": f"F{i}", "out_trade_no": f"2026{i:020d}", "money": "3.00",
                      "trade_status": "TRADE_SUCCESS", "sign": "0" * 32, "sign_type": "MD5"})


def test_callbacks_are_rate_limited_per_address_but_never_for_a_gateway(make_install):
    app = limited_app(make_install, callbacks="10/minute")
    client = app.test_client()
    answers = [client.get(f"/pay/epay/notify?{forged(i)}").status_code for i in range(12)]
    assert answers[:10] == [200] * 10 and answers[10:] == [429, 429]   # "fail" x 10, then limited
    # Another address is not held back by the first one's flood.
    other = client.get(f"/pay/epay/notify?{forged(99)}", environ_base={"REMOTE_ADDR": "198.51.100.9"})
    assert other.status_code == 200

    gateway_app = limited_app(make_install, callbacks="10/minute", gateway_addresses=["127.0.0.0/8"])
    gateway = gateway_app.test_client()
    assert {gateway.get(f"/pay/epay/notify?{forged(i)}").status_code for i in range(30)} == {200}


def test_an_oversized_callback_is_refused_unread(app, client, shop):
    first = order(client, shop)
    padding = "x" * 9000
    params = {"pid": "6006", "trade_no": "T-big", "out_trade_no": first["order_no"], "money": "3.00",
              "trade_status": "TRADE_SUCCESS", "name": padding}
    params["sign"] = hashlib.md5((epay.signing_string(params) + KEY).encode()).hexdigest()
    params["sign_type"] = "MD5"
    answer = client.get(f"/pay/{shop['channel']}/notify?{urlencode(params)}")
    assert answer.status_code == 413 and answer.data != b"success"
    posted = client.post(f"/pay/{shop['channel']}/notify", data=params)
    assert posted.status_code == 413 and posted.data != b"success"
    assert state(app, first["order_no"])[0] == "pending"

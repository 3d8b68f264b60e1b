"""The buyer API and the Epay callback through HTTP (Flask's test client)."""
import hashlib
import secrets
from urllib.parse import parse_qs, urlsplit

import pytest

from conftest import epay_shop
from kamengd.payments import epay

KEY = "api-merchant-key"


@pytest.fixture
def shop_product(app, backend):
    """A product with 3 keys and an Epay channel, committed to the shared database."""
    return epay_shop(app, name="<script>alert(1)</script> 月卡", price_cents=990, pid="2002", key=KEY, prefix="api",
                     keys=[f"API-{secrets.token_hex(6)}" for _ in range(3)])


def order(client, shop_product, **extra):
    body = {"product_id": shop_product["id"], "quantity": 1, "email": "b@example.com",
            "channel": shop_product["channel"], **extra}
    return client.post("/api/v1/orders", json=body)


def paid_params(order_no, amount, trade_no=None, pid="2002"):
    params = {"pid": pid, "trade_no": trade_no or f"T{order_no}", "out_trade_no": order_no, "type": "alipay",
              "name": "x", "money": amount, "trade_status": "TRADE_SUCCESS"}
    params["sign"] = hashlib.md5((epay.signing_string(params) + KEY).encode()).hexdigest()
    params["sign_type"] = "MD5"
    return params


def test_products(client, shop_product):
    products = client.get("/api/v1/products").get_json()["products"]
    mine = next(p for p in products if p["id"] == shop_product["id"])
    assert mine["price"] == "9.90" and mine["stock"] == 3


def test_buy_pay_and_read_keys(client, shop_product):
    resp = order(client, shop_product, quantity=2, query_password="secret-pw")
    assert resp.status_code == 201
    data = resp.get_json()
    assert set(data) >= {"order_no", "token", "status", "amount", "currency", "pay_url", "expires_at"}
    assert (data["status"], data["amount"], data["currency"]) == ("pending", "19.80", "CNY")
    url = urlsplit(data["pay_url"])
    assert f"{url.scheme}://{url.netloc}{url.path}" == "https://pay.example.com/submit.php"
    q = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert q["out_trade_no"] == data["order_no"] and q["money"] == "19.80" and q["pid"] == "2002"
    assert q["notify_url"].endswith(f"/pay/{shop_product['channel']}/notify")
    assert q["sign"] == epay.sign(q, KEY) and q["sign_type"] == "MD5"

    lookup = client.get(f"/api/v1/orders/{data['order_no']}?token={data['token']}").get_json()
    assert lookup["status"] == "pending" and "keys" not in lookup

    notify = f"/pay/{shop_product['channel']}/notify"
    params = paid_params(data["order_no"], "19.80")
    assert client.get(notify, query_string=params).get_data(as_text=True) == "success"
    assert client.post(notify, data=params).get_data(as_text=True) == "success"  # repeated, by POST

    lookup = client.get(f"/api/v1/orders/{data['order_no']}?token={data['token']}").get_json()
    assert lookup["status"] == "delivered" and lookup["keys"] == shop_product["keys"][:2]
    by_password = client.get(f"/api/v1/orders/{data['order_no']}", query_string={"query_password": "secret-pw"})
    assert by_password.get_json()["keys"] == shop_product["keys"][:2]

    page = client.get(f"/pay/{shop_product['channel']}/return",
                      query_string={"order_no": data["order_no"], "token": data["token"]})
    assert page.status_code == 200 and shop_product["keys"][0] in page.get_data(as_text=True)


@pytest.mark.parametrize("query", ["token=wrong", "query_password=wrong", "", "token="])
def test_lookup_without_the_secret_is_404(client, shop_product, query):
    data = order(client, shop_product).get_json()
    resp = client.get(f"/api/v1/orders/{data['order_no']}?{query}")
    assert resp.status_code == 404 and resp.get_json()["error"]["code"] == "not_found"
    assert client.get(f"/api/v1/orders/00000000?token={data['token']}").status_code == 404


def test_out_of_stock_is_409(client, shop_product):
    resp = order(client, shop_product, quantity=4)
    assert resp.status_code == 409 and resp.get_json()["error"]["code"] == "out_of_stock"


@pytest.mark.parametrize("body", [None, [], {"product_id": "1"}, {"quantity": 1.5}, {"email": "x"},
                                  {"channel": "nope"}, {"quantity": 10**30}])
def test_bad_orders_are_400(client, shop_product, body):
    base = {"product_id": shop_product["id"], "quantity": 1, "email": "b@example.com",
            "channel": shop_product["channel"]}
    payload = None if body is None else body if isinstance(body, list) else {**base, **body}
    resp = client.post("/api/v1/orders", json=payload) if payload is not None else \
        client.post("/api/v1/orders", data="{not json", content_type="application/json")
    assert resp.status_code == 400, resp.get_data(as_text=True)
    assert resp.get_json()["error"]["code"] == "invalid_request"


def test_unknown_product_is_404(client, shop_product):
    resp = client.post("/api/v1/orders", json={"product_id": 10**9, "quantity": 1, "email": "b@example.com",
                                               "channel": shop_product["channel"]})
    assert resp.status_code == 404


def test_forged_callback_is_not_success(client, shop_product):
    data = order(client, shop_product).get_json()
    params = paid_params(data["order_no"], "9.90")
    params["sign"] = "0" * 32
    notify = f"/pay/{shop_product['channel']}/notify"
    assert client.get(notify, query_string=params).get_data(as_text=True) != "success"
    weird = {**params, "pid": "二〇〇二", "sign": "é" * 32}
    assert client.get(notify, query_string=weird).get_data(as_text=True) != "success"
    lookup = client.get(f"/api/v1/orders/{data['order_no']}?token={data['token']}").get_json()
    assert lookup["status"] == "pending"


def test_return_page_escapes_and_hides(client, shop_product):
    data = order(client, shop_product).get_json()
    missing = client.get(f"/pay/{shop_product['channel']}/return", query_string={"order_no": data["order_no"]})
    assert missing.status_code == 404


def test_rate_limits(make_install):
    """Per-client limits answer 429 rate_limited; KAMENGD_RATELIMIT_ENABLED=0 turns them off."""
    import dataclasses

    from kamengd.app import create_app
    from kamengd.config import build_config

    cfg = make_install("sqlite")
    for enabled, expected in ((True, 429), (False, 404)):
        limited = dataclasses.replace(cfg, ratelimit=dataclasses.replace(cfg.ratelimit, enabled=enabled,
                                                                          lookups="3/minute"))
        client = create_app(limited).test_client()
        answers = [client.get("/api/v1/orders/123?token=x").status_code for _ in range(5)]
        assert answers[:3] == [404, 404, 404] and answers[4] == expected
        if expected == 429:
            body = client.get("/api/v1/orders/123?token=x").get_json()
            assert body["error"]["code"] == "rate_limited"
    env_cfg = build_config({"database": {"url": cfg.database.url}, "security": {
        "secret_key_file": str(cfg.security.secret_key_file), "data_key_file": str(cfg.security.data_key_file)}},
        env={"KAMENGD_RATELIMIT_ENABLED": "0"})
    assert env_cfg.ratelimit.enabled is False


@pytest.mark.parametrize("body", [{"product_id": 2**63}, {"product_id": -2**63 - 1}, {"product_id": 10**30},
                                  {"email": "x,victim@evil.com"}, {"email": "a\x00b@example.com"}])
def test_odd_values_are_400(client, shop_product, body):
    base = {"product_id": shop_product["id"], "quantity": 1, "email": "b@example.com",
            "channel": shop_product["channel"]}
    resp = client.post("/api/v1/orders", json={**base, **body})
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "invalid_request"


def test_nested_or_huge_bodies_are_400(client, shop_product):
    for raw in ("[" * 200000, '{"a":' * 100000, '{"x": "' + "a" * 100000 + '"}'):
        resp = client.post("/api/v1/orders", data=raw, content_type="application/json")
        assert resp.status_code == 400, resp.status_code


def test_huge_product_page_id_is_404(client):
    assert client.get("/product/18446744073709551616").status_code == 404


def test_rate_limits_shared_through_redis(make_install, redis_url):
    """Two app processes' worth of limiters count together when they share Redis."""
    import dataclasses

    from kamengd.app import create_app

    cfg = make_install("sqlite")
    prefix = f"{redis_url.rstrip('/')}/15"
    shared = dataclasses.replace(cfg, ratelimit=dataclasses.replace(cfg.ratelimit, storage_url=prefix,
                                                                    lookups="4/minute"))
    first, second = create_app(shared).test_client(), create_app(shared).test_client()
    import redis as redis_lib
    redis_lib.Redis.from_url(prefix).flushdb()
    answers = [c.get("/api/v1/orders/1?token=x").status_code for c in (first, second, first, second, first)]
    assert answers == [404, 404, 404, 404, 429]

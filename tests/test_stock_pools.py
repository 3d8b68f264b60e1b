"""Stock pools (库存池), on both databases: keys put aside for an agent are sold only through
it — its API orders, its sub-station's orders — first from its pool, then from the shop's
stock; the shop's own buyers and other agents never get them; a released reservation goes
back to the pool; staff move keys in and out all or nothing, from the CLI too."""
import json
import secrets

import pytest
import sqlalchemy as sa

from conftest import assert_one_line_error, run_cli
from kamengd.errors import InvalidRequest
from kamengd.inventory import pools
from test_commission import build_tree, order
from test_substations import buy, csrf_of  # noqa: F401  (buy reads the form's token)


@pytest.fixture
def pooled(app):
    """shop -> a -> b -> c on a 10.00 product with 5 keys, 3 of them in c's pool; an Epay channel."""
    from kamengd.agents.models import Agent
    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.payments.services import add_channel

    tree = build_tree(app, price_cents=1000, discounts=["10", "5", "2"], keys=5)
    with app.app_context():
        c = db.session.get(Agent, tree["c"]["id"])
        assert pools.pool_keys(db.session, product_id=tree["product"], agent=c, count=3, actor="t") == 3
        tree["channel"] = add_channel(db.session, get_vault(), channel_type="epay", code=f"pl{secrets.token_hex(3)}",
                                      actor="t", options={"gateway": "http://127.0.0.1:9", "pid": "3003",
                                                          "key": "pool-merchant-key-" + "y" * 16}).code
        db.session.commit()
        db.session.remove()
    return tree


def keys_of(app, product_id):
    """{(status, pool agent or None): count}"""
    from kamengd.extensions import db
    from kamengd.inventory.models import CardKey

    with app.app_context():
        rows = db.session.execute(sa.select(CardKey.status, CardKey.pool_agent_id, sa.func.count())
                                  .where(CardKey.product_id == product_id)
                                  .group_by(CardKey.status, CardKey.pool_agent_id)).all()
        db.session.remove()
    return {(status, agent): count for status, agent, count in rows}


def shop_order(client, tree, quantity, path=""):
    return client.post(f"{path}/api/v1/orders", json={"product_id": tree["product"], "quantity": quantity,
                                                      "email": "b@example.com", "channel": tree["channel"]})


def test_the_shops_buyers_never_get_an_agents_pooled_keys(backend, app, client, pooled):
    products = {p["id"]: p for p in client.get("/api/v1/products").get_json()["products"]}
    assert products[pooled["product"]]["stock"] == 2
    station = {p["id"]: p for p in client.get(f"/s/{pooled['c']['username']}/api/v1/products")
               .get_json()["products"]}
    assert station[pooled["product"]]["stock"] == 5
    assert shop_order(client, pooled, 3).status_code == 409                  # 2 on sale at the shop
    assert shop_order(client, pooled, 2).status_code == 201
    assert keys_of(app, pooled["product"]) == {("reserved", None): 2, ("pool", pooled["c"]["id"]): 3}


def test_the_agents_own_orders_draw_on_its_pool_first(backend, app, client, pooled):
    placed = order(client, pooled, 4)                                        # c's API order: 3 pooled + 1
    assert placed["status"] == "delivered" and len(placed["keys"]) == 4
    assert keys_of(app, pooled["product"]) == {("sold", pooled["c"]["id"]): 3, ("sold", None): 1,
                                               ("available", None): 1}


def test_another_agent_cannot_take_them(backend, app, client, pooled):
    from kamengd.agents.models import Agent
    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.agents import services as agents
    from test_agent_api import signed

    with app.app_context():
        b = db.session.get(Agent, pooled["b"]["id"])
        key_id, secret = agents.issue_api_key(db.session, get_vault(), b, actor="t")
        agents.credit_balance(db.session, b, 10000, reason="t", actor="t")
        db.session.commit()
        db.session.remove()
    b = {"key_id": key_id, "secret": secret}
    answer = signed(client, b, "POST", "/api/v1/agent/orders", {"product_id": pooled["product"], "quantity": 3},
                    idempotency_key=secrets.token_hex(8))
    assert answer.status_code == 409 and answer.get_json()["error"]["code"] == "out_of_stock"
    assert keys_of(app, pooled["product"])[("pool", pooled["c"]["id"])] == 3


def test_a_stations_reservation_released_goes_back_to_the_pool(backend, app, client, pooled):
    import datetime as dt

    from kamengd.extensions import db
    from kamengd.orders.services import expire_orders

    answer = shop_order(client, pooled, 4, path=f"/s/{pooled['c']['username']}")
    assert answer.status_code == 201
    assert keys_of(app, pooled["product"]) == {("reserved", pooled["c"]["id"]): 3, ("reserved", None): 1,
                                               ("available", None): 1}
    with app.app_context():
        expire_orders(db.session, now=dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(days=1))
        db.session.commit()
        db.session.remove()
    assert keys_of(app, pooled["product"]) == {("pool", pooled["c"]["id"]): 3, ("available", None): 2}


def test_keys_go_back_to_the_shop_all_or_nothing(backend, app, pooled):
    from kamengd.agents.models import Agent
    from kamengd.extensions import db

    with app.app_context():
        c = db.session.get(Agent, pooled["c"]["id"])
        for bad in (0, -1, True, "2", 10**9):
            with pytest.raises(InvalidRequest):
                pools.pool_keys(db.session, product_id=pooled["product"], agent=c, count=bad, actor="t")
        with pytest.raises(InvalidRequest, match="only 2 keys"):
            pools.pool_keys(db.session, product_id=pooled["product"], agent=c, count=3, actor="t")
        with pytest.raises(InvalidRequest, match="holds only 3"):
            pools.unpool_keys(db.session, product_id=pooled["product"], agent=c, count=4, actor="t")
        db.session.rollback()
        assert pools.unpool_keys(db.session, product_id=pooled["product"], agent=c, actor="t") == 3
        db.session.commit()
        db.session.remove()
    assert keys_of(app, pooled["product"]) == {("available", None): 5}


def test_the_pool_commands(backend, make_install):
    cfg = make_install(backend)
    cli = lambda *a: json.loads(run_cli(*a, "--json", config=cfg.path, check=True).out)   # noqa: E731
    pid = cli("product", "create", "--name", "池", "--price", "5.00")["id"]
    run_cli("keys", "import", "--product", pid, "-", config=cfg.path, input=b"P-1\nP-2\nP-3\n", check=True)
    cli("agent", "level", "set", "--name", "L", "--discount", "5")
    cli("agent", "create", "--username", "pooler", "--level", "L")
    assert cli("keys", "pool", "--product", pid, "--agent", "pooler", "--count", "2")["pooled"] == 2
    assert_one_line_error(run_cli("keys", "pool", "--product", pid, "--agent", "pooler", "--count", "2",
                                  config=cfg.path), "only 1 keys")
    assert_one_line_error(run_cli("keys", "pool", "--product", pid, "--agent", "nobody", "--count", "1",
                                  config=cfg.path), "no agent named")
    assert cli("keys", "pools")["pools"] == [{"agent": "pooler", "product_id": pid, "product": "池", "keys": 2}]
    assert cli("keys", "unpool", "--product", pid, "--agent", "pooler")["returned"] == 2
    assert cli("keys", "pools")["pools"] == []
    actions = [e["action"] for e in cli("audit", "list", "--limit", "10")["entries"]]
    assert "keys.pool" in actions and "keys.unpool" in actions

"""The new-buyer reward (W5, invite rewards on W2's attribution): an agent earns
agents.new_buyer_reward, besides its margin, for a new buyer's first order sold through it
(its invite link or its sub-station) — once per buyer e-mail, whichever order is delivered
first, even two at once; never for a buyer who bought here before; nothing while the
setting is 0. Booked with the margin: pending, then held and reversed like it. SQLite and MariaDB.
"""
from __future__ import annotations

import re
import secrets
from concurrent.futures import ThreadPoolExecutor

from panel_support import csrf_of
from test_substations import sale, settle, station  # noqa: F401 (fixture)


def buy_as(client, tree, email: str) -> str:
    page = client.get(f"/product/{tree['product']}").get_data(as_text=True)
    answer = client.post(f"/product/{tree['product']}", data={"quantity": "2", "email": email,
                                                              "channel": tree["channel"], "csrf_token": csrf_of(page)})
    assert answer.status_code == 303, answer.get_data(as_text=True)[:500]
    return re.search(r"out_trade_no=(\d+)", answer.headers["Location"]).group(1)


def invited(app, tree, agent="b"):
    client = app.test_client()
    client.get(f"/?ref={tree[agent]['username']}")
    return client


def test_a_new_buyers_first_order_rewards_the_agent_once(backend, app, station, shared_setting):
    shared_setting("agents.new_buyer_reward", "1.50")
    b, a = station["b"]["id"], station["a"]["id"]
    email = f"New.{secrets.token_hex(4)}@Example.com"
    client = invited(app, station)
    first = buy_as(client, station, email)
    settle(client, app, station, first)
    # b's margin 2 × (10.00 − 9.50) and the reward; a its margin only.
    assert sale(app, first)[3] == {b: 100 + 150, a: 100}
    second = buy_as(client, station, email.lower())               # the same buyer, in any case
    settle(client, app, station, second)
    assert sale(app, second)[3] == {b: 100, a: 100}


def test_a_buyer_who_bought_here_before_brings_no_reward(backend, app, station, shared_setting):
    shared_setting("agents.new_buyer_reward", "1.50")
    email = f"old.{secrets.token_hex(4)}@example.com"
    own = app.test_client()                                         # the shop's own sale first
    settle(own, app, station, buy_as(own, station, email))
    client = invited(app, station)
    later = buy_as(client, station, email)
    settle(client, app, station, later)
    assert sale(app, later)[3] == {station["b"]["id"]: 100, station["a"]["id"]: 100}


def test_nothing_while_the_setting_is_zero(backend, app, station):
    client = invited(app, station)
    order_no = buy_as(client, station, f"zero.{secrets.token_hex(4)}@example.com")
    settle(client, app, station, order_no)
    assert sale(app, order_no)[3] == {station["b"]["id"]: 100, station["a"]["id"]: 100}


def test_two_first_orders_paid_at_once_reward_once(backend, app, station, shared_setting):
    shared_setting("agents.new_buyer_reward", "2.00")
    email = f"twice.{secrets.token_hex(4)}@example.com"
    clients = [invited(app, station) for _ in range(2)]
    orders = [buy_as(c, station, email) for c in clients]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda pair: settle(pair[0], app, station, pair[1]), zip(clients, orders)))
    earned = [sale(app, o)[3][station["b"]["id"]] for o in orders]
    assert sorted(earned) == [100, 300], earned                     # one of them carries the reward
    assert all(sale(app, o)[2] == "delivered" for o in orders)

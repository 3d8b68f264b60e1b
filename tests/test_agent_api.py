"""The signed agent API (kamengd/docs/agent-api.md) through HTTP, on both databases.

Signatures, timestamps and nonces; products at the agent's price; orders paid
from the balance with their keys in the answer, once per Idempotency-Key;
402 and 409 that reserve and charge nothing; the caller's own orders only.
"""
import io
import json
import secrets
import time

import pytest
import sqlalchemy as sa

from kamengd.agents import services as agents
from kamengd.agents import signing
from kamengd.ledger import services as ledger


def signed(client, agent, method, path, body=None, *, idempotency_key=None, timestamp=None, nonce=None,
           secret=None, key_id=None, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
    timestamp = str(int(time.time())) if timestamp is None else timestamp
    nonce = nonce or secrets.token_hex(16)
    headers = {"X-Kamengd-Key": key_id or agent["key_id"], "X-Kamengd-Timestamp": timestamp,
               "X-Kamengd-Nonce": nonce,
               "X-Kamengd-Signature": signing.sign(secret or agent["secret"], method, path, timestamp, nonce, data),
               "Content-Type": "application/json"}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    return client.open(path, method=method, data=data, headers=headers)


@pytest.fixture
def network(app):
    """A product (9.90, 10 keys, at most 5 an order), a level of 10 % off, two agents with keys;
    alice holds 30.00."""
    from kamengd.catalog.services import create_product
    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.inventory.services import import_keys

    tag = secrets.token_hex(3)
    with app.app_context():
        product = create_product(db.session, name=f"点卡 {tag}", price_cents=990, actor="t", max_quantity=5)
        keys = [f"AG-{tag}-{i:02d}-{secrets.token_hex(4)}" for i in range(10)]
        import_keys(db.session, get_vault(), product_id=product.id, fh=io.BytesIO("\n".join(keys).encode()),
                    actor="t")
        level, _ = agents.set_level(db.session, name=f"银牌-{tag}", discount="10", actor="t")
        made = {}
        for name in ("alice", "bob"):
            agent = agents.create_agent(db.session, username=f"{name}-{tag}", level=level.name, actor="t")
            key_id, secret = agents.issue_api_key(db.session, get_vault(), agent, actor="t")
            made[name] = {"id": agent.id, "username": agent.username, "key_id": key_id, "secret": secret}
        agents.credit_balance(db.session, db.session.get(type(agent), made["alice"]["id"]), 3000, reason="t",
                              actor="t")
        db.session.commit()
        made["product"], made["keys"] = product.id, keys
        db.session.remove()
    return made


def balance_of(app, agent_id):
    from kamengd.extensions import db

    with app.app_context():
        try:
            return ledger.balances(db.session, agent_id)["available"]
        finally:
            db.session.remove()


def test_products_and_balance_at_the_agents_price(backend, client, network):
    alice = network["alice"]
    answer = signed(client, alice, "GET", "/api/v1/agent/products")
    assert answer.status_code == 200, answer.get_json()
    mine = next(p for p in answer.get_json()["products"] if p["id"] == network["product"])
    assert (mine["price"], mine["shop_price"], mine["stock"]) == ("8.91", "9.90", 10)
    assert signed(client, alice, "GET", "/api/v1/agent/balance").get_json() == {
        "balance": "30.00", "pending": "0.00", "held": "0.00", "debt": "0.00", "currency": "CNY"}


def test_an_order_paid_from_the_balance_delivers_its_keys_once(backend, app, client, network):
    alice = network["alice"]
    body = {"product_id": network["product"], "quantity": 2}
    first = signed(client, alice, "POST", "/api/v1/agent/orders", body, idempotency_key="order-1")
    assert first.status_code == 201, first.get_json()
    order = first.get_json()
    assert (order["status"], order["amount"], len(order["keys"])) == ("delivered", "17.82", 2)
    assert set(order["keys"]) <= set(network["keys"])
    assert balance_of(app, alice["id"]) == 3000 - 1782
    # The same key again: the same order, nothing charged twice.
    again = signed(client, alice, "POST", "/api/v1/agent/orders", body, idempotency_key="order-1")
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == order
    assert balance_of(app, alice["id"]) == 3000 - 1782
    # The same key with another request: refused.
    other = signed(client, alice, "POST", "/api/v1/agent/orders", {**body, "quantity": 1}, idempotency_key="order-1")
    assert other.status_code == 409 and other.get_json()["error"]["code"] == "conflict"
    # Read back: its own order; another agent's 404, as a missing one.
    path = f"/api/v1/agent/orders/{order['order_no']}"
    assert signed(client, alice, "GET", path).get_json() == order
    stranger = signed(client, network["bob"], "GET", path)
    assert stranger.status_code == 404 and stranger.get_json()["error"]["code"] == "not_found"
    from kamengd.extensions import db

    with app.app_context():
        assert ledger.verify(db.session)[1] == []
        # No buyer's mail: none was queued, and staff cannot send one again.
        from kamengd.errors import Conflict
        from kamengd.notifications.models import EmailOutbox
        from kamengd.orders import staff as order_staff
        from kamengd.orders.models import Order

        stored = db.session.scalars(sa.select(Order).where(Order.order_no == order["order_no"])).one()
        assert (stored.agent_id, stored.idempotency_key, stored.channel_id) == (alice["id"], "order-1", None)
        assert db.session.scalar(sa.select(sa.func.count()).select_from(EmailOutbox)
                                 .where(EmailOutbox.order_id == stored.id)) == 0
        with pytest.raises(Conflict, match="bought by an agent"):
            order_staff.resend_delivery_email(db.session, order_no=order["order_no"], smtp_configured=True,
                                              actor="t")
        db.session.rollback()
        db.session.remove()


def test_not_enough_balance_or_stock_changes_nothing(backend, app, client, network):
    from kamengd.catalog.services import stock_by_product
    from kamengd.extensions import db

    alice, bob = network["alice"], network["bob"]
    body = {"product_id": network["product"], "quantity": 1}
    poor = signed(client, bob, "POST", "/api/v1/agent/orders", body, idempotency_key="poor-1")
    assert poor.status_code == 402 and poor.get_json()["error"]["code"] == "insufficient_balance"
    too_many = signed(client, alice, "POST", "/api/v1/agent/orders", {**body, "quantity": 5}, idempotency_key="x-1")
    assert too_many.status_code == 402             # 5 × 8.91 = 44.55 > 30.00
    with app.app_context():
        assert stock_by_product(db.session)[network["product"]] == 10   # nothing reserved
        db.session.remove()
    assert balance_of(app, bob["id"]) == 0 and balance_of(app, alice["id"]) == 3000
    # A failed key can be used again once the request can succeed.
    with app.app_context():
        from kamengd.agents.models import Agent

        agents.credit_balance(db.session, db.session.get(Agent, bob["id"]), 1000, reason="t", actor="t")
        db.session.commit()
        db.session.remove()
    retry = signed(client, bob, "POST", "/api/v1/agent/orders", body, idempotency_key="poor-1")
    assert retry.status_code == 201 and retry.get_json()["status"] == "delivered"
    # Out of stock: 409, nothing charged.
    with app.app_context():
        keys = db.session.execute(sa.text("UPDATE card_keys SET status = 'void' WHERE product_id = :p "
                                          "AND status = 'available'"), {"p": network["product"]})
        assert keys.rowcount == 9
        db.session.commit()
        db.session.remove()
    gone = signed(client, alice, "POST", "/api/v1/agent/orders", body, idempotency_key="gone-1")
    assert gone.status_code == 409 and gone.get_json()["error"]["code"] == "out_of_stock"
    assert balance_of(app, alice["id"]) == 3000


@pytest.mark.parametrize("body, key, message", [
    ({"product_id": "1", "quantity": 1}, "k", "product_id"),
    ({"product_id": 1, "quantity": 0}, "k", "quantity"),
    ({"product_id": 1, "quantity": True}, "k", "quantity"),
    ({"product_id": 1, "quantity": 1.5}, "k", "quantity"),
    ({"product_id": 1, "quantity": 1}, None, "Idempotency-Key"),
    ({"product_id": 1, "quantity": 1}, "x" * 65, "Idempotency-Key"),
    ({"product_id": 1, "quantity": 1}, "a b", "Idempotency-Key"),
    ([1, 2], "k", "JSON object"),
])
def test_bad_requests_are_400(backend, client, network, body, key, message):
    answer = signed(client, network["alice"], "POST", "/api/v1/agent/orders", body, idempotency_key=key)
    assert answer.status_code == 400 and message in answer.get_json()["error"]["message"], answer.get_json()


def test_an_unknown_product_is_404(backend, client, network):
    answer = signed(client, network["alice"], "POST", "/api/v1/agent/orders",
                    {"product_id": 2**31 - 1, "quantity": 1}, idempotency_key="k")
    assert answer.status_code == 404


def test_requests_that_do_not_prove_their_key_are_401(backend, app, client, network):
    alice = network["alice"]
    path = "/api/v1/agent/balance"
    stale = str(int(time.time()) - 301)
    nonce = secrets.token_hex(16)
    assert signed(client, alice, "GET", path, nonce=nonce).status_code == 200
    cases = {
        "replayed nonce": signed(client, alice, "GET", path, nonce=nonce),
        "old timestamp": signed(client, alice, "GET", path, timestamp=stale),
        "future timestamp": signed(client, alice, "GET", path, timestamp=str(int(time.time()) + 301)),
        "wrong secret": signed(client, alice, "GET", path, secret="not-the-secret"),
        "unknown key": signed(client, alice, "GET", path, key_id="ak_" + "0" * 24),
        "short nonce": signed(client, alice, "GET", path, nonce="short"),
        "other path signed": client.get(path, headers={
            "X-Kamengd-Key": alice["key_id"], "X-Kamengd-Timestamp": str(int(time.time())),
            "X-Kamengd-Nonce": secrets.token_hex(16),
            "X-Kamengd-Signature": signing.sign(alice["secret"], "GET", "/api/v1/agent/products",
                                                str(int(time.time())), "n" * 32, b"")}),
        "no headers": client.get(path),
    }
    for what, answer in cases.items():
        assert answer.status_code == 401, what
        assert answer.get_json()["error"]["code"] == "unauthorized", what
    # A body changed after signing: 401, and no order.
    body = json.dumps({"product_id": network["product"], "quantity": 1}).encode()
    timestamp, nonce = str(int(time.time())), secrets.token_hex(16)
    tampered = client.post("/api/v1/agent/orders", data=body.replace(b"1}", b"5}"), headers={
        "X-Kamengd-Key": alice["key_id"], "X-Kamengd-Timestamp": timestamp, "X-Kamengd-Nonce": nonce,
        "Idempotency-Key": "tamper", "Content-Type": "application/json",
        "X-Kamengd-Signature": signing.sign(alice["secret"], "POST", "/api/v1/agent/orders", timestamp, nonce, body)})
    assert tampered.status_code == 401
    assert balance_of(app, alice["id"]) == 3000


def test_old_nonces_are_pruned(backend, app, network):
    import datetime as dt

    from kamengd.agents.auth import prune_nonces
    from kamengd.agents.models import ApiNonce
    from kamengd.database import utcnow
    from kamengd.extensions import db

    with app.app_context():
        now = utcnow()
        db.session.add_all([ApiNonce(key_id="ak_prune", nonce=f"old-nonce-{i:08d}", created_at=now - dt.timedelta(
            seconds=601)) for i in range(3)] + [ApiNonce(key_id="ak_prune", nonce="fresh-nonce-0000", created_at=now)])
        db.session.commit()
        assert prune_nonces(db.session, now) >= 3
        left = db.session.scalars(sa.select(ApiNonce.nonce).where(ApiNonce.key_id == "ak_prune")).all()
        assert left == ["fresh-nonce-0000"]
        db.session.remove()


def test_a_revoked_key_or_a_disabled_agent_is_refused(backend, app, client, network):
    from kamengd.agents.models import Agent
    from kamengd.context import get_vault
    from kamengd.errors import Conflict
    from kamengd.extensions import db

    alice = network["alice"]
    with app.app_context():
        second_id, second_secret = agents.issue_api_key(db.session, get_vault(), db.session.get(Agent, alice["id"]),
                                                        actor="t")
        agents.revoke_api_key(db.session, alice["key_id"], actor="t")
        with pytest.raises(Conflict):
            agents.revoke_api_key(db.session, alice["key_id"], actor="t")
        db.session.commit()
        db.session.remove()
    assert signed(client, alice, "GET", "/api/v1/agent/balance").status_code == 401
    fresh = {**alice, "key_id": second_id, "secret": second_secret}
    assert signed(client, fresh, "GET", "/api/v1/agent/balance").status_code == 200

    with app.app_context():
        assert agents.set_agent_active(db.session, db.session.get(Agent, alice["id"]), False, actor="t")
        db.session.commit()
        db.session.remove()
    refused = signed(client, fresh, "POST", "/api/v1/agent/orders", {"product_id": network["product"], "quantity": 1},
                     idempotency_key="disabled-1")
    assert refused.status_code == 401 and balance_of(app, alice["id"]) == 3000
    with app.app_context():
        assert agents.set_agent_active(db.session, db.session.get(Agent, alice["id"]), True, actor="t")
        assert not agents.set_agent_active(db.session, db.session.get(Agent, alice["id"]), True, actor="t")
        db.session.commit()
        db.session.remove()
    assert signed(client, fresh, "GET", "/api/v1/agent/balance").status_code == 200


def test_staff_see_the_agent_and_a_refund_goes_back_to_the_balance(backend, app, client, network):
    from kamengd.extensions import db
    from kamengd.orders import staff as order_staff
    from panel_support import login, make_staff

    alice = network["alice"]
    placed = signed(client, alice, "POST", "/api/v1/agent/orders", {"product_id": network["product"], "quantity": 1},
                    idempotency_key="refund-1").get_json()
    assert balance_of(app, alice["id"]) == 3000 - 891
    staff = app.test_client()
    login(staff, make_staff(app, "admin"))
    page = staff.get(f"/admin/orders/{placed['order_no']}").get_data(as_text=True)
    assert alice["username"] in page and "refund-1" in page
    assert f"/admin/orders/{placed['order_no']}/resend" not in page   # no buyer's address to mail
    with app.app_context():
        refund = order_staff.refund_order(db.session, order_no=placed["order_no"], reason="wrong product",
                                          actor="staff:t")
        assert refund.previous_status == "delivered"
        db.session.commit()
        assert ledger.verify(db.session)[1] == []
        db.session.remove()
    assert balance_of(app, alice["id"]) == 3000
    assert signed(client, alice, "GET", f"/api/v1/agent/orders/{placed['order_no']}").get_json()["status"] == "refunded"


def test_an_agent_disabled_or_its_level_changed_while_it_orders(backend, app, network):
    """Between the request's check and its write: a disabled agent is refused (401, nothing
    written); a new discount is the one charged."""
    import dataclasses

    from kamengd.agents.auth import Caller
    from kamengd.agents.checkout import place_agent_order
    from kamengd.agents.models import Agent, AgentLevel
    from kamengd.context import get_vault
    from kamengd.errors import Unauthorized
    from kamengd.extensions import db

    alice = network["alice"]
    with app.app_context():
        agent = db.session.get(Agent, alice["id"])
        account = ledger.account_by_name(db.session, ledger.agent_account_name(agent.id, "available"))
        caller = Caller(agent.id, agent.username, agent.level_id, 1000, alice["key_id"], secrets.token_hex(16),
                        account.id, account.currency)
        db.session.get(AgentLevel, agent.level_id).discount_bp = 2000   # 20 % off since the check
        db.session.commit()
        order, placed = place_agent_order(db.session, get_vault(), caller, product_id=network["product"],
                                          quantity=1, idempotency_key="level-changed")
        db.session.commit()
        assert placed and order["amount"] == "7.92"
        db.session.get(Agent, alice["id"]).is_active = False
        db.session.commit()
        with pytest.raises(Unauthorized, match="disabled"):
            place_agent_order(db.session, get_vault(), dataclasses.replace(caller, nonce=secrets.token_hex(16),
                                                                            discount_bp=2000),
                              product_id=network["product"], quantity=1, idempotency_key="disabled-2")
        db.session.rollback()
        db.session.remove()
    assert balance_of(app, alice["id"]) == 3000 - 792


def test_payout_accounts_withdrawals_and_commissions_through_the_api(backend, client, network):
    alice, bob = network["alice"], network["bob"]
    bad = signed(client, alice, "POST", "/api/v1/agent/payout-accounts", {"kind": "bank", "account": "12"})
    assert bad.status_code == 400 and bad.get_json()["error"]["code"] == "invalid_request"
    made = signed(client, alice, "POST", "/api/v1/agent/payout-accounts",
                  {"kind": "alipay", "account": "alice@example.com", "holder": "爱丽丝"})
    assert made.status_code == 201, made.get_json()
    account_id = made.get_json()["id"]
    listed = signed(client, alice, "GET", "/api/v1/agent/payout-accounts").get_json()["accounts"]
    assert [a["id"] for a in listed] == [account_id]
    assert signed(client, bob, "GET", "/api/v1/agent/payout-accounts").get_json() == {"accounts": []}

    for body, status in [({"payout_account_id": account_id, "amount": "1e3"}, 400),
                         ({"payout_account_id": account_id, "amount": 12}, 400),
                         ({"payout_account_id": account_id, "amount": "30.01"}, 402),
                         ({"payout_account_id": account_id + 1000, "amount": "10"}, 404),
                         ({"payout_account_id": "x", "amount": "10"}, 404)]:
        answer = signed(client, alice, "POST", "/api/v1/agent/withdrawals", body)
        assert answer.status_code == status, (body, answer.get_json())
    # Bob cannot withdraw to Alice's account (and holds nothing: he has nothing).
    assert signed(client, bob, "POST", "/api/v1/agent/withdrawals",
                  {"payout_account_id": account_id, "amount": "10"}).status_code == 404
    held = signed(client, alice, "POST", "/api/v1/agent/withdrawals", {"payout_account_id": account_id,
                                                                       "amount": "12.50"}, idempotency_key="w-1")
    assert held.status_code == 201 and held.get_json()["status"] == "requested"
    retried = signed(client, alice, "POST", "/api/v1/agent/withdrawals", {"payout_account_id": account_id,
                                                                          "amount": "12.50"}, idempotency_key="w-1")
    assert retried.get_json()["id"] == held.get_json()["id"] and retried.headers["Idempotent-Replayed"] == "true"
    assert held.get_json()["amount"] == "12.50" and held.get_json()["payout"] == "12.50"
    balance = signed(client, alice, "GET", "/api/v1/agent/balance").get_json()
    assert (balance["balance"], balance["held"]) == ("17.50", "12.50")
    mine = signed(client, alice, "GET", "/api/v1/agent/withdrawals").get_json()["withdrawals"]
    assert [w["id"] for w in mine] == [held.get_json()["id"]]
    assert signed(client, bob, "GET", "/api/v1/agent/withdrawals").get_json() == {"withdrawals": []}
    assert signed(client, alice, "GET", "/api/v1/agent/commissions").get_json() == {"commissions": []}


def test_each_key_is_rate_limited_and_a_stranger_cannot_use_it_up(backend, make_install):
    """Per key, only requests that proved the key count: a stranger sending alice's key id
    with wrong signatures uses up nothing of hers (and gets 429 for its own address)."""
    import dataclasses

    from kamengd.app import create_app
    from kamengd.context import get_vault
    from kamengd.extensions import db

    cfg = make_install(backend)
    limited = dataclasses.replace(cfg, ratelimit=dataclasses.replace(
        cfg.ratelimit, enabled=True, agent_api="5/minute", bad_agent_requests="3/minute"))
    app = create_app(limited)
    with app.app_context():
        level, _ = agents.set_level(db.session, name="rl", discount="0", actor="t")
        agent = agents.create_agent(db.session, username="limited", level=level.name, actor="t")
        key_id, secret = agents.issue_api_key(db.session, get_vault(), agent, actor="t")
        db.session.commit()
        db.session.remove()
    alice = {"key_id": key_id, "secret": secret}
    stranger = app.test_client()
    stranger.environ_base["REMOTE_ADDR"] = "203.0.113.9"   # another address than alice's
    forged = [signed(stranger, alice, "GET", "/api/v1/agent/balance", secret="not-her-secret").status_code
              for _ in range(5)]
    assert forged == [401, 401, 401, 429, 429]
    client = app.test_client()
    answers = [signed(client, alice, "GET", "/api/v1/agent/balance").status_code for _ in range(7)]
    assert answers == [200] * 5 + [429, 429]
    body = signed(client, alice, "GET", "/api/v1/agent/balance").get_json()
    assert body["error"]["code"] == "rate_limited"


def test_an_agent_sets_its_own_selling_prices_never_below_its_cost(backend, app, client, network):
    alice, product = network["alice"], network["product"]
    mine = lambda: [p for p in signed(client, alice, "GET", "/api/v1/agent/prices").get_json()["prices"]  # noqa
                    if p["product_id"] == product][0]
    assert (mine()["cost"], mine()["price"], mine()["own"]) == ("8.91", "9.90", False)
    answer = signed(client, alice, "POST", "/api/v1/agent/prices", {"product_id": product, "price": "12.50"})
    assert answer.status_code == 200 and answer.get_json()["price"] == "12.50"
    assert (mine()["price"], mine()["margin"], mine()["own"]) == ("12.50", "3.59", True)
    for body, status, said in [({"product_id": product, "price": "8.90"}, 400, "below your cost of 8.91"),
                               ({"product_id": product, "price": "1e3"}, 400, "price"),
                               ({"product_id": product, "price": 12}, 400, "price"),
                               ({"product_id": product, "price": "0"}, 400, "price"),
                               ({"product_id": 2**31 + 5, "price": "10"}, 404, "product"),
                               ({"product_id": "1", "price": "10"}, 404, "product")]:
        refused = signed(client, alice, "POST", "/api/v1/agent/prices", body)
        assert refused.status_code == status and said in refused.get_json()["error"]["message"], refused.get_json()
    assert mine()["price"] == "12.50"                    # nothing changed
    # Its cost rises above the price it set (its level's own price becomes 9.90): it sells at
    # cost, never below.
    assert signed(client, alice, "POST", "/api/v1/agent/prices",
                  {"product_id": product, "price": "9.00"}).status_code == 200
    from kamengd.agents.models import Agent, AgentLevel
    from kamengd.extensions import db
    with app.app_context():
        level = db.session.get(AgentLevel, db.session.get(Agent, alice["id"]).level_id)
        agents.set_level_price(db.session, level=level.name, product_id=product, price="9.90", actor="t")
        db.session.commit()
        db.session.remove()
    assert (mine()["cost"], mine()["price"], mine()["margin"]) == ("9.90", "9.90", "0.00")
    assert signed(client, alice, "POST", "/api/v1/agent/prices",
                  {"product_id": product, "price": "9.89"}).status_code == 400
    cleared = signed(client, alice, "POST", "/api/v1/agent/prices", {"product_id": product, "price": None})
    assert cleared.status_code == 200 and (cleared.get_json()["price"], cleared.get_json()["own"]) == ("9.90", False)


def test_the_ledger_statement_with_filters_and_as_csv(backend, client, network):
    alice = network["alice"]
    placed = signed(client, alice, "POST", "/api/v1/agent/orders", {"product_id": network["product"], "quantity": 1},
                    idempotency_key="statement-1")
    assert placed.status_code == 201
    entries = signed(client, alice, "GET", "/api/v1/agent/ledger").get_json()["entries"]
    assert [(e["account"], e["amount"], e["balance_after"], e["kind"]) for e in entries] == [
        ("available", "-8.91", "21.09", "order"), ("available", "30.00", "30.00", "credit")]
    assert signed(client, alice, "GET", "/api/v1/agent/ledger?account=pending").get_json() == {"entries": []}
    assert signed(client, alice, "GET", "/api/v1/agent/ledger?from=2000-01-01&to=2000-12-31").get_json() == {
        "entries": []}
    for bad in ("?account=shop", "?from=yesterday", "?limit=x"):
        answer = signed(client, alice, "GET", "/api/v1/agent/ledger" + bad)
        assert answer.status_code == 400, bad
    csv_answer = signed(client, alice, "GET", "/api/v1/agent/ledger?format=csv")
    assert csv_answer.status_code == 200 and csv_answer.mimetype == "text/csv"
    lines = csv_answer.get_data(as_text=True).splitlines()
    assert lines[0] == "time,account,amount,balance_after,kind,cause,memo" and len(lines) == 3
    assert ",-8.91,21.09,order," in lines[1]                    # a debit stays a number
    bob = signed(client, network["bob"], "GET", "/api/v1/agent/ledger").get_json()
    assert bob == {"entries": []}                               # only its own


def test_a_spreadsheet_never_runs_a_cell():
    from kamengd.validation import spreadsheet_cell

    assert [spreadsheet_cell(t) for t in ("=1+1", "+1", "@SUM(A1)", "-1+1", "-5.00", "12", "ok", "", "\tx")] == [
        "'=1+1", "'+1", "'@SUM(A1)", "'-1+1", "-5.00", "12", "ok", "", "'\tx"]

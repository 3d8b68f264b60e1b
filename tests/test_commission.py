"""Commission up a tree of agents, on both databases: the hand-computed table, once per
order and ancestor, pending -> available after the hold, reversed on refund (a debt when
it was spent), and a refund racing the hold job.

Orders are placed through the signed agent API (the Flask test client); the rest
calls the services in app contexts, committing as a request or a job would.
"""
import datetime as dt
import io
import secrets
import threading

import pytest
import sqlalchemy as sa

from kamengd.agents import commission
from kamengd.agents import services as agents
from kamengd.ledger import services as ledger
from test_agent_api import signed


def tag():
    return secrets.token_hex(3)


def build_tree(app, *, price_cents, discounts, keys=20, delivery_mode="auto", credit=100000):
    """shop -> a -> b -> c with levels of `discounts` (percent strings, a first); c holds
    `credit` cents and an API key. {name: {id, username, key_id, secret}, "product": id}."""
    from kamengd.catalog.services import create_product
    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.inventory.services import import_keys

    t = tag()
    with app.app_context():
        product = create_product(db.session, name=f"佣金 {t}", price_cents=price_cents, actor="t", max_quantity=10,
                                 delivery_mode=delivery_mode)
        if delivery_mode == "auto":
            import_keys(db.session, get_vault(), product_id=product.id, actor="t",
                        fh=io.BytesIO("\n".join(f"CM-{t}-{i}-{secrets.token_hex(4)}" for i in range(keys)).encode()))
        made, parent = {"product": product.id}, None
        for name, discount in zip("abc", discounts):
            level, _ = agents.set_level(db.session, name=f"{name}-{t}", discount=discount, actor="t")
            agent = agents.create_agent(db.session, username=f"{name}-{t}", level=level.name, parent=parent,
                                        actor="t")
            made[name] = {"id": agent.id, "username": agent.username}
            parent = agent.username
        c = db.session.get(type(agent), made["c"]["id"])
        made["c"]["key_id"], made["c"]["secret"] = agents.issue_api_key(db.session, get_vault(), c, actor="t")
        agents.credit_balance(db.session, c, credit, reason="float", actor="t")
        db.session.commit()
        db.session.remove()
    return made


def order(client, tree, quantity, key=None):
    answer = signed(client, tree["c"], "POST", "/api/v1/agent/orders",
                    {"product_id": tree["product"], "quantity": quantity}, idempotency_key=key or secrets.token_hex(8))
    assert answer.status_code == 201, answer.get_json()
    return answer.get_json()


def money(app, agent_id):
    from kamengd.extensions import db

    with app.app_context():
        try:
            return ledger.balances(db.session, agent_id)
        finally:
            db.session.remove()


def rows(app, order_no):
    from kamengd.agents.models import Commission
    from kamengd.extensions import db
    from kamengd.orders.models import Order

    with app.app_context():
        try:
            return [(r.agent_id, r.below_agent_id, r.amount_cents, r.status, r.debt_cents) for r in db.session.scalars(
                sa.select(Commission).join(Order, Order.id == Commission.order_id)
                .where(Order.order_no == order_no).order_by(Commission.id))]
        finally:
            db.session.remove()


def books_add_up(app):
    from kamengd.extensions import db

    with app.app_context():
        try:
            _checked, problems = ledger.verify(db.session)
            assert problems == []
        finally:
            db.session.remove()


# price, the discounts of a, b, c, quantity; then by hand: what c pays, what b and a earn
# (the margin below each, times the quantity) and from whose price.
TABLE = [
    # 100.00 at 30 / 20 / 10 % off: c pays 90.00, b costs 80.00, a 70.00.
    ("100.00", ("30", "20", "10"), 2, 18000, {"b": (2000, "c"), "a": (2000, "b")}),
    # 9.99: c 999*0.9667=965.73 -> 9.66; b 999*0.9225=921.58 -> 9.22; a 999*0.875=874.13 -> 8.74.
    ("9.99", ("12.5", "7.75", "3.33"), 3, 2898, {"b": (132, "c"), "a": (144, "b")}),
    # b's level is worse than c's: b earns nothing, a earns from c's price (90.00 - 70.00).
    ("100.00", ("30", "5", "10"), 1, 9000, {"a": (2000, "c")}),
    # All on one level: nobody above earns anything.
    ("50.00", ("10", "10", "10"), 4, 18000, {}),
    # 0.01 at 50 % off rounds half up to 0.01 for all: nothing to earn, nothing booked.
    ("0.01", ("50", "40", "0"), 1, 1, {}),
]


@pytest.mark.parametrize("price, discounts, quantity, paid, earned", TABLE)
def test_every_ancestor_earns_its_hand_computed_margin(backend, app, client, price, discounts, quantity, paid,
                                                       earned):
    cents = int(price.replace(".", ""))
    tree = build_tree(app, price_cents=cents, discounts=discounts)
    placed = order(client, tree, quantity)
    assert placed["status"] == "delivered" and placed["amount"] == f"{paid // 100}.{paid % 100:02d}"
    expected = [(tree[who]["id"], tree[below]["id"], amount, "pending", 0) for who, (amount, below) in
                sorted(earned.items(), key=lambda item: "bac".index(item[0]))]
    assert rows(app, placed["order_no"]) == expected
    for who in "ab":
        assert money(app, tree[who]["id"])["pending"] == earned.get(who, (0, None))[0]
        assert money(app, tree[who]["id"])["available"] == 0
    assert money(app, tree["c"]["id"])["pending"] == 0
    books_add_up(app)


def _shop_commission_total(app, order_no):
    from kamengd.extensions import db
    from kamengd.ledger.models import LedgerEntry, LedgerTransaction

    with app.app_context():
        try:
            return db.session.scalar(sa.select(sa.func.sum(LedgerEntry.amount_cents))
                                     .join(LedgerTransaction, LedgerTransaction.id == LedgerEntry.transaction_id)
                                     .where(LedgerTransaction.cause == f"order:{order_no}:commission"))
        finally:
            db.session.remove()


def test_a_manual_order_earns_once_however_often_it_is_delivered(backend, app, client):
    """A manual-delivery order earns when staff deliver it; two staff members delivering at
    once, and the commission booked again by hand, still book it once."""
    from kamengd.agents.models import Commission
    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.orders import staff
    from kamengd.orders.models import Order

    tree = build_tree(app, price_cents=10000, discounts=("30", "20", "10"), delivery_mode="manual")
    placed = order(client, tree, 1)
    assert placed["status"] == "paid" and rows(app, placed["order_no"]) == []
    outcomes, start = [], threading.Barrier(4)

    def deliver(n):
        with app.app_context():
            start.wait()
            try:
                staff.deliver_pasted_keys(db.session, get_vault(), order_no=placed["order_no"],
                                          text=f"MANUAL-{n}-{secrets.token_hex(4)}", max_key_length=200, actor=f"s{n}")
                db.session.commit()
                outcomes.append("delivered")
            except Exception as exc:
                db.session.rollback()
                outcomes.append(type(exc).__name__)
            finally:
                db.session.remove()

    threads = [threading.Thread(target=deliver, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("delivered") == 1 and set(outcomes) <= {"delivered", "Conflict"}, outcomes
    assert [r[2] for r in rows(app, placed["order_no"])] == [1000, 1000]
    with app.app_context():   # booked again by hand (a retried job, a bug): nothing more
        the_order = db.session.scalar(sa.select(Order).where(Order.order_no == placed["order_no"]))
        commission.book_for_order(db.session, the_order, 10000)
        db.session.commit()
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Commission)
                                 .where(Commission.order_id == the_order.id)) == 2
        db.session.remove()
    assert _shop_commission_total(app, placed["order_no"]) == 0   # the movement sums to zero, booked once
    assert money(app, tree["b"]["id"])["pending"] == 1000 and money(app, tree["a"]["id"])["pending"] == 1000
    books_add_up(app)


def release(app, *, days=0, seconds=0):
    from kamengd.extensions import db

    with app.app_context():
        try:
            return commission.release_commissions(
                db.session, now=dt.datetime.utcnow() + dt.timedelta(days=days, seconds=seconds))["released"]
        finally:
            db.session.remove()


def refund(app, order_no):
    from kamengd.extensions import db
    from kamengd.orders import staff

    with app.app_context():
        try:
            staff.refund_order(db.session, order_no=order_no, reason="the buyer changed its mind", actor="finance")
            db.session.commit()
        finally:
            db.session.remove()


def test_the_hold_then_available_then_a_refund_becomes_a_debt(backend, app, client):
    tree = build_tree(app, price_cents=10000, discounts=("30", "20", "10"))
    first = order(client, tree, 1)
    release(app, days=6)                      # within the 7-day hold: nothing moves
    assert money(app, tree["b"]["id"])["pending"] == 1000
    release(app, days=7, seconds=5)           # every commission due by then (others' too) is released
    assert [r[3] for r in rows(app, first["order_no"])] == ["available", "available"]
    assert money(app, tree["b"]["id"]) == {"available": 1000, "pending": 0, "held": 0, "debt": 0}
    release(app, days=8)                      # released once: another run moves nothing of it
    assert money(app, tree["b"]["id"])["available"] == 1000

    # b spends 6.00 of it, then the order is refunded: 4.00 comes back from its balance, 6.00 is owed.
    from kamengd.agents.models import Agent
    from kamengd.extensions import db
    with app.app_context():
        agents.credit_balance(db.session, db.session.get(Agent, tree["b"]["id"]), -600, reason="spent", actor="t")
        db.session.commit()
        db.session.remove()
    refund(app, first["order_no"])
    assert money(app, tree["b"]["id"]) == {"available": 0, "pending": 0, "held": 0, "debt": -600}
    assert money(app, tree["a"]["id"]) == {"available": 0, "pending": 0, "held": 0, "debt": 0}
    assert [(r[3], r[4]) for r in rows(app, first["order_no"])] == [("reversed", 600), ("reversed", 0)]
    assert money(app, tree["c"]["id"])["available"] == 100000   # c's payment came back to it

    # b's next commission repays the debt first; then a staff credit pays the rest of it.
    second = order(client, tree, 1)
    release(app, days=7, seconds=5)
    assert money(app, tree["b"]["id"]) == {"available": 400, "pending": 0, "held": 0, "debt": 0}
    assert rows(app, second["order_no"])[0][3] == "available"
    books_add_up(app)


def test_a_refund_before_the_hold_takes_it_from_pending(backend, app, client):
    tree = build_tree(app, price_cents=10000, discounts=("30", "20", "10"))
    placed = order(client, tree, 3)
    refund(app, placed["order_no"])
    assert [(r[2], r[3], r[4]) for r in rows(app, placed["order_no"])] == [(3000, "reversed", 0),
                                                                           (3000, "reversed", 0)]
    for who in "ab":
        assert money(app, tree[who]["id"]) == {"available": 0, "pending": 0, "held": 0, "debt": 0}
    release(app, days=30)
    assert [r[3] for r in rows(app, placed["order_no"])] == ["reversed"] * 2
    books_add_up(app)


def test_a_debt_is_repaid_first_by_a_credit(backend, app, client):
    from kamengd.agents.models import Agent
    from kamengd.extensions import db

    tree = build_tree(app, price_cents=10000, discounts=("30", "20", "10"))
    placed = order(client, tree, 1)
    release(app, days=7, seconds=5)
    with app.app_context():
        agents.credit_balance(db.session, db.session.get(Agent, tree["b"]["id"]), -1000, reason="spent", actor="t")
        db.session.commit()
        db.session.remove()
    refund(app, placed["order_no"])
    assert money(app, tree["b"]["id"])["debt"] == -1000
    with app.app_context():
        b = db.session.get(Agent, tree["b"]["id"])
        agents.credit_balance(db.session, b, 1500, reason="top-up", actor="t", reference=f"top-{tag()}")
        db.session.commit()
        db.session.remove()
    assert money(app, tree["b"]["id"]) == {"available": 500, "pending": 0, "held": 0, "debt": 0}
    books_add_up(app)


@pytest.mark.parametrize("round_", range(4))
def test_a_refund_racing_the_hold_job_is_reversed_exactly_once(backend, app, client, round_):
    """The release job and a refund at the same moment: the commission is reversed from
    pending or from available (a debt if spent), never both and never neither."""
    from kamengd.extensions import db
    from kamengd.ledger.models import LedgerTransaction

    tree = build_tree(app, price_cents=10000, discounts=("30", "20", "10"))
    placed = order(client, tree, 1)
    start, errors = threading.Barrier(2), []

    def run(work):
        try:
            start.wait()
            work()
        except Exception as exc:   # a deadlock or a double booking would be a defect
            errors.append(repr(exc))

    threads = [threading.Thread(target=run, args=(lambda: release(app, days=7, seconds=5),)),
               threading.Thread(target=run, args=(lambda: refund(app, placed["order_no"]),))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [r[3] for r in rows(app, placed["order_no"])] == ["reversed", "reversed"]
    for who in "ab":
        assert money(app, tree[who]["id"]) == {"available": 0, "pending": 0, "held": 0, "debt": 0}
    from kamengd.agents.models import Commission
    from kamengd.orders.models import Order
    with app.app_context():
        ids = db.session.scalars(sa.select(Commission.id).join(Order, Order.id == Commission.order_id)
                                 .where(Order.order_no == placed["order_no"])).all()
        causes = db.session.scalars(sa.select(LedgerTransaction.cause).where(
            LedgerTransaction.cause.in_([f"commission:{i}:reversal" for i in ids]))).all()
        assert len(causes) == 2
        db.session.remove()
    books_add_up(app)


def test_an_agent_reads_its_own_commissions_through_the_api(backend, app, client):
    from kamengd.agents.models import Agent
    from kamengd.context import get_vault
    from kamengd.extensions import db

    tree = build_tree(app, price_cents=10000, discounts=("30", "20", "10"))
    placed = order(client, tree, 2)
    with app.app_context():
        b = db.session.get(Agent, tree["b"]["id"])
        tree["b"]["key_id"], tree["b"]["secret"] = agents.issue_api_key(db.session, get_vault(), b, actor="t")
        db.session.commit()
        db.session.remove()
    earned = signed(client, tree["b"], "GET", "/api/v1/agent/commissions").get_json()["commissions"]
    assert [(c["order_no"], c["amount"], c["status"], c["debt"]) for c in earned] == [
        (placed["order_no"], "20.00", "pending", "0.00")]
    assert signed(client, tree["c"], "GET", "/api/v1/agent/commissions").get_json() == {"commissions": []}


def test_a_levels_own_price_for_a_product_is_what_it_pays_and_earns_from(backend, app, client):
    """b's level has its own price of 85.00 for the product (instead of 20 % off, 80.00):
    c pays 90.00, b earns 5.00, a (70.00) earns 15.00; the API shows c its price."""
    from kamengd.extensions import db

    tree = build_tree(app, price_cents=10000, discounts=("30", "20", "10"))
    with app.app_context():
        level_b = f"b-{tree['b']['username'].split('-', 1)[1]}"
        agents.set_level_price(db.session, level=level_b, product_id=tree["product"], price="85", actor="t")
        for bad, said in (("100.01", "above the shop's price"), ("1e3", "price"), ("-1", "price")):
            with pytest.raises(Exception, match=said):
                agents.set_level_price(db.session, level=level_b, product_id=tree["product"], price=bad, actor="t")
        db.session.commit()
        db.session.remove()
    placed = order(client, tree, 1)
    assert [(r[0], r[2]) for r in rows(app, placed["order_no"])] == [(tree["b"]["id"], 500), (tree["a"]["id"], 1500)]
    # c's own level gets a price of 88.00: the API shows it and charges it.
    with app.app_context():
        level_c = f"c-{tree['c']['username'].split('-', 1)[1]}"
        agents.set_level_price(db.session, level=level_c, product_id=tree["product"], price="88.00", actor="t")
        db.session.commit()
        db.session.remove()
    listed = signed(client, tree["c"], "GET", "/api/v1/agent/products").get_json()["products"]
    assert [p["price"] for p in listed if p["id"] == tree["product"]] == ["88.00"]
    again = order(client, tree, 1)
    assert again["amount"] == "88.00"
    assert [(r[0], r[2]) for r in rows(app, again["order_no"])] == [(tree["b"]["id"], 300), (tree["a"]["id"], 1500)]
    with app.app_context():   # cleared: the discount again (90.00)
        agents.set_level_price(db.session, level=level_c, product_id=tree["product"], price=None, actor="t")
        db.session.commit()
        db.session.remove()
    assert order(client, tree, 1)["amount"] == "90.00"
    books_add_up(app)

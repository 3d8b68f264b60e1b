"""Agents and their money in the panel, on both databases: finance credits a balance (a
double-sent form books once) and pays or rejects withdrawals; support may look, never
touch money; an agent's page shows its ledger, commission and withdrawals, escaped."""
import secrets

import pytest

from kamengd.agents import services as agents
from kamengd.agents import withdrawals
from kamengd.ledger import services as ledger
from panel_support import login, make_staff, post


@pytest.fixture
def payee(app):
    from kamengd.extensions import db

    t = secrets.token_hex(3)
    with app.app_context():
        level, _ = agents.set_level(db.session, name=f"p-{t}", discount="5", actor="t")
        agent = agents.create_agent(db.session, username=f"payee-{t}", level=level.name, actor="t")
        agents.credit_balance(db.session, agent, 5000, reason="<script>alert(1)</script>", actor="t")
        account = withdrawals.add_payout_account(db.session, agent, kind="alipay", account="13900139000",
                                                 holder="<b>李四</b>", actor="t")
        asked = withdrawals.request_withdrawal(db.session, agent, payout_account_id=account.id, amount="20",
                                               actor="t")
        db.session.commit()
        made = {"id": agent.id, "username": agent.username, "withdrawal": asked.id}
        db.session.remove()
    return made


def balances(app, agent_id):
    from kamengd.extensions import db

    with app.app_context():
        try:
            return ledger.balances(db.session, agent_id)
        finally:
            db.session.remove()


def signed_in(app, client, role):
    client.set_cookie("lang", "en")
    assert login(client, make_staff(app, role)).status_code == 302
    return client


def test_finance_credits_once_and_pays_and_rejects(backend, app, client, payee):
    signed_in(app, client, "finance")
    page = f"/admin/agents/{payee['id']}"
    shown = client.get(page).get_data(as_text=True)
    assert payee["username"] in shown and "&lt;script&gt;" in shown and "<script>alert" not in shown
    form = {"amount": "12.34", "reason": "bonus", "reference": f"panel-{secrets.token_hex(6)}"}
    for _twice in range(2):   # a double click sends the same form twice
        assert post(client, f"{page}/credit", form, page_url=page).status_code == 303
    assert balances(app, payee["id"])["available"] == 3000 + 1234
    assert post(client, f"{page}/credit", {"amount": "1e3", "reason": "x", "reference": "panel-x1"},
                page_url=page).status_code == 303
    assert post(client, f"{page}/credit", {"amount": "-999", "reason": "too much", "reference": "panel-x2"},
                page_url=page).status_code == 303
    assert balances(app, payee["id"])["available"] == 4234            # both refused, nothing booked

    queue = client.get("/admin/withdrawals").get_data(as_text=True)
    assert "13900139000" in queue and "&lt;b&gt;李四&lt;/b&gt;" in queue
    url = f"/admin/withdrawals/{payee['withdrawal']}"
    assert post(client, f"{url}/pay", {"reference": ""}, page_url="/admin/withdrawals").status_code == 303
    assert balances(app, payee["id"])["held"] == 2000                   # no reference: not paid
    assert post(client, f"{url}/pay", {"reference": "ALI-777"}, page_url="/admin/withdrawals").status_code == 303
    assert post(client, f"{url}/reject", {"reason": "late"}, page_url="/admin/withdrawals").status_code == 303
    assert balances(app, payee["id"]) == {"available": 4234, "pending": 0, "held": 0, "debt": 0}
    assert "ALI-777" in client.get("/admin/withdrawals?status=paid").get_data(as_text=True)


@pytest.mark.parametrize("role", ["support", "operator"])
def test_support_and_operators_never_touch_money(backend, app, client, payee, role):
    signed_in(app, client, role)
    page = f"/admin/agents/{payee['id']}"
    seen = client.get(page)
    assert seen.status_code == (200 if role == "support" else 403)
    if role == "support":
        assert "/credit" not in seen.get_data(as_text=True)            # no form offered
    answer = post(client, f"{page}/credit", {"amount": "100", "reason": "gift", "reference": "panel-gift"})
    assert answer.status_code == 403
    assert post(client, f"/admin/withdrawals/{payee['withdrawal']}/pay", {"reference": "X"}).status_code == 403
    assert balances(app, payee["id"]) == {"available": 3000, "pending": 0, "held": 2000, "debt": 0}


def test_admins_create_agents_bind_hosts_and_set_level_rules(backend, app, client):
    """The panel's agent forms: a new agent with its portal password, a host bound once (the
    same host again, or a bad one, is refused), a level rule set and removed; support may
    do none of it."""
    from kamengd.agents.models import Agent, LevelRule
    from kamengd.extensions import db
    import sqlalchemy as sa

    t = secrets.token_hex(3)
    with app.app_context():
        level_id = agents.set_level(db.session, name=f"r-{t}", discount="3", actor="t")[0].id
        db.session.commit()
        db.session.remove()
    signed_in(app, client, "admin")
    form = {"username": f"new-{t}", "level": f"r-{t}", "parent": "", "password": "portal-pass-1",
            "password_repeat": "portal-pass-1"}
    answer = post(client, "/admin/agents", form, page_url="/admin/agents")
    assert answer.status_code == 303 and "/admin/agents/" in answer.headers["Location"]
    post(client, "/admin/agents", {**form, "username": f"bad {t}"}, page_url="/admin/agents")
    with app.app_context():
        made = db.session.scalar(sa.select(Agent).where(Agent.username == f"new-{t}"))
        assert made.password_hash.startswith("$argon2")
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Agent)
                                 .where(Agent.username.like(f"%{t}%"))) == 1
        agent_id = made.id
        db.session.remove()
    page = f"/admin/agents/{agent_id}"
    for host in (f"p-{t}.example.test", f"P-{t}.example.test", "not a host"):
        post(client, f"{page}/hosts", {"host": host}, page_url=page)
    shown = client.get(page).get_data(as_text=True)
    assert shown.count(f"<code>p-{t}.example.test</code>") == 1
    post(client, f"{page}/hosts/remove", {"host": f"p-{t}.example.test"}, page_url=page)
    assert f"<code>p-{t}.example.test</code>" not in client.get(page).get_data(as_text=True)

    post(client, "/admin/agents/rules", {"level": f"r-{t}", "min_sales": "1e3", "days": "30"},
         page_url="/admin/agents")
    post(client, "/admin/agents/rules", {"level": f"r-{t}", "min_sales": "500", "days": "0"},
         page_url="/admin/agents")
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(LevelRule)
                                 .where(LevelRule.level_id == level_id)) == 0       # both refused
        db.session.remove()
    post(client, "/admin/agents/rules", {"level": f"r-{t}", "min_sales": "500", "days": "14"},
         page_url="/admin/agents")
    with app.app_context():
        rule = db.session.scalar(sa.select(LevelRule).where(LevelRule.level_id == level_id))
        assert (rule.min_sales_cents, rule.days) == (50000, 14)
        db.session.remove()
    post(client, "/admin/agents/rules", {"level": f"r-{t}", "remove": "1"}, page_url="/admin/agents")
    with app.app_context():
        assert db.session.scalar(sa.select(LevelRule).where(LevelRule.level_id == level_id)) is None
        db.session.remove()

    support = app.test_client()
    signed_in(app, support, "support")
    assert post(support, "/admin/agents", {**form, "username": f"sup-{t}"}, page_url="/admin/agents").status_code == 403


def test_admins_give_a_level_its_own_price_for_a_product(backend, app, client):
    from kamengd.catalog.services import create_product
    from kamengd.extensions import db

    t = secrets.token_hex(3)
    with app.app_context():
        level_id = agents.set_level(db.session, name=f"lp-{t}", discount="10", actor="t")[0].id
        product = create_product(db.session, name=f"<i>lp {t}</i>", price_cents=1000, actor="t").id
        db.session.commit()
        db.session.remove()
    signed_in(app, client, "admin")
    for bad in ("10.01", "1e3", "-1", "0.001"):                       # above the shop's price, or no amount
        post(client, "/admin/agents/level-prices", {"level": f"lp-{t}", "product_id": str(product), "price": bad},
             page_url="/admin/agents")
    post(client, "/admin/agents/level-prices", {"level": f"lp-{t}", "product_id": "99999999", "price": "1"},
         page_url="/admin/agents")

    def own():
        with app.app_context():
            try:
                return agents.level_prices(db.session, level_id)
            finally:
                db.session.remove()
    assert own() == {}
    post(client, "/admin/agents/level-prices", {"level": f"lp-{t}", "product_id": str(product), "price": "8.50"},
         page_url="/admin/agents")
    assert own() == {product: 850}
    shown = client.get("/admin/agents").get_data(as_text=True)
    assert "&lt;i&gt;lp" in shown and "8.50" in shown
    post(client, "/admin/agents/level-prices", {"level": f"lp-{t}", "product_id": str(product), "clear": "1"},
         page_url="/admin/agents")
    assert own() == {}

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

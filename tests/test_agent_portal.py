"""The agent portal (/agent), on both databases, through its real forms: sign-in with the
panel's security (lockout counted apart from staff names, TOTP once per code, sessions that
end on sign-out, a password change or a disabled agent), and an agent's own business —
dashboard, prices, orders and keys, team, ledger and CSV, withdrawals, API keys — reading
and changing only its own rows."""
import csv
import io
import re
import secrets

import pyotp
import pytest
import sqlalchemy as sa

from conftest import PASSWORD
from kamengd.accounts import auth
from kamengd.agents import services as agents
from kamengd.agents import withdrawals
from kamengd.ledger import services as ledger
from panel_support import csrf_of
from test_agent_api import signed
from test_commission import build_tree, order


def set_password(app, agent_id, password=PASSWORD):
    from kamengd.agents.models import Agent
    from kamengd.extensions import db

    with app.app_context():
        auth.reset_password(db.session, db.session.get(Agent, agent_id), password, actor="t", ip=None)
        db.session.commit()
        db.session.remove()


def sign_in(client, username, password=PASSWORD, code=None):
    client.set_cookie("lang", "en")
    page = client.get("/agent/login").get_data(as_text=True)
    answer = client.post("/agent/login", data={"csrf_token": csrf_of(page), "username": username,
                                               "password": password})
    if code is not None and answer.status_code == 302 and answer.headers["Location"].endswith("/agent/login/2fa"):
        page = client.get("/agent/login/2fa").get_data(as_text=True)
        answer = client.post("/agent/login/2fa", data={"csrf_token": csrf_of(page), "code": code})
    return answer


def post(client, url, data=None, page="/agent/account"):
    token = csrf_of(client.get(page).get_data(as_text=True))
    return client.post(url, data={"csrf_token": token, **(data or {})})


def flashes(client, page):
    return " ".join(re.findall(r'<p class="flash [a-z]+">([^<]*)</p>', client.get(page).get_data(as_text=True)))


def money(app, agent_id):
    from kamengd.extensions import db

    with app.app_context():
        try:
            return ledger.balances(db.session, agent_id)
        finally:
            db.session.remove()


@pytest.fixture
def tree(app):
    made = build_tree(app, price_cents=1000, discounts=["10", "5", "2"], credit=5000)
    for name in "abc":
        set_password(app, made[name]["id"])
    return made


def test_sign_in_then_out_and_a_copy_of_the_cookie_is_worthless(backend, app, client, tree):
    assert client.get("/agent/").status_code == 302                        # to the sign-in page
    assert sign_in(client, tree["c"]["username"], "not the password").status_code == 401
    answer = sign_in(client, tree["c"]["username"])
    assert answer.status_code == 302 and answer.headers["Location"].endswith("/agent/")
    page = client.get("/agent/")
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    assert "form-action 'self'" in page.headers["Content-Security-Policy"]
    assert re.search(r'id="balance">50\.00 CNY<', page.get_data(as_text=True))
    copy = client.get_cookie("session").value
    assert post(client, "/agent/logout", page="/agent/").status_code == 302
    assert client.get("/agent/").status_code == 302
    client.set_cookie("session", copy)                                     # the cookie from before
    assert client.get("/agent/").status_code == 302


def test_an_agent_without_a_password_and_a_staff_password_do_not_open_the_portal(backend, app, client):
    from conftest import PASSWORD as staff_password
    from kamengd.extensions import db
    from panel_support import make_staff

    t = secrets.token_hex(3)
    with app.app_context():
        level, _ = agents.set_level(db.session, name=f"np-{t}", discount="1", actor="t")
        agents.create_agent(db.session, username=f"np-{t}", level=level.name, actor="t")
        db.session.commit()
        db.session.remove()
    assert sign_in(client, f"np-{t}", "").status_code == 401
    assert sign_in(client, f"np-{t}", "anything-at-all").status_code == 401
    staff = make_staff(app, "support", username=f"np-{t}x")
    assert sign_in(client, staff.username, staff_password).status_code == 401   # staff sign in at /admin


def test_guessing_locks_the_agents_name_not_the_staff_member_of_the_same_name(backend, app, client, tree):
    from kamengd.extensions import db
    from panel_support import login, make_staff

    name = tree["b"]["username"]
    for _ in range(auth.LOCK_AFTER["pair"]):
        assert sign_in(client, name, "wrong-guess").status_code == 401
    assert sign_in(client, name).status_code == 429                        # the right password waits too
    staff = make_staff(app, "support", username=name)                     # a staff member named alike
    assert login(client, staff).status_code == 302
    with app.app_context():
        assert auth.unlock(db.session, name, actor="t", realm=auth.AGENT) >= 1
        db.session.commit()
        db.session.remove()
    client.delete_cookie("session")
    assert sign_in(client, name).status_code == 302
    with app.app_context():
        from kamengd.audit.models import AuditEntry
        targets = db.session.scalars(sa.select(AuditEntry.target).where(AuditEntry.action == "auth.login_failed",
                                                                        AuditEntry.target == f"login:agent:{name}")).all()
        db.session.remove()
    assert len(targets) == auth.LOCK_AFTER["pair"]


def test_two_factor_sign_in_with_a_code_once_and_recovery_codes(backend, app, client, tree):
    name = tree["a"]["username"]
    assert sign_in(client, name).status_code == 302
    page = client.get("/agent/account/2fa").get_data(as_text=True)
    secret = re.search(r'id="totp-secret" class="secret">([A-Z2-7]+)<', page).group(1)
    assert client.get("/agent/account/2fa/qr.svg").headers["Content-Type"] == "image/svg+xml"
    assert post(client, "/agent/account/2fa", {"code": "000000"}, page="/agent/account/2fa").status_code == 302
    code = pyotp.TOTP(secret).now()
    shown = post(client, "/agent/account/2fa", {"code": code}, page="/agent/account/2fa").get_data(as_text=True)
    recovery = re.findall(r"<li><code>([a-z2-7]{4}-[a-z2-7]{4}-[a-z2-7]{4})</code></li>", shown)
    assert len(recovery) == auth.RECOVERY_CODES
    post(client, "/agent/logout", page="/agent/")

    assert sign_in(client, name, code=code).status_code == 401             # that code was used
    client.delete_cookie("session")
    answer = sign_in(client, name, code=recovery[0])
    assert answer.status_code == 302 and answer.headers["Location"].endswith("/agent/")
    post(client, "/agent/logout", page="/agent/")
    client.delete_cookie("session")
    assert sign_in(client, name, code=recovery[0]).status_code == 401     # a recovery code works once


def test_a_form_without_its_token_changes_nothing(backend, app, client, tree):
    sign_in(client, tree["c"]["username"])
    answer = client.post(f"/agent/products/{tree['product']}/price", data={"price": "99.00"})
    assert answer.status_code == 400
    assert "99.00" not in client.get("/agent/products").get_data(as_text=True)


def test_a_password_change_and_a_disabled_agent_end_the_sessions(backend, app, client, tree):
    from kamengd.agents.models import Agent
    from kamengd.extensions import db

    other = app.test_client()
    assert sign_in(other, tree["c"]["username"]).status_code == 302
    assert sign_in(client, tree["c"]["username"]).status_code == 302
    new = "a-new-password-" + secrets.token_hex(4)
    assert post(client, "/agent/account/password", {"current_password": "wrong", "new_password": new,
                                                    "new_password_repeat": new}).status_code == 302
    assert client.get("/agent/").status_code == 200 and other.get("/agent/").status_code == 200
    post(client, "/agent/account/password", {"current_password": PASSWORD, "new_password": new,
                                             "new_password_repeat": new})
    assert client.get("/agent/").status_code == 200                        # this browser goes on
    assert other.get("/agent/").status_code == 302                         # the other one is out
    with app.app_context():
        agents.set_agent_active(db.session, db.session.get(Agent, tree["c"]["id"]), False, actor="t")
        db.session.commit()
        agents.set_agent_active(db.session, db.session.get(Agent, tree["c"]["id"]), True, actor="t")
        db.session.commit()
        db.session.remove()
    assert client.get("/agent/").status_code == 302                        # disabled once: out for good


def test_the_dashboard_orders_and_team_show_the_agents_own_business(backend, app, client, tree):
    placed = order(client, tree, 2)
    assert placed["status"] == "delivered"
    # c: 2 × 9.80 paid; b earns 2 × (9.80 − 9.50) = 0.60, a 2 × (9.50 − 9.00) = 1.00, pending.
    sign_in(client, tree["c"]["username"])
    page = client.get("/agent/").get_data(as_text=True)
    assert 'id="orders-today">1<' in page and 'id="sales-today">19.60<' in page and "30.40 CNY" in page
    shown = client.get(f"/agent/orders/{placed['order_no']}").get_data(as_text=True)
    assert all(key in shown for key in placed["keys"])
    assert placed["order_no"] in client.get("/agent/orders?status=delivered").get_data(as_text=True)
    assert placed["order_no"] not in client.get("/agent/orders?status=refunded").get_data(as_text=True)
    post(client, "/agent/logout", page="/agent/")

    sign_in(client, tree["b"]["username"])
    page = client.get("/agent/").get_data(as_text=True)
    assert 'id="commission-pending">0.60<' in page and 'id="commission-today">0.60<' in page
    assert client.get(f"/agent/orders/{placed['order_no']}").status_code == 404   # c's order, not b's
    team = client.get("/agent/team").get_data(as_text=True)
    row = re.search(rf"<tr><td>{tree['c']['username']}</td>.*?</tr>", team, re.S).group(0)
    assert "<td>1</td><td>19.60</td><td>0.60</td>" in row
    post(client, "/agent/logout", page="/agent/")
    sign_in(client, tree["a"]["username"])
    team = client.get("/agent/team").get_data(as_text=True)
    assert tree["b"]["username"] in team and tree["c"]["username"] not in team   # direct sub-agents only
    assert 'id="commission-pending">1.00<' in client.get("/agent/").get_data(as_text=True)


def test_selling_prices_never_below_cost(backend, app, client, tree):
    sign_in(client, tree["c"]["username"])
    url = f"/agent/products/{tree['product']}/price"
    for bad in ("9.79", "1e3", "-0", "0.001", "99999999999999"):
        post(client, url, {"price": bad}, page="/agent/products")
    rows = client.get("/agent/products").get_data(as_text=True)
    assert "(shop&#39;s)" in rows or "(shop's)" in rows                    # still the shop's price
    post(client, url, {"price": "12.50"}, page="/agent/products")
    assert "<td>12.50</td><td>2.70</td>" in client.get("/agent/products").get_data(as_text=True)
    post(client, url, {"clear": "1"}, page="/agent/products")
    assert "<td>10.00 <small>" in client.get("/agent/products").get_data(as_text=True)


def test_a_price_below_cost_says_why(backend, app, client, tree):
    sign_in(client, tree["c"]["username"])
    token = csrf_of(client.get("/agent/products").get_data(as_text=True))
    client.post(f"/agent/products/{tree['product']}/price", data={"csrf_token": token, "price": "9.79"})
    assert "9.79 is below your cost of 9.80" in flashes(client, "/agent/products")


def test_withdrawals_and_payout_accounts_from_the_portal(backend, app, client, tree):
    sign_in(client, tree["c"]["username"])
    page = "/agent/withdrawals"
    post(client, "/agent/payout-accounts", {"kind": "alipay", "account": "not a phone", "holder": "张三"}, page=page)
    assert "Add a payout account first" in client.get(page).get_data(as_text=True)
    post(client, "/agent/payout-accounts", {"kind": "alipay", "account": "13800138000", "holder": "<b>张三</b>"},
         page=page)
    shown = client.get(page).get_data(as_text=True)
    assert "&lt;b&gt;张三&lt;/b&gt;" in shown and "<b>张三</b>" not in shown
    account_id = re.search(r'<option value="(\d+)">', shown).group(1)
    for bad in ("1e3", "-0", "0.001", "99999999999999", "60.00"):
        post(client, page, {"payout_account_id": account_id, "amount": bad}, page=page)
    assert money(app, tree["c"]["id"])["held"] == 0                        # nothing held by any of them
    post(client, page, {"payout_account_id": account_id, "amount": "20.00"}, page=page)
    assert money(app, tree["c"]["id"])["held"] == 2000 and money(app, tree["c"]["id"])["available"] == 3000


def test_another_agents_rows_are_out_of_reach(backend, app, client, tree):
    from kamengd.agents.models import Agent
    from kamengd.extensions import db

    with app.app_context():
        b = db.session.get(Agent, tree["b"]["id"])
        theirs = withdrawals.add_payout_account(db.session, b, kind="alipay", account="13700137000", holder="李四",
                                                actor="t")
        db.session.commit()
        theirs_id = theirs.id
        db.session.remove()
    sign_in(client, tree["c"]["username"])
    post(client, f"/agent/keys/{tree['c']['key_id']}/revoke", page="/agent/keys")   # its own: fine
    with app.app_context():
        from kamengd.context import get_vault
        b_key, _secret = agents.issue_api_key(db.session, get_vault(), db.session.get(Agent, tree["b"]["id"]),
                                              actor="t")
        db.session.commit()
        db.session.remove()
    post(client, f"/agent/keys/{b_key}/revoke", page="/agent/keys")
    post(client, f"/agent/payout-accounts/{theirs_id}/remove", page="/agent/withdrawals")
    with app.app_context():
        from kamengd.agents.models import AgentApiKey, PayoutAccount
        assert db.session.scalar(sa.select(AgentApiKey.revoked_at).where(AgentApiKey.key_id == b_key)) is None
        assert db.session.get(PayoutAccount, theirs_id).removed_at is None
        assert db.session.scalar(sa.select(AgentApiKey.revoked_at)
                                 .where(AgentApiKey.key_id == tree["c"]["key_id"])) is not None
        db.session.remove()


def test_an_api_key_issued_in_the_portal_is_shown_once_and_signs_requests(backend, app, client, tree):
    sign_in(client, tree["c"]["username"])
    refused = post(client, "/agent/keys", page="/agent/keys")   # no scope ticked
    assert refused.status_code == 303 and "scopes" in flashes(client, "/agent/keys")
    shown = post(client, "/agent/keys", {"scope": ["read"], "label": "对账脚本"}, page="/agent/keys") \
        .get_data(as_text=True)
    key_id = re.search(r'id="key-id">(ak_[0-9a-f]+)<', shown).group(1)
    secret = re.search(r'id="key-secret" class="secret">([^<]+)<', shown).group(1)
    listing = client.get("/agent/keys").get_data(as_text=True)
    assert key_id in listing and secret not in listing and "对账脚本" in listing
    answer = signed(client, {"key_id": key_id, "secret": secret}, "GET", "/api/v1/agent/balance")
    assert answer.status_code == 200 and answer.get_json()["balance"] == "50.00"
    # A read-only key places no order.
    assert signed(client, {"key_id": key_id, "secret": secret}, "POST", "/api/v1/agent/orders",
                  {"product_id": tree["product"], "quantity": 1}, idempotency_key="ro").status_code == 403
    post(client, f"/agent/keys/{key_id}/revoke", page="/agent/keys")
    assert signed(client, {"key_id": key_id, "secret": secret}, "GET", "/api/v1/agent/balance").status_code == 401


def test_the_ledger_with_filters_and_as_csv(backend, app, client, tree):
    order(client, tree, 1)
    sign_in(client, tree["c"]["username"])
    page = client.get("/agent/ledger").get_data(as_text=True)
    assert "-9.80" in page and "50.00" in page
    only = client.get("/agent/ledger?account=held").get_data(as_text=True)
    assert "-9.80" not in only
    exported = client.get("/agent/ledger?format=csv")
    assert exported.mimetype == "text/csv" and "attachment" in exported.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(exported.get_data(as_text=True))))
    assert sorted(r["amount"] for r in rows) == ["-9.80", "50.00"]
    assert "a date such as 2026-12-01" in client.get("/agent/ledger?from=yesterday").get_data(as_text=True)


def test_an_agents_sign_in_never_clears_the_addresss_count_of_guesses(backend, app, tree):
    """Anyone may own an agent account: its successful sign-in must not wipe the count of
    guesses at staff names from the same address (a staff member's success still does)."""
    from kamengd.accounts.models import LoginThrottle
    from kamengd.agents.models import Agent
    from kamengd.extensions import db

    ip = f"198.51.100.{secrets.randbelow(250) + 1}"
    with app.app_context():
        for name in ("owner", "admin", "boss"):
            auth.record_failure(db.session, name, ip, "password")
        auth.complete_login(db.session, db.session.get(Agent, tree["a"]["id"]), ip, "password")
        db.session.commit()
        row = db.session.get(LoginThrottle, ("ip", ip))
        assert row is not None and row.failures == 3
        db.session.remove()

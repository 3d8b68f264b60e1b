"""Plain members, on both databases: portal accounts without a level. A member signs in by the
same rules as an agent, sees its balance, orders, books and account, and nothing an agent
sells with (prices, team, sub-station, API keys, withdrawals); every agent-only action is
refused with a clear error; staff may credit it, and promote it to an agent."""
import json
import re
import secrets

import pytest

from conftest import PASSWORD, assert_one_line_error, run_cli, write_password
from kamengd.agents import services as agents
from kamengd.errors import InvalidRequest
from test_agent_portal import post, sign_in


@pytest.fixture
def member(app):
    from kamengd.extensions import db

    t = secrets.token_hex(3)
    with app.app_context():
        made = agents.create_member(db.session, username=f"m-{t}", password=PASSWORD, actor="t")
        agents.credit_balance(db.session, made, 1234, reason="gift", actor="t")
        level, _ = agents.set_level(db.session, name=f"ml-{t}", discount="5", actor="t")
        db.session.commit()
        found = {"id": made.id, "username": made.username, "level": level.name}
        db.session.remove()
    return found


def test_a_member_signs_in_and_sees_its_own_account_only(backend, app, client, member):
    assert sign_in(client, member["username"]).status_code == 302
    page = client.get("/agent/").get_data(as_text=True)
    assert "12.34 CNY" in page and "Member" in page and "Commission pending" not in page
    for allowed in ("/agent/orders", "/agent/ledger", "/agent/account"):
        assert client.get(allowed).status_code == 200, allowed
    for closed in ("/agent/products", "/agent/team", "/agent/station", "/agent/keys", "/agent/withdrawals"):
        assert client.get(closed).status_code == 404, closed
        assert f'href="{closed}"' not in page
    assert post(client, "/agent/keys", page="/agent/account").status_code == 404      # nothing issued
    assert client.get(f"/s/{member['username']}/").status_code == 404                  # no station
    other = app.test_client()
    assert not [c for c in other.get(f"/?ref={member['username']}").headers.getlist("Set-Cookie")
                if c.startswith("ref=")]                                               # its links bring nobody


def test_what_is_for_agents_is_refused_to_a_member(backend, app, member):
    from kamengd.agents import levels, sites, withdrawals
    from kamengd.agents.models import Agent
    from kamengd.context import get_vault
    from kamengd.extensions import db

    with app.app_context():
        m = db.session.get(Agent, member["id"])
        refusals = [
            lambda: agents.issue_api_key(db.session, get_vault(), m, actor="t"),
            lambda: agents.set_selling_price(db.session, m, product_id=1, price="1.00", actor="t"),
            lambda: withdrawals.request_withdrawal(db.session, m, payout_account_id=1, amount="10", actor="t"),
            lambda: sites.bind_host(db.session, m, f"{member['username']}.example.test", actor="t"),
            lambda: levels.assign_level(db.session, m, member["level"], reason="x", actor="t"),
            lambda: agents.create_agent(db.session, username=f"under-{member['username']}", level=member["level"],
                                        parent=member["username"], actor="t"),
        ]
        for refused in refusals:
            with pytest.raises(InvalidRequest, match="plain member"):
                refused()
            db.session.rollback()
        db.session.remove()


def test_staff_credit_and_promote_a_member_from_the_cli(backend, make_install, tmp_path):
    cfg = make_install(backend)
    cli = lambda *a: json.loads(run_cli(*a, "--json", config=cfg.path, check=True).out)   # noqa: E731
    made = cli("member", "create", "--username", "Mei", "--password-file", write_password(tmp_path))
    assert (made["username"], made["kind"], made["level"], made["balance"]) == ("mei", "member", None, "0.00")
    assert cli("balance", "credit", "--username", "mei", "--amount", "5.00", "--reason", "gift")["balance"] == "5.00"
    assert_one_line_error(run_cli("agent", "apikey", "--username", "mei", config=cfg.path), "plain member")
    assert_one_line_error(run_cli("member", "promote", "--username", "mei", "--level", "nope", config=cfg.path),
                          "no agent level")
    assert_one_line_error(run_cli("member", "create", "--username", "mei", config=cfg.path), "already exists")
    assert "member" in run_cli("agent", "list", config=cfg.path).out
    cli("agent", "level", "set", "--name", "银牌", "--discount", "8")
    promoted = cli("member", "promote", "--username", "mei", "--level", "银牌")
    assert (promoted["kind"], promoted["level"], promoted["balance"]) == ("agent", "银牌", "5.00")
    assert re.fullmatch(r"ak_[0-9a-f]{24}", cli("agent", "apikey", "--username", "mei")["key_id"])
    assert_one_line_error(run_cli("member", "promote", "--username", "mei", "--level", "银牌", config=cfg.path),
                          "agent already")
    assert cli("ledger", "verify")["ok"] is True
    actions = [e["action"] for e in cli("audit", "list", "--limit", "20")["entries"]]
    assert "member.create" in actions and "member.promote" in actions


def test_staff_create_a_member_in_the_panel(backend, app, client):
    from panel_support import login, make_staff
    from panel_support import post as panel_post

    client.set_cookie("lang", "en")
    assert login(client, make_staff(app, "admin")).status_code == 302
    name = f"pm-{secrets.token_hex(3)}"
    answer = panel_post(client, "/admin/agents", {"username": name, "level": "", "parent": "",
                                                  "password": PASSWORD, "password_repeat": PASSWORD},
                        page_url="/admin/agents")
    assert answer.status_code == 303
    page = client.get(answer.headers["Location"]).get_data(as_text=True)
    assert name in page and "Plain member" in page
    assert "Plain member" in client.get("/admin/agents").get_data(as_text=True)

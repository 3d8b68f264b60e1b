"""Automatic agent levels on both databases: rules on delivered sales, the job moving
unpinned agents to the best level they reach (with the reason recorded and audited), a
level set by hand staying pinned, and the commands with bad input."""
import datetime as dt
import io
import json
import secrets

import pytest
import sqlalchemy as sa

from conftest import assert_one_line_error, run_cli
from kamengd.agents import levels
from kamengd.agents import services as agents
from test_agent_api import signed


def shop(app, t):
    """A product at 10.00 with 30 keys; levels base 0 %, silver 10 %, gold 20 %; agents x and y
    (y pinned to base by hand), each with 200.00 and an API key."""
    from kamengd.agents.models import Agent
    from kamengd.catalog.services import create_product
    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.inventory.services import import_keys

    with app.app_context():
        product = create_product(db.session, name=f"等级 {t}", price_cents=1000, actor="t", max_quantity=10)
        import_keys(db.session, get_vault(), product_id=product.id, actor="t",
                    fh=io.BytesIO("\n".join(f"LV-{t}-{i}-{secrets.token_hex(4)}" for i in range(30)).encode()))
        for name, discount in (("base", "0"), ("silver", "10"), ("gold", "20")):
            agents.set_level(db.session, name=f"{name}-{t}", discount=discount, actor="t")
        made = {"product": product.id}
        for name in ("x", "y"):
            agent = agents.create_agent(db.session, username=f"{name}-{t}", level=f"base-{t}", actor="t")
            key_id, secret = agents.issue_api_key(db.session, get_vault(), agent, actor="t")
            agents.credit_balance(db.session, agent, 20000, reason="float", actor="t")
            made[name] = {"id": agent.id, "key_id": key_id, "secret": secret}
        levels.assign_level(db.session, db.session.get(Agent, made["y"]["id"]), f"base-{t}", reason="kept by hand",
                            actor="staff")
        db.session.commit()
        db.session.remove()
    return made


def buy(client, made, who, quantity):
    answer = signed(client, made[who], "POST", "/api/v1/agent/orders",
                    {"product_id": made["product"], "quantity": quantity}, idempotency_key=secrets.token_hex(8))
    assert answer.status_code == 201, answer.get_json()
    return answer.get_json()


def level_of(app, agent_id):
    from kamengd.agents.models import Agent, AgentLevel
    from kamengd.extensions import db

    with app.app_context():
        try:
            agent = db.session.get(Agent, agent_id)
            return db.session.get(AgentLevel, agent.level_id).name.split("-")[0], agent.level_pinned
        finally:
            db.session.remove()


def run_job(app, days_later=0):
    from kamengd.extensions import db

    with app.app_context():
        try:
            return levels.adjust_levels(db.session, now=dt.datetime.utcnow() + dt.timedelta(days=days_later))
        finally:
            db.session.remove()


def test_sales_move_agents_up_and_down_and_a_pinned_level_stays(backend, make_install):
    """On a shop of its own: the job moves every unpinned agent of the database."""
    import dataclasses

    from kamengd.app import create_app
    from kamengd.extensions import db

    cfg = make_install(backend)
    app = create_app(dataclasses.replace(cfg, ratelimit=dataclasses.replace(cfg.ratelimit, enabled=False)))
    client = app.test_client()

    t = secrets.token_hex(3)
    made = shop(app, t)
    with app.app_context():
        levels.set_rule(db.session, level=f"silver-{t}", min_sales="20", days=30, actor="t")
        levels.set_rule(db.session, level=f"gold-{t}", min_sales="50.00", days="30", actor="t")
        db.session.commit()
        db.session.remove()
    buy(client, made, "x", 3)                      # 30.00 at base
    buy(client, made, "y", 10)                     # 100.00, but y's level is pinned
    run_job(app)
    assert level_of(app, made["x"]["id"]) == ("silver", False)
    assert level_of(app, made["y"]["id"]) == ("base", True)
    assert buy(client, made, "x", 3)["amount"] == "27.00"   # now at silver's price: 57.00 in all
    run_job(app)
    assert level_of(app, made["x"]["id"]) == ("gold", False)
    run_job(app)                                   # nothing more to do
    # A month later no rule is reached: x keeps gold; with a rule for base at 0 it drops there.
    run_job(app, days_later=31)
    assert level_of(app, made["x"]["id"]) == ("gold", False)
    with app.app_context():
        levels.set_rule(db.session, level=f"base-{t}", min_sales="0", days=30, actor="t")
        db.session.commit()
        db.session.remove()
    run_job(app, days_later=31)
    assert level_of(app, made["x"]["id"]) == ("base", False)
    assert level_of(app, made["y"]["id"]) == ("base", True)

    from kamengd.agents.models import Agent
    from kamengd.audit.models import AuditEntry
    with app.app_context():
        history = levels.level_history(db.session, db.session.get(Agent, made["x"]["id"]))
        assert [(h["from"].split("-")[0], h["to"].split("-")[0], h["by"]) for h in history] == [
            ("gold", "base", "system"), ("silver", "gold", "system"), ("base", "silver", "system")]
        assert history[-1]["reason"] == "delivered sales of the last 30 days 30.00 >= 20.00"
        audited = db.session.scalars(sa.select(AuditEntry.action).where(
            AuditEntry.target == f"agent:{made['x']['id']}", AuditEntry.action == "agent.level.change")).all()
        assert len(audited) == 3
        # Unpinned, y follows the rules too: its 100.00 earns gold.
        levels.unpin_level(db.session, db.session.get(Agent, made["y"]["id"]), actor="staff")
        db.session.commit()
        db.session.remove()
    run_job(app)
    assert level_of(app, made["y"]["id"]) == ("gold", False)
    with app.app_context():   # leave no rules behind for other tests' agents
        for name in ("base", "silver", "gold"):
            levels.remove_rule(db.session, level=f"{name}-{t}", actor="t")
        db.session.commit()
        db.session.remove()


@pytest.fixture
def fresh_shop(backend, make_install):
    return make_install(backend)


def cli_json(cfg, *args):
    proc = run_cli(*args, "--json", config=cfg.path)
    assert proc.returncode == 0, proc.err
    return json.loads(proc.out)


def test_the_rule_and_level_commands(backend, fresh_shop):
    cli_json(fresh_shop, "agent", "level", "set", "--name", "silver", "--discount", "10")
    cli_json(fresh_shop, "agent", "level", "set", "--name", "base", "--discount", "0")
    assert cli_json(fresh_shop, "agent", "rule", "set", "--level", "silver", "--min-sales", "100")["created"] is True
    assert cli_json(fresh_shop, "agent", "rule", "set", "--level", "silver", "--min-sales", "150.5",
                    "--days", "7")["created"] is False
    assert cli_json(fresh_shop, "agent", "rule", "list")["rules"] == [
        {"level": "silver", "discount": "10.00", "min_sales": "150.50", "days": 7}]
    cli_json(fresh_shop, "agent", "create", "--username", "zed", "--level", "base")
    moved = cli_json(fresh_shop, "agent", "set-level", "--username", "zed", "--level", "silver", "--reason", "deal")
    assert moved["level"] == "silver" and moved["level_pinned"] is True and moved["changed"] is True
    assert cli_json(fresh_shop, "agent", "unpin-level", "--username", "zed")["level_pinned"] is False
    history = cli_json(fresh_shop, "agent", "level-history", "--username", "zed")["changes"]
    assert [(h["from"], h["to"], h["reason"]) for h in history] == [("base", "silver", "deal")]
    assert cli_json(fresh_shop, "agent", "rule", "remove", "--level", "silver")["removed"] is True
    assert cli_json(fresh_shop, "agent", "rule", "list")["rules"] == []


@pytest.mark.parametrize("args, said", [
    (("agent", "rule", "set", "--level", "nope", "--min-sales", "1"), "nope"),
    (("agent", "rule", "set", "--level", "base", "--min-sales", "1e3"), "min_sales"),
    (("agent", "rule", "set", "--level", "base", "--min-sales", "-1"), "min_sales"),
    (("agent", "rule", "set", "--level", "base", "--min-sales", "1", "--days", "0"), "days"),
    (("agent", "rule", "set", "--level", "base", "--min-sales", "1", "--days", "400"), "days"),
    (("agent", "rule", "remove", "--level", "base"), "no rule"),
    (("agent", "set-level", "--username", "nobody", "--level", "base", "--reason", "x"), "nobody"),
    (("agent", "set-level", "--username", "amy", "--level", "base", "--reason", " "), "reason"),
])
def test_bad_rule_and_level_input_changes_nothing(backend, fresh_shop, args, said):
    cli_json(fresh_shop, "agent", "level", "set", "--name", "base", "--discount", "0")
    cli_json(fresh_shop, "agent", "create", "--username", "amy", "--level", "base")
    assert_one_line_error(run_cli(*args, config=fresh_shop.path), said)
    assert cli_json(fresh_shop, "agent", "rule", "list")["rules"] == []
    assert cli_json(fresh_shop, "agent", "level-history", "--username", "amy")["changes"] == []


def test_a_levels_own_prices_from_the_command_line(backend, fresh_shop):
    cli_json(fresh_shop, "agent", "level", "set", "--name", "vip", "--discount", "10")
    product = cli_json(fresh_shop, "product", "create", "--name", "月卡", "--price", "30.00")
    set_ = cli_json(fresh_shop, "agent", "level", "price", "--name", "vip", "--product-id", str(product["id"]),
                    "--price", "25.5")
    assert set_["price"] == "25.50"
    assert cli_json(fresh_shop, "agent", "level", "prices", "--name", "vip")["prices"] == [
        {"product_id": product["id"], "price": "25.50"}]
    for args, said in ((("--price", "30.01"), "above the shop's price"), (("--price", "1e3"), "price"),
                       ((), "either --price"), (("--price", "1", "--clear"), "either --price")):
        assert_one_line_error(run_cli("agent", "level", "price", "--name", "vip", "--product-id", str(product["id"]),
                                      *args, config=fresh_shop.path), said)
    assert_one_line_error(run_cli("agent", "level", "price", "--name", "vip", "--product-id", "999999", "--price",
                                  "1", config=fresh_shop.path), "999999")
    cli_json(fresh_shop, "agent", "level", "price", "--name", "vip", "--product-id", str(product["id"]), "--clear")
    assert cli_json(fresh_shop, "agent", "level", "prices", "--name", "vip")["prices"] == []

"""The agents' commands (kamengd/docs/agent-api.md) in real processes, as a merchant's script runs them."""
import json

import pytest
import sqlalchemy as sa

from conftest import assert_one_line_error, run_cli, write_password


@pytest.fixture
def shop(backend, make_install):
    return make_install(backend)


def cli_json(cfg, *args):
    proc = run_cli(*args, "--json", config=cfg.path)
    assert proc.returncode == 0, proc.err
    return json.loads(proc.out)


def test_levels_agents_balances_and_the_ledger(backend, shop, tmp_path):
    level = cli_json(shop, "agent", "level", "set", "--name", "金牌", "--discount", "12.5")
    assert (level["name"], level["discount"], level["created"]) == ("金牌", "12.50", True)
    assert cli_json(shop, "agent", "level", "set", "--name", "金牌", "--discount", "15")["created"] is False
    top = cli_json(shop, "agent", "create", "--username", "Alice", "--level", "金牌",
                   "--password-file", write_password(tmp_path))
    assert isinstance(top["id"], int) and top["username"] == "alice" and top["balance"] == "0.00"
    sub = cli_json(shop, "agent", "create", "--username", "bob", "--level", "金牌", "--parent", "alice")
    assert sub["parent"] == "alice" and sub["depth"] == 2

    credited = cli_json(shop, "balance", "credit", "--username", "bob", "--amount", "12.34", "--reason", "首充")
    assert (credited["balance"], credited["booked"]) == ("12.34", True)
    again = cli_json(shop, "balance", "credit", "--username", "bob", "--amount", "5", "--reason", "promo",
                     "--reference", "promo-2026-12")
    retried = cli_json(shop, "balance", "credit", "--username", "bob", "--amount", "5", "--reason", "promo",
                       "--reference", "promo-2026-12")
    assert again["booked"] is True and retried["booked"] is False and retried["balance"] == "17.34"
    debited = cli_json(shop, "balance", "credit", "--username", "bob", "--amount", "-7.34", "--reason", "退款")
    assert debited["balance"] == "10.00"
    shown = cli_json(shop, "balance", "show", "--username", "bob")
    assert (shown["balance"], shown["pending"], shown["held"], shown["currency"]) == ("10.00", "0.00", "0.00", "CNY")
    assert "bob: balance 10.00 CNY" in run_cli("balance", "show", "--username", "bob", config=shop.path).out

    listed = cli_json(shop, "agent", "list")["agents"]
    assert [(a["username"], a["parent"], a["balance"]) for a in listed] == [("alice", None, "0.00"),
                                                                             ("bob", "alice", "10.00")]
    verified = cli_json(shop, "ledger", "verify")
    assert verified["ok"] is True and verified["accounts"] >= 7
    actions = [e["action"] for e in cli_json(shop, "audit", "list", "--limit", "20")["entries"]]
    assert actions.count("balance.credit") == 3 and "agent.create" in actions and "agent.level.set" in actions


@pytest.mark.parametrize("args, message", [
    (("balance", "credit", "--username", "carol", "--amount", "-0.01", "--reason", "x"), "does not cover"),
    (("balance", "credit", "--username", "carol", "--amount", "1e3", "--reason", "x"), "not an amount"),
    (("balance", "credit", "--username", "carol", "--amount", "-0", "--reason", "x"), "must not be zero"),
    (("balance", "credit", "--username", "carol", "--amount", "0.001", "--reason", "x"), "not an amount"),
    (("balance", "credit", "--username", "carol", "--amount", "9" * 14, "--reason", "x"), "not an amount"),
    (("balance", "credit", "--username", "nobody", "--amount", "1", "--reason", "x"), "no agent named"),
    (("balance", "credit", "--username", "carol", "--amount", "1", "--reason", " "), "reason"),
    (("agent", "create", "--username", "carol", "--level", "普通"), "already exists"),
    (("agent", "create", "--username", "dave", "--level", "nope"), "no agent level named"),
    (("agent", "create", "--username", "dave", "--level", "普通", "--parent", "nobody"), "no agent named"),
    (("agent", "create", "--username", "-bad name", "--level", "普通"), "username"),
    (("agent", "level", "set", "--name", "x", "--discount", "100.5"), "more than 100"),
    (("agent", "apikey", "--username", "nobody"), "no agent named"),
])
def test_mistakes_are_one_line_and_change_nothing(backend, shop, args, message):
    cli_json(shop, "agent", "level", "set", "--name", "普通", "--discount", "0")
    cli_json(shop, "agent", "create", "--username", "carol", "--level", "普通")
    proc = run_cli(*args, config=shop.path)
    assert_one_line_error(proc, message)
    assert cli_json(shop, "balance", "show", "--username", "carol")["balance"] == "0.00"
    assert [a["username"] for a in cli_json(shop, "agent", "list")["agents"]] == ["carol"]
    assert cli_json(shop, "ledger", "verify")["ok"] is True


def test_an_api_key_is_shown_once_and_kept_sealed(backend, shop):
    cli_json(shop, "agent", "level", "set", "--name", "普通", "--discount", "0")
    cli_json(shop, "agent", "create", "--username", "erin", "--level", "普通")
    issued = cli_json(shop, "agent", "apikey", "--username", "erin")
    assert issued["key_id"].startswith("ak_") and len(issued["secret"]) >= 40
    second = cli_json(shop, "agent", "apikey", "--username", "erin")
    assert second["key_id"] != issued["key_id"] and second["secret"] != issued["secret"]

    from kamengd.app import create_app
    from kamengd.agents.models import AgentApiKey
    from kamengd.agents.services import secret_context
    from kamengd.context import get_vault
    from kamengd.extensions import db

    app = create_app(shop)
    with app.app_context():
        row = db.session.scalars(sa.select(AgentApiKey).where(AgentApiKey.key_id == issued["key_id"])).one()
        assert issued["secret"].encode() not in bytes(row.secret_ciphertext)
        opened = get_vault().decrypt_secret(secret_context(row.key_id), row.secret_nonce, row.secret_ciphertext,
                                            row.secret_key_version)
        assert opened.decode() == issued["secret"]
        db.session.remove()
        db.engine.dispose()
    audit = run_cli("audit", "list", "--action", "agent.apikey.issue", "--json", config=shop.path).out
    assert issued["key_id"] in audit and issued["secret"] not in audit


def test_verify_fails_naming_the_account(backend, shop):
    cli_json(shop, "agent", "level", "set", "--name", "普通", "--discount", "0")
    made = cli_json(shop, "agent", "create", "--username", "frank", "--level", "普通")
    cli_json(shop, "balance", "credit", "--username", "frank", "--amount", "3", "--reason", "x")

    from kamengd.database import make_engine

    engine = make_engine(shop.database.url, pooled=False)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE ledger_accounts SET balance_cents = 400 WHERE name = :n"),
                     {"n": f"agent:{made['id']}:available"})
    engine.dispose()
    proc = run_cli("ledger", "verify", config=shop.path)
    assert_one_line_error(proc, f"agent:{made['id']}:available", "4.00", "3.00")


def test_keys_listed_revoked_and_agents_disabled(backend, shop):
    cli_json(shop, "agent", "level", "set", "--name", "普通", "--discount", "0")
    cli_json(shop, "agent", "create", "--username", "gina", "--level", "普通")
    first = cli_json(shop, "agent", "apikey", "--username", "gina")
    cli_json(shop, "agent", "apikey", "--username", "gina")
    assert cli_json(shop, "agent", "revoke-key", "--key-id", first["key_id"]) == {"key_id": first["key_id"],
                                                                                  "revoked": True}
    assert_one_line_error(run_cli("agent", "revoke-key", "--key-id", first["key_id"], config=shop.path),
                          "revoked before")
    assert_one_line_error(run_cli("agent", "revoke-key", "--key-id", "ak_nothing", config=shop.path), "no API key")
    listed = cli_json(shop, "agent", "apikeys", "--username", "gina")["keys"]
    assert [bool(k["revoked_at"]) for k in listed] == [True, False]
    assert first["secret"] not in run_cli("agent", "apikeys", "--username", "gina", config=shop.path).out
    assert cli_json(shop, "agent", "disable", "--username", "gina")["changed"] is True
    assert cli_json(shop, "agent", "disable", "--username", "gina")["changed"] is False
    assert cli_json(shop, "agent", "list")["agents"][0]["active"] is False
    assert cli_json(shop, "agent", "enable", "--username", "gina")["changed"] is True
    actions = [e["action"] for e in cli_json(shop, "audit", "list", "--action", "agent.*")["entries"]]
    assert {"agent.apikey.revoke", "agent.disable", "agent.enable"} <= set(actions)


@pytest.mark.parametrize("args, said", [
    (("withdrawal", "pay", "--id", "abc", "--reference", "R1"), "not a withdrawal id"),
    (("withdrawal", "pay", "--id", "999999", "--reference", "R1"), "withdrawal not found"),
    (("withdrawal", "reject", "--id", "1", "--reason", ""), "reason"),
    (("withdrawal", "list", "--status", "lost"), "lost"),
    (("withdrawal", "list", "--username", "nobody-here"), "nobody-here"),
])
def test_withdrawal_commands_refuse_bad_input_in_one_line(backend, shop, args, said):
    proc = run_cli(*args, config=shop.path)
    if args[:3] == ("withdrawal", "list", "--status"):   # click's own usage error names the choices
        assert proc.returncode == 2 and said in proc.err and "Traceback" not in proc.err
    else:
        assert_one_line_error(proc, said)


def test_an_agents_portal_password_two_factor_and_locks_from_the_cli(backend, shop, tmp_path):
    """An agent made without a password gets one, is unlocked after guesses and has a lost
    authenticator turned off, each from the CLI, with the portal as the proof."""
    import pyotp

    from conftest import PASSWORD
    from kamengd.accounts import auth
    from kamengd.agents.models import Agent
    from kamengd.app import create_app
    from kamengd.context import get_vault
    from kamengd.extensions import db
    from panel_support import csrf_of

    cli_json(shop, "agent", "level", "set", "--name", "L1", "--discount", "1")
    cli_json(shop, "agent", "create", "--username", "dana", "--level", "L1")
    app = create_app(shop)
    client = app.test_client()

    def sign_in(password=PASSWORD):
        token = csrf_of(client.get("/agent/login").get_data(as_text=True))
        return client.post("/agent/login", data={"csrf_token": token, "username": "dana", "password": password})

    assert sign_in().status_code == 401                                    # no password yet
    assert_one_line_error(run_cli("agent", "set-password", "--username", "dana", "--password-file",
                                  write_password(tmp_path, "short"), config=shop.path), "password")
    done = cli_json(shop, "agent", "set-password", "--username", "dana", "--password-file", write_password(tmp_path))
    assert done["username"] == "dana"
    for _ in range(auth.LOCK_AFTER["pair"]):
        sign_in("a wrong guess")
    assert sign_in().status_code == 429
    assert cli_json(shop, "agent", "unlock", "--username", "dana")["cleared"] >= 1
    assert cli_json(shop, "agent", "unlock", "--username", "dana")["cleared"] == 0
    assert sign_in().status_code == 302 and client.get("/agent/").status_code == 200

    with app.app_context():
        dana = db.session.scalars(sa.select(Agent).where(Agent.username == "dana")).one()
        secret = auth.start_enrolment(db.session, get_vault(), dana)
        auth.confirm_enrolment(db.session, get_vault(), dana, pyotp.TOTP(secret).now(), ip=None)
        db.session.commit()
        db.session.remove()
    assert cli_json(shop, "agent", "reset-2fa", "--username", "dana")["totp_enabled"] is False
    assert client.get("/agent/").status_code == 302                        # its sessions ended
    assert sign_in().status_code == 302                                    # and no code is asked
    assert_one_line_error(run_cli("agent", "set-password", "--username", "nobody", "--password-file",
                                  write_password(tmp_path), config=shop.path), "no agent named")
    actions = [e["action"] for e in cli_json(shop, "audit", "list", "--limit", "50")["entries"]]
    assert {"auth.password_reset", "auth.unlock", "auth.2fa_disable", "auth.logout_everywhere"} <= set(actions)


def test_refund_and_run_job_from_the_cli(backend, shop):
    """`order refund` once, with one-line errors; `run-job` runs a job now and records the run."""
    assert_one_line_error(run_cli("order", "refund", "20260101000000", "--reason", "x", config=shop.path),
                          "not found")
    ran = cli_json(shop, "run-job", "release_commissions")
    assert ran["job"] == "release_commissions" and isinstance(ran["counts"], dict)
    assert cli_json(shop, "jobs", "--job", "release_commissions")["runs"][0]["outcome"] == "ok"
    assert run_cli("run-job", "no_such_job", config=shop.path).returncode == 2
    actions = [e["action"] for e in cli_json(shop, "audit", "list", "--limit", "5")["entries"]]
    assert "job.run" in actions

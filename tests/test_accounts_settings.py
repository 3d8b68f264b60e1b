import json

import pytest
import sqlalchemy as sa

from conftest import assert_one_line_error, run_cli, write_password
from kamengd.accounts.models import StaffUser
from kamengd.accounts.passwords import verify_password
from kamengd.accounts.services import create_user, set_role
from kamengd.audit.models import AuditEntry
from kamengd.errors import Conflict, InvalidRequest, NotFound
from kamengd.settings.services import all_settings, get_setting, set_setting


def last_audit(session):
    return session.scalars(sa.select(AuditEntry).order_by(AuditEntry.id.desc()).limit(1)).one()


def test_create_user_hashes_with_argon2(backend, session):
    user = create_user(session, username="op1", role="operator", password="long enough pw", actor="cli:t")
    assert user.password_hash.startswith("$argon2id$")
    assert verify_password(user.password_hash, "long enough pw")
    assert not verify_password(user.password_hash, "wrong password")
    assert not verify_password(None, "anything at all")
    assert "long enough pw" not in last_audit(session).details


def test_role_change_is_audited(backend, session):
    create_user(session, username="sup1", role="support", password="long enough pw", actor="cli:t")
    set_role(session, username="sup1", role="finance", actor="cli:boss")
    entry = last_audit(session)
    assert entry.action == "user.role" and entry.actor == "cli:boss"
    assert json.loads(entry.details) == {"username": "sup1", "old": "support", "new": "finance"}
    with pytest.raises(NotFound):
        set_role(session, username="ghost", role="admin", actor="t")
    with pytest.raises(InvalidRequest):
        set_role(session, username="sup1", role="superuser", actor="t")


def test_last_owner_cannot_be_demoted(backend, session):
    # Panel tests add owners to the shared database; here (rolled back after) only
    # the one `kamengd install` made stays active.
    session.execute(sa.update(StaffUser).where(StaffUser.role == "owner", StaffUser.username != "admin")
                    .values(is_active=False))
    owners = session.scalars(sa.select(StaffUser.username).where(StaffUser.role == "owner",
                                                                 StaffUser.is_active.is_(True))).all()
    assert owners == ["admin"]
    with pytest.raises(Conflict, match="last owner"):
        set_role(session, username="admin", role="admin", actor="t")
    create_user(session, username="owner2", role="owner", password="long enough pw", actor="t")
    set_role(session, username="admin", role="admin", actor="t")
    assert session.scalar(sa.select(StaffUser.role).where(StaffUser.username == "admin")) == "admin"


def test_settings(backend, session):
    assert get_setting(session, "orders.timeout_minutes") == 10
    set_setting(session, "orders.timeout_minutes", "15", actor="cli:t")
    set_setting(session, "site.notice", "今日 <b>促销</b>", actor="cli:t")
    values = all_settings(session)
    assert {k: v for k, v in values.items() if k.split(".")[0] in ("site", "orders")} == {
        "site.name": "", "site.notice": "今日 <b>促销</b>", "orders.timeout_minutes": 15,
        "orders.stock_wait_alert_minutes": 30, "orders.manual_sla_minutes": 60, "site.footer": "",
        "site.contact": "", "site.contact_qq": "", "site.contact_wechat": "", "site.contact_telegram": "", "site.contact_email": "",
        "site.url": ""}
    assert values["smtp.source"] == "file" and values["notifications.webhook_events"] == ["*"]
    entry = last_audit(session)
    assert entry.action == "setting.change"
    assert json.loads(entry.details) == {"key": "site.notice", "old": "", "new": "今日 <b>促销</b>"}
    for key, value, message in [("orders.timeout_minutes", "0", "at least 1"),
                                ("orders.timeout_minutes", "ten", "whole number"),
                                ("site.notice", "x" * 2001, "at most 2000"),
                                ("no.such", "1", "unknown setting"),
                                ("site.contact_qq", "12ab", "not a QQ number"),
                                ("site.contact_telegram", "@a b", "not a Telegram username"),
                                ("site.contact_email", "not-mail", "not an e-mail address")]:
        with pytest.raises(InvalidRequest, match=message):
            set_setting(session, key, value, actor="t")
    assert get_setting(session, "orders.timeout_minutes") == 15


def test_settings_and_roles_from_the_cli(tmp_path):
    run_cli("install", "--data-dir", tmp_path / "d", "--yes", "--admin-password-file", write_password(tmp_path),
            check=True)
    cfg = tmp_path / "d" / "kamengd.toml"
    out = run_cli("setting", "set", "orders.timeout_minutes", "20", "--json", config=cfg, check=True).out
    assert json.loads(out) == {"key": "orders.timeout_minutes", "value": 20}
    listed = json.loads(run_cli("setting", "list", "--json", config=cfg, check=True).out)["settings"]
    assert listed["orders.timeout_minutes"] == 20
    assert_one_line_error(run_cli("setting", "set", "orders.timeout_minutes", "0", config=cfg), "at least 1")
    # The storefront's customer-service text: several lines, checked like the panel's form.
    contact = "客服 QQ 10001，9:00–22:00\nOutside those hours: help@example.com"
    out = run_cli("setting", "set", "site.contact", contact, "--json", config=cfg, check=True).out
    assert json.loads(out) == {"key": "site.contact", "value": contact}
    assert_one_line_error(run_cli("setting", "set", "site.contact", "x" * 1001, config=cfg),
                          "site.contact: at most 1000 characters")
    # Mail and notifications from the command line: lists comma-separated, secrets from a file.
    out = run_cli("setting", "set", "notifications.email_to", "a@example.com, b@example.com", "--json", config=cfg,
                  check=True).out
    assert json.loads(out)["value"] == ["a@example.com", "b@example.com"]
    secret = tmp_path / "hook.secret"
    secret.write_text("cli-webhook-secret-0123456789\n")
    assert json.loads(run_cli("setting", "secret", "notifications.webhook_secret", "--file", secret, "--json",
                              config=cfg, check=True).out) == {"key": "notifications.webhook_secret", "set": True}
    listed = run_cli("setting", "list", "--json", config=cfg, check=True)
    assert json.loads(listed.out)["secrets"] == {"smtp.password": False, "notifications.webhook_secret": True}
    assert "cli-webhook-secret" not in listed.out
    assert "cli-webhook-secret" not in (tmp_path / "d" / "kamengd.db").read_bytes().decode("latin-1")
    assert_one_line_error(run_cli("setting", "secret", "notifications.webhook_secret", config=cfg), "--file")
    assert_one_line_error(run_cli("setting", "secret", "smtp.host", "--clear", config=cfg), "smtp.host")
    (tmp_path / "short").write_text("short")
    assert_one_line_error(run_cli("setting", "secret", "notifications.webhook_secret", "--file", tmp_path / "short",
                                  config=cfg), "16 to 1024 characters")
    # The CLI checks the mail server and notifications as a whole, as the panel does.
    assert_one_line_error(run_cli("setting", "set", "smtp.source", "panel", config=cfg),
                          "smtp.host: required when the mail server is set here")
    run_cli("setting", "set", "notifications.webhook_urls", "https://hooks.example.com/k?a=1,2", config=cfg,
            check=True)
    run_cli("setting", "set", "notifications.source", "panel", config=cfg, check=True)
    assert_one_line_error(run_cli("setting", "secret", "notifications.webhook_secret", "--clear", config=cfg),
                          "notifications.webhook_secret: required with webhook URLs")
    run_cli("setting", "set", "notifications.source", "file", config=cfg, check=True)
    run_cli("setting", "secret", "notifications.webhook_secret", "--clear", config=cfg, check=True)
    assert json.loads(run_cli("setting", "list", "--json", config=cfg, check=True).out)["secrets"][
        "notifications.webhook_secret"] is False
    assert_one_line_error(run_cli("user", "set-role", "--username", "admin", "--role", "support", config=cfg),
                          "last owner")
    assert run_cli("audit", "verify", config=cfg).returncode == 0


def test_two_owners_demoted_at_once_leave_one_owner(backend, app):
    """Each demotion alone is allowed; run together, exactly one must be refused."""
    import threading

    from kamengd.extensions import db

    with app.app_context():
        for name in ("race_a", "race_b"):
            create_user(db.session, username=name, role="owner", password="long enough pw", actor="t")
        # Only race_a and race_b own the shop (other tests of this installation may have made owners).
        others = db.session.scalars(sa.select(StaffUser.username).where(
            StaffUser.role == "owner", StaffUser.username.not_in(("race_a", "race_b")))).all()
        for name in others:
            set_role(db.session, username=name, role="admin", actor="t")
        db.session.commit()
        db.session.remove()

    first_locked, results = threading.Event(), {}

    def demote(name, hold):
        with app.app_context():
            try:
                set_role(db.session, username=name, role="admin", actor="t")
                if hold:
                    first_locked.set()
                    threading.Event().wait(0.5)  # hold the locks while the other one starts
                db.session.commit()
                results[name] = "ok"
            except Conflict:
                db.session.rollback()
                results[name] = "refused"
            finally:
                first_locked.set()
                db.session.remove()

    a = threading.Thread(target=demote, args=("race_a", True))
    a.start()
    first_locked.wait(10)
    b = threading.Thread(target=demote, args=("race_b", False))
    b.start()
    a.join()
    b.join()
    assert sorted(results.values()) == ["ok", "refused"], results
    with app.app_context():
        owners = db.session.scalars(sa.select(StaffUser.username).where(StaffUser.role == "owner")).all()
        assert owners == ["race_b"]
        # leave the shared installation as it was
        for name in others:
            set_role(db.session, username=name, role="owner", actor="t")
        set_role(db.session, username="race_b", role="admin", actor="t")
        db.session.commit()
        db.session.remove()

"""Staff sign-in: passwords, lockout with backoff, TOTP, recovery codes, sessions, headers."""
from __future__ import annotations

import dataclasses
import datetime as dt
import re
import time

import pyotp
import pytest
import sqlalchemy as sa

from conftest import PASSWORD, run_cli, write_password
from panel_support import csrf_of, login, make_staff, post


def audit_actions(app, target: str) -> list[str]:
    from kamengd.audit.models import AuditEntry
    from kamengd.extensions import db

    with app.app_context():
        return list(db.session.scalars(sa.select(AuditEntry.action).where(AuditEntry.target == target)
                                       .order_by(AuditEntry.seq)))


def signed_in(client) -> bool:
    resp = client.get("/admin/account")
    return resp.status_code == 200


def test_password_sign_in_and_out(app, client):
    support = make_staff(app, "support")
    resp = login(client, support)
    assert resp.status_code == 302 and resp.headers["Location"] == "/admin/"
    assert signed_in(client)
    assert audit_actions(app, f"user:{support.id}") == ["user.create", "auth.login"]
    resp = post(client, "/admin/logout")
    assert resp.status_code == 302 and not signed_in(client)
    assert audit_actions(app, f"user:{support.id}")[-1] == "auth.logout"


def test_wrong_password_is_counted_and_audited(app, client):
    support = make_staff(app, "support")
    resp = login(client, dataclasses.replace(support, password="wrong password"))
    assert resp.status_code == 401
    assert "Wrong username or password" in resp.get_data(as_text=True) or "用户名或密码" in resp.get_data(as_text=True)
    assert not signed_in(client)
    assert audit_actions(app, f"login:{support.username}") == ["auth.login_failed"]


def test_unknown_user_and_inactive_user_fail_alike(app, client):
    from kamengd.accounts.models import StaffUser
    from kamengd.extensions import db

    ghost = make_staff(app, "support")
    with app.app_context():
        db.session.get(StaffUser, ghost.id).is_active = False
        db.session.commit()
    assert login(client, ghost).status_code == 401
    nobody = dataclasses.replace(ghost, username="nobody-" + ghost.username)
    assert login(client, nobody).status_code == 401


def test_lock_duration_backs_off():
    from kamengd.accounts.auth import lock_duration

    assert lock_duration(4, 5) is None
    assert [lock_duration(n, 5).total_seconds() for n in (5, 6, 7, 8)] == [60, 120, 240, 480]
    assert lock_duration(30, 5) == dt.timedelta(hours=1)


def test_account_lockout_with_backoff(app, session):
    from kamengd.accounts import auth
    from kamengd.accounts.services import create_user
    from kamengd.audit.models import AuditEntry

    user = create_user(session, username="lock-" + str(time.time_ns())[-8:], role="support",
                       password=PASSWORD, actor="test")
    now = dt.datetime(2026, 11, 22, 12, 0)
    for i in range(auth.LOCK_AFTER["user"]):
        with pytest.raises(auth.LoginFailed):
            auth.check_password(session, user.username, "wrong password", f"10.0.0.{i}", now)
    # Locked now, even with the right password, from any address.
    with pytest.raises(auth.LoginLocked) as locked:
        auth.check_password(session, user.username, PASSWORD, "10.9.9.9", now + dt.timedelta(seconds=30))
    assert locked.value.seconds == 30
    assert session.scalar(sa.select(sa.func.count()).select_from(AuditEntry).where(
        AuditEntry.action == "auth.lockout", AuditEntry.target == f"user:{user.username}")) == 1
    # After the minute, one more failure locks for two minutes.
    later = now + dt.timedelta(seconds=61)
    with pytest.raises(auth.LoginFailed):
        auth.check_password(session, user.username, "wrong again", "10.9.9.9", later)
    assert auth.lock_remaining(session, user.username, None, later) == 120
    # A success after the lock clears the account's count.
    done = later + dt.timedelta(seconds=121)
    assert auth.check_password(session, user.username, PASSWORD, "10.9.9.9", done).id == user.id
    auth.complete_login(session, user, "10.9.9.9", "password", done)
    with pytest.raises(auth.LoginFailed):
        auth.check_password(session, user.username, "wrong", "10.9.9.8", done)
    assert auth.lock_remaining(session, user.username, None, done) == 0


def test_guessing_from_one_address_leaves_the_others_alone(app, session):
    """Five failures lock this name from this address; the owner signs in from another at once."""
    from kamengd.accounts import auth
    from kamengd.accounts.services import create_user

    user = create_user(session, username="pair-" + str(time.time_ns())[-8:], role="support", password=PASSWORD,
                       actor="test")
    now = dt.datetime(2026, 11, 22, 12, 0)
    for _ in range(auth.LOCK_AFTER["pair"]):
        with pytest.raises(auth.LoginFailed):
            auth.check_password(session, user.username, "wrong password", "198.51.100.9", now)
    with pytest.raises(auth.LoginLocked):
        auth.check_password(session, user.username, PASSWORD, "198.51.100.9", now)
    assert auth.check_password(session, user.username, PASSWORD, "192.0.2.10", now).id == user.id


def test_a_stranger_cannot_keep_an_account_locked_for_long():
    """The lock on a name from everywhere grows to 15 minutes at most; the pair and address locks to an hour."""
    from kamengd.accounts.auth import LOCK_AFTER, MAX_LOCK, lock_duration

    assert LOCK_AFTER["user"] > LOCK_AFTER["ip"] > LOCK_AFTER["pair"]
    assert lock_duration(10_000, LOCK_AFTER["user"], MAX_LOCK["user"]) == dt.timedelta(minutes=15)
    assert lock_duration(10_000, LOCK_AFTER["pair"], MAX_LOCK["pair"]) == dt.timedelta(hours=1)


def test_parallel_guesses_are_all_counted(backend, app):
    """Ten wrong passwords sent at once from one address: no more than the lock's five reach the check."""
    import threading

    from kamengd.accounts import auth
    from kamengd.accounts.models import LoginThrottle
    from kamengd.extensions import db

    support = make_staff(app, "support")
    clients = [app.test_client() for _ in range(10)]
    tokens = [csrf_of(c.get("/admin/login").get_data(as_text=True)) for c in clients]
    barrier, statuses = threading.Barrier(len(clients)), []

    def guess(client, token):
        barrier.wait()
        statuses.append(client.post("/admin/login", data={"csrf_token": token, "username": support.username,
                                                          "password": "a wrong guess"}).status_code)
    threads = [threading.Thread(target=guess, args=pair) for pair in zip(clients, tokens)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(set(statuses)) == [401, 429], statuses
    assert statuses.count(401) == auth.LOCK_AFTER["pair"], statuses
    with app.app_context():
        row = db.session.get(LoginThrottle, ("pair", f"{support.username.lower()}|127.0.0.1"))
        assert row.failures == auth.LOCK_AFTER["pair"] and row.locked_until is not None


def test_password_change_and_code_checks_are_locked_like_sign_ins(app, client):
    """A borrowed session cannot guess the current password or try every 2FA code."""
    from kamengd.accounts import auth

    support = make_staff(app, "support", totp=True)
    assert login(client, support).status_code == 302
    for _ in range(auth.LOCK_AFTER["pair"]):
        post(client, "/admin/account/password", {"current_password": "a guess", "new_password": "x" * 12,
                                                 "new_password_repeat": "x" * 12})
    resp = post(client, "/admin/account/password", {"current_password": PASSWORD, "new_password": "y" * 12,
                                                    "new_password_repeat": "y" * 12}, follow_redirects=True)
    assert re.search(r"Too many failed sign-ins|失败次数过多", resp.get_data(as_text=True))
    resp = post(client, "/admin/account/2fa/recovery-codes", {"code": support.code()}, follow_redirects=True)
    assert re.search(r"Too many failed sign-ins|失败次数过多", resp.get_data(as_text=True))
    failures = audit_actions(app, f"login:{support.username}")
    assert failures.count("auth.login_failed") == auth.LOCK_AFTER["pair"]


def test_a_wrong_code_for_new_recovery_codes_is_counted(app, client):
    support = make_staff(app, "support", totp=True)
    assert login(client, support).status_code == 302
    post(client, "/admin/account/2fa/recovery-codes", {"code": "000000" if support.code() != "000000" else "111111"})
    assert audit_actions(app, f"login:{support.username}") == ["auth.login_failed"]


def test_cli_unlocks_an_account(backend, make_install):
    from kamengd.accounts import auth
    from kamengd.app import create_app

    config = make_install(backend)
    config = dataclasses.replace(config, ratelimit=dataclasses.replace(config.ratelimit, enabled=False))
    application = create_app(config)
    support = make_staff(application, "support")
    client = application.test_client()
    for _ in range(auth.LOCK_AFTER["pair"]):
        login(client, dataclasses.replace(support, password="wrong password"))
    assert login(client, support).status_code == 429
    result = run_cli("user", "unlock", "--username", support.username, "--json", config=config.path)
    assert result.returncode == 0, result.stderr
    assert login(client, support).status_code == 302
    assert "auth.unlock" in audit_actions(application, f"login:{support.username.lower()}")
    bad = run_cli("user", "unlock", "--username", "no-such-user", config=config.path)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1


def test_address_lockout_covers_every_name(app, session):
    from kamengd.accounts import auth

    now = dt.datetime(2026, 11, 22, 12, 0)
    ip = "192.0.2.77"
    for i in range(auth.LOCK_AFTER["ip"]):
        with pytest.raises(auth.LoginFailed):
            auth.check_password(session, f"guess-{i}", "x", ip, now)
    with pytest.raises(auth.LoginLocked):
        auth.check_password(session, "someone-else", "x", ip, now)
    # Another address is not affected; old failures are forgotten after a day.
    with pytest.raises(auth.LoginFailed):
        auth.check_password(session, "someone-else", "x", "192.0.2.78", now)
    assert auth.lock_remaining(session, "x", ip, now + dt.timedelta(hours=2)) == 0


def test_lockout_over_http(app, client):
    from kamengd.accounts import auth

    support = make_staff(app, "support")
    wrong = dataclasses.replace(support, password="wrong password")
    for _ in range(auth.LOCK_AFTER["pair"]):
        assert login(client, wrong).status_code == 401
    resp = login(client, support)
    assert resp.status_code == 429
    assert re.search(r"\d+", resp.get_data(as_text=True))
    assert not signed_in(client)


def test_owner_signs_in_with_totp_once_per_code(app):
    owner = make_staff(app, "owner")
    first = app.test_client()
    resp = login(first, owner, code="000000" if owner.code() != "000000" else "111111")
    assert resp.status_code == 401 and not signed_in(first)
    code = owner.code()
    resp = login(first, owner, code=code)
    assert resp.status_code == 302 and signed_in(first)
    # The same code, replayed by someone who saw it: refused.
    second = app.test_client()
    assert login(second, owner, code=code).status_code == 401
    assert not signed_in(second)
    actions = audit_actions(app, f"user:{owner.id}")
    assert actions.count("auth.login") == 1 and "auth.2fa_enable" in actions


def test_password_alone_does_not_sign_in_a_2fa_user(app, client):
    owner = make_staff(app, "owner")
    page = client.get("/admin/login").get_data(as_text=True)
    resp = client.post("/admin/login", data={"csrf_token": csrf_of(page), "username": owner.username,
                                             "password": owner.password})
    assert resp.headers["Location"] == "/admin/login/2fa"
    assert client.get("/admin/dashboard").status_code == 302
    assert not signed_in(client)


def test_recovery_code_signs_in_once(app):
    from kamengd.accounts import auth
    from kamengd.accounts.models import StaffUser
    from kamengd.extensions import db

    owner = make_staff(app, "owner")
    with app.app_context():
        user = db.session.get(StaffUser, owner.id)
        codes = auth.regenerate_recovery_codes(db.session, user, ip=None)
        db.session.commit()
    client = app.test_client()
    client.get("/admin/login?lang=en")
    resp = login(client, owner, code=codes[0].upper())
    assert resp.status_code == 302
    # The first page after signing in says a code was spent, and how many are left.
    page = client.get(resp.headers["Location"], follow_redirects=True).get_data(as_text=True)
    assert "You signed in with a recovery code; 9 are left." in page
    assert signed_in(client)
    again = app.test_client()
    assert login(again, owner, code=codes[0]).status_code == 401
    with app.app_context():
        assert auth.remaining_recovery_codes(db.session, db.session.get(StaffUser, owner.id)) == 9
    assert "auth.recovery_used" in audit_actions(app, f"user:{owner.id}")


def test_owner_without_2fa_must_enrol_first(app):
    from kamengd.accounts.models import StaffUser
    from kamengd.extensions import db

    owner = make_staff(app, "owner", totp=False)
    client = app.test_client()
    assert login(client, owner).status_code == 302
    for page in ("/admin/", "/admin/dashboard", "/admin/orders"):
        resp = client.get(page)
        assert resp.status_code == 302 and resp.headers["Location"] == "/admin/account/2fa", page
    page = client.get("/admin/account/2fa").get_data(as_text=True)
    secret = re.search(r'id="totp-secret" class="secret">([A-Z2-7]+)<', page).group(1)
    qr = client.get("/admin/account/2fa/qr.svg")
    assert qr.status_code == 200 and qr.mimetype == "image/svg+xml" and b"<svg" in qr.data
    with app.app_context():   # the secret is stored encrypted only
        row = db.session.get(StaffUser, owner.id)
        assert row.totp_ciphertext and secret.encode() not in row.totp_ciphertext and not row.totp_enabled
    resp = client.post("/admin/account/2fa", data={"csrf_token": csrf_of(page), "code": "12345x"})
    assert resp.status_code == 302
    resp = client.post("/admin/account/2fa", data={"csrf_token": csrf_of(page), "code": pyotp.TOTP(secret).now()})
    body = resp.get_data(as_text=True)
    assert resp.status_code == 200
    assert len(re.findall(r"<li><code>[a-z2-7]{4}-[a-z2-7]{4}-[a-z2-7]{4}</code></li>", body)) == 10
    assert client.get("/admin/dashboard").status_code != 302
    with app.app_context():
        assert db.session.get(StaffUser, owner.id).totp_enabled
    assert "auth.2fa_enable" in audit_actions(app, f"user:{owner.id}")


def test_optional_2fa_can_be_turned_off_with_a_code(app):
    support = make_staff(app, "support", totp=True)
    client = app.test_client()
    assert login(client, support).status_code == 302
    assert post(client, "/admin/account/2fa/disable", {"code": "000000"}).status_code == 302
    resp = post(client, "/admin/account/2fa/disable", {"code": support.code(1)})
    assert resp.status_code == 302
    assert "auth.2fa_disable" in audit_actions(app, f"user:{support.id}")
    # An owner cannot turn it off.
    owner = make_staff(app, "owner")
    oc = app.test_client()
    login(oc, owner)
    post(oc, "/admin/account/2fa/disable", {"code": owner.code(1)})
    assert "auth.2fa_disable" not in audit_actions(app, f"user:{owner.id}")


def _age_session(client, **fields):
    with client.session_transaction() as s:
        s["staff"] = {**s["staff"], **fields}


def test_idle_and_absolute_session_expiry(app):
    support = make_staff(app, "support")
    idle = app.test_client()
    login(idle, support)
    _age_session(idle, seen=int(time.time()) - 31 * 60)
    resp = idle.get("/admin/dashboard")
    assert resp.status_code == 302 and resp.headers["Location"].startswith("/admin/login")
    old = app.test_client()
    login(old, support)
    _age_session(old, since=int(time.time()) - 13 * 3600)
    assert old.get("/admin/dashboard").status_code == 302
    fresh = app.test_client()
    login(fresh, support)
    _age_session(fresh, seen=int(time.time()) - 29 * 60)
    assert signed_in(fresh)


def test_signing_out_ends_every_copy_of_the_cookie(app):
    """A cookie copied before signing out (another browser, a stolen backup) is worth nothing after."""
    support = make_staff(app, "support")
    browser = app.test_client()
    login(browser, support)
    copy = browser.get_cookie("session").value
    thief = app.test_client()
    thief.set_cookie("session", copy)
    assert signed_in(thief)
    post(browser, "/admin/logout")
    thief.set_cookie("session", copy)
    assert not signed_in(thief)
    # The other sessions of the same person go on.
    laptop = app.test_client()
    login(laptop, support)
    other = app.test_client()
    login(other, support)
    post(other, "/admin/logout")
    assert signed_in(laptop)


def test_a_cookie_without_its_session_row_signs_nobody_in(app):
    """Only the server's rows open sessions: a well-formed cookie with a made-up token does not."""
    import time

    support = make_staff(app, "support")
    client = app.test_client()
    from kamengd.accounts.models import StaffUser
    from kamengd.extensions import db

    with app.app_context():
        epoch = db.session.get(StaffUser, support.id).session_epoch
    now = int(time.time())
    for forged in ({"id": support.id, "epoch": epoch, "since": now, "seen": now},
                   {"id": support.id, "sid": "made-up", "epoch": epoch, "since": now, "seen": now},
                   {"id": support.id, "sid": ["x"], "epoch": epoch, "since": now, "seen": now}):
        with client.session_transaction() as s:
            s["staff"] = forged
        assert not signed_in(client)


def test_log_out_everywhere(app):
    support = make_staff(app, "support")
    phone, laptop = app.test_client(), app.test_client()
    login(phone, support)
    login(laptop, support)
    assert signed_in(phone) and signed_in(laptop)
    post(laptop, "/admin/account/logout-everywhere")
    assert not signed_in(laptop) and not signed_in(phone)
    assert "auth.logout_everywhere" in audit_actions(app, f"user:{support.id}")
    login(phone, support)
    assert signed_in(phone)


def test_password_change(app):
    support = make_staff(app, "support")
    here, there = app.test_client(), app.test_client()
    login(here, support)
    login(there, support)
    new = "a brand new passphrase"
    resp = post(here, "/admin/account/password", {"current_password": "wrong", "new_password": new,
                                                  "new_password_repeat": new})
    assert resp.status_code == 302
    resp = post(here, "/admin/account/password", {"current_password": support.password, "new_password": "short",
                                                  "new_password_repeat": "short"})
    assert "auth.password_change" not in audit_actions(app, f"user:{support.id}")
    resp = post(here, "/admin/account/password", {"current_password": support.password, "new_password": new,
                                                  "new_password_repeat": new + "x"})
    assert "auth.password_change" not in audit_actions(app, f"user:{support.id}")
    post(here, "/admin/account/password", {"current_password": support.password, "new_password": new,
                                           "new_password_repeat": new})
    assert "auth.password_change" in audit_actions(app, f"user:{support.id}")
    assert signed_in(here) and not signed_in(there)
    assert login(app.test_client(), support).status_code == 401
    assert login(app.test_client(), dataclasses.replace(support, password=new)).status_code == 302


def test_next_only_inside_the_panel(app):
    support = make_staff(app, "support")
    for target, expected in (("/admin/orders", "/admin/orders"), ("//evil.example/", "/admin/"),
                             ("https://evil.example/admin", "/admin/"), ("/admin\\@evil", "/admin/")):
        client = app.test_client()
        page = client.get("/admin/login").get_data(as_text=True)
        resp = client.post("/admin/login", data={"csrf_token": csrf_of(page), "username": support.username,
                                                 "password": support.password, "next": target})
        assert resp.headers["Location"] == expected, target


def test_security_headers(app, client):
    for path in ("/", "/admin/login", "/lookup"):
        resp = client.get(path)
        csp = resp.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp and "frame-ancestors 'none'" in csp
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert resp.headers["Referrer-Policy"] == "same-origin"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert "form-action 'self'" in client.get("/admin/login").headers["Content-Security-Policy"]
    assert client.get("/admin/login").headers["Cache-Control"] == "no-store"


def test_https_behind_a_proxy(backend, make_install):
    """proxy_count from the TOML file: the forwarded scheme and address are believed."""
    from kamengd.accounts.auth import LOCK_AFTER
    from kamengd.app import create_app

    config = make_install(backend)
    config = dataclasses.replace(config, server=dataclasses.replace(config.server, proxy_count=1),
                                 site=dataclasses.replace(config.site, url="https://shop.example"),
                                 ratelimit=dataclasses.replace(config.ratelimit, enabled=False))
    app = create_app(config)
    support = make_staff(app, "support")
    client = app.test_client()
    # Flask-WTF checks the Referer of an HTTPS form post (WTF_CSRF_SSL_STRICT), as browsers send it.
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.5",
               "Referer": "https://shop.example/admin/login"}
    resp = client.get("/admin/login", headers=headers, base_url="https://shop.example")
    assert resp.headers["Strict-Transport-Security"].startswith("max-age=")
    cookie = resp.headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    # Failures are counted for the forwarded client address, not the proxy's.
    from kamengd.accounts.models import LoginThrottle
    from kamengd.extensions import db

    token = csrf_of(resp.get_data(as_text=True))
    for _ in range(LOCK_AFTER["pair"] - 1):
        client.post("/admin/login", headers=headers, base_url="https://shop.example",
                    data={"csrf_token": token, "username": support.username, "password": "nope"})
    with app.app_context():
        row = db.session.get(LoginThrottle, ("ip", "203.0.113.5"))
        assert row is not None and row.failures == LOCK_AFTER["pair"] - 1


def test_cli_reset_2fa_and_set_password(tmp_path, backend, make_install):
    from kamengd.app import create_app

    config = make_install(backend)
    app = create_app(config)
    owner = make_staff(app, "owner")
    result = run_cli("user", "reset-2fa", "--username", owner.username, config=config.path)
    assert result.returncode == 0, result.stderr
    new = "another good passphrase"
    pw = tmp_path / "pw"
    pw.mkdir()
    result = run_cli("user", "set-password", "--username", owner.username,
                     "--password-file", str(write_password(pw, new)), config=config.path)
    assert result.returncode == 0, result.stderr
    client = app.test_client()
    resp = login(client, dataclasses.replace(owner, password=new, secret=None))
    assert resp.status_code == 302
    assert client.get("/admin/dashboard").headers["Location"] == "/admin/account/2fa"   # enrol again
    actions = audit_actions(app, f"user:{owner.id}")
    assert "auth.2fa_disable" in actions and "auth.password_reset" in actions
    bad = run_cli("user", "reset-2fa", "--username", "no-such-user", config=config.path)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1

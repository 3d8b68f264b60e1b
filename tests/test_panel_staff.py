"""Staff management in the panel (owner only): create, change role, (de)activate, reset 2FA."""
import dataclasses
import datetime as dt
import json
import secrets
import threading

import pyotp
import pytest
import sqlalchemy as sa

from conftest import PASSWORD
from kamengd.accounts import services as accounts
from kamengd.accounts.models import RecoveryCode, StaffUser
from kamengd.audit.models import AuditEntry
from kamengd.errors import Conflict, NotFound
from panel_support import Staff, login, make_staff, post


def demote_later(app, staff):
    """Owners made here leave the shared database as admins: other tests count its owners."""
    from kamengd.extensions import db

    with app.app_context():
        db.session.execute(sa.update(StaffUser).where(StaffUser.id == staff.id).values(role="admin"))
        db.session.commit()


@pytest.fixture
def owner(app):
    staff = make_staff(app, "owner")
    yield staff
    demote_later(app, staff)


@pytest.fixture
def owner_client(app, client, owner):
    client.set_cookie("lang", "en")
    assert login(client, owner).status_code == 302
    return client


def user(app, user_id):
    from kamengd.extensions import db

    with app.app_context():
        found = db.session.get(StaffUser, user_id)
        db.session.expunge_all()
        return found


def audit_for(app, user_id):
    from kamengd.extensions import db

    with app.app_context():
        rows = db.session.scalars(sa.select(AuditEntry).where(AuditEntry.target == f"user:{user_id}")
                                  .order_by(AuditEntry.seq)).all()
        return [(r.action, r.actor, json.loads(r.details)) for r in rows]


def page(client, url="/admin/staff"):
    resp = client.get(url)
    assert resp.status_code == 200, resp.status_code
    return resp.get_data(as_text=True)


def edit(client, user_id, **data):
    return post(client, f"/admin/staff/{user_id}", data, page_url="/admin/staff")


def test_the_list_shows_staff(backend, app, owner_client, owner):
    support = make_staff(app, "support")
    html = page(owner_client)
    assert support.username in html and owner.username in html
    assert "Support" in html and "Last sign-in" in html
    assert "$argon2" not in html


def test_create_a_staff_member(backend, app, owner_client, owner):
    name = f"new-{secrets.token_hex(4)}"
    assert "Add a staff member" in page(owner_client, "/admin/staff/new")
    resp = post(owner_client, "/admin/staff/new", {"username": name, "role": "finance", "password": "a long password",
                                                   "password_repeat": "a long password"},
                page_url="/admin/staff/new")
    assert resp.status_code == 303
    html = page(owner_client)
    assert f"{name} can now sign in as Finance" in html
    from kamengd.extensions import db

    with app.app_context():
        created = db.session.scalars(sa.select(StaffUser).where(StaffUser.username == name)).one()
        assert created.role == "finance" and created.is_active and not created.totp_enabled
    [(action, actor, details)] = audit_for(app, created.id)
    assert action == "user.create" and actor == f"staff:{owner.username}"
    assert details == {"username": name, "role": "finance"}   # never the password


@pytest.mark.parametrize("data, message, status", [
    ({"role": "superuser"}, "role: must be one of", 400),
    ({"password": "short", "password_repeat": "short"}, "at least 8 characters", 400),
    ({"password_repeat": "something else"}, "The two passwords differ.", 400),
    ({"username": "bad name!"}, "username: 2-64 letters", 400),
])
def test_bad_new_staff_input_creates_nobody(backend, app, owner_client, data, message, status):
    name = f"bad-{secrets.token_hex(4)}"
    form = {"username": name, "role": "support", "password": "a long password", "password_repeat": "a long password"}
    form.update(data)
    resp = post(owner_client, "/admin/staff/new", form, page_url="/admin/staff/new")
    html = resp.get_data(as_text=True)
    assert resp.status_code == status and message in html
    assert "a long password" not in html
    from kamengd.extensions import db

    with app.app_context():
        assert db.session.scalar(sa.select(StaffUser.id).where(StaffUser.username == form["username"])) is None


def test_duplicate_username_is_refused(backend, app, owner_client):
    existing = make_staff(app, "support")
    resp = post(owner_client, "/admin/staff/new", {"username": existing.username, "role": "admin",
                                                   "password": "a long password",
                                                   "password_repeat": "a long password"},
                page_url="/admin/staff/new")
    assert resp.status_code == 409 and "already exists" in resp.get_data(as_text=True)
    assert user(app, existing.id).role == "support"


def test_change_role(backend, app, owner_client, owner):
    target = make_staff(app, "support")
    assert edit(owner_client, target.id, role="finance").status_code == 303
    assert f"{target.username} is now Finance." in page(owner_client)
    assert user(app, target.id).role == "finance"
    assert audit_for(app, target.id)[-1] == ("user.role", f"staff:{owner.username}",
                                             {"username": target.username, "old": "support", "new": "finance"})
    edit(owner_client, target.id, role="superuser")
    assert "role: must be one of" in page(owner_client) and user(app, target.id).role == "finance"
    assert edit(owner_client, 2**30, role="admin").status_code == 303
    assert "not found" in page(owner_client)


def test_deactivation_ends_the_users_session_at_once(backend, app, owner_client, owner):
    target = make_staff(app, "support")
    other = app.test_client()
    login(other, target)
    assert other.get("/admin/account").status_code == 200
    epoch = user(app, target.id).session_epoch

    assert edit(owner_client, target.id, active="0").status_code == 303
    assert "is deactivated" in page(owner_client)
    after = user(app, target.id)
    assert not after.is_active and after.session_epoch == epoch + 1
    resp = other.get("/admin/account")
    assert resp.status_code == 302 and "/admin/login" in resp.headers["Location"]
    assert login(other, target).status_code == 401   # and cannot sign in again

    assert edit(owner_client, target.id, active="1").status_code == 303
    assert user(app, target.id).is_active
    assert [a for a, _, _ in audit_for(app, target.id)][-2:] == ["user.deactivate", "user.activate"]
    assert login(other, target).status_code == 302


def test_nobody_deactivates_themselves(backend, app, owner_client, owner):
    edit(owner_client, owner.id, active="0")
    assert "cannot deactivate your own account" in page(owner_client)
    assert user(app, owner.id).is_active
    edit(owner_client, owner.id)
    assert "Nothing to change." in page(owner_client)


def test_reset_2fa(backend, app, owner_client, owner):
    target = make_staff(app, "admin")
    other = app.test_client()
    login(other, target)
    assert other.get("/admin/account").status_code == 200

    resp = post(owner_client, f"/admin/staff/{target.id}/reset-2fa", page_url="/admin/staff")
    assert resp.status_code == 303
    assert "is off and their sessions have ended" in page(owner_client)
    after = user(app, target.id)
    assert not after.totp_enabled and after.totp_ciphertext is None
    from kamengd.extensions import db

    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(RecoveryCode)
                                 .where(RecoveryCode.user_id == target.id)) == 0
    assert audit_for(app, target.id)[-1][:2] == ("auth.2fa_disable", f"staff:{owner.username}")
    # the old session is over; signing in again (password only) leads to setting 2FA up
    assert other.get("/admin/account").status_code == 302
    resp = login(other, dataclasses.replace(target, secret=None))
    assert resp.status_code == 302
    assert other.get("/admin/dashboard").headers["Location"].endswith("/admin/account/2fa")

    post(owner_client, f"/admin/staff/{owner.id}/reset-2fa", page_url="/admin/staff")
    assert "use your account page" in page(owner_client) and user(app, owner.id).totp_enabled


def test_staff_pages_are_for_the_owner_only(backend, app, client):
    admin = make_staff(app, "admin")
    login(client, admin)
    assert client.get("/admin/staff").status_code == 403
    assert client.get("/admin/staff/new").status_code == 403
    assert post(client, f"/admin/staff/{admin.id}", {"role": "owner"}).status_code == 403
    assert post(client, f"/admin/staff/{admin.id}/reset-2fa").status_code == 403
    assert user(app, admin.id).role == "admin"


# --- the last owner, on a shop of its own ------------------------------------------

@pytest.fixture
def own_shop(backend, make_install):
    """A fresh installation whose only owner is `admin` (with 2FA), and its app."""
    from kamengd.accounts import auth
    from kamengd.app import create_app
    from kamengd.context import get_vault
    from kamengd.extensions import db

    config = make_install(backend)
    config = dataclasses.replace(config, ratelimit=dataclasses.replace(config.ratelimit, enabled=False))
    shop = create_app(config)
    shop.config["TESTING"] = True
    with shop.app_context():
        admin = db.session.scalars(sa.select(StaffUser).where(StaffUser.username == "admin")).one()
        secret = auth.start_enrolment(db.session, get_vault(), admin)
        past = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(minutes=5)
        auth.confirm_enrolment(db.session, get_vault(), admin, pyotp.TOTP(secret).at(past.replace(tzinfo=dt.UTC)),
                               ip=None, now=past)
        db.session.commit()
        staff = Staff(admin.id, "admin", "owner", PASSWORD, secret)
    yield shop, staff
    with shop.app_context():
        db.session.remove()
        db.engine.dispose()


def test_the_last_owner_stays(backend, own_shop):
    shop, admin = own_shop
    client = shop.test_client()
    client.set_cookie("lang", "en")
    login(client, admin)
    edit(client, admin.id, role="admin")
    assert "last owner" in page(client)
    edit(client, admin.id, active="0")
    assert "cannot deactivate your own account" in page(client)
    assert user(shop, admin.id).role == "owner" and user(shop, admin.id).is_active

    from kamengd.extensions import db

    with shop.app_context():
        with pytest.raises(Conflict, match="last active owner"):
            accounts.set_active(db.session, user_id=admin.id, active=False, actor="cli:t")
        db.session.rollback()
        # a second owner, deactivated, does not count: the first still cannot go
        second = accounts.create_user(db.session, username="second", role="owner", password=PASSWORD, actor="t")
        assert accounts.set_active(db.session, user_id=second.id, active=False, actor="t")
        with pytest.raises(Conflict, match="last active owner"):
            accounts.set_active(db.session, user_id=admin.id, active=False, actor="t")
        db.session.rollback()


def test_two_owners_deactivating_each_other_leave_one(backend, own_shop):
    shop, admin = own_shop
    from kamengd.extensions import db

    with shop.app_context():
        other = accounts.create_user(db.session, username="other-owner", role="owner", password=PASSWORD,
                                     actor="t")
        ids = {"admin": admin.id, "other": other.id}
        db.session.commit()
        db.session.remove()

    first_locked, results = threading.Event(), {}

    def deactivate(target, by, hold):
        with shop.app_context():
            try:
                accounts.set_active(db.session, user_id=ids[target], active=False, actor=f"staff:{by}",
                                    by_user_id=ids[by])
                if hold:
                    first_locked.set()
                    threading.Event().wait(0.5)   # hold the locks while the other one starts
                db.session.commit()
                results[target] = "ok"
            except Conflict:
                db.session.rollback()
                results[target] = "refused"
            finally:
                first_locked.set()
                db.session.remove()

    a = threading.Thread(target=deactivate, args=("other", "admin", True))
    a.start()
    first_locked.wait(10)
    b = threading.Thread(target=deactivate, args=("admin", "other", False))
    b.start()
    a.join()
    b.join()
    assert sorted(results.values()) == ["ok", "refused"], results
    with shop.app_context():
        active_owners = db.session.scalars(sa.select(StaffUser.username).where(
            StaffUser.role == "owner", StaffUser.is_active.is_(True))).all()
        assert active_owners == ["admin"]


# --- services ---------------------------------------------------------------------

def test_set_active_and_reset_2fa_services(backend, session):
    target = accounts.create_user(session, username=f"svc-{secrets.token_hex(4)}", role="operator",
                                  password=PASSWORD, actor="t")
    assert accounts.set_active(session, user_id=target.id, active=False, actor="t")
    assert target.session_epoch == 1 and not target.is_active
    assert not accounts.set_active(session, user_id=target.id, active=False, actor="t")   # already
    assert accounts.set_active(session, user_id=target.id, active=True, actor="t")
    assert target.session_epoch == 1 and target.is_active
    with pytest.raises(Conflict, match="your own account"):
        accounts.set_active(session, user_id=target.id, active=False, actor="t", by_user_id=target.id)
    with pytest.raises(NotFound):
        accounts.set_active(session, user_id=2**30, active=False, actor="t")
    accounts.reset_2fa(session, user_id=target.id, actor="staff:boss")
    assert target.session_epoch == 2
    with pytest.raises(NotFound):
        accounts.reset_2fa(session, user_id=2**30, actor="t")

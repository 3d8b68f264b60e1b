"""Helpers for panel tests: staff users with real 2FA, sign-in through the real forms."""
from __future__ import annotations

import datetime as dt
import re
import secrets
import time
from dataclasses import dataclass

import pyotp

from conftest import PASSWORD


@dataclass
class Staff:
    id: int
    username: str
    role: str
    password: str
    secret: str | None

    def code(self, offset_steps: int = 0) -> str:
        """The current TOTP code (or one `offset_steps` steps away)."""
        return pyotp.TOTP(self.secret).at(time.time() + 30 * offset_steps)


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def make_staff(app, role: str, *, totp: bool | None = None, username: str | None = None,
               password: str = PASSWORD) -> Staff:
    """A committed staff user; owners and admins get 2FA unless totp=False."""
    from kamengd.accounts import auth
    from kamengd.accounts.services import create_user
    from kamengd.context import get_vault
    from kamengd.extensions import db

    if totp is None:
        totp = role in auth.ROLES_REQUIRING_2FA
    username = username or f"{role}-{secrets.token_hex(4)}"
    with app.app_context():
        user = create_user(db.session, username=username, role=role, password=password, actor="test")
        secret = None
        if totp:
            secret = auth.start_enrolment(db.session, get_vault(), user)
            # An old step, so the test's first real sign-in code is still unused.
            past = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(minutes=5)
            code = pyotp.TOTP(secret).at(past.replace(tzinfo=dt.UTC))
            auth.confirm_enrolment(db.session, get_vault(), user, code, ip=None, now=past)
        db.session.commit()
        return Staff(user.id, username, role, password, secret)


def login(client, staff: Staff, *, code: str | None = None, follow: bool = False):
    """Sign in through the real forms; returns the last response."""
    page = client.get("/admin/login").get_data(as_text=True)
    resp = client.post("/admin/login", data={"csrf_token": csrf_of(page), "username": staff.username,
                                             "password": staff.password})
    if staff.secret and resp.status_code == 302 and resp.headers["Location"].endswith("/admin/login/2fa"):
        page = client.get("/admin/login/2fa").get_data(as_text=True)
        resp = client.post("/admin/login/2fa", data={"csrf_token": csrf_of(page),
                                                     "code": code or staff.code()})
    if follow and resp.status_code in (302, 303):
        resp = client.get(resp.headers["Location"])
    return resp


def post(client, url: str, data: dict | None = None, *, page_url: str = "/admin/account", **kwargs):
    """POST with a CSRF token taken from a panel page."""
    token = csrf_of(client.get(page_url).get_data(as_text=True))
    return client.post(url, data={"csrf_token": token, **(data or {})}, **kwargs)

"""The signed-in staff member, kept in Flask's signed session cookie.

The cookie holds the user id, a session token, the user's session epoch at
sign-in and two times; the database decides the rest on every request:
signing out (the token's row ends), a deactivated user, a changed password
or "log out everywhere" (a new epoch) ends the session at once, on every
server, for every copy of the cookie.
"""
from __future__ import annotations

import time
from urllib.parse import urlsplit

from flask import flash, g, redirect, request, session, url_for
from flask_babel import gettext as _

from ..accounts import auth
from ..accounts.auth import ROLES_REQUIRING_2FA
from ..accounts.models import StaffUser
from ..context import get_config
from ..extensions import db

KEY = "staff"
PENDING = "staff_pending"   # password checked, second factor not yet
PENDING_SECONDS = 300


def _now() -> float:
    return time.time()


def open_for(user: StaffUser) -> str:
    """The database side of a new session, in the caller's transaction; pass the token to start()."""
    return auth.open_session(db.session, user, ip=request.remote_addr, user_agent=request.user_agent.string)


def start(user: StaffUser, token: str) -> None:
    """A fresh panel session in the cookie (the pending sign-in step is dropped)."""
    session.pop(PENDING, None)
    now = int(_now())
    session[KEY] = {"id": user.id, "sid": token, "epoch": user.session_epoch, "since": now, "seen": now}
    session.permanent = True


def set_pending(user: StaffUser, next_url: str | None) -> None:
    session.pop(KEY, None)
    session[PENDING] = {"id": user.id, "epoch": user.session_epoch, "at": int(_now()), "next": next_url}


def pending_user() -> tuple[StaffUser | None, str | None]:
    data = session.get(PENDING)
    if not isinstance(data, dict) or _now() - data.get("at", 0) > PENDING_SECONDS:
        session.pop(PENDING, None)
        return None, None
    user = db.session.get(StaffUser, data.get("id"))
    if user is None or not user.is_active or user.session_epoch != data.get("epoch"):
        session.pop(PENDING, None)
        return None, None
    return user, data.get("next")


def end() -> None:
    session.pop(KEY, None)
    session.pop(PENDING, None)


def token() -> str | None:
    data = session.get(KEY)
    return data.get("sid") if isinstance(data, dict) else None


def current_staff() -> StaffUser | None:
    if "staff" in g:
        return g.staff
    g.staff = _load()
    return g.staff


def _load() -> StaffUser | None:
    data = session.get(KEY)
    if not isinstance(data, dict):
        return None
    panel = get_config().panel
    now = _now()
    if (now - data.get("seen", 0) > panel.session_idle_minutes * 60
            or now - data.get("since", 0) > panel.session_max_hours * 3600):
        end()
        return None
    user = db.session.get(StaffUser, data.get("id"))
    if user is None or not user.is_active or user.session_epoch != data.get("epoch") or \
            not auth.session_is_open(db.session, user.id, data.get("sid")):
        end()
        return None
    if now - data["seen"] > 30:   # the cookie is rewritten at most every 30 s
        session[KEY] = {**data, "seen": int(now)}
    return user


def needs_enrolment(user: StaffUser) -> bool:
    return user.role in ROLES_REQUIRING_2FA and not user.totp_enabled


def actor() -> str:
    user = current_staff()
    return f"staff:{user.username}" if user else "anonymous"


def client_ip() -> str | None:
    return request.remote_addr


def safe_next(url: str | None) -> str | None:
    """Only a path inside the panel: never an open redirect."""
    if url and url.startswith("/admin") and not url.startswith("//") and "\\" not in url:
        return url
    return None


def form_expired():
    """A panel form sent without a valid CSRF token: the staff member's session ended (or
    the form was open too long). Nothing was done; they sign in again if they must and
    land on the same form, which panel.js fills in again from the draft it kept."""
    referrer = urlsplit(request.referrer or "")
    back = referrer.path if referrer.netloc in ("", request.host) else ""
    back = safe_next(back) or url_for("panel.home")
    back += ("&" if "?" in back else "?") + "restore=1"
    if current_staff() is None:
        flash(_("Your session had ended, so nothing was saved. Sign in again: what you typed is filled in again."),
              "warning")
        return redirect(url_for("panel.login", next=back), code=303)
    flash(_("The form had been open too long, so nothing was saved. It is filled in again: check it and "
            "send it once more."), "warning")
    return redirect(back, code=303)

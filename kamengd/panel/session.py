"""The signed-in staff member (kamengd.websession's rules, under the cookie's "staff" key).

The cookie holds the user id, a session token, the user's session epoch at
sign-in and two times; the database decides the rest on every request:
signing out (the token's row ends), a deactivated user, a changed password
or "log out everywhere" (a new epoch) ends the session at once, on every
server, for every copy of the cookie.
"""
from __future__ import annotations

from urllib.parse import urlsplit

from flask import flash, redirect, request, url_for
from flask_babel import gettext as _

from ..accounts import auth
from ..accounts.auth import ROLES_REQUIRING_2FA
from ..accounts.models import StaffUser
from ..websession import Door

DOOR = Door("staff", auth.STAFF)
KEY = DOOR.key
PENDING = DOOR.pending_key
open_for = DOOR.open_for
start = DOOR.start
set_pending = DOOR.set_pending
pending_user = DOOR.pending_user
end = DOOR.end
token = DOOR.token
current_staff = DOOR.current


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

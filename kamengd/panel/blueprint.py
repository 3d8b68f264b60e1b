"""The panel's blueprint: one guard for every route, the headers of every page.

The page modules (kamengd.panel.account, .catalog, …) add their routes to it;
kamengd.panel imports them all."""
from __future__ import annotations

from flask import Blueprint, abort, g, redirect, request, url_for

from ..transaction import read_only
from .permissions import ENDPOINTS, ENROL_ENDPOINTS, PUBLIC, can
from .session import current_staff, needs_enrolment

bp = Blueprint("panel", __name__, url_prefix="/admin", template_folder="templates")

# GET pages that write (the first visit to 2FA set-up stores the new secret).
WRITING_GETS = frozenset({"panel.totp_enrol"})
# POSTs that read first and write little (kamengd.vouchers.services.redeem): their reads are a
# snapshot, not under SQLite's write lock; the view ends it before its writes.
READING_POSTS = frozenset({"panel.terminal_look", "panel.terminal_redeem"})


@bp.before_request
def _guard():
    """Sign-in, 2FA enrolment and the permission table, for every panel request."""
    rule = ENDPOINTS.get(request.endpoint or "")
    if rule is None:
        abort(403)   # a route nobody gave a rule to is closed, not open
    if (request.method == "GET" and request.endpoint not in WRITING_GETS) or request.endpoint in READING_POSTS:
        read_only()   # before the user is loaded: SQLite reads a snapshot, no write lock
    if rule == PUBLIC:
        return None
    user = current_staff()
    if user is None:
        if request.method == "GET":
            return redirect(url_for("panel.login", next=request.full_path.rstrip("?")))
        return redirect(url_for("panel.login"))
    if needs_enrolment(user) and request.endpoint not in ENROL_ENDPOINTS:
        return redirect(url_for("panel.totp_enrol"))
    if not can(user.role, rule):
        abort(403)
    return None


@bp.after_request
def _private(response):
    # Staff pages hold buyers' data and keys: never cached, never framed.
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.app_template_global()
def staff_can(permission: str) -> bool:
    user = g.get("staff")
    return user is not None and not needs_enrolment(user) and can(user.role, permission)


@bp.teardown_request
def _forget_staff(_exc):
    g.pop("staff", None)


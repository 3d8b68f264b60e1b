"""Sign-in, sign-out and the staff member's own account: password and 2FA."""
from __future__ import annotations

import io

import segno
from flask import flash, redirect, render_template, request, url_for
from flask_babel import gettext as _

from ..accounts import auth
from ..accounts.auth import LoginFailed, LoginLocked
from ..context import get_vault
from ..audit.services import record
from ..errors import KamengdError
from ..extensions import db, limiter
from ..settings.services import shop_name
from . import session as panel_session
from .blueprint import bp
from .helpers import flash_errors
from .permissions import PERMISSIONS, can
from .session import actor, client_ip, current_staff, needs_enrolment, safe_next

# Where each role lands after sign-in: its first page it may open.
LANDING = (("dashboard.view", "panel.dashboard"), ("audit.view", "panel.audit"),
           ("orders.view", "panel.orders"), ("vouchers.redeem", "panel.terminal"))


def _locked_message(exc: LoginLocked) -> str:
    return _("Too many failed sign-ins. Try again in %(n)s seconds.", n=exc.seconds)


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit("30/minute", methods=["POST"])
def login():
    next_url = safe_next(request.values.get("next"))
    if request.method == "GET":
        if current_staff() is not None:
            return redirect(next_url or url_for("panel.home"))
        return render_template("panel/login.html", next=next_url)
    username = request.form.get("username", "")[:64]
    password = request.form.get("password", "")[:1024]
    try:
        user = auth.check_password(db.session, username, password, client_ip())
    except LoginLocked as exc:
        db.session.rollback()
        flash(_locked_message(exc), "error")
        return render_template("panel/login.html", next=next_url, username=username), 429
    except LoginFailed:
        # The answer is an error, which the request does not commit: the throttle
        # must count (and the audit log keep) this failure all the same.
        db.session.commit()
        flash(_("Wrong username or password."), "error")
        return render_template("panel/login.html", next=next_url, username=username), 401
    if user.totp_enabled:
        panel_session.set_pending(user, next_url)
        return redirect(url_for("panel.login_2fa"))
    auth.complete_login(db.session, user, client_ip(), "password")
    panel_session.start(user, panel_session.open_for(user))
    return redirect(next_url or url_for("panel.home"))


@bp.route("/login/2fa", methods=["GET", "POST"])
@limiter.limit("30/minute", methods=["POST"])
def login_2fa():
    user, next_url = panel_session.pending_user()
    if user is None:
        flash(_("Please sign in again."), "error")
        return redirect(url_for("panel.login"))
    if request.method == "GET":
        return render_template("panel/login_2fa.html")
    code = request.form.get("code", "")[:64]
    try:
        result = auth.check_second_factor(db.session, get_vault(), user, code, ip=client_ip())
    except LoginLocked as exc:
        db.session.rollback()
        panel_session.end()
        flash(_locked_message(exc), "error")
        return redirect(url_for("panel.login"))
    if not result.ok:
        db.session.commit()   # an error answer, yet the throttle counts this failure (see login)
        flash(_("That code is not right."), "error")
        return render_template("panel/login_2fa.html"), 401
    auth.complete_login(db.session, user, client_ip(), result.method)
    panel_session.start(user, panel_session.open_for(user))
    if result.method == "password+recovery_code":
        flash(_("You signed in with a recovery code; %(n)s are left.",
                n=auth.remaining_recovery_codes(db.session, user)), "warning")
    return redirect(next_url or url_for("panel.home"))


@bp.post("/logout")
def logout():
    user = current_staff()
    record(db.session, "auth.logout", actor=actor(), target=f"user:{user.id}", source_ip=client_ip())
    auth.close_session(db.session, panel_session.token())
    panel_session.end()
    flash(_("You are signed out."), "info")
    return redirect(url_for("panel.login"))


@bp.get("/")
def home():
    user = current_staff()
    if needs_enrolment(user):
        return redirect(url_for("panel.totp_enrol"))
    for permission, endpoint in LANDING:
        if can(user.role, permission):
            return redirect(url_for(endpoint))
    return redirect(url_for("panel.account"))


@bp.get("/account")
def account():
    user = current_staff()
    allowed = sorted(p for p, roles in PERMISSIONS.items() if user.role in roles)
    return render_template("panel/account.html", user=user, permissions=allowed,
                           recovery_left=auth.remaining_recovery_codes(db.session, user)
                           if user.totp_enabled else 0,
                           must_enrol=needs_enrolment(user))


@bp.post("/account/password")
@limiter.limit("30/minute")
def password():
    user = current_staff()
    new, repeat = request.form.get("new_password", ""), request.form.get("new_password_repeat", "")
    if new != repeat:
        flash(_("The two new passwords differ."), "error")
        return redirect(url_for("panel.account"))
    try:
        auth.change_password(db.session, user, current=request.form.get("current_password", ""), new=new,
                             ip=client_ip())
    except LoginLocked as exc:
        db.session.rollback()
        flash(_locked_message(exc), "error")
        return redirect(url_for("panel.account"))
    except LoginFailed:   # counted by the throttle: the request commits it with this redirect
        flash(_("The current password is not right."), "error")
        return redirect(url_for("panel.account"))
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        return redirect(url_for("panel.account"))
    auth.close_session(db.session, panel_session.token())
    # This browser goes on under the new epoch; the others end.
    panel_session.start(user, panel_session.open_for(user))
    flash(_("Password changed. Your other sessions are signed out."), "success")
    return redirect(url_for("panel.account"))


@bp.post("/account/logout-everywhere")
def logout_everywhere():
    user = current_staff()
    auth.end_all_sessions(db.session, user, actor=actor(), ip=client_ip())
    panel_session.end()
    flash(_("Every session of yours is signed out, this one too."), "info")
    return redirect(url_for("panel.login"))


@bp.route("/account/2fa", methods=["GET", "POST"])
def totp_enrol():
    user = current_staff()
    if user.totp_enabled:
        return redirect(url_for("panel.account"))
    if request.method == "POST":
        try:
            codes = auth.confirm_enrolment(db.session, get_vault(), user, request.form.get("code", "")[:64],
                                           ip=client_ip())
        except KamengdError as exc:   # the code's step stays used: the request commits it with this redirect
            flash_errors(exc)
            return redirect(url_for("panel.totp_enrol"))
        flash(_("Two-factor sign-in is on."), "success")
        return render_template("panel/recovery_codes.html", codes=codes)
    if user.totp_ciphertext is None:
        secret = auth.start_enrolment(db.session, get_vault(), user)
    else:
        secret = auth.totp_secret(get_vault(), user)
    return render_template("panel/totp_enrol.html", secret=secret, must_enrol=needs_enrolment(user))


@bp.get("/account/2fa/qr.svg")
def totp_qr():
    user = current_staff()
    secret = None if user.totp_enabled else auth.totp_secret(get_vault(), user)
    if secret is None:
        return redirect(url_for("panel.account"))
    uri = auth.provisioning_uri(secret, user, shop_name())
    out = io.BytesIO()
    segno.make(uri, error="m").save(out, kind="svg", scale=5, border=2, xmldecl=False)
    return out.getvalue(), 200, {"Content-Type": "image/svg+xml"}


def _code_ok(user) -> bool:
    """The TOTP code of the form, throttled like a sign-in; flashes why not."""
    try:
        ok = auth.check_code(db.session, get_vault(), user, request.form.get("code", "")[:64], ip=client_ip())
    except LoginLocked as exc:
        db.session.rollback()
        flash(_locked_message(exc), "error")
        return False
    if not ok:   # counted and audited: the callers redirect, and the request commits
        flash(_("That code is not right."), "error")
    return ok


@bp.post("/account/2fa/disable")
@limiter.limit("30/minute")
def totp_disable():
    user = current_staff()
    if user.role in auth.ROLES_REQUIRING_2FA:
        flash(_("Your role needs two-factor sign-in; it cannot be turned off."), "error")
        return redirect(url_for("panel.account"))
    if not _code_ok(user):
        return redirect(url_for("panel.account"))
    auth.disable_totp(db.session, user, actor=actor(), ip=client_ip())
    flash(_("Two-factor sign-in is off."), "info")
    return redirect(url_for("panel.account"))


@bp.post("/account/2fa/recovery-codes")
@limiter.limit("30/minute")
def recovery_codes():
    user = current_staff()
    if not _code_ok(user):
        return redirect(url_for("panel.account"))
    try:
        codes = auth.regenerate_recovery_codes(db.session, user, ip=client_ip())
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        return redirect(url_for("panel.account"))
    return render_template("panel/recovery_codes.html", codes=codes)

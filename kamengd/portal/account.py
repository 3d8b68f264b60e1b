"""An agent's sign-in, sign-out and its own account: password and two-factor sign-in.

The staff panel's rules (kamengd.accounts.auth), for the agent realm: the same
lockout with backoff (an agent's names are counted apart from staff names), a
TOTP code that works once, recovery codes, sessions that end everywhere on a
password change.
"""
from __future__ import annotations

import io

import segno
from flask import flash, redirect, render_template, request, url_for

from ..accounts import auth
from ..accounts.auth import LoginFailed, LoginLocked
from ..audit.services import record
from ..context import get_vault
from ..errors import KamengdError
from ..extensions import db, limiter
from ..settings.services import shop_name
from ..storefront.i18n import t
from .blueprint import DOOR, actor, bp, client_ip, current_agent, flash_errors, locked_message, safe_next


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit("30/minute", methods=["POST"])
def login():
    next_url = safe_next(request.values.get("next"))
    if request.method == "GET":
        if current_agent() is not None:
            return redirect(next_url or url_for("portal.dashboard"))
        return render_template("portal/login.html", next=next_url)
    username = request.form.get("username", "")[:64]
    password = request.form.get("password", "")[:1024]
    try:
        agent = auth.check_password(db.session, username, password, client_ip(), realm=auth.AGENT)
    except LoginLocked as exc:
        db.session.rollback()
        flash(locked_message(exc.seconds), "error")
        return render_template("portal/login.html", next=next_url, username=username), 429
    except LoginFailed:
        db.session.commit()   # an error answer, yet the failure is counted and audited
        flash(t("用户名或密码错误。", "Wrong username or password."), "error")
        return render_template("portal/login.html", next=next_url, username=username), 401
    if agent.totp_enabled:
        DOOR.set_pending(agent, next_url)
        return redirect(url_for("portal.login_2fa"))
    auth.complete_login(db.session, agent, client_ip(), "password")
    DOOR.start(agent, DOOR.open_for(agent))
    return redirect(next_url or url_for("portal.dashboard"))


@bp.route("/login/2fa", methods=["GET", "POST"])
@limiter.limit("30/minute", methods=["POST"])
def login_2fa():
    agent, next_url = DOOR.pending_user()
    if agent is None:
        flash(t("请重新登录。", "Please sign in again."), "error")
        return redirect(url_for("portal.login"))
    if request.method == "GET":
        return render_template("portal/login_2fa.html")
    try:
        result = auth.check_second_factor(db.session, get_vault(), agent, request.form.get("code", "")[:64],
                                          ip=client_ip())
    except LoginLocked as exc:
        db.session.rollback()
        DOOR.end()
        flash(locked_message(exc.seconds), "error")
        return redirect(url_for("portal.login"))
    if not result.ok:
        db.session.commit()   # counted, as in login()
        flash(t("验证码不正确。", "That code is not right."), "error")
        return render_template("portal/login_2fa.html"), 401
    auth.complete_login(db.session, agent, client_ip(), result.method)
    DOOR.start(agent, DOOR.open_for(agent))
    if result.method == "password+recovery_code":
        left = auth.remaining_recovery_codes(db.session, agent)
        flash(t(f"您使用了恢复码登录，还剩 {left} 个。", f"You signed in with a recovery code; {left} are left."),
              "warning")
    return redirect(next_url or url_for("portal.dashboard"))


@bp.post("/logout")
def logout():
    agent = current_agent()
    record(db.session, "auth.logout", actor=actor(), target=f"agent:{agent.id}", source_ip=client_ip())
    auth.close_session(db.session, DOOR.token(), auth.AGENT)
    DOOR.end()
    flash(t("您已退出登录。", "You are signed out."), "info")
    return redirect(url_for("portal.login"))


@bp.get("/account")
def account():
    agent = current_agent()
    return render_template("portal/account.html", agent=agent,
                           recovery_left=auth.remaining_recovery_codes(db.session, agent) if agent.totp_enabled else 0)


@bp.post("/account/password")
@limiter.limit("30/minute")
def password():
    agent = current_agent()
    new, repeat = request.form.get("new_password", ""), request.form.get("new_password_repeat", "")
    if new != repeat:
        flash(t("两次输入的新密码不一致。", "The two new passwords differ."), "error")
        return redirect(url_for("portal.account"))
    try:
        auth.change_password(db.session, agent, current=request.form.get("current_password", ""), new=new,
                             ip=client_ip())
    except LoginLocked as exc:
        db.session.rollback()
        flash(locked_message(exc.seconds), "error")
        return redirect(url_for("portal.account"))
    except LoginFailed:   # counted by the throttle: the request commits it with this redirect
        flash(t("当前密码不正确。", "The current password is not right."), "error")
        return redirect(url_for("portal.account"))
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        return redirect(url_for("portal.account"))
    DOOR.start(agent, DOOR.open_for(agent))   # this browser goes on under the new epoch; the others end
    flash(t("密码已修改，其他设备上的登录已退出。", "Password changed. Your other sessions are signed out."), "success")
    return redirect(url_for("portal.account"))


@bp.post("/account/logout-everywhere")
def logout_everywhere():
    agent = current_agent()
    auth.end_all_sessions(db.session, agent, actor=actor(), ip=client_ip())
    DOOR.end()
    flash(t("您在所有设备上的登录都已退出。", "Every session of yours is signed out, this one too."), "info")
    return redirect(url_for("portal.login"))


@bp.route("/account/2fa", methods=["GET", "POST"])
def totp_enrol():
    agent = current_agent()
    if agent.totp_enabled:
        return redirect(url_for("portal.account"))
    if request.method == "POST":
        try:
            codes = auth.confirm_enrolment(db.session, get_vault(), agent, request.form.get("code", "")[:64],
                                           ip=client_ip())
        except KamengdError as exc:   # the code's step stays used: the request commits it with this redirect
            flash_errors(exc)
            return redirect(url_for("portal.totp_enrol"))
        flash(t("两步验证已开启。", "Two-factor sign-in is on."), "success")
        return render_template("portal/recovery_codes.html", codes=codes)
    if agent.totp_ciphertext is None:
        secret = auth.start_enrolment(db.session, get_vault(), agent)
    else:
        secret = auth.totp_secret(get_vault(), agent)
    return render_template("portal/totp_enrol.html", secret=secret)


@bp.get("/account/2fa/qr.svg")
def totp_qr():
    agent = current_agent()
    secret = None if agent.totp_enabled else auth.totp_secret(get_vault(), agent)
    if secret is None:
        return redirect(url_for("portal.account"))
    out = io.BytesIO()
    segno.make(auth.provisioning_uri(secret, agent, shop_name()), error="m").save(
        out, kind="svg", scale=5, border=2, xmldecl=False)
    return out.getvalue(), 200, {"Content-Type": "image/svg+xml"}


def _code_ok(agent) -> bool:
    """The form's TOTP code, throttled like a sign-in; flashes why not."""
    try:
        ok = auth.check_code(db.session, get_vault(), agent, request.form.get("code", "")[:64], ip=client_ip())
    except LoginLocked as exc:
        db.session.rollback()
        flash(locked_message(exc.seconds), "error")
        return False
    if not ok:   # counted and audited: the callers redirect, and the request commits
        flash(t("验证码不正确。", "That code is not right."), "error")
    return ok


@bp.post("/account/2fa/disable")
@limiter.limit("30/minute")
def totp_disable():
    agent = current_agent()
    if not _code_ok(agent):
        return redirect(url_for("portal.account"))
    auth.disable_totp(db.session, agent, actor=actor(), ip=client_ip())
    flash(t("两步验证已关闭。", "Two-factor sign-in is off."), "info")
    return redirect(url_for("portal.account"))


@bp.post("/account/2fa/recovery-codes")
@limiter.limit("30/minute")
def recovery_codes():
    agent = current_agent()
    if not _code_ok(agent):
        return redirect(url_for("portal.account"))
    try:
        codes = auth.regenerate_recovery_codes(db.session, agent, ip=client_ip())
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        return redirect(url_for("portal.account"))
    return render_template("portal/recovery_codes.html", codes=codes)

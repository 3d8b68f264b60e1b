"""Staff accounts (the owner only): create, change role, activate or deactivate, reset 2FA."""
from __future__ import annotations

import sqlalchemy as sa
from flask import flash, redirect, render_template, request, url_for
from flask_babel import gettext as _

from ..accounts import services as accounts
from ..accounts.auth import ROLES_REQUIRING_2FA
from ..accounts.models import ROLES, StaffUser
from ..errors import Collector, InvalidRequest, KamengdError
from ..extensions import db
from ..transaction import read_only
from .blueprint import bp
from .helpers import role_name, flash_errors
from .session import actor, client_ip, current_staff


@bp.get("/staff")
def staff():
    read_only()
    users = db.session.scalars(sa.select(StaffUser).order_by(StaffUser.username)).all()
    return render_template("panel/staff_list.html", users=users, roles=ROLES, me=current_staff())


def _render_new(values: dict[str, str], status: int = 200):
    return render_template("panel/staff_new.html", values=values, roles=ROLES), status


@bp.route("/staff/new", methods=["GET", "POST"])
def staff_new():
    if request.method == "GET":
        return _render_new({"role": "support"})
    username = request.form.get("username", "").strip()[:100]
    role = request.form.get("role", "")[:32]
    password = request.form.get("password", "")[:2048]
    values = {"username": username, "role": role}
    try:
        found = Collector()   # every mistake of the form at once
        accounts.check_new_user(db.session, username=username, role=role, password=password, found=found)
        if password != request.form.get("password_repeat", "")[:2048]:
            found.add(InvalidRequest("The two passwords differ."))
        found.check()
        user = accounts.create_user(db.session, username=username, role=role, password=password, actor=actor(),
                                    source_ip=client_ip())
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        return _render_new(values, exc.http_status)
    flash(_("%(name)s can now sign in as %(role)s; give them the password in a safe way.", name=user.username,
            role=role_name(user.role)), "success")
    return redirect(url_for("panel.staff"), code=303)


@bp.post("/staff/<int:user_id>")
def staff_edit(user_id: int):
    role = request.form.get("role")
    active = request.form.get("active")
    if role is None and active not in ("0", "1"):
        flash(_("Nothing to change."), "error")
        return redirect(url_for("panel.staff"), code=303)
    me = current_staff()
    done = []
    try:
        user = accounts.get_user(db.session, user_id)
        name = user.username
        if role is not None and role != user.role:
            accounts.set_role(db.session, username=user.username, role=role[:32], actor=actor(),
                              source_ip=client_ip())
            done.append(_("%(name)s is now %(role)s.", name=name, role=role_name(role)))
        if active in ("0", "1") and accounts.set_active(db.session, user_id=user_id, active=active == "1",
                                                        actor=actor(), by_user_id=me.id, source_ip=client_ip()):
            done.append(_("%(name)s is active again.", name=name) if active == "1" else
                        _("%(name)s is deactivated; their sessions have ended.", name=name))
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        return redirect(url_for("panel.staff"), code=303)
    flash(" ".join(done) if done else _("Nothing changed."), "success" if done else "info")
    return redirect(url_for("panel.staff"), code=303)


@bp.post("/staff/<int:user_id>/reset-2fa")
def staff_reset_2fa(user_id: int):
    try:
        user = accounts.reset_2fa(db.session, user_id=user_id, actor=actor(), by_user_id=current_staff().id,
                                  source_ip=client_ip())
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        return redirect(url_for("panel.staff"), code=303)
    flash(_("Two-factor sign-in of %(name)s is off and their sessions have ended.", name=user.username)
          + (" " + _("They set it up again at their next sign-in.") if user.role in ROLES_REQUIRING_2FA else ""),
          "success")
    return redirect(url_for("panel.staff"), code=303)

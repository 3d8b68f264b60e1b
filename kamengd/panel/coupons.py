"""Coupons (优惠券): the list with each one's report (paid orders, discount given, sales), add,
edit, enable or disable. kamengd.marketing.coupons checks every term and writes the audit log.

The form's "valid for" is one select ("all", "category:ID" or "product:ID"), split here into
the service's scope and scope_id; its times are in the shop's time zone.
"""
from __future__ import annotations

from flask import flash, redirect, render_template, request, url_for
from flask_babel import gettext as _

from ..context import get_config
from ..database import utcnow
from ..errors import Conflict, KamengdError
from ..extensions import db
from ..marketing import coupons
from ..marketing.models import Coupon
from ..transaction import read_only
from .blueprint import bp
from .helpers import flash_errors
from .session import actor, client_ip

FIELDS = ("code", "note", "kind", "amount_off", "percent_off", "max_discount", "currency", "min_amount",
          "starts_at", "ends_at", "max_uses", "per_buyer")
MAX_FIELD = coupons.MAX_NOTE + 1   # longer than any valid value: the service names the limit
NEW_COUPON = {"kind": "fixed", "currency": "CNY", "scope": "all", "first_order": "0", "is_active": "1"}


def _zone() -> str:
    return get_config().site.timezone


def _coupon(coupon_id: int) -> Coupon:
    return coupons.get_coupon(db.session, coupon_id if coupon_id < 2**31 else 0)


def _form() -> dict[str, str]:
    """The fields as typed (kept when the form comes back with errors); an unticked box is "0"."""
    form = {name: request.form.get(name, "")[:MAX_FIELD] for name in FIELDS}
    scope, _sep, target = request.form.get("applies_to", "all")[:40].partition(":")
    form.update(scope=scope, scope_id=target, first_order="1" if request.form.get("first_order") == "1" else "0",
                is_active="1" if request.form.get("is_active") == "1" else "0",
                version=request.form.get("version", "")[:12])
    return form


def _render_form(coupon: Coupon | None, values: dict[str, str], status: int = 200):
    categories, products = coupons.scope_choices(db.session)
    return render_template("panel/coupons_form.html", coupon=coupon, values=values, categories=categories,
                           products=products, zone=_zone(), max_note=coupons.MAX_NOTE,
                           stats=coupons.coupon_stats(db.session, [coupon])[0] if coupon else None), status


@bp.get("/coupons")
def coupons_list():
    rows = coupons.coupon_stats(db.session, coupons.list_coupons(db.session))
    return render_template("panel/coupons_list.html", rows=rows, describe=coupons.describe,
                           names=coupons.scope_names(db.session, [row.coupon for row in rows]),
                           total_discount=sum(row.discount_cents for row in rows),
                           total_sales=sum(row.sales_cents for row in rows), now=utcnow())


@bp.route("/coupons/new", methods=["GET", "POST"])
def coupon_new():
    if request.method == "GET":
        return _render_form(None, NEW_COUPON)
    form = _form()
    try:
        made = coupons.create_coupon(db.session, form["code"], coupons.parse_coupon_form(form, _zone()),
                                     actor=actor(), source_ip=client_ip())
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        read_only()
        return _render_form(None, form, exc.http_status)
    flash(_("Coupon %(code)s added: %(discount)s off.", code=made.code, discount=coupons.describe(made)), "success")
    return redirect(url_for("panel.coupons_list"), code=303)


@bp.route("/coupons/<int:coupon_id>", methods=["GET", "POST"])
def coupon_edit(coupon_id: int):
    coupon = _coupon(coupon_id)
    if request.method == "GET":
        return _render_form(coupon, coupons.form_values(coupon, _zone()))
    form = _form()
    try:
        shown = int(form["version"]) if form["version"].isdigit() else None
        changed = coupons.update_coupon(db.session, coupon, coupons.parse_coupon_form(form, _zone()),
                                        actor=actor(), source_ip=client_ip(), version=shown)
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        read_only()
        fresh = _coupon(coupon_id)
        if isinstance(exc, Conflict):   # changed since the form was shown: the terms as they are now
            return _render_form(fresh, coupons.form_values(fresh, _zone()), exc.http_status)
        return _render_form(fresh, form, exc.http_status)
    flash(_("Coupon %(code)s saved.", code=coupon.code) if changed else _("Nothing changed."),
          "success" if changed else "info")
    return redirect(url_for("panel.coupons_list"), code=303)


@bp.post("/coupons/<int:coupon_id>/toggle")
def coupon_toggle(coupon_id: int):
    coupon = _coupon(coupon_id)
    wanted = {"1": True, "0": False}.get(request.form.get("active", ""))
    if wanted is None:
        flash(_("Choose whether to enable or disable the coupon."), "error")
        return redirect(url_for("panel.coupons_list"), code=303)
    try:
        changed = coupons.set_active(db.session, coupon, wanted, actor=actor(), source_ip=client_ip())
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
    else:
        if not changed:
            flash(_("Coupon %(code)s was already in that state.", code=coupon.code), "info")
        else:
            flash(_("Coupon %(code)s is enabled: buyers can use it.", code=coupon.code) if wanted else
                  _("Coupon %(code)s is disabled: new orders cannot use it; orders placed with it keep their "
                    "discount.", code=coupon.code), "success")
    return redirect(url_for("panel.coupons_list"), code=303)

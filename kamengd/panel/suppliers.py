"""Suppliers (对接): add one, sync it, map its products to ours, watch the orders bought there.

The key's secret is write-only here, as a channel's merchant key: stored sealed, never shown.
"""
from __future__ import annotations

from flask import flash, redirect, render_template, request, url_for
from flask_babel import gettext as _

from ..catalog.models import Product
from ..context import get_vault
from ..errors import KamengdError, NotFound
from ..extensions import db
from ..suppliers import forwarding
from ..suppliers import services as suppliers
from ..suppliers.models import Supplier
from ..transaction import read_only
from .blueprint import bp
from .helpers import flash_errors
from .session import actor, client_ip

FIELDS = ("name", "url", "key_id", "secret", "low_balance")


def _supplier(supplier_id: int) -> Supplier:
    found = db.session.get(Supplier, supplier_id) if 0 < supplier_id < 2**31 else None
    if found is None:
        raise NotFound("supplier not found")
    return found


@bp.get("/suppliers")
def suppliers_list():
    read_only()
    return render_template("panel/suppliers_list.html", suppliers=suppliers.list_suppliers(db.session),
                           problems=forwarding.forwards(db.session, problems_only=True, limit=50), values={})


@bp.post("/suppliers")
def supplier_add():
    form = {name: request.form.get(name, "")[:500] for name in FIELDS}
    try:
        made = suppliers.add_supplier(db.session, get_vault(), name=form["name"], url=form["url"],
                                      key_id=form["key_id"], secret=form["secret"],
                                      low_balance=form["low_balance"] or None, actor=actor(), source_ip=client_ip())
        db.session.commit()   # stored before the supplier is asked anything
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        form.pop("secret")   # never sent back
        return render_template("panel/suppliers_list.html", suppliers=suppliers.list_suppliers(db.session),
                               problems=[], values=form), exc.http_status
    _sync_and_say(made)
    return redirect(url_for("panel.supplier_detail", supplier_id=made.id), code=303)


def _sync_and_say(supplier: Supplier) -> None:
    name = supplier.name
    result = suppliers.sync_supplier(db.session, get_vault(), supplier)
    if "error" in result:
        flash(_("Supplier %(name)s did not answer as expected: %(error)s", name=name, error=result["error"]),
              "error")
    else:
        flash(_("Supplier %(name)s synced: %(count)s products, %(new)s new, %(repriced)s repriced.", name=name,
                count=result["products"], new=result["new"], repriced=result["repriced"]), "success")


@bp.get("/suppliers/<int:supplier_id>")
def supplier_detail(supplier_id: int):
    read_only()
    supplier = _supplier(supplier_id)
    rows = suppliers.supplier_products(db.session, supplier)
    mapped = {p.id: p for p in db.session.query(Product).filter(
        Product.id.in_([r.product_id for r in rows if r.product_id]))} if rows else {}
    return render_template("panel/supplier_detail.html", supplier=supplier, products=rows, mapped=mapped,
                           format_markup=suppliers.format_markup,
                           forwards=forwarding.forwards(db.session, supplier_id=supplier.id, limit=100))


@bp.post("/suppliers/<int:supplier_id>/sync")
def supplier_sync(supplier_id: int):
    _sync_and_say(_supplier(supplier_id))
    return redirect(url_for("panel.supplier_detail", supplier_id=supplier_id), code=303)


@bp.post("/suppliers/<int:supplier_id>/settings")
def supplier_settings(supplier_id: int):
    supplier = _supplier(supplier_id)
    active = {"1": True, "0": False}.get(request.form.get("active", ""))
    try:
        changes = suppliers.set_supplier(db.session, supplier, actor=actor(), source_ip=client_ip(), active=active,
                                         low_balance=request.form.get("low_balance"),
                                         url=request.form.get("url") or None)
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
    else:
        flash(_("Supplier %(name)s saved.", name=supplier.name) if changes else _("Nothing changed."),
              "success" if changes else "info")
    return redirect(url_for("panel.supplier_detail", supplier_id=supplier_id), code=303)


def _int(name: str):
    value = request.form.get(name, "").strip()
    return int(value) if value.isascii() and value.isdigit() and len(value) < 10 else (value or None)


@bp.post("/suppliers/<int:supplier_id>/map")
def supplier_map(supplier_id: int):
    supplier = _supplier(supplier_id)
    kind, value = request.form.get("markup_kind"), request.form.get("markup", "").strip()
    try:
        row = suppliers.map_product(db.session, supplier, remote_id=_int("remote_id"), product_id=_int("product_id"),
                                    create_name=request.form.get("create_name", "").strip() or None,
                                    fixed=value if kind == "fixed" else None,
                                    percent=value if kind == "percent" else None,
                                    actor=actor(), source_ip=client_ip())
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
    else:
        flash(_("Product %(id)s is now bought from %(name)s.", id=row.product_id, name=supplier.name), "success")
    return redirect(url_for("panel.supplier_detail", supplier_id=supplier_id), code=303)


@bp.post("/suppliers/<int:supplier_id>/unmap")
def supplier_unmap(supplier_id: int):
    _supplier(supplier_id)
    try:
        row = suppliers.unmap_product(db.session, product_id=_int("product_id"), actor=actor(),
                                      source_ip=client_ip())
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
    else:
        flash(_("The product is sold from this shop's own stock again (supplier product %(remote)s).",
                remote=row.remote_id), "success")
    return redirect(url_for("panel.supplier_detail", supplier_id=supplier_id), code=303)

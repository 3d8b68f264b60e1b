"""Vouchers in the panel: what stores redeemed (live today, a range by store, day and product,
as CSV), the voucher products (terms, codes for sale, batches for companies as CSV or XLSX),
and the stores with their verifiers. kamengd.vouchers decides and audits everything."""
from __future__ import annotations

import datetime as dt

from flask import Response, abort, flash, jsonify, redirect, render_template, request, url_for
from flask_babel import gettext as _

from ..catalog.models import Product
from ..context import get_config, get_vault
from ..errors import InvalidRequest, KamengdError
from ..extensions import db
from ..localtime import parse_when, shop_time
from ..money import format_cents
from ..vouchers import reports, services as vouchers, stock
from ..vouchers.models import VoucherBatch, VoucherTerms
from .blueprint import bp
from .helpers import flash_errors
from .session import actor, client_ip

TERMS_FIELDS = ("kind", "uses", "value", "entitlement", "valid_days", "valid_from", "valid_until", "alphabet",
                "length", "keep_in_stock", "stores")


def _zone() -> str:
    return get_config().site.timezone


def _day(name: str, default: dt.date) -> dt.date:
    """A day of the address, within years any time zone's arithmetic holds; else the default."""
    try:
        day = dt.date.fromisoformat(request.args.get(name, "")[:10])
    except ValueError:
        return default
    return day if 1970 <= day.year <= 9998 else default


def _range() -> tuple[dt.date, dt.date, tuple[str, ...]]:
    today = reports.shop_today(_zone())
    first, last = _day("from", today - dt.timedelta(days=6)), _day("to", today)
    group = tuple(g for g in reports.GROUPS if request.args.get("by_" + g, "1" if not request.args else "0") == "1")
    return first, last, group or reports.GROUPS


def _lines(first: dt.date, last: dt.date, group: tuple[str, ...]) -> list[reports.Line] | None:
    """The report's lines; None (the reason flashed) for a range it refuses."""
    try:
        return reports.report(db.session, first=first, last=last, zone=_zone(), group=group)
    except InvalidRequest as exc:
        flash_errors(exc)
        return None


@bp.get("/vouchers")
def vouchers_report():
    first, last, group = _range()
    lines = _lines(first, last, group) or []
    csv_args = {"from": first.isoformat(), "to": last.isoformat(), **{f"by_{g}": "1" for g in group}}
    return render_template("panel/vouchers_report.html", lines=lines, first=first, last=last, group=group,
                           today=reports.today(db.session, _zone()), groups=reports.GROUPS, csv_args=csv_args)


@bp.get("/vouchers/today")
def vouchers_today():
    """Today's count for the report page's live figure (polled)."""
    return jsonify(reports.today(db.session, _zone()))


@bp.get("/vouchers/report.csv")
def vouchers_report_csv():
    first, last, group = _range()
    lines = _lines(first, last, group)
    if lines is None:
        return redirect(url_for("panel.vouchers_report"))
    rows = [("store", "day", "product", "redeemed", "uses", "amount", "refused", "undone")]
    rows += [(ln.key[0] or "", ln.key[1].isoformat() if ln.key[1] else "", ln.key[2] or "", ln.redeemed, ln.uses,
              format_cents(ln.amount_cents), ln.refused, ln.undone) for ln in lines]
    name = f"redemptions-{first.isoformat()}-{last.isoformat()}.csv"
    return Response(stock.render_csv(rows), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"})


# -- voucher products --------------------------------------------------------------------

def _terms_form(terms: VoucherTerms | None) -> dict:
    if terms is None:
        return {"kind": "uses", "uses": "1", "alphabet": "", "length": "16", "keep_in_stock": "0"}
    zone = _zone()
    return {"kind": terms.kind, "uses": str(terms.uses), "value": format_cents(terms.value_cents) if terms.value_cents
            else "", "entitlement": terms.entitlement, "valid_days": str(terms.valid_days or ""),
            "valid_from": shop_time(terms.valid_from, zone), "valid_until": shop_time(terms.valid_until, zone),
            "alphabet": terms.alphabet, "length": str(terms.code_length), "keep_in_stock": str(terms.keep_in_stock),
            "stores": terms.store_ids or ""}


def _products_page(status: int = 200, form: dict | None = None, form_product: int | None = None):
    terms = {t.product_id: t for t in db.session.query(VoucherTerms).all()}
    products = db.session.query(Product).filter(Product.delivery_mode == "auto").order_by(Product.name).all()
    voucher_products = [p for p in products if p.id in terms]
    counts = stock.code_counts(db.session, list(terms))
    batches = db.session.query(VoucherBatch).order_by(VoucherBatch.id.desc()).limit(50).all()
    return render_template("panel/vouchers_products.html", products=products, voucher_products=voucher_products,
                           terms=terms, counts=counts, batches=batches, stores=vouchers.list_stores(db.session),
                           forms={pid: _terms_form(t) for pid, t in terms.items()}, new_form=form or _terms_form(None),
                           form_product=form_product, names={p.id: p.name for p in products}), status


@bp.get("/vouchers/products")
def voucher_products():
    return _products_page()


@bp.post("/vouchers/products")
def voucher_terms_save():
    form = {name: request.form.get(name, "")[:400] for name in TERMS_FIELDS}
    try:
        product_id = int(request.form.get("product_id", ""))
    except ValueError:
        product_id = 0
    try:
        zone = _zone()
        vouchers.set_terms(db.session, product_id=product_id, kind=form["kind"], uses=form["uses"],
                           value=form["value"], entitlement=form["entitlement"], valid_days=form["valid_days"],
                           valid_from=parse_when(form["valid_from"], "valid from", zone),
                           valid_until=parse_when(form["valid_until"], "valid until", zone),
                           alphabet=form["alphabet"] or None, length=form["length"],
                           keep_in_stock=form["keep_in_stock"], store_ids=form["stores"], actor=actor(),
                           source_ip=client_ip())
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        return _products_page(exc.http_status, form, product_id)
    flash(_("Voucher terms saved."), "success")
    return redirect(url_for("panel.voucher_products"), code=303)


def _count() -> int | None:
    try:
        return int(request.form.get("count", "").strip())
    except ValueError:
        return None


@bp.post("/vouchers/products/<int:product_id>/generate")
def voucher_generate(product_id: int):
    try:
        made = stock.generate_stock(db.session, get_vault(), product_id=product_id, count=_count(), actor=actor(),
                                    source_ip=client_ip())
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        return _products_page(exc.http_status)
    flash(_("%(n)s codes made for sale.", n=made), "success")
    return redirect(url_for("panel.voucher_products"), code=303)


def _file(product_id: int, batch_id: int, fmt: str) -> Response:
    product = db.session.get(Product, product_id)
    _batch, rows = stock.batch_codes(db.session, get_vault(), batch_id)
    data = stock.export_rows(product, vouchers.terms_of(db.session, product_id), rows)
    body, mimetype = (stock.render_csv(data), "text/csv") if fmt == "csv" else \
        (stock.render_xlsx(data), "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")
    return Response(body, mimetype=mimetype, headers={
        "Content-Disposition": f'attachment; filename="vouchers-batch-{batch_id}.{fmt}"', "Cache-Control": "no-store"})


def _fmt() -> str:
    fmt = request.form.get("format", "csv")
    if fmt not in ("csv", "xlsx"):
        abort(400)
    return fmt


@bp.post("/vouchers/products/<int:product_id>/batch")
def voucher_batch(product_id: int):
    """Issue a batch and download it at once (the answer is built, then the request commits: the
    file and the codes exist together). Audited: the issue and the export, with the reason."""
    fmt = _fmt()
    reason = request.form.get("reason", "")[:400]
    try:
        issued = stock.issue_batch(db.session, get_vault(), product_id=product_id, count=_count(), reason=reason,
                                   actor=actor(), source_ip=client_ip())
        stock.audit_export(db.session, issued.batch, reason=reason, actor=actor(), fmt=fmt, source_ip=client_ip())
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        return _products_page(exc.http_status)
    return _file(product_id, issued.batch.id, fmt)


@bp.post("/vouchers/batches/<int:batch_id>/export")
def voucher_batch_export(batch_id: int):
    fmt = _fmt()
    batch = db.session.get(VoucherBatch, batch_id) if batch_id < 2**31 else None
    if batch is None:
        abort(404)
    try:
        stock.audit_export(db.session, batch, reason=request.form.get("reason", "")[:400], actor=actor(), fmt=fmt,
                           source_ip=client_ip())
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        return _products_page(exc.http_status)
    return _file(batch.product_id, batch.id, fmt)


# -- stores ------------------------------------------------------------------------------

def _stores_page(status: int = 200):
    stores = vouchers.list_stores(db.session)
    return render_template("panel/stores.html", stores=stores,
                           verifiers=vouchers.verifiers_of(db.session, [s.id for s in stores]),
                           candidates=vouchers.verifier_accounts(db.session)), status


@bp.get("/stores")
def stores():
    return _stores_page()


@bp.post("/stores")
def store_new():
    try:
        made = vouchers.add_store(db.session, name=request.form.get("name", "")[:200],
                                  address=request.form.get("address", "")[:400], actor=actor(), source_ip=client_ip())
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        return _stores_page(exc.http_status)
    flash(_("Store %(name)s added.", name=made.name), "success")
    return redirect(url_for("panel.stores"), code=303)


@bp.post("/stores/<int:store_id>")
def store_edit(store_id: int):
    try:
        vouchers.edit_store(db.session, store_id if store_id < 2**31 else 0, name=request.form.get("name", "")[:200],
                            address=request.form.get("address", "")[:400],
                            active=request.form.get("active") == "1", actor=actor(), source_ip=client_ip())
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        return _stores_page(exc.http_status)
    flash(_("Store saved."), "success")
    return redirect(url_for("panel.stores"), code=303)


@bp.post("/stores/<int:store_id>/verifiers")
def store_verifiers(store_id: int):
    username = request.form.get("username", "")[:64]
    try:
        if request.form.get("action") == "remove":
            vouchers.unbind_verifier(db.session, store_id if store_id < 2**31 else 0, username, actor=actor(),
                                     source_ip=client_ip())
        else:
            vouchers.bind_verifier(db.session, store_id if store_id < 2**31 else 0, username,
                                   manager=request.form.get("manager") == "1", actor=actor(), source_ip=client_ip())
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        return _stores_page(exc.http_status)
    flash(_("Verifiers saved."), "success")
    return redirect(url_for("panel.stores"), code=303)

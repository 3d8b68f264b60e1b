"""Products and categories: list, add, edit, show or hide (kamengd.catalog.services does the work)."""
from __future__ import annotations

from urllib.parse import urlsplit

import sqlalchemy as sa

from flask import flash, redirect, render_template, request, url_for
from flask_babel import gettext as _

from ..catalog import images, inputs, pricing, services as catalog
from ..context import get_config
from ..localtime import shop_time
from ..catalog.models import DELIVERY_MODES, Product
from ..catalog.tree import MAX_DEPTH, read_tree
from ..errors import KamengdError
from ..extensions import db
from ..money import format_cents
from ..transaction import read_only
from .blueprint import bp
from .helpers import PAGE_SIZE, page_number, flash_errors
from .session import actor, client_ip

PRODUCT_FORM = ("name", "category_id", "description", "price", "cost_price", "delivery_mode", "min_quantity",
                "max_quantity", "buyer_daily_limit", "low_stock_threshold", "sort_order", "is_active", "input_fields",
                "price_tiers", "sale_price", "sale_starts_at", "sale_ends_at", "variant_of", "variant_name",
                "member_price")
MAX_MAINS = 1000                 # main products offered in the "variant of" choice
MAX_FIELD = 200                  # longer than any valid value: the service names the limit
MAX_TEXT = catalog.MAX_DESCRIPTION + 1


def _product_form() -> dict[str, str]:
    return {name: request.form.get(name, "")[:MAX_TEXT if name in ("description", "input_fields") else MAX_FIELD]
            for name in PRODUCT_FORM}


def _values(product: Product) -> dict[str, str]:
    return {"name": product.name, "category_id": str(product.category_id or ""),
            "description": product.description or "", "price": format_cents(product.price_cents),
            "cost_price": "" if product.cost_price_cents is None else format_cents(product.cost_price_cents),
            "delivery_mode": product.delivery_mode, "min_quantity": str(product.min_quantity),
            "max_quantity": str(product.max_quantity), "low_stock_threshold": str(product.low_stock_threshold),
            "buyer_daily_limit": "" if product.buyer_daily_limit is None else str(product.buyer_daily_limit),
            "price_tiers": pricing.tiers_text(product.price_tiers),
            "sale_price": "" if product.sale_price_cents is None else format_cents(product.sale_price_cents),
            "sale_starts_at": shop_time(product.sale_starts_at, get_config().site.timezone).replace(" ", "T"),
            "sale_ends_at": shop_time(product.sale_ends_at, get_config().site.timezone).replace(" ", "T"),
            "sort_order": str(product.sort_order), "is_active": "1" if product.is_active else "",
            "input_fields": inputs.fields_text(inputs.load(product.input_fields)),
            "variant_of": str(product.variant_of or ""), "variant_name": product.variant_name or "",
            "member_price": "" if product.member_price_cents is None else format_cents(product.member_price_cents)}


NEW_PRODUCT = {"delivery_mode": "auto", "min_quantity": "1", "max_quantity": "100", "low_stock_threshold": "0",
               "sort_order": "0", "is_active": "1"}


def _render_form(product: Product | None, values: dict[str, str], status: int = 200):
    tree = read_tree(db.session)
    categories = [{"id": node.id, "name": tree.label(node.id), "is_active": tree.shown(node.id)}
                  for node, _depth in tree.ordered()]
    # A product may be a variant of a main product (one without a main product of its own).
    mains = db.session.execute(sa.select(Product.id, Product.name, Product.is_active)
                               .where(Product.variant_of.is_(None),
                                      Product.id != (product.id if product is not None else 0))
                               .order_by(Product.sort_order, Product.id).limit(MAX_MAINS)).all()
    chosen = values.get("variant_of", "")
    if chosen.isascii() and chosen.isdigit() and int(chosen) < 2**31 and int(chosen) not in {m.id for m in mains}:
        # (past the list's end: still offered)
        mains += db.session.execute(sa.select(Product.id, Product.name, Product.is_active)
                                    .where(Product.id == int(chosen), Product.variant_of.is_(None))).all()
    return render_template("panel/catalog_product_form.html", product=product, values=values,
                           categories=categories, modes=DELIVERY_MODES, mains=mains,
                           limits={"quantity": catalog.MAX_QUANTITY, "threshold": catalog.MAX_THRESHOLD,
                                   "sort": catalog.SORT_ORDER_RANGE, "name": catalog.MAX_NAME,
                                   "description": catalog.MAX_DESCRIPTION},
                           picture=images.names_for(db.session, [product.id]).get(product.id) if product else None,
                           picture_limits={"mib": images.MAX_UPLOAD // (1024 * 1024), "side": images.SIZES["800"]},
                           timezone=get_config().site.timezone), status


@bp.get("/products")
def products():
    read_only()
    query = request.args.get("q", "").strip()[:catalog.MAX_SEARCH]
    page = page_number()
    rows, total = catalog.list_products(db.session, query=query, page=page, page_size=PAGE_SIZE)
    stock = catalog.available_by_product(db.session, [p.id for p, _c in rows])
    loops = catalog.loop_deliveries(db.session, [p.id for p, _c in rows if p.delivery_mode == "loop"])
    return render_template("panel/catalog_products.html", rows=rows, stock=stock, loops=loops, total=total, page=page,
                           pages=max(1, -(-total // PAGE_SIZE)), query=query)


@bp.route("/products/new", methods=["GET", "POST"])
def product_new():
    if request.method == "GET":
        read_only()
        return _render_form(None, NEW_PRODUCT)
    form = _product_form()
    try:
        product = catalog.create_product(db.session, **catalog.parse_product_form(form, db.session, get_config().site.timezone), actor=actor(),
                                         source_ip=client_ip())
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        read_only()
        return _render_form(None, form, exc.http_status)
    flash(_("Product %(name)s created.", name=product.name), "success")
    return redirect(url_for("panel.products"), code=303)


@bp.route("/products/<int:product_id>", methods=["GET", "POST"])
def product_edit(product_id: int):
    if request.method == "GET":
        read_only()
        product = catalog.get_product(db.session, product_id)
        return _render_form(product, _values(product))
    product = catalog.get_product(db.session, product_id)
    form = _product_form()
    try:
        changes = catalog.update_product(db.session, product, **catalog.parse_product_form(form, db.session, get_config().site.timezone),
                                         actor=actor(), source_ip=client_ip())
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        read_only()
        return _render_form(catalog.get_product(db.session, product_id), form, exc.http_status)
    if changes:
        flash(_("Product %(name)s saved.", name=product.name), "success")
    else:
        flash(_("Nothing changed."), "info")
    return redirect(url_for("panel.products"), code=303)


@bp.post("/products/<int:product_id>/picture")
def product_picture(product_id: int):
    product = catalog.get_product(db.session, product_id)
    upload = request.files.get("picture")
    try:
        images.set_image(db.session, product, upload.read(images.MAX_UPLOAD + 1) if upload else b"",
                         actor=actor(), source_ip=client_ip())
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
    else:
        flash(_("The picture of %(name)s is saved.", name=product.name), "success")
    return redirect(url_for("panel.product_edit", product_id=product_id) + "#product-picture", code=303)


@bp.post("/products/<int:product_id>/picture/remove")
def product_picture_remove(product_id: int):
    product = catalog.get_product(db.session, product_id)
    if images.remove_image(db.session, product, actor=actor(), source_ip=client_ip()):
        flash(_("The picture of %(name)s is removed.", name=product.name), "success")
    else:
        flash(_("Nothing changed."), "info")
    return redirect(url_for("panel.product_edit", product_id=product_id) + "#product-picture", code=303)


@bp.post("/products/<int:product_id>/visibility")
def product_visibility(product_id: int):
    product = catalog.get_product(db.session, product_id)
    if request.form.get("visible") not in ("0", "1"):
        flash(_("Choose whether to show or hide the product."), "error")
        return redirect(url_for("panel.products"), code=303)
    visible = request.form["visible"] == "1"
    back = request.referrer if _same_page(request.referrer) else url_for("panel.products")
    try:
        changed = catalog.set_product_visible(db.session, product, visible, actor=actor(), source_ip=client_ip())
    except KamengdError as exc:   # (a variant while its main product is hidden)
        db.session.rollback()
        flash_errors(exc)
        return redirect(back, code=303)
    if not changed:
        flash(_("Product %(name)s was already in that state.", name=product.name), "info")
    elif visible:
        flash(_("Product %(name)s is shown in the shop.", name=product.name), "success")
    else:
        flash(_("Product %(name)s is hidden: buyers no longer see it (nor its variants).", name=product.name),
              "success")
    return redirect(back, code=303)


def _same_page(url: str | None) -> bool:
    """Back to the list the button was on (its search and page), never elsewhere."""
    if not url:
        return False
    parts = urlsplit(url)
    return parts.netloc in ("", request.host) and parts.path == url_for("panel.products")


def _categories_page(new: dict[str, str], status: int = 200):
    tree = read_tree(db.session)
    return render_template("panel/catalog_categories.html", rows=catalog.categories_in_tree(db.session),
                           parents=[(node.id, tree.label(node.id), depth) for node, depth in tree.ordered()
                                    if depth < MAX_DEPTH - 1],
                           sort_range=catalog.SORT_ORDER_RANGE, max_name=catalog.MAX_CATEGORY_NAME,
                           max_depth=MAX_DEPTH, new=new), status


@bp.get("/categories")
def categories():
    read_only()
    return _categories_page({"name": "", "sort_order": "0", "is_active": "1", "parent_id": ""})


@bp.post("/categories/new")
def category_new():
    form = {name: request.form.get(name, "")[:MAX_FIELD] for name in ("name", "sort_order", "is_active", "parent_id")}
    try:
        category = catalog.create_category(db.session, name=form["name"], sort_order=form["sort_order"],
                                           is_active=form["is_active"] == "1", parent_id=form["parent_id"],
                                           actor=actor(), source_ip=client_ip())
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        read_only()
        return _categories_page(form, exc.http_status)
    flash(_("Category %(name)s created.", name=category.name), "success")
    return redirect(url_for("panel.categories"), code=303)


@bp.post("/categories/<int:category_id>")
def category_edit(category_id: int):
    category = catalog.get_category(db.session, category_id)
    try:
        changes = catalog.update_category(db.session, category, name=request.form.get("name", "")[:MAX_FIELD],
                                          sort_order=request.form.get("sort_order", "0")[:MAX_FIELD],
                                          is_active=request.form.get("is_active") == "1",
                                          parent_id=(request.form["parent_id"][:MAX_FIELD] if "parent_id" in request.form
                                                     else catalog.KEEP),
                                          actor=actor(), source_ip=client_ip())
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        return redirect(url_for("panel.categories"), code=303)
    if changes:
        flash(_("Category %(name)s saved.", name=category.name), "success")
    else:
        flash(_("Nothing changed."), "info")
    return redirect(url_for("panel.categories"), code=303)

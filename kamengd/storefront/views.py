"""The storefront: server-rendered pages that work without JavaScript."""
from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, abort, redirect, render_template, request, session

from ..api import order_view, read_only, stock_by_product
from ..app import get_config, get_vault
from ..catalog.models import Product
from ..errors import KamengdError, NotFound
from ..extensions import db, limiter
from ..money import format_cents
from ..orders.services import create_order, find_order_for_buyer, orders_for_email
from ..payments.models import PaymentChannel
from ..payments.services import build_pay_url
from ..settings.services import get_setting
from .i18n import current_lang, remember_lang, t

bp = Blueprint("shop", __name__, template_folder="templates")
MAX_REMEMBERED = 20


@bp.app_context_processor
def _helpers():
    return {"t": t, "lang": current_lang}


bp.after_app_request(remember_lang)


def _channels():
    return db.session.scalars(sa.select(PaymentChannel).where(PaymentChannel.is_enabled.is_(True))
                              .order_by(PaymentChannel.sort_order, PaymentChannel.id)).all()


def _remember(order_no: str, token: str) -> None:
    """The buyer's browser keeps its orders' tokens (signed session cookie)."""
    tokens = dict(session.get("orders", {}))
    tokens[order_no] = token
    session["orders"] = dict(list(tokens.items())[-MAX_REMEMBERED:])
    session.permanent = True


@bp.get("/")
def index():
    read_only()
    stock = stock_by_product(db.session)
    query = request.args.get("q", "").strip()[:100]
    select = sa.select(Product).where(Product.is_active.is_(True)).order_by(Product.sort_order, Product.id)
    if query:
        select = select.where(Product.name.contains(query, autoescape=True))
    products = db.session.scalars(select).all()
    return render_template("storefront/index.html", products=products, stock=stock, query=query,
                           notice=get_setting(db.session, "site.notice"), money=format_cents)


def _product_page(product_id: int, *, error: str | None = None, form=None, status: int = 200):
    read_only()
    p = db.session.get(Product, product_id) if product_id < 2**31 else None
    if p is None or not p.is_active:
        abort(404)
    stock = stock_by_product(db.session).get(p.id, 0)
    return render_template("storefront/product.html", product=p, stock=stock, channels=_channels(),
                           money=format_cents, error=error, form=form or {}), status


@bp.get("/product/<int:product_id>")
def product(product_id: int):
    return _product_page(product_id)


@bp.post("/product/<int:product_id>")
@limiter.limit(lambda: get_config().ratelimit.orders)
def buy(product_id: int):
    form = request.form
    try:
        quantity = int(form.get("quantity", "1"))
    except ValueError:
        quantity = -1
    try:
        created = create_order(db.session, product_id=product_id, quantity=quantity,
                               email=form.get("email", ""), channel_code=form.get("channel", ""),
                               query_password=form.get("query_password") or None,
                               client_ip=request.remote_addr)
    except KamengdError as exc:
        db.session.rollback()
        return _product_page(product_id, error=exc.message, form=form, status=exc.http_status)
    order = created.order
    channel = db.session.get(PaymentChannel, order.channel_id)
    p = db.session.get(Product, product_id)
    url = build_pay_url(get_vault(), channel, order, site_url=get_config().site.url, product_name=p.name,
                        token=created.token)
    db.session.commit()
    _remember(order.order_no, created.token)
    return redirect(url, code=303)


@bp.get("/order/<order_no>")
def order_page(order_no: str):
    read_only()
    token = request.args.get("token") or session.get("orders", {}).get(order_no)
    try:
        order = find_order_for_buyer(db.session, order_no, token=token)
    except NotFound:
        return render_template("order_missing.html"), 404
    if request.args.get("token"):
        _remember(order_no, token)
    return render_template("order.html", order=order_view(order))


@bp.route("/lookup", methods=["GET", "POST"])
@limiter.limit(lambda: get_config().ratelimit.lookups, methods=["POST"])
def lookup():
    """E-mail plus query password: that buyer's recent orders. An e-mail alone shows nothing."""
    orders = None
    if request.method == "POST":
        read_only()
        email, password = request.form.get("email", ""), request.form.get("query_password", "")
        found = orders_for_email(db.session, email, password) if email and password else []
        orders = [order_view(o) for o in found]
    return render_template("storefront/lookup.html", orders=orders)

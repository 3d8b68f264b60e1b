"""The buyer JSON API (CONTRACT.md §2): thin views over kamengd.orders."""
from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, Response, jsonify, request

from . import openapi
from .catalog import inputs, pricing, variants
from .catalog.models import Product
from .catalog.services import pool_stock, stock_by_product
from .catalog.tree import read_tree
from .context import get_config, get_vault
from .errors import InvalidRequest, NotFound
from .database import utcnow
from .extensions import db, limiter
from .money import format_cents
from .agents import services as agents
from .agents.models import Agent
from .orders.checkout import place_order
from .substation import return_site, seller, station
from .orders.lookup import buyer_order_view
from .payments import methods
from .payments import services as payments
from .risk import engine as risk
from .transaction import read_only

bp = Blueprint("api", __name__, url_prefix="/api/v1")
MAX_BODY = 64 * 1024


@bp.get("/products")
def products():
    read_only()
    stock = stock_by_product(db.session)
    items = db.session.scalars(sa.select(Product).where(Product.is_active.is_(True))
                               .order_by(Product.sort_order, Product.id)).all()
    items = variants.on_sale(items)
    on = station()   # an agent's sub-station asks the agent's prices, and sells its pool too
    prices = agents.station_prices(db.session, db.session.get(Agent, on.id), items) if on is not None else {}
    for product_id, count in (pool_stock(db.session, on.id) if on is not None else {}).items():
        stock[product_id] = stock.get(product_id, 0) + count
    now = utcnow()
    tree = read_tree(db.session)
    return jsonify({"products": [{"id": p.id, "name": p.name, "currency": p.currency, "stock": stock.get(p.id, 0),
                                  "delivery": p.delivery_mode, "min_quantity": p.min_quantity,
                                  "max_quantity": p.max_quantity, **_input_fields(p),
                                  **_prices(p, prices.get(p.id), now), **_category(tree, p), **variants.api_fields(p)}
                                 for p in items]})


def _category(tree, product: Product) -> dict:
    """Where the shop lists the product (nothing for none, or a hidden category)."""
    if product.category_id is None or not tree.shown(product.category_id):
        return {}
    return {"category_id": product.category_id, "category": tree.label(product.category_id)}


def _prices(product: Product, station_cents: int | None, now) -> dict:
    """`price`: a unit now (the agent's on its sub-station; else the time-window price while it
    is on); the shop's tiers and window when it has them (kamengd.catalog.pricing)."""
    if station_cents is not None:
        return {"price": format_cents(station_cents)}
    shown = {"price": format_cents(pricing.unit_price(product, 1, now))}
    if product.price_tiers:
        shown["tiers"] = [{"min_quantity": least, "price": format_cents(cents)}
                          for least, cents in pricing.tiers_of(product.price_tiers)]
    if product.member_price_cents is not None:   # (for buyers signed in as members, on the storefront)
        shown["member_price"] = format_cents(product.member_price_cents)
    if pricing.on_sale(product, now):
        shown["list_price"] = format_cents(product.price_cents)
        if product.sale_ends_at is not None:
            shown["sale_ends_at"] = product.sale_ends_at.isoformat(timespec="seconds") + "Z"
    return shown


def _input_fields(product: Product) -> dict:
    """What POST /orders takes as `input` for this product (代充: the account to top up)."""
    fields = inputs.load(product.input_fields)
    return {"input_fields": [{"key": f["key"], "label": f["label"], "kind": f["kind"],
                              "required": f["required"]} for f in fields]} if fields else {}


@bp.get("/payment-methods")
def payment_methods():
    """What POST /orders takes as `channel` and `pay_type`, with the names buyers know."""
    read_only()
    lang = "en" if request.args.get("lang") == "en" else "zh"
    product_id, quantity = _id_arg("product_id"), _id_arg("quantity")
    amount = currency = None
    if quantity is not None and product_id is None:
        raise InvalidRequest("quantity: only with product_id")
    if product_id is not None:
        product = db.session.execute(sa.select(Product.price_cents, Product.currency).where(
            Product.id == product_id, Product.is_active.is_(True))).first()
        if product is None:
            raise NotFound("product %(product_id)s not found", product_id=product_id)
        currency = product.currency
        amount = product.price_cents * quantity if quantity is not None else None
    found = payments.payment_methods(db.session, product_id=product_id, amount_cents=amount, currency=currency,
                                     timezone=get_config().site.timezone)
    return jsonify({"methods": [{"channel": m.channel, "pay_type": m.pay_type,
                                 "name": methods.label(m.method, lang) or m.channel_name,
                                 "channel_name": m.channel_name, "method": m.method} for m in found]})


def _id_arg(name: str) -> int | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit() and 0 < len(raw) <= 10 and 0 < int(raw) <= 2**31 - 1):
        raise InvalidRequest("%(name)s: a positive whole number", name=name)
    return int(raw)


def _orders_limit() -> str:
    return get_config().ratelimit.orders


def _lookups_limit() -> str:
    return get_config().ratelimit.lookups


@bp.post("/orders")
@limiter.limit(_orders_limit)
def new_order():
    if (request.content_length or 0) > MAX_BODY:
        raise InvalidRequest("the body is too large")
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # absurdly nested JSON
        body = None
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    placed = place_order(db.session, get_vault(), product_id=body.get("product_id"),
                         quantity=body.get("quantity"), email=body.get("email"), channel_code=body.get("channel"),
                         query_password=body.get("query_password"), coupon=body.get("coupon"),
                         buyer_input=body.get("input"),   # the product's input fields (kamengd.catalog.inputs)
                         pay_type=body.get("pay_type"),   # one of the channel's (GET /api/v1/payment-methods)
                         client_ip=request.remote_addr, site_url=get_config().site.url, seller=seller(),
                         return_site=return_site(),
                         captcha=body.get("captcha"))   # a solution, when a risk rule asked for one
    return jsonify(placed.as_api()), 201


@bp.get("/orders/<order_no>")
@limiter.limit(_lookups_limit)
def get_order(order_no: str):
    read_only()
    risk.guard_lookup(db.session, request.remote_addr, request.args.get("captcha"))
    try:
        found = buyer_order_view(db.session, get_vault(), order_no, token=request.args.get("token"),
                                 query_password=request.args.get("query_password"))
    except NotFound:
        risk.lookup_failed(db.session, request.remote_addr)
        raise
    return jsonify(found)


@bp.get("/openapi.json")
def openapi_document():
    """This API's OpenAPI description (kamengd.openapi): the same for everyone until the next
    version, so shared caches may keep it; no database read."""
    body, etag = openapi.served()
    response = Response(body, mimetype="application/json")
    response.set_etag(etag)
    response.cache_control.public = True
    response.cache_control.max_age = 3600
    return response.make_conditional(request)

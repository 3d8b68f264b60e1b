"""The storefront: server-rendered pages that work without JavaScript."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
from zoneinfo import ZoneInfo

import segno
import sqlalchemy as sa
from flask import (Blueprint, abort, after_this_request, g, jsonify, make_response, redirect, render_template,
                   request, send_file, session, url_for)
from flask_babel import gettext

from ..accounts.passwords import verify_password
from ..catalog import images, inputs, markdown, pricing, variants
from ..catalog.models import Product
from ..catalog.tree import read_tree
from ..catalog.services import pool_stock, stock_by_product
from ..context import get_config, get_vault
from ..database import utcnow
from ..errors import CaptchaRequired, KamengdError, NotFound, RateLimited
from ..extensions import db, limiter
from ..money import format_cents
from ..orders.checkout import place_order
from ..orders.lookup import order_view
from ..orders.models import Order
from ..orders.services import (LOOKUP_PAGE, find_order_for_buyer, orders_by_tags, orders_for_email,
                               orders_of_this_browser)
from ..orders.validation import MAX_QUERY_PASSWORD
from ..payments.balance import pay_from_balance
from ..payments.points import cost as points_channel_cost, pay_with_points
from ..payments.callbacks import pay_in_sandbox
from ..payments.flow import NotStarted, fail_over, start_payment
from ..payments.reconcile import ask_on_return
from ..payments.models import PaymentChannel
from ..payments import methods
from ..payments import services as payments
from ..payments.services import build_pay_url
from ..risk import engine as risk
from ..settings.messaging import mail_server
from ..settings.services import get_setting, shop_look, shop_url
from ..transaction import read_only
from ..vault import VaultError
from ..agents import services as agents
from ..agents.models import Agent
from ..ledger import services as ledger
from ..marketing import points
from ..websession import AGENT_DOOR
from ..substation import read_snapshot, return_site, seller, station
from ..tickets import services as tickets
from ..vouchers import services as vouchers
from .i18n import current_lang, remember_lang, t

bp = Blueprint("shop", __name__, template_folder="templates")
MAX_REMEMBERED = 20
# Statuses an order leaves by itself (the callback, the delivery, the expiry): its page watches them.
WATCHED = ("pending", "paid")
MAX_QUERY = 100
INDEX_PAGE = 48   # products a page of the index shows (a phone scrolls a few screens, not ninety)


@bp.app_context_processor
def _helpers():
    return {"t": t, "lang": current_lang, "shop_time": shop_time, "lang_url": lang_url, "sends_mail": sends_mail,
            "in_app_browser": in_app_browser, "shop_look": _shop_look, "price_of": price_of,
            "member_viewer": member_viewer, "format_money": format_cents}


def _shop_look() -> dict:
    """The footer's settings, read once a request (the order page shows the contact too)."""
    if "shop_look" not in g:
        g.shop_look = shop_look()
    return g.shop_look


def price_of(product: Product, quantity: int = 1) -> int:
    """A product's unit price on this page: on a sub-station the agent's (kamengd.substation);
    else the shop's now, for the quantity (a time-window price, a wholesale tier) and the buyer
    (signed in: the member price)."""
    prices = g.get("station_prices")
    if prices is not None:
        return prices.get(product.id, product.price_cents)
    return pricing.unit_price(product, quantity, utcnow(), member_viewer())


def member_viewer() -> bool:
    """Whether this page's buyer is signed in to the portal (a member or an agent): member prices
    are theirs, and the page is theirs alone (never kept by a cache for others)."""
    if "member_viewer" not in g:
        g.member_viewer = station() is None and AGENT_DOOR.current() is not None
    return g.member_viewer


@bp.after_request
def _private_prices(response):
    if g.get("member_viewer"):
        response.headers["Cache-Control"] = "private, no-store"
    return response


def _stock() -> dict[int, int]:
    """{product id: keys on sale here}: the shop's, and on a sub-station its agent's pool too."""
    stock = stock_by_product(db.session)
    found = station()
    if found is not None:
        for product_id, count in pool_stock(db.session, found.id).items():
            stock[product_id] = stock.get(product_id, 0) + count
    return stock


def _station_prices(products) -> None:
    """On a sub-station, the agent's prices of the products a page shows (one read)."""
    found = station()
    if found is not None:
        g.station_prices = agents.station_prices(db.session, db.session.get(Agent, found.id), products)


def in_app_browser() -> bool:
    """WeChat's and QQ's built-in browsers: pay pages and saved keys work badly there."""
    agent = request.headers.get("User-Agent", "")
    return "MicroMessenger" in agent or " QQ/" in agent


def sends_mail() -> bool:
    """Whether delivery mail can go out (an SMTP server is configured): what the pages
    promise about e-mail follows it. Asked once per request, only by pages that say it."""
    if "kamengd_sends_mail" not in g:
        g.kamengd_sends_mail = bool(mail_server(db.session, get_config())[0])
    return g.kamengd_sends_mail


bp.after_app_request(remember_lang)


def shop_time(value: dt.datetime | None) -> str:
    """A naive UTC time from the database, in the shop's time zone."""
    if value is None:
        return ""
    local = value.replace(tzinfo=dt.timezone.utc).astimezone(ZoneInfo(get_config().site.timezone))
    return local.strftime("%Y-%m-%d %H:%M")


def lang_url(code: str) -> str:
    """This page in the other language: the same address and query, plus ?lang=."""
    if request.method != "GET" or request.endpoint is None or request.endpoint == "static":
        return f"?lang={code}"
    args = {k: v for k, v in request.args.items() if not k.startswith("_")}  # _external & co. are url_for's
    return url_for(request.endpoint, **{**args, **(request.view_args or {}), "lang": code})


def _methods(product_id: int | None = None, currency: str | None = None,
             amount_cents: int | None = None) -> list[dict]:
    """The payment methods as the buyer knows them (支付宝, 微信支付 …, with an icon), of the
    channels that take this product's orders. A method several channels offer is shown once:
    the shop routes the order to one of them (priority, weight, limits, health)."""
    lang = current_lang()
    found, seen = [], {}
    for m in payments.payment_methods(db.session, product_id=product_id, currency=currency,
                                      amount_cents=amount_cents, timezone=get_config().site.timezone):
        known = methods.label(m.method, lang)
        if known is not None and m.method in seen:   # routed by method
            seen[m.method]["value"] = f":{m.method}"
            continue
        entry = {"value": m.value, "label": known or m.channel_name, "icon": methods.icon(m.method),
                 "channel_name": m.channel_name, "detail": ""}
        if m.method == "points" and amount_cents:   # what the points channel costs, as the buyer counts it
            cost = points.cost_of(amount_cents, get_setting(db.session, "points.value"))
            entry["detail"] = t(f"{cost} 积分", f"{cost} points")
        if known is not None:
            seen[m.method] = entry
        found.append(entry)
    return found


def _remember(order_no: str, token: str) -> None:
    """The buyer's browser keeps its orders' tokens (signed session cookie)."""
    tokens = dict(session.get("orders", {}))
    tokens[order_no] = token
    session["orders"] = dict(list(tokens.items())[-MAX_REMEMBERED:])
    session.permanent = True


def _int_arg(name: str) -> int | None:
    raw = request.args.get(name, "")
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 10 and int(raw) > 0 else None


def _listed_products(visible: set[int]):
    """Active products the index shows: none of a hidden category (or one under a hidden one),
    no variant (its main product stands for its group)."""
    return (sa.select(Product)
            .where(Product.is_active.is_(True), Product.variant_of.is_(None),
                   sa.or_(Product.category_id.is_(None), Product.category_id.in_(visible)))
            .order_by(Product.sort_order, Product.id))


def _matching(query: str):
    """SQL: the product's name or option has `query`, or one of its variants' has."""
    inside = Product.__table__.alias("variant")
    return sa.or_(Product.name.contains(query, autoescape=True), Product.variant_name.contains(query, autoescape=True),
                  Product.id.in_(sa.select(inside.c.variant_of).where(
                      inside.c.variant_of.is_not(None), inside.c.is_active.is_(True),
                      sa.or_(inside.c.name.contains(query, autoescape=True),
                             inside.c.variant_name.contains(query, autoescape=True)))))


def _grouped(products: list, stock: dict[int, int]) -> tuple[dict[int, int], dict[int, int], set[int]]:
    """For the main products with variants on sale: ({id: the group's stock}, {id: the lowest
    unit price of its options on sale, where their prices differ}, {ids of the groups with an
    option delivered by hand: never sold out})."""
    groups = variants.variants_of(db.session, [p.id for p in products])
    _station_prices(products + [v for vs in groups.values() for v in vs])
    totals, lowest, by_hand = {}, {}, set()
    for p in products:
        members = [p, *groups.get(p.id, ())]
        if len(members) == 1:
            continue
        totals[p.id] = sum(stock.get(m.id, 0) for m in members)
        if any(m.delivery_mode == "manual" for m in members):
            by_hand.add(p.id)
        buyable = [m for m in members if m.delivery_mode == "manual" or stock.get(m.id)] or members
        prices = {price_of(m) for m in buyable}
        if len({price_of(m) for m in members}) > 1:
            lowest[p.id] = min(prices)
    return totals, lowest, by_hand


@bp.get("/media/<name>-<size>.webp")
def media(name: str, size: str):
    """A product's picture (its name is a hash of it: kept by browsers for a year)."""
    read_only()
    found = images.served(db.session, get_config().media_dir(), name, size)
    if found is None:
        abort(404)
    response = (send_file(found, mimetype="image/webp", max_age=YEAR) if not isinstance(found, bytes)
                else make_response(found, 200, {"Content-Type": "image/webp"}))
    response.headers["Cache-Control"] = f"public, max-age={YEAR}, immutable"
    return response


YEAR = 365 * 24 * 3600


@bp.get("/favicon.ico")
def favicon():
    """Browsers ask for /favicon.ico on every page, the panel's too."""
    return redirect(url_for("static", filename="favicon.svg"), code=301)


@bp.get("/")
def index():
    """Every product (grouped by category), one category, or what a search finds."""
    read_only()
    stock = _stock()
    query = request.args.get("q", "").strip()[:MAX_QUERY]
    tree = read_tree(db.session)
    visible = tree.shown_ids()
    listed = _listed_products(visible)
    # A category is offered when something is listed in it or under it.
    filled = set(db.session.scalars(listed.with_only_columns(Product.category_id).distinct()))
    offered = {node.id for cid in filled for node in tree.path(cid)}
    category = tree.nodes.get(_int_arg("category")) if _int_arg("category") in offered else None
    categories = [n for n in tree.children.get(None, ()) if n.id in offered]
    subcategories = [n for n in tree.children.get(category.id, ()) if n.id in offered] if category else []
    select = listed
    if category is not None:
        select = select.where(Product.category_id.in_(tree.below(category.id) & visible))
    if query:
        select = select.where(_matching(query))
    place = {node.id: i for i, (node, _depth) in enumerate(tree.ordered())}
    # As the tree goes (a category's own products before those under it); no category last.
    products = sorted(db.session.scalars(select).all(),
                      key=lambda p: place.get(p.category_id, len(place)))
    group_stock, from_prices, by_hand = _grouped(products, stock)
    stock = {**stock, **group_stock}   # a main product's card counts its whole group
    # Sold out (automatic delivery, no key left) is hidden unless asked for: a buyer
    # scrolling a phone wants what can be bought now.
    show_all = request.args.get("all") == "1" or bool(query)   # a search names what it wants: sold out or not
    def open_(p):   # (delivered by hand: never sold out; a group with such an option neither)
        return p.delivery_mode == "manual" or p.id in by_hand or stock.get(p.id)
    sold_out = [p for p in products if not open_(p)]
    shown = products if show_all else [p for p in products if open_(p)]
    pages = max(1, -(-len(shown) // INDEX_PAGE))
    page = min(_int_arg("page") or 1, pages)
    groups: dict[int | None, list[Product]] = {}
    on_page = shown[(page - 1) * INDEX_PAGE:page * INDEX_PAGE]
    for p in on_page:
        groups.setdefault(p.category_id, []).append(p)
    # Products of no category come last, under "Other" once there are categories.
    sections = [(tree.label(cid) if cid is not None else None, items) for cid, items in groups.items()]
    return render_template("storefront/index.html", sections=sections, categories=categories,
                           category=category, trail=tree.path(category.id) if category else [],
                           subcategories=subcategories, pictures=images.names_for(db.session, [p.id for p in on_page]),
                           stock=stock, query=query, count=len(shown), page=page, pages=pages,
                           show_all=show_all, sold_out=len(sold_out), from_prices=from_prices, by_hand=by_hand,
                           notice=station().notice if station() is not None else get_setting(db.session, "site.notice"),
                           money=format_cents)


# A service error names its field first ("email: ..."): the form marks that field.
FIELDS = ("quantity", "email", "query_password", "channel", "pay_type", "coupon", "points", "captcha")


def _error_text(exc: KamengdError, product: Product) -> tuple[str, str | None]:
    """(what the buyer reads, the field at fault); the service's own words stay in brackets."""
    field = exc.message.split(":", 1)[0] if ":" in exc.message else None
    field = field if field in FIELDS else None
    field = "channel" if field == "pay_type" else field   # one choice on the page: the method
    texts = {
        "quantity": t(f"数量须在 {product.min_quantity} 到 {product.max_quantity} 之间。",
                      f"Choose a quantity from {product.min_quantity} to {product.max_quantity}."),
        "email": t("请填写有效的邮箱地址，卡密和订单信息会发到这里。",
                   "Enter a valid e-mail address: the order and the keys are sent there.") if sends_mail() else
                 t("请填写有效的邮箱地址，之后凭它和查询密码查找订单。",
                   "Enter a valid e-mail address: with the query password it finds the order later."),
        "query_password": t(f"查询密码须为 4 到 {MAX_QUERY_PASSWORD} 个字符，或留空。",
                            f"The query password needs 4 to {MAX_QUERY_PASSWORD} characters, or leave it empty."),
        "channel": t("请选择一种可用的支付方式。", "Choose one of the payment methods offered."),
        "captcha": t("请等待下方的人机验证完成，然后再次点击购买。",
                     "Wait for the check below to finish, then press Buy again."),
    }
    if exc.message.startswith("input: "):
        label = exc.message.removeprefix("input: ").split(":", 1)[0]
        return t(f"请正确填写“{label}”。", f"Fill in “{label}” correctly."), "input"
    if exc.code == "out_of_stock":
        text = t("库存不足：请减少数量或稍后再来。", "Not enough stock: choose fewer or come back later.")
    else:
        text = texts.get(field, "")
    # The buyer reads their own language: the page's words for a field, else the service's, translated.
    return (text or exc.localized(gettext)), field


def _product_page(product_id: int, *, exc: KamengdError | None = None, form=None):
    read_only()
    p = db.session.get(Product, product_id) if product_id < 2**31 else None
    if p is None or not p.is_active or not variants.main_is_shown(db.session, p):
        abort(404)
    error, error_field = _error_text(exc, p) if exc is not None else (None, None)
    every = _stock()
    stock = every.get(p.id, 0)
    options = variants.group(db.session, p)   # the group's options: each its own page
    main = options[0] if options else p       # a variant without its own words shows its main product's
    category_id = p.category_id or main.category_id
    tree = read_tree(db.session) if category_id else None
    trail = tree.path(category_id) if tree is not None and tree.shown(category_id) else []
    most = p.max_quantity if p.delivery_mode == "manual" else max(p.min_quantity, min(p.max_quantity, stock))
    _station_prices([p, *options])
    description = p.description or main.description
    pictures = images.names_for(db.session, {p.id, main.id})
    now = utcnow()
    on_sale = g.get("station_prices") is None and pricing.on_sale(p, now)
    # Said only where it is below what a unit costs everyone else now (a cheaper sale wins).
    member_offer = p.member_price_cents if p.member_price_cents is not None and \
        p.member_price_cents < pricing.unit_price(p, 1, now) else None
    return render_template("storefront/product.html", product=p, stock=stock,
                           description=markdown.render(description) if description else "",
                           options=options, option_label=variants.label, option_stock=every,
                           tiers=pricing.tiers_of(p.price_tiers) if g.get("station_prices") is None else [],
                           station_priced=g.get("station_prices") is not None, member_offer=member_offer,
                           on_sale=on_sale, points_use=_points_use(p), sale_ends=shop_time(p.sale_ends_at) if on_sale and p.sale_ends_at else None,
                           channels=_methods(p.id, p.currency, p.price_cents * p.min_quantity),
                           input_fields=inputs.load(p.input_fields), input_kinds=inputs.KINDS,
                           html_pattern=inputs.html_pattern,
                           trail=trail, most=most, money=format_cents, error=error,
                           picture=pictures.get(p.id) or pictures.get(main.id),
                           error_field=error_field, form=form or {},
                           # a risk rule asks for a captcha: the widget solves this one
                           challenge=json.dumps(exc.challenge) if isinstance(exc, CaptchaRequired) else None,
                           query_password_max=MAX_QUERY_PASSWORD), (exc.http_status if exc else 200)


def _points_use(p: Product) -> dict | None:
    """A member signed in with points, on the shop's own site, where the shop takes points off
    orders (points.discount_share): its points and that share, for the product form's choice."""
    if not member_viewer() or p.currency != ledger.DEFAULT_CURRENCY:
        return None
    share = get_setting(db.session, "points.discount_share")
    have = points.balance(db.session, AGENT_DOOR.current().id) if share else 0
    return {"have": have, "share": share} if have > 0 else None


# A random id per browser, set by the product page: the risk rules count orders per device
# by a hash of it (kamengd.risk). It identifies nothing else and holds nothing.
DEVICE_COOKIE = "kd_device"


def _device_tag() -> str | None:
    """The hash of this browser's device cookie; one is given to a browser without it."""
    value = request.cookies.get(DEVICE_COOKIE, "")
    if 16 <= len(value) <= 64 and value.isascii() and value.replace("-", "").replace("_", "").isalnum():
        return hashlib.sha256(value.encode()).hexdigest()[:32]

    @after_this_request
    def give(response):
        response.set_cookie(DEVICE_COOKIE, secrets.token_urlsafe(18), max_age=365 * 86400, httponly=True,
                            samesite="Lax", secure=request.is_secure)
        return response
    return None


def _signed_in_id() -> int | None:
    """The member (or agent) signed in to the portal in this browser: its order earns it points.
    Read in a snapshot that ends at once: the order's own reads happen outside any write lock.
    A browser without a portal session (most buyers) reads nothing."""
    if AGENT_DOOR.token() is None:
        return None

    def read(_session):
        member = AGENT_DOOR.current()
        return member.id if member is not None else None
    return read_snapshot(read)


@bp.get("/product/<int:product_id>")
def product(product_id: int):
    _device_tag()
    return _product_page(product_id)


@bp.post("/product/<int:product_id>")
@limiter.limit(lambda: get_config().ratelimit.orders)
def buy(product_id: int):
    form = request.form
    raw_quantity = form.get("quantity", "1").strip()
    quantity = int(raw_quantity) if raw_quantity.isascii() and raw_quantity.isdigit() and len(raw_quantity) < 10 else -1
    channel_code, pay_type = payments.split_method(form.get("channel", "")[:100])
    if not channel_code and pay_type:   # `:alipay`: the shop picks the channel
        channel_code = None
    try:
        placed = place_order(db.session, get_vault(), product_id=product_id, quantity=quantity,
                             email=form.get("email", "")[:1000], channel_code=channel_code, pay_type=pay_type,
                             query_password=form.get("query_password") or None,
                             coupon=form.get("coupon", "")[:100].strip() or None,
                             buyer_input={k.removeprefix("input_"): v[:1000] for k, v in form.items()
                                          if k.startswith("input_")} or None,
                             client_ip=request.remote_addr, site_url=get_config().site.url, seller=seller(),
                             return_site=return_site(), device_tag=_device_tag(),
                             captcha=form.get("captcha") or None, member_id=_signed_in_id(),
                             use_points=form.get("use_points") == "1")
    except KamengdError as exc:
        db.session.rollback()
        if isinstance(exc, NotFound):
            abort(404)
        kept = {"quantity": form.get("quantity", "")[:10], "email": form.get("email", "")[:254],
                "channel": form.get("channel", "")[:50], "coupon": form.get("coupon", "")[:32],
                "use_points": form.get("use_points") == "1"}
        return _product_page(product_id, exc=exc, form=kept)
    _remember(placed.order_no, placed.token)
    return redirect(placed.pay_url or url_for("shop.order_page", order_no=placed.order_no), code=303)


def _order_page(order, token: str, *, returned: bool = False, ticket_problem: str | None = None,
                ticket_text: str = ""):
    """The buyer's order: keys once delivered; a way back to the gateway while unpaid.

    While the order may still change by itself (unpaid, or paid and being
    delivered) the page watches it: a small script asks /order/<no>/status and
    reloads the page when the status moves; without JavaScript the page
    refreshes itself. Coming back from the gateway (`returned`), an unpaid
    order says the payment is being confirmed: the buyer is often back
    before the gateway's callback."""
    product = db.session.get(Product, order.product_id)
    pay_url = None
    if order.status == "pending":
        channel = db.session.get(PaymentChannel, order.channel_id)
        if channel is not None and channel.is_enabled:
            pay_url = build_pay_url(get_vault(), channel, order, site_url=shop_url(),
                                    product_name=product.name, token=token, return_site=return_site())
    watch = order.status in WATCHED
    label = methods.label(order.pay_type, current_lang())
    pay_method = {"icon": methods.icon(order.pay_type), "label": label} if label else None
    held = vouchers.order_vouchers(db.session, get_vault(), order.id, order.product_id) \
        if order.status == "delivered" else []
    return render_template("order.html", order=order_view(db.session, get_vault(), order), product=product,
                           vouchers=[(h, segno.make(h.code, error="m").svg_inline(scale=4, border=2,
                                                                                 title=h.code)) for h in held],
                           buyer_input=inputs.load(order.buyer_input),
                           pay_url=pay_url, expires_at=shop_time(order.expires_at), returned=returned,
                           pay_method=pay_method,
                           # No-JS refresh: only while a payment or an automatic delivery is moments away.
                           watch=watch, refresh=watch and (returned or (order.status == "paid"
                                                                        and product.delivery_mode != "manual")),
                           status_url=url_for("shop.order_status", order_no=order.order_no),
                           token=token, after_sales=order.status in tickets.ASKABLE,
                           threads=tickets.threads_for_order(db.session, order.id) if order.paid_at else [],
                           ticket_problem=ticket_problem, ticket_text=ticket_text)


def _buyers_order(order_no: str):
    """(the order, its token) when this browser (or the address's token) proves to be its buyer."""
    token = request.args.get("token") or session.get("orders", {}).get(order_no)
    order = find_order_for_buyer(db.session, order_no, token=token)
    if request.args.get("token"):
        _remember(order_no, token)
    return order, token


@bp.get("/order/<order_no>")
def order_page(order_no: str):
    read_only()
    try:
        order, token = _buyers_order(order_no)
    except NotFound:
        return render_template("order_missing.html"), 404
    return _order_page(order, token, returned=request.args.get("returned") == "1")


@bp.post("/order/<order_no>/ticket")
@limiter.limit(lambda: get_config().ratelimit.lookups)
def ticket_write(order_no: str):
    """The buyer's after-sales message (a new ticket, or the next message of the live one), with a
    picture if it likes; back to the order page, or the page again saying what was wrong."""
    token = request.form.get("token") or session.get("orders", {}).get(order_no[:32])
    read_only()   # who asks is checked on a snapshot; the write comes after the picture is decoded
    try:
        order = find_order_for_buyer(db.session, order_no, token=token if isinstance(token, str) else None)
    except NotFound:
        return render_template("order_missing.html"), 404
    order_id = order.id
    db.session.rollback()
    upload = request.files.get("picture")
    picture = upload.read(images.MAX_UPLOAD + 1) if upload is not None and upload.filename else None
    try:
        # Decoded with no transaction open: nobody waits for SQLite's write lock meanwhile.
        tickets.check_message(request.form.get("message", ""))
        prepared = tickets.prepare_picture(picture)
        order = db.session.get(Order, order_id)
        tickets.write_as_buyer(db.session, order, body=request.form.get("message", ""), picture=prepared)
    except KamengdError as exc:
        db.session.rollback()
        read_only()
        order = db.session.get(Order, order_id)
        response = make_response(_order_page(order, token, ticket_problem=exc.localized(gettext),
                                             ticket_text=request.form.get("message", "")[:tickets.MAX_BODY]),
                                 exc.http_status)
        if isinstance(exc, RateLimited):
            response.headers["Retry-After"] = str(exc.retry_after)
        return response
    db.session.commit()
    return redirect(url_for("shop.order_page", order_no=order.order_no, token=token, _anchor="after-sales"), code=303)


@bp.get("/order/<order_no>/ticket/pictures/<int:image_id>")
def ticket_picture(order_no: str, image_id: int):
    """A picture the buyer attached to one of the order's tickets: to the buyer only, never cached."""
    read_only()
    try:
        order, _token = _buyers_order(order_no)
        data = tickets.buyer_image(db.session, order, image_id)
    except NotFound:
        abort(404)
    response = make_response(data)
    response.headers["Content-Type"] = "image/webp"
    response.headers["Cache-Control"] = "private, no-store"
    return response


@bp.get("/pay/<code>/return")
def payment_return(code: str):
    """Where the gateway sends the buyer back (CONTRACT.md §3): the order's own page."""
    read_only()
    order_no = request.args.get("order_no") or request.args.get("out_trade_no") or ""
    try:
        order, token = _buyers_order(order_no)
    except NotFound:
        return render_template("order_missing.html"), 404
    # Back from approving at PayPal (it adds PayerID; not on a cancel): the money moves when this
    # shop captures, so it asks now rather than leave the buyer waiting for the webhook.
    if order.status == "pending" and request.args.get("PayerID") and ask_on_return(db.session, get_vault(),
                                                                                   order.id):
        read_only()
        order = db.session.get(Order, order.id)
    return _order_page(order, token, returned=True)


@bp.get("/pay/<code>/start")
def payment_start(code: str):
    """The pay URL of an order of a gateway channel: the payment is created at the gateway on
    the first visit (kept for the next), then the buyer is sent there, or shown its QR code."""
    try:
        order, token = _buyers_order(request.args.get("order_no", "")[:32])
    except NotFound:
        return render_template("order_missing.html"), 404
    channel = db.session.get(PaymentChannel, order.channel_id) if order.channel_id else None
    if channel is None:
        return render_template("order_missing.html"), 404
    order_url = url_for("shop.order_page", order_no=order.order_no, token=token)
    if order.status != "pending":
        return redirect(order_url, code=303)
    if channel.code != code:   # moved to another channel (failover) since this address was given
        if not channel.is_enabled:
            return render_template("order_missing.html"), 404
        return redirect(_pay_url(order, channel, token), code=303)
    back = (return_site() or shop_url()).rstrip("/") + url_for("shop.payment_return", code=code,
                                                               order_no=order.order_no, token=token)
    order_no, amount, currency, expires = order.order_no, order.amount_cents, order.currency, order.expires_at
    try:
        page = start_payment(db.session, get_vault(), order, site_url=shop_url(), back_url=back)
    except NotStarted as exc:
        # The failed attempt (the gateway's reason, for staff) and the move, in one commit.
        order = db.session.get(Order, order.id)
        moved = fail_over(db.session, order, db.session.get(PaymentChannel, channel.id),
                          exc.detail or exc.message, site_url=shop_url(), timezone=get_config().site.timezone,
                          channel_failed=exc.channel_failed)
        db.session.commit()
        if moved is not None:   # the buyer goes on with the stand-in, in this same visit
            return redirect(_pay_url(db.session.get(Order, order.id), moved, token), code=303)
        return render_template("pay_page.html", problem=exc.message, order_no=order_no, order_url=order_url,
                               amount=format_cents(amount), currency=currency, qr_svg=None, pay_url=None,
                               retry_url=request.full_path, expires_at=shop_time(expires), seconds_left=0,
                               status_url=None), 503
    db.session.commit()
    if page.qr is None:
        return redirect(page.pay_url, code=303)
    until = min(expires, page.expires_at) if page.expires_at else expires
    return render_template("pay_page.html", problem=None, order_no=order_no, order_url=order_url,
                           amount=format_cents(amount), currency=currency,
                           qr_svg=segno.make(page.qr, error="m").svg_inline(scale=6, border=2),
                           pay_url=page.pay_url, retry_url=None, expires_at=shop_time(until),
                           seconds_left=max(0, int((until - utcnow()).total_seconds())), details=page.details,
                           status_url=url_for("shop.order_status", order_no=order_no, token=token))


def _pay_url(order, channel: PaymentChannel, token: str) -> str:
    """Where the buyer pays the order at its channel; its order page when that cannot be made
    (the channel's key cannot be opened: staff see it in the doctor)."""
    product_name = db.session.scalar(sa.select(Product.name).where(Product.id == order.product_id)) or ""
    try:
        return build_pay_url(get_vault(), channel, order, site_url=shop_url(), product_name=product_name,
                             token=token, return_site=return_site())
    except (KeyError, VaultError):
        return url_for("shop.order_page", order_no=order.order_no, token=token)


def _own_pay_page(template: str, channel_type: str, order, token: str, code: str, problem: str | None = None,
                  status: int = 200, **extra):
    """A pay page this shop serves itself (the sandbox's, a balance channel's): the order's facts,
    for an order of that channel only."""
    channel = db.session.get(PaymentChannel, order.channel_id) if order.channel_id else None
    if channel is None or channel.code != code or channel.type != channel_type:
        return render_template("order_missing.html"), 404
    return render_template(template, order=order, product=db.session.get(Product, order.product_id),
                           token=token, code=code, amount=format_cents(order.amount_cents),
                           expires_at=shop_time(order.expires_at), problem=problem,
                           seconds_left=max(0, int((order.expires_at - utcnow()).total_seconds())),
                           order_url=url_for("shop.order_page", order_no=order.order_no, token=token),
                           **extra), status


def _posted_order():
    """(the order, its token) of a pay page's form, when the form (or this browser) proves to be
    its buyer; NotFound otherwise."""
    order_no = request.form.get("order_no", "")[:32]
    token = request.form.get("token") or session.get("orders", {}).get(order_no)
    return find_order_for_buyer(db.session, order_no, token=token), token


def _sandbox_page(order, token: str, code: str, problem: str | None = None, status: int = 200):
    return _own_pay_page("sandbox_pay.html", "sandbox", order, token, code, problem, status)


@bp.get("/pay/<code>/sandbox")
def sandbox_page(code: str):
    """The sandbox channel's pretend gateway: the order, and a button that pays it (no money moves)."""
    read_only()
    try:
        order, token = _buyers_order(request.args.get("order_no", "")[:32])
    except NotFound:
        return render_template("order_missing.html"), 404
    return _sandbox_page(order, token, code)


@bp.post("/pay/<code>/sandbox")
def sandbox_pay(code: str):
    """The "pay" button: the pretend gateway's signed callback goes through the callback path."""
    try:
        order, token = _posted_order()
    except NotFound:
        return render_template("order_missing.html"), 404
    try:
        outcome = pay_in_sandbox(db.session, get_vault(), code, order, site_url=get_config().site.url)
    except KamengdError as exc:
        outcome, problem = None, exc.message
    if outcome is not None and outcome.recorded:
        db.session.commit()
        return redirect(url_for("shop.order_page", order_no=order.order_no, token=token), code=303)
    db.session.rollback()
    if outcome is not None:
        problem = outcome.reason
    order = db.session.get(Order, order.id)
    return _sandbox_page(order, token, code, problem=problem, status=409)


def _balance_page(order, token: str, code: str, problem: str | None = None, status: int = 200):
    payer = AGENT_DOOR.current()
    available = ledger.balances(db.session, payer.id)["available"] if payer is not None else None
    here = url_for("shop.balance_page", code=code, order_no=order.order_no, token=token)
    return _own_pay_page("balance_pay.html", "balance", order, token, code, problem, status, payer=payer,
                         balance=None if available is None else format_cents(available),
                         covered=available is not None and available >= order.amount_cents,
                         login_url=url_for("portal.login", next=here))


@bp.get("/pay/<code>/balance")
def balance_page(code: str):
    """A balance channel's pay page: sign in (as a member or an agent), see the balance, pay."""
    read_only()
    try:
        order, token = _buyers_order(request.args.get("order_no", "")[:32])
    except NotFound:
        return render_template("order_missing.html"), 404
    response = make_response(_balance_page(order, token, code))
    response.headers["Cache-Control"] = "no-store"   # it shows a balance
    return response


@bp.post("/pay/<code>/balance")
def balance_pay(code: str):
    """Pay the order from the signed-in account's balance, in this request's one transaction."""
    return _pay_signed_in(code, "shop.balance_page", _balance_page, pay_from_balance)


def _pay_signed_in(code: str, page_endpoint: str, page, pay, **extra):
    """A pay page's POST for a channel the signed-in account pays itself (its balance, its
    points): `pay` in this request's one transaction, then the order; its page with the
    reason when refused (nothing written)."""
    try:
        order, token = _posted_order()
    except NotFound:
        return render_template("order_missing.html"), 404
    payer = AGENT_DOOR.current()
    if payer is None:   # signed out meanwhile: sign in, then back to this page
        return redirect(url_for("portal.login", next=url_for(page_endpoint, code=code, order_no=order.order_no,
                                                              token=token)), code=303)
    try:
        pay(db.session, code=code, order=order, payer=payer, **extra)
    except KamengdError as exc:
        db.session.rollback()
        order = db.session.get(Order, order.id)
        response = make_response(page(order, token, code, problem=exc.localized(gettext), status=exc.http_status))
        response.headers["Cache-Control"] = "no-store"   # it shows a balance or points
        return response
    db.session.commit()
    return redirect(url_for("shop.order_page", order_no=order.order_no, token=token), code=303)


def _points_page(order, token: str, code: str, problem: str | None = None, status: int = 200):
    payer = AGENT_DOOR.current()
    have = points.balance(db.session, payer.id) if payer is not None else None
    cost = points_channel_cost(db.session, order)
    here = url_for("shop.points_page", code=code, order_no=order.order_no, token=token)
    response = make_response(_own_pay_page("points_pay.html", "points", order, token, code, problem, status,
                                           payer=payer, points=have, cost=cost,
                                           covered=have is not None and have >= cost,
                                           login_url=url_for("portal.login", next=here)))
    response.headers["Cache-Control"] = "no-store"   # it shows the member's points
    return response


@bp.get("/pay/<code>/points")
def points_page(code: str):
    """A points channel's pay page: sign in (as a member or an agent), see the points, pay."""
    read_only()
    try:
        order, token = _buyers_order(request.args.get("order_no", "")[:32])
    except NotFound:
        return render_template("order_missing.html"), 404
    return _points_page(order, token, code)


@bp.post("/pay/<code>/points")
def points_pay(code: str):
    """Pay the order with the signed-in account's points, in this request's one transaction."""
    return _pay_signed_in(code, "shop.points_page", _points_page, pay_with_points,
                          expected_cost=request.form.get("cost", "")[:20])


@bp.get("/order/<order_no>/status")
def order_status(order_no: str):
    """The order's status for the page watching it, to this browser's orders only."""
    read_only()
    token = request.args.get("token") or session.get("orders", {}).get(order_no)
    try:
        order = find_order_for_buyer(db.session, order_no, token=token)
    except NotFound:
        response = jsonify({"error": {"code": "not_found", "message": "order not found"}})
        response.status_code = 404
    else:
        response = jsonify({"status": order.status})
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.route("/lookup", methods=["GET", "POST"])
@limiter.limit(lambda: get_config().ratelimit.lookups, methods=["POST"])
def lookup():
    """Find orders: this browser's own (the tokens its cookie keeps); by e-mail plus query
    password, page by page; or one order by its number and e-mail (keys with the query
    password, its status without). An e-mail alone shows nothing."""
    read_only()
    found, email, order_no, page, total, partial = None, "", "", 1, 0, False
    challenge = problem = None
    if request.method == "POST":
        email = request.form.get("email", "").strip()[:254]
        order_no = request.form.get("order_no", "").strip()[:32]
        password = request.form.get("query_password", "")[:MAX_QUERY_PASSWORD]
        try:   # too many lookups that found nothing from here: a captcha, or not now
            risk.guard_lookup(db.session, request.remote_addr, request.form.get("captcha") or None)
        except CaptchaRequired as exc:
            challenge, problem = json.dumps(exc.challenge), t("请等待下方的人机验证完成，然后再次点击查询。",
                                                              "Wait for the check below to finish, then press Find again.")
            email = order_no = password = ""
        except RateLimited:
            problem = t("查询失败次数过多，请稍后再试。", "Too many lookups found nothing: try again later.")
            email = order_no = password = ""
        if problem is not None:
            found = []
        elif order_no and email:
            found, partial = _one_order(order_no, email, password)
            total = len(found)
        elif email and password:
            every = orders_for_email(db.session, get_vault(), email, password)
            tags = get_vault().lookup_tags(email, password)
            total = max(orders_by_tags(db.session, tags, page_size=1)[1], len(every))
            found = every[:LOOKUP_PAGE]
            # Later pages find the orders again by their tags, kept in the signed session
            # cookie: never the password.
            session["lookup"] = {"email": email, "tags": [tag.hex() for tag in tags]}
        else:
            found = []
        if problem is None and (email or order_no) and not found:
            risk.lookup_failed(db.session, request.remote_addr)
    elif _int_arg("page") and isinstance(session.get("lookup"), dict):
        page = _int_arg("page")
        kept = session["lookup"]
        email = str(kept.get("email", ""))
        try:
            tags = [bytes.fromhex(tag) for tag in kept.get("tags", [])][:4]
        except (TypeError, ValueError):
            tags = []
        found, total = orders_by_tags(db.session, tags, page=page)
    views = _order_views(found or [], keys=not partial) if found is not None else None
    mine = _order_views(orders_of_this_browser(db.session, session.get("orders", {})), keys=False)
    return render_template("storefront/lookup.html", orders=views, email=email, order_no=order_no, page=page,
                           pages=max(1, -(-total // LOOKUP_PAGE)), partial=partial, mine=mine,
                           challenge=challenge, problem=problem), (429 if problem and not challenge else 200)


def _one_order(order_no: str, email: str, password: str) -> tuple[list, bool]:
    """([the order] or [], whether only its status may be shown). The e-mail must be the
    order's; the keys need its query password too. Same work whether or not it exists."""
    order = db.session.scalar(sa.select(Order).where(Order.order_no == order_no))
    hashed = order.query_password_hash if order is not None else None
    password_ok = verify_password(hashed, password) if password else False
    if order is None or order.email.strip().casefold() != email.casefold():
        return [], False
    return [order], not password_ok


def _order_views(orders, *, keys: bool) -> list[dict]:
    names = {p.id: p.name for p in db.session.scalars(
        sa.select(Product).where(Product.id.in_({o.product_id for o in orders})))} if orders else {}
    views = []
    for order in orders:
        view = order_view(db.session, get_vault(), order) if keys else {
            "order_no": order.order_no, "status": order.status, "amount": format_cents(order.amount_cents),
            "currency": order.currency, "quantity": order.quantity}
        views.append({**view, "product_name": names.get(order.product_id, ""), "created": shop_time(order.created_at)})
    return views

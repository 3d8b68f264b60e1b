"""Products and categories: every rule about them, every change audited.

The CLI and the panel both come here. Forms arrive as text: parse_product_form
turns the panel's fields into typed values (money through parse_money), and
create_product / update_product check the ranges, so a bad value gets one
clear message naming the field whichever way it came in.
"""
from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Mapping

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..audit.services import record
from ..errors import Collector, Conflict, InvalidRequest, NotFound
from ..inventory.models import CardKey
from ..orders.models import Order
from ..localtime import parse_when
from ..money import MAX_CENTS, format_cents, parse_money
from . import inputs, pricing, tree, variants
from ..suppliers.models import Supplier, SupplierProduct
from ..vouchers.models import VoucherTerms
from .models import DELIVERY_MODES, Category, Product

MAX_NAME = 200
MAX_CATEGORY_NAME = 100
MAX_DESCRIPTION = 20_000
MAX_QUANTITY = 100_000           # per order
MAX_THRESHOLD = 100_000_000      # low-stock warning level
SORT_ORDER_RANGE = (0, 9999)     # as payment channels: lower first
AUDIT_TEXT = 200                 # a long description is audited by its start
MAX_SEARCH = 100

# Product fields staff may set, and their names in audit details.
PRODUCT_FIELDS = {"name": "name", "category_id": "category", "description": "description",
                  "price_cents": "price", "cost_price_cents": "cost_price", "delivery_mode": "delivery",
                  "min_quantity": "min_quantity", "max_quantity": "max_quantity",
                  "low_stock_threshold": "low_stock", "sort_order": "sort_order", "is_active": "visible",
                  "input_fields": "input_fields", "buyer_daily_limit": "daily_limit", "price_tiers": "tiers",
                  "sale_price_cents": "sale_price", "sale_starts_at": "sale_from", "sale_ends_at": "sale_until",
                  "variant_of": "variant_of", "variant_name": "variant", "member_price_cents": "member_price"}


def whole_number(raw: str | int, field: str) -> int:
    """A form's (or the CLI's) whole number; the caller checks its range."""
    if isinstance(raw, bool):
        raise InvalidRequest("%(field)s: a whole number", field=field)
    if isinstance(raw, int):
        return raw
    text = (raw or "").strip()
    if not text:
        raise InvalidRequest("%(field)s: required", field=field)
    if not re.fullmatch(r"-?[0-9]{1,12}", text):
        raise InvalidRequest("%(field)s: %(text)r is not a whole number", field=field, text=text[:20])
    return int(text)


def _in_range(value: int, field: str, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidRequest("%(field)s: a whole number from %(low)s to %(high)s", field=field, low=low, high=high)


UNREADABLE = object()   # a form's field that did not parse: its error is said already, its checks skipped


def parse_product_form(form: Mapping[str, str], session: Session | None = None, timezone: str = "UTC") -> dict:
    """The panel's product form (every value text) -> create_product/update_product arguments.

    Every field is read even after a mistake; with `session`, the fields that
    could be read are checked as create_product would, so one answer names every
    wrong field (FormErrors when there are several)."""
    found = Collector()

    def read(parse, *args, **kwargs):
        with found:
            return parse(*args, **kwargs)
        return UNREADABLE

    price = (form.get("price") or "").strip()
    cost = (form.get("cost_price") or "").strip()
    category = (form.get("category_id") or "").strip()
    variant_of = (form.get("variant_of") or "").strip()
    values = {
        "name": form.get("name") or "",
        "category_id": read(whole_number, category, "category") if category else None,
        "description": (form.get("description") or "").replace("\r\n", "\n"),
        "price_cents": read(parse_money, price, field="price") if price else UNREADABLE,
        "cost_price_cents": read(parse_money, cost, field="cost price", allow_zero=True) if cost else None,
        "delivery_mode": form.get("delivery_mode") or "",
        "min_quantity": read(whole_number, form.get("min_quantity") or "", "minimum quantity"),
        "max_quantity": read(whole_number, form.get("max_quantity") or "", "maximum quantity"),
        "low_stock_threshold": read(whole_number, form.get("low_stock_threshold") or "0", "low-stock threshold"),
        "sort_order": read(whole_number, form.get("sort_order") or "0", "sort order"),
        "is_active": form.get("is_active") == "1",
        "input_fields": form.get("input_fields") or "",
        "buyer_daily_limit": read(whole_number, form.get("buyer_daily_limit"), "daily limit per buyer")
        if (form.get("buyer_daily_limit") or "").strip() else None,
        "price_tiers": (form.get("price_tiers") or "").strip() or None,
        "sale_price_cents": read(parse_money, form.get("sale_price"), field="sale price")
        if (form.get("sale_price") or "").strip() else None,
        # (the window in the shop's time zone, as staff read it)
        "sale_starts_at": read(parse_when, form.get("sale_starts_at") or "", "sale from", timezone),
        "sale_ends_at": read(parse_when, form.get("sale_ends_at") or "", "sale until", timezone),
        "variant_of": read(whole_number, variant_of, "variant of") if variant_of else None,
        "member_price_cents": read(parse_money, form.get("member_price"), field="member price")
        if (form.get("member_price") or "").strip() else None,
        "variant_name": form.get("variant_name") or "",
    }
    if not price:
        found.errors.insert(0, InvalidRequest("price: required, e.g. 9.90"))
    if found.errors and session is not None:
        with found:   # (a variant's rules need the product, its id and currency: create/update check them)
            _check_product(session, values, [f for f in PRODUCT_FIELDS if f not in ("variant_of", "variant_name")])
    found.check()
    return values


def _check_product(session: Session, values: dict, fields: Iterable[str], *, product_id: int | None = None,
                   currency: str = "CNY") -> dict:
    """Check (and normalise) `fields` of `values`, a complete set of product fields (of the
    product `product_id`, None while it is made, priced in `currency`).
    Every field is checked; FormErrors names them all when several are wrong."""
    fields = {f for f in fields if values[f] is not UNREADABLE}
    found = Collector()
    if "variant_name" in fields:
        values["variant_name"] = variants.clean_name(values["variant_name"])
    if fields & {"variant_of", "variant_name"} and UNREADABLE not in (values["variant_of"], values["variant_name"]):
        with found:
            variants.check(session, product_id=product_id, variant_of=values["variant_of"],
                           variant_name=values["variant_name"], currency=currency)
    if fields & {"variant_of", "is_active"} and values["is_active"] and isinstance(values["variant_of"], int) \
            and not found.errors and not variants.main_is_shown_id(session, values["variant_of"], lock=True):
        found.add(InvalidRequest("visible: its main product %(id)s is hidden: show that one first",
                                 id=values["variant_of"]))
    if "name" in fields:
        values["name"] = name = (values["name"] or "").strip()
        if not name:
            found.add(InvalidRequest("name: must not be empty"))
        elif len(name) > MAX_NAME:
            found.add(InvalidRequest("name: at most %(MAX_NAME)s characters", MAX_NAME=MAX_NAME))
    if "description" in fields and len(values["description"] or "") > MAX_DESCRIPTION:
        found.add(InvalidRequest("description: at most %(MAX_DESCRIPTION)s characters",
                                 MAX_DESCRIPTION=MAX_DESCRIPTION))
    if "price_cents" in fields:
        price = values["price_cents"]
        if not isinstance(price, int) or isinstance(price, bool) or not 1 <= price < MAX_CENTS:
            found.add(InvalidRequest("price: must be more than zero and less than 100 billion"))
    if "cost_price_cents" in fields:
        cost = values["cost_price_cents"]
        if cost is not None and (not isinstance(cost, int) or isinstance(cost, bool)
                                 or not 0 <= cost < MAX_CENTS):
            found.add(InvalidRequest("cost price: must be zero or more and less than 100 billion"))
    if "delivery_mode" in fields and values["delivery_mode"] not in DELIVERY_MODES:
        found.add(InvalidRequest("delivery: must be one of %(modes)s", modes=", ".join(DELIVERY_MODES)))
    if "delivery_mode" in fields and values["delivery_mode"] != "auto" and product_id is not None and \
            session.get(VoucherTerms, product_id) is not None:
        found.add(InvalidRequest("delivery: a voucher product's codes are delivered automatically (auto)"))
    if "delivery_mode" in fields and values["delivery_mode"] == "loop":
        # One key for every buyer: an order of two would pay twice for the same key.
        values["min_quantity"] = values["max_quantity"] = 1
        fields |= {"min_quantity", "max_quantity"}
    elif values.get("delivery_mode") == "loop" and fields & {"min_quantity", "max_quantity"} and \
            (values["min_quantity"], values["max_quantity"]) != (1, 1):
        found.add(InvalidRequest("quantity limits: a loop-key product sells one at a time"))
    if "low_stock_threshold" in fields:
        with found:
            _in_range(values["low_stock_threshold"], "low-stock threshold", 0, MAX_THRESHOLD)
    if fields & {"min_quantity", "max_quantity"}:
        low, high = values["min_quantity"], values["max_quantity"]
        before = len(found.errors)
        for value, field in ((low, "minimum quantity"), (high, "maximum quantity")):
            if value is not UNREADABLE:
                with found:
                    _in_range(value, field, 1, MAX_QUANTITY)
        if len(found.errors) == before and UNREADABLE not in (low, high) and high < low:
            found.add(InvalidRequest("quantity limits: need 1 <= min <= max"))
    if "sort_order" in fields:
        with found:
            _in_range(values["sort_order"], "sort order", *SORT_ORDER_RANGE)
    if "buyer_daily_limit" in fields and values["buyer_daily_limit"] is not None:
        with found:
            _in_range(values["buyer_daily_limit"], "daily limit per buyer", 1, MAX_QUANTITY)
    if "price_tiers" in fields and values["price_tiers"] is not None:
        given = values["price_tiers"]
        if not isinstance(given, str) or given.lstrip().startswith("["):   # stored JSON, or a list of pairs
            given = pricing.tiers_text(given if isinstance(given, str) else json.dumps(given))
        with found:
            values["price_tiers"] = pricing.parse_tiers(given)
    if "member_price_cents" in fields and values["member_price_cents"] is not None:
        member = values["member_price_cents"]
        if not isinstance(member, int) or isinstance(member, bool) or not 1 <= member < MAX_CENTS:
            found.add(InvalidRequest("member price: must be more than zero"))
    if "sale_price_cents" in fields and values["sale_price_cents"] is not None:
        sale = values["sale_price_cents"]
        if not isinstance(sale, int) or isinstance(sale, bool) or not 1 <= sale < MAX_CENTS:
            found.add(InvalidRequest("sale price: must be more than zero"))
    if fields & {"sale_starts_at", "sale_ends_at"}:
        starts, ends = values.get("sale_starts_at"), values.get("sale_ends_at")
        if isinstance(starts, dt.datetime) and isinstance(ends, dt.datetime) and ends <= starts:
            found.add(InvalidRequest("sale until: must be after sale from"))
    if "input_fields" in fields:
        given = values["input_fields"]
        if isinstance(given, list):       # stored or from a caller: checked the same way as typed text
            given = inputs.fields_text(given)
        with found:
            values["input_fields"] = inputs.dump(inputs.parse_fields(given or ""))
    if "category_id" in fields and values["category_id"] is not None:
        category_id = values["category_id"]
        if (not isinstance(category_id, int) or not 1 <= category_id < 2**31
                or session.get(Category, category_id) is None):
            found.add(InvalidRequest("category: category %(category_id)s does not exist", category_id=category_id))
    found.check()
    return values


def create_product(session: Session, *, name: str, price_cents: int, actor: str,
                   delivery_mode: str = "auto", low_stock_threshold: int = 0,
                   cost_price_cents: int | None = None, currency: str = "CNY",
                   min_quantity: int = 1, max_quantity: int = 100, description: str = "",
                   category_id: int | None = None, sort_order: int = 0, is_active: bool = True,
                   input_fields: str | list | None = None, source_ip: str | None = None,
                   buyer_daily_limit: int | None = None, price_tiers: str | None = None,
                   sale_price_cents: int | None = None, sale_starts_at: dt.datetime | None = None,
                   sale_ends_at: dt.datetime | None = None, variant_of: int | None = None,
                   variant_name: str = "", member_price_cents: int | None = None) -> Product:
    if not (len(currency) == 3 and currency.isascii() and currency.isalpha()):
        raise InvalidRequest("currency: a three-letter ISO code such as CNY")
    values = _check_product(session, {
        "name": name, "category_id": category_id, "description": description or "",
        "price_cents": price_cents, "cost_price_cents": cost_price_cents, "delivery_mode": delivery_mode,
        "min_quantity": min_quantity, "max_quantity": max_quantity,
        "low_stock_threshold": low_stock_threshold, "sort_order": sort_order, "is_active": bool(is_active),
        "input_fields": input_fields or "", "buyer_daily_limit": buyer_daily_limit, "price_tiers": price_tiers,
        "sale_price_cents": sale_price_cents, "sale_starts_at": sale_starts_at, "sale_ends_at": sale_ends_at,
        "variant_of": variant_of, "variant_name": variant_name or "", "member_price_cents": member_price_cents,
    }, PRODUCT_FIELDS, currency=currency.upper())
    product = Product(currency=currency.upper(), **values)
    session.add(product)
    session.flush()
    record(session, "product.create", actor=actor, target=f"product:{product.id}", source_ip=source_ip,
           details={"name": product.name, "price": format_cents(price_cents), "delivery": delivery_mode,
                    "category": category_id, "visible": product.is_active,
                    **({"variant_of": variant_of, "variant": product.variant_name} if variant_of else {})})
    return product


def _audit_value(field: str, value):
    if field in ("price_cents", "cost_price_cents", "sale_price_cents", "member_price_cents") and value is not None:
        return format_cents(value)
    if isinstance(value, dt.datetime):
        return value.isoformat(timespec="seconds") + "Z"
    if field == "description" and len(value or "") > AUDIT_TEXT:
        return value[:AUDIT_TEXT] + "…"
    return value


def update_product(session: Session, product: Product, *, actor: str, source_ip: str | None = None,
                   **changes) -> dict:
    """Set some of PRODUCT_FIELDS; returns {audit name: {old, new}} of what changed (audited).

    Only changed fields are checked, so hiding a product never fails on an
    older value that today's rules would refuse.
    """
    unknown = set(changes) - set(PRODUCT_FIELDS)
    if unknown:
        raise TypeError(f"update_product: unknown fields {sorted(unknown)}")
    if {"variant_of", "variant_name", "is_active"} & set(changes):
        # Its row first (MariaDB): a concurrent change of its group waits, and its rules are read after.
        session.execute(sa.select(Product.id).where(Product.id == product.id).with_for_update())
    current = {field: getattr(product, field) for field in PRODUCT_FIELDS}
    if "is_active" in changes:
        changes["is_active"] = bool(changes["is_active"])
    values = _check_product(session, {**current, **changes}, changes, product_id=product.id,
                            currency=product.currency)
    changed = [field for field in PRODUCT_FIELDS if values[field] != current[field]]
    if not changed:
        return {}
    for field in changed:
        setattr(product, field, values[field])
    session.flush()
    details = {PRODUCT_FIELDS[f]: {"old": _audit_value(f, current[f]), "new": _audit_value(f, values[f])}
               for f in changed}
    hidden = []
    if "is_active" in changed and not product.is_active:   # hiding a product hides its variants
        hidden = list(session.scalars(sa.select(Product.id).where(Product.variant_of == product.id,
                                                                  Product.is_active.is_(True))))
        if hidden:
            session.execute(sa.update(Product).where(Product.id.in_(hidden)).values(is_active=False)
                            .execution_options(synchronize_session="fetch"))
    record(session, "product.update", actor=actor, target=f"product:{product.id}", source_ip=source_ip,
           details={"name": product.name, "changes": details, **({"variants_hidden": hidden} if hidden else {})})
    return details


def set_product_visible(session: Session, product: Product, visible: bool, *, actor: str,
                        source_ip: str | None = None) -> bool:
    """Show or hide a product in the shop (a product.update entry); False if it already was."""
    return bool(update_product(session, product, actor=actor, source_ip=source_ip, is_active=visible))


def get_product(session: Session, product_id: int) -> Product:
    product = session.get(Product, product_id) if 0 < product_id < 2**63 else None
    if product is None:
        raise NotFound("product %(product_id)s not found", product_id=product_id)
    return product


def available_stock(session: Session, product_id: int) -> int:
    return session.scalar(sa.select(sa.func.count()).select_from(CardKey).where(
        CardKey.product_id == product_id, CardKey.status == "available"))


def stock_by_product(session: Session) -> dict[int, int]:
    """{product id: available keys} for every product with any (a product bought from a
    supplier: the supplier's stock as last synced)."""
    t = CardKey.__table__
    found = dict(session.execute(sa.select(t.c.product_id, sa.func.count()).where(t.c.status == "available")
                                 .group_by(t.c.product_id)).all())
    found.update(supplier_stock(session))
    return found


def supplier_stock_query(products):
    """The supplier's stock of a product bought upstream, as a scalar subquery on `products`
    (None: not bought upstream, or its supplier is off)."""
    return (sa.select(SupplierProduct.stock).join(Supplier, Supplier.id == SupplierProduct.supplier_id)
            .where(SupplierProduct.product_id == products.c.id, Supplier.is_active.is_(True),
                   SupplierProduct.gone.is_(False)).scalar_subquery())


def supplier_stock(session: Session, product_ids: Iterable[int] | None = None) -> dict[int, int]:
    """{our product id: the supplier's stock} for products bought upstream (kamengd.suppliers)."""
    query = (sa.select(SupplierProduct.product_id, SupplierProduct.stock)
             .join(Supplier, Supplier.id == SupplierProduct.supplier_id)
             .join(Product, Product.id == SupplierProduct.product_id)
             .where(Product.delivery_mode == "supplier", Supplier.is_active.is_(True),
                    SupplierProduct.gone.is_(False)))
    if product_ids is not None:
        query = query.where(SupplierProduct.product_id.in_(list(product_ids)))
    return dict(session.execute(query).all())


def pool_stock(session: Session, agent_id: int) -> dict[int, int]:
    """{product id: keys in the agent's stock pool} (kamengd.inventory.pools), on sale only through it."""
    t = CardKey.__table__
    return dict(session.execute(sa.select(t.c.product_id, sa.func.count()).where(
        t.c.status == "pool", t.c.pool_agent_id == agent_id).group_by(t.c.product_id)).all())


def available_by_product(session: Session, product_ids: Iterable[int]) -> dict[int, int]:
    """{product id: available keys} for these products, in one grouped query."""
    ids = list(product_ids)
    if not ids:
        return {}
    t = CardKey.__table__
    found = dict(session.execute(sa.select(t.c.product_id, sa.func.count()).where(
        t.c.product_id.in_(ids), t.c.status == "available").group_by(t.c.product_id)).all())
    found.update(supplier_stock(session, ids))
    return found


def loop_deliveries(session: Session, product_ids: Iterable[int]) -> dict[int, int]:
    """{product id: orders delivered its loop key} for the loop-key products among these."""
    ids = list(product_ids)
    if not ids:
        return {}
    o = Order.__table__
    return dict(session.execute(sa.select(o.c.product_id, sa.func.count()).where(
        o.c.product_id.in_(ids), o.c.loop_key_id.is_not(None), o.c.status.in_(("delivered", "refunded")))
        .group_by(o.c.product_id)).all())


def list_products(session: Session, *, query: str = "", page: int = 1,
                  page_size: int = 50) -> tuple[list[tuple[Product, str | None]], int]:
    """Products whose name contains `query`, as (product, category name), and how many there are."""
    select = sa.select(Product, Category.name).outerjoin(Category, Product.category_id == Category.id)
    query = query.strip()[:MAX_SEARCH]
    if query:
        select = select.where(Product.name.contains(query, autoescape=True))
    total = session.scalar(sa.select(sa.func.count()).select_from(select.subquery()))
    rows = session.execute(select.order_by(Product.sort_order, Product.id)
                           .limit(page_size).offset((page - 1) * page_size)).all()
    return [(p, category) for p, category in rows], total


def product_summary(session: Session, product: Product) -> dict:
    return {"id": product.id, "name": product.name, "price": format_cents(product.price_cents),
            "currency": product.currency, "delivery": product.delivery_mode,
            "low_stock": product.low_stock_threshold, "active": product.is_active,
            "daily_limit": product.buyer_daily_limit, "tiers": pricing.tiers_text(product.price_tiers) or None,
            "sale_price": None if product.sale_price_cents is None else format_cents(product.sale_price_cents),
            "member_price": None if product.member_price_cents is None else format_cents(product.member_price_cents),
            "sale_from": _iso(product.sale_starts_at), "sale_until": _iso(product.sale_ends_at),
            "stock": available_stock(session, product.id),
            **({"variant_of": product.variant_of, "variant": product.variant_name} if product.variant_of else {})}


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") + "Z" if value is not None else None


# --- categories -----------------------------------------------------------

def get_category(session: Session, category_id: int) -> Category:
    category = session.get(Category, category_id) if 0 < category_id < 2**31 else None
    if category is None:
        raise NotFound("category %(category_id)s not found", category_id=category_id)
    return category


def list_categories(session: Session) -> list[tuple[Category, int]]:
    """Every category with how many products it holds, as the tree goes (each under its parent)."""
    return [(c, n) for c, n, _depth in categories_in_tree(session)]


def categories_in_tree(session: Session) -> list[tuple[Category, int, int]]:
    """(category, products in it, depth: 0 at the top) depth first, each level by sort order."""
    counts = (sa.select(Product.category_id, sa.func.count().label("n"))
              .group_by(Product.category_id).subquery())
    rows = {c.id: (c, n) for c, n in session.execute(sa.select(Category, sa.func.coalesce(counts.c.n, 0))
                                                     .outerjoin(counts, counts.c.category_id == Category.id))}
    return [(*rows[node.id], depth) for node, depth in tree.read_tree(session).ordered() if node.id in rows]


def _category_name(session: Session, name: str, exclude_id: int | None = None) -> str:
    name = (name or "").strip()
    if not name:
        raise InvalidRequest("name: must not be empty")
    if len(name) > MAX_CATEGORY_NAME:
        raise InvalidRequest("name: at most %(MAX_CATEGORY_NAME)s characters", MAX_CATEGORY_NAME=MAX_CATEGORY_NAME)
    # Case-insensitive, as MySQL's unique index compares: the same answer on every database.
    clash = sa.select(Category.id).where(sa.func.lower(Category.name) == name.lower())
    if exclude_id is not None:
        clash = clash.where(Category.id != exclude_id)
    if session.scalar(clash.limit(1)) is not None:
        raise Conflict("name: a category named %(name)r already exists", name=name)
    return name


def _flush_category(session: Session, name: str) -> None:
    try:
        with session.begin_nested():
            session.flush()
    except sa.exc.IntegrityError:   # created by someone else since the check
        raise Conflict("name: a category named %(name)r already exists", name=name) from None


def _parent(session: Session, category_id: int | None, given) -> int | None:
    """The parent a form or a caller gave ("" or None: top level), checked against the tree."""
    if given is None or (isinstance(given, str) and not given.strip()):
        return None
    parent_id = whole_number(given, "parent") if isinstance(given, str) else given
    if not isinstance(parent_id, int) or not 1 <= parent_id < 2**31:
        raise InvalidRequest("parent: category %(category_id)s does not exist", category_id=str(given)[:20])
    tree.check_parent(tree.read_tree(session, lock=True), category_id, parent_id)
    return parent_id


def create_category(session: Session, *, name: str, actor: str, sort_order: int | str = 0,
                    is_active: bool = True, parent_id: int | str | None = None,
                    source_ip: str | None = None) -> Category:
    found = Collector()
    with found:
        name = _category_name(session, name)
    with found:
        sort_order = whole_number(sort_order, "sort order")
        _in_range(sort_order, "sort order", *SORT_ORDER_RANGE)
    with found:
        parent_id = _parent(session, None, parent_id)
    found.check()
    category = Category(name=name, sort_order=sort_order, is_active=bool(is_active), parent_id=parent_id)
    session.add(category)
    _flush_category(session, name)
    record(session, "category.create", actor=actor, target=f"category:{category.id}", source_ip=source_ip,
           details={"name": name, "sort_order": sort_order, "visible": category.is_active, "parent": parent_id})
    return category


# update_category's "leave the parent as it is"
KEEP = object()


def update_category(session: Session, category: Category, *, actor: str, name: str | None = None,
                    sort_order: int | str | None = None, is_active: bool | None = None,
                    parent_id=KEEP, source_ip: str | None = None) -> dict:
    """Rename, reorder, move, hide or show; returns {field: {old, new}} of what changed (audited)."""
    new = {"name": category.name, "sort_order": category.sort_order, "visible": category.is_active,
           "parent": category.parent_id}
    found = Collector()
    if name is not None:
        with found:
            new["name"] = _category_name(session, name, exclude_id=category.id)
    if sort_order is not None:
        with found:
            new["sort_order"] = whole_number(sort_order, "sort order")
            _in_range(new["sort_order"], "sort order", *SORT_ORDER_RANGE)
    if parent_id is not KEEP:
        with found:
            new["parent"] = _parent(session, category.id, parent_id)
    found.check()
    if is_active is not None:
        new["visible"] = bool(is_active)
    old = {"name": category.name, "sort_order": category.sort_order, "visible": category.is_active,
           "parent": category.parent_id}
    changes = {k: {"old": old[k], "new": new[k]} for k in old if old[k] != new[k]}
    if not changes:
        return {}
    category.name, category.sort_order, category.is_active = new["name"], new["sort_order"], new["visible"]
    category.parent_id = new["parent"]
    _flush_category(session, new["name"])
    record(session, "category.update", actor=actor, target=f"category:{category.id}", source_ip=source_ip,
           details={"name": category.name, "changes": changes})
    return changes

from __future__ import annotations

import click
import sqlalchemy as sa

from ..audit.services import cli_actor
from ..catalog.models import DELIVERY_MODES, Product
from ..catalog.services import (SORT_ORDER_RANGE, create_product, get_product, list_categories, product_summary,
                                update_product)
from ..context import get_config
from ..errors import InvalidRequest
from ..extensions import db
from ..localtime import parse_when
from ..money import parse_money
from ..payments import services as payments
from .group import cli, emit, json_option, with_app


@cli.group()
def product():
    """Products."""


def category_id(given: str) -> int:
    """--category: a category's id, or its name (as the panel shows it, any case)."""
    text = given.strip()
    if text.isascii() and text.isdigit():
        return int(text)   # create_product / update_product say when there is no such category
    for category, _count in list_categories(db.session):
        if category.name.lower() == text.lower():
            return category.id
    raise InvalidRequest("category: no category named %(name)r", name=text)


def cost_cents(given: str) -> int:
    return parse_money(given, field="cost price", allow_zero=True)


category_option = click.option("--category", metavar="ID|NAME", help="The product's category, by id or name.")
sort_order_option = click.option("--sort-order", type=click.IntRange(*SORT_ORDER_RANGE),
                                  help="Lower first in the shop.")


@product.command("create")
@click.option("--name", required=True)
@click.option("--price", required=True, metavar="DECIMAL", help="e.g. 9.90")
@click.option("--delivery", type=click.Choice(DELIVERY_MODES), default="auto", show_default=True)
@click.option("--low-stock", type=click.IntRange(min=0), default=0, show_default=True,
              help="Warn when available stock falls below this.")
@click.option("--cost-price", metavar="DECIMAL")
@click.option("--currency", default="CNY", show_default=True)
@click.option("--min-quantity", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--max-quantity", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--daily-limit", type=click.IntRange(min=1), metavar="N",
              help="At most N units to one buyer (e-mail) a day.")
@click.option("--description", default="")
@category_option
@sort_order_option
@click.option("--hidden", is_flag=True, help="Create it hidden from the shop (show it with `product edit --shown`).")
@click.option("--variant-of", type=click.IntRange(min=1), metavar="ID",
              help="Make it a variant (SKU, 规格) of product ID: chosen on that product's page.")
@click.option("--variant", "variant_name", metavar="NAME", default="",
              help="The option's name buyers choose, e.g. '3 个月' (a variant needs one).")
@json_option
@with_app
def product_create(name, price, delivery, low_stock, cost_price, currency, min_quantity,
                   max_quantity, daily_limit, description, category, sort_order, hidden, variant_of, variant_name,
                   as_json):
    """Create a product (or a variant of one)."""
    p = create_product(db.session, name=name, price_cents=parse_money(price), actor=cli_actor(),
                       delivery_mode=delivery, low_stock_threshold=low_stock,
                       cost_price_cents=cost_cents(cost_price) if cost_price is not None else None,
                       currency=currency, min_quantity=min_quantity, max_quantity=max_quantity,
                       description=description, category_id=category_id(category) if category else None,
                       sort_order=sort_order or 0, is_active=not hidden, buyer_daily_limit=daily_limit,
                       variant_of=variant_of, variant_name=variant_name)
    summary = product_summary(db.session, p)
    emit(as_json, summary, f"created product {p.id}: {p.name} ({summary['price']} {p.currency})")


@product.command("edit")
@click.argument("product_id", metavar="ID", type=click.IntRange(min=1))
@click.option("--name")
@click.option("--price", metavar="DECIMAL", help="e.g. 9.90")
@click.option("--delivery", type=click.Choice(DELIVERY_MODES))
@click.option("--low-stock", type=click.IntRange(min=0), help="Warn when available stock falls below this.")
@click.option("--cost-price", "--cost", "cost_price", metavar="DECIMAL", help="What a key costs you.")
@click.option("--no-cost-price", is_flag=True, help="Forget the cost price.")
@click.option("--min-quantity", type=click.IntRange(min=1))
@click.option("--max-quantity", type=click.IntRange(min=1))
@click.option("--daily-limit", type=click.IntRange(min=1), metavar="N",
              help="At most N units to one buyer (e-mail) a day.")
@click.option("--no-daily-limit", is_flag=True, help="Forget the daily limit per buyer.")
@click.option("--tiers", metavar="Q=PRICE,…", help="Wholesale tiers, e.g. 10=8.50,50=8.00 (an empty value: none).")
@click.option("--sale-price", metavar="DECIMAL", help="A time-window price (flash sale).")
@click.option("--sale-from", metavar="TIME", help="The window's start, in the shop's time zone (empty: now).")
@click.option("--sale-until", metavar="TIME", help="The window's end, in the shop's time zone (empty: open).")
@click.option("--no-sale", is_flag=True, help="End the time-window price.")
@click.option("--member-price", metavar="DECIMAL",
              help="The member price (会员价): for buyers signed in as members or agents, when lower.")
@click.option("--no-member-price", is_flag=True, help="Forget the member price.")
@click.option("--description")
@category_option
@click.option("--no-category", is_flag=True, help="Take the product out of its category.")
@sort_order_option
@click.option("--hidden/--shown", "hidden", default=None,
              help="Hide it from the shop (and its variants), or show it again.")
@click.option("--variant-of", type=click.IntRange(min=1), metavar="ID", help="Make it a variant of product ID.")
@click.option("--no-variant-of", is_flag=True, help="Make a variant a product of its own again.")
@click.option("--variant", "variant_name", metavar="NAME", help="The option's name buyers choose.")
@json_option
@with_app
def product_edit(product_id, name, price, delivery, low_stock, cost_price, no_cost_price, min_quantity,
                 max_quantity, daily_limit, no_daily_limit, tiers, sale_price, sale_from, sale_until, no_sale,
                 description, category, no_category, sort_order, hidden, variant_of, no_variant_of, variant_name,
                 member_price, no_member_price, as_json):
    """Change a product: only the options given (audited as product.update, with old and new values)."""
    if cost_price is not None and no_cost_price:
        raise click.UsageError("give --cost-price or --no-cost-price, not both")
    if category is not None and no_category:
        raise click.UsageError("give --category or --no-category, not both")
    p = get_product(db.session, product_id)
    changes = {field: value for field, value in (
        ("name", name), ("description", description), ("delivery_mode", delivery),
        ("low_stock_threshold", low_stock), ("min_quantity", min_quantity), ("max_quantity", max_quantity),
        ("sort_order", sort_order)) if value is not None}
    if price is not None:
        changes["price_cents"] = parse_money(price)
    if cost_price is not None:
        changes["cost_price_cents"] = cost_cents(cost_price)
    elif no_cost_price:
        changes["cost_price_cents"] = None
    if daily_limit is not None and no_daily_limit:
        raise click.UsageError("give --daily-limit or --no-daily-limit, not both")
    if daily_limit is not None or no_daily_limit:
        changes["buyer_daily_limit"] = daily_limit
    if tiers is not None:
        changes["price_tiers"] = tiers.strip() or None
    if no_sale and any(v is not None for v in (sale_price, sale_from, sale_until)):
        raise click.UsageError("give the sale's options or --no-sale, not both")
    zone = get_config().site.timezone
    if no_sale:
        changes.update(sale_price_cents=None, sale_starts_at=None, sale_ends_at=None)
    if sale_price is not None:
        changes["sale_price_cents"] = parse_money(sale_price, field="sale price")
    if sale_from is not None:
        changes["sale_starts_at"] = parse_when(sale_from, "sale from", zone)
    if sale_until is not None:
        changes["sale_ends_at"] = parse_when(sale_until, "sale until", zone)
    if category is not None:
        changes["category_id"] = category_id(category)
    elif no_category:
        changes["category_id"] = None
    if hidden is not None:
        changes["is_active"] = not hidden
    if member_price is not None and no_member_price:
        raise click.UsageError("give --member-price or --no-member-price, not both")
    if member_price is not None:
        changes["member_price_cents"] = parse_money(member_price, field="member price")
    elif no_member_price:
        changes["member_price_cents"] = None
    if variant_of is not None and no_variant_of:
        raise click.UsageError("give --variant-of or --no-variant-of, not both")
    if variant_of is not None or no_variant_of:
        changes["variant_of"] = variant_of
    if variant_name is not None:
        changes["variant_name"] = variant_name
    if not changes:
        raise click.UsageError("nothing to change: give at least one option (see --help)")
    changed = update_product(db.session, p, actor=cli_actor(), **changes)
    summary = product_summary(db.session, p)
    text = (f"updated product {p.id}: {', '.join(changed)}" if changed
            else f"product {p.id} unchanged") + f" ({p.name}, {summary['price']} {p.currency})"
    emit(as_json, {**summary, "changed": changed}, text)


@product.command("list")
@json_option
@with_app(readonly=True)
def product_list(as_json):
    """List products with their available stock."""
    products = db.session.scalars(sa.select(Product).order_by(Product.id)).all()
    rows = [product_summary(db.session, p) for p in products]
    text = "\n".join(f"{r['id']}\t{r['name']}\t{r['price']}\tstock {r['stock']}" for r in rows)
    emit(as_json, {"products": rows}, text or "no products")


@product.command("channels")
@click.argument("product_id", type=int)
@click.option("--set", "codes", metavar="CODES", help="Pay through these channels only (codes separated by commas), "
                                                      "or 'all' for any channel.")
@json_option
@with_app
def product_channels(product_id, codes, as_json):
    """Show or set the payment channels a product is paid through (routing picks among them)."""
    if codes is not None:
        found = payments.set_product_channels(db.session, product_id, codes, actor=cli_actor())
    else:
        get_product(db.session, product_id)
        found = payments.product_channels(db.session, product_id)
    emit(as_json, {"product_id": product_id, "channels": found},
         f"product {product_id}: " + (", ".join(found) if found else "any channel"))

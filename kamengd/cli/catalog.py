from __future__ import annotations

import click
import sqlalchemy as sa

from ..audit.services import cli_actor
from ..catalog.models import DELIVERY_MODES, Product
from ..catalog.services import create_product, product_summary
from ..extensions import db
from ..money import parse_money
from .group import cli, emit, json_option, with_app


@cli.group()
def product():
    """Products."""


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
@click.option("--description", default="")
@json_option
@with_app
def product_create(name, price, delivery, low_stock, cost_price, currency, min_quantity,
                   max_quantity, description, as_json):
    """Create a product."""
    p = create_product(db.session, name=name, price_cents=parse_money(price), actor=cli_actor(),
                       delivery_mode=delivery, low_stock_threshold=low_stock,
                       cost_price_cents=parse_money(cost_price, field="cost price", allow_zero=True)
                       if cost_price is not None else None,
                       currency=currency, min_quantity=min_quantity, max_quantity=max_quantity,
                       description=description)
    summary = product_summary(db.session, p)
    emit(as_json, summary, f"created product {p.id}: {p.name} ({summary['price']} {p.currency})")


@product.command("list")
@json_option
@with_app(readonly=True)
def product_list(as_json):
    """List products with their available stock."""
    products = db.session.scalars(sa.select(Product).order_by(Product.id)).all()
    rows = [product_summary(db.session, p) for p in products]
    text = "\n".join(f"{r['id']}\t{r['name']}\t{r['price']}\tstock {r['stock']}" for r in rows)
    emit(as_json, {"products": rows}, text or "no products")

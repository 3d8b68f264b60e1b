"""Variants (SKUs, 规格): a product sold in several options, each its own product.

A variant is a product whose `variant_of` names its main product: its own price, cost, stock,
delivery and limits, so an order of it is an order of that product like any other (nothing on
the order path knows variants). The storefront lists the main product only; its page, and each
variant's, offers the group's options (the main product's own first, then the variants by sort
order), each by its `variant_name`. One level: a variant has no variants, and a product with
variants is no variant. Hiding the main product hides its variants too (catalog.services).
"""
from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..errors import InvalidRequest
from .models import Product

MAX_VARIANT_NAME = 64


def clean_name(value) -> str:
    """A variant's name, spaces folded."""
    return " ".join(str(value or "").split())


def check(session: Session, *, product_id: int | None, variant_of: int | None, variant_name: str,
          currency: str) -> None:
    """Raise InvalidRequest unless the product (`product_id`, None while it is made) may be a
    variant of `variant_of` (None: a main product) named `variant_name`."""
    if len(variant_name) > MAX_VARIANT_NAME:
        raise InvalidRequest("variant: at most %(n)s characters", n=MAX_VARIANT_NAME)
    if variant_of is None:
        return
    if not isinstance(variant_of, int) or isinstance(variant_of, bool) or not 1 <= variant_of < 2**31:
        raise InvalidRequest("variant of: the id of a product")
    if variant_of == product_id:
        raise InvalidRequest("variant of: a product is no variant of itself")
    # Locked (MariaDB): hiding it, or making it a variant, waits for this change, or this for that.
    main = session.scalars(sa.select(Product).where(Product.id == variant_of).with_for_update()).first()
    if main is None:
        raise InvalidRequest("variant of: product %(id)s does not exist", id=variant_of)
    if main.variant_of is not None:
        raise InvalidRequest("variant of: product %(id)s is itself a variant of product %(main)s: choose that one",
                             id=variant_of, main=main.variant_of)
    if main.currency != currency:
        raise InvalidRequest("variant of: product %(id)s is priced in %(currency)s; its variants are too",
                             id=variant_of, currency=main.currency)
    if product_id is not None and session.scalar(
            sa.select(Product.id).where(Product.variant_of == product_id).limit(1)) is not None:
        raise InvalidRequest("variant of: this product has variants of its own")
    if not variant_name:
        raise InvalidRequest("variant: name the option buyers choose, e.g. 3 个月")


def api_fields(product: Product) -> dict:
    """What the APIs' product lists say of a variant (SKU): its main product and the option it
    is; the main product's own option, when it has one."""
    if product.variant_of is not None:
        return {"variant_of": product.variant_of, "variant": product.variant_name}
    return {"variant": product.variant_name} if product.variant_name else {}


def on_sale(products: list[Product]) -> list[Product]:
    """Of the active `products` (all of them), those on sale: a variant whose main product is
    hidden is not (its group is hidden)."""
    shown = {p.id for p in products}
    return [p for p in products if p.variant_of is None or p.variant_of in shown]


def label(product: Product) -> str:
    """What a buyer chooses the product by among its group's options."""
    return product.variant_name or product.name


def variants_of(session: Session, main_ids: Iterable[int], *, shown_only: bool = True) -> dict[int, list[Product]]:
    """{main product id: its variants (on sale only, with `shown_only`), in their order}."""
    ids = list(main_ids)
    if not ids:
        return {}
    query = sa.select(Product).where(Product.variant_of.in_(ids)).order_by(Product.sort_order, Product.id)
    if shown_only:
        query = query.where(Product.is_active.is_(True))
    found: dict[int, list[Product]] = {}
    for variant in session.scalars(query):
        found.setdefault(variant.variant_of, []).append(variant)
    return found


def group(session: Session, product: Product) -> list[Product]:
    """The options offered with `product` (on sale): its main product's own, then the variants;
    [] for a product without variants."""
    main = product if product.variant_of is None else session.get(Product, product.variant_of)
    if main is None or not main.is_active:
        return []
    variants = variants_of(session, [main.id]).get(main.id, [])
    return [main, *variants] if variants else []


def main_is_shown(session: Session, product: Product) -> bool:
    """A variant is on sale while its main product is (hiding that hides the group)."""
    return product.variant_of is None or main_is_shown_id(session, product.variant_of)


def main_is_shown_id(session: Session, main_id: int, *, lock: bool = False) -> bool:
    """With `lock` (a change of the variant, MariaDB): hiding the main product meanwhile waits for
    this change, and its cascade then hides the variant too."""
    query = sa.select(Product.is_active).where(Product.id == main_id)
    return bool(session.scalar(query.with_for_update() if lock else query))

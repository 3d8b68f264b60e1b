from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..audit.services import record
from ..errors import InvalidRequest, NotFound
from ..inventory.models import CardKey
from ..money import format_cents
from .models import DELIVERY_MODES, Category, Product

MAX_NAME = 200


def create_product(session: Session, *, name: str, price_cents: int, actor: str,
                   delivery_mode: str = "auto", low_stock_threshold: int = 0,
                   cost_price_cents: int | None = None, currency: str = "CNY",
                   min_quantity: int = 1, max_quantity: int = 100, description: str = "",
                   category_id: int | None = None) -> Product:
    name = name.strip()
    if not name:
        raise InvalidRequest("name: must not be empty")
    if len(name) > MAX_NAME:
        raise InvalidRequest(f"name: at most {MAX_NAME} characters")
    if delivery_mode not in DELIVERY_MODES:
        raise InvalidRequest(f"delivery: must be one of {', '.join(DELIVERY_MODES)}")
    if low_stock_threshold < 0:
        raise InvalidRequest("low-stock: must not be negative")
    if not (len(currency) == 3 and currency.isascii() and currency.isalpha()):
        raise InvalidRequest("currency: a three-letter ISO code such as CNY")
    if min_quantity < 1 or max_quantity < min_quantity:
        raise InvalidRequest("quantity limits: need 1 <= min <= max")
    if category_id is not None and session.get(Category, category_id) is None:
        raise NotFound(f"category {category_id} not found")
    product = Product(name=name, price_cents=price_cents, cost_price_cents=cost_price_cents,
                      currency=currency.upper(), delivery_mode=delivery_mode,
                      low_stock_threshold=low_stock_threshold, min_quantity=min_quantity,
                      max_quantity=max_quantity, description=description, category_id=category_id)
    session.add(product)
    session.flush()
    record(session, "product.create", actor=actor, target=f"product:{product.id}",
           details={"name": name, "price": format_cents(price_cents), "delivery": delivery_mode})
    return product


def get_product(session: Session, product_id: int) -> Product:
    product = session.get(Product, product_id)
    if product is None:
        raise NotFound(f"product {product_id} not found")
    return product


def available_stock(session: Session, product_id: int) -> int:
    return session.scalar(sa.select(sa.func.count()).select_from(CardKey).where(
        CardKey.product_id == product_id, CardKey.status == "available"))


def product_summary(session: Session, product: Product) -> dict:
    return {"id": product.id, "name": product.name, "price": format_cents(product.price_cents),
            "currency": product.currency, "delivery": product.delivery_mode,
            "low_stock": product.low_stock_threshold, "active": product.is_active,
            "stock": available_stock(session, product.id)}

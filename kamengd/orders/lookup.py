"""A buyer looking up their order (GET /api/v1/orders/<no>): one read, no write lock.

One statement reads the order and, once it is delivered, its keys (a LEFT
JOIN); the token is compared in constant time, a query password checked with
argon2 — in a snapshot read that never waits for a writer.
"""
from __future__ import annotations

import hmac

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..accounts.passwords import verify_password
from ..errors import NotFound
from ..inventory.models import CardKey
from ..money import format_cents
from ..vault import Vault
from .checkout import token_hash
from .models import Order
from .services import order_keys

_o, _k = Order.__table__, CardKey.__table__
_loop = CardKey.__table__.alias("loop_key")   # a loop-key order's one key (the same for every buyer)
_LOOKUP = (
    sa.select(_o.c.order_no, _o.c.status, _o.c.amount_cents, _o.c.currency, _o.c.quantity, _o.c.product_id,
              _o.c.created_at, _o.c.expires_at, _o.c.token_hash, _o.c.query_password_hash, _o.c.pay_type,
              _o.c.discount_cents, _o.c.points_used, _o.c.points_discount_cents,
              *(sa.func.coalesce(_k.c[name], _loop.c[name]).label(name)
                for name in ("fingerprint", "nonce", "ciphertext", "key_version")))
    .select_from(_o.outerjoin(_k, sa.and_(_k.c.order_id == _o.c.id, _k.c.status == "sold",
                                          _o.c.status == "delivered"))
                 .outerjoin(_loop, sa.and_(_loop.c.id == _o.c.loop_key_id, _o.c.status == "delivered")))
    .where(_o.c.order_no == sa.bindparam("order_no"))
    .order_by(_k.c.id))


def _facts(order) -> dict:
    """What its buyer sees of an order (a row of _LOOKUP or an Order), but the keys."""
    data = {"order_no": order.order_no, "status": order.status, "amount": format_cents(order.amount_cents),
            "currency": order.currency, "quantity": order.quantity, "product_id": order.product_id,
            "created_at": order.created_at.isoformat(timespec="seconds") + "Z",
            "expires_at": order.expires_at.isoformat(timespec="seconds") + "Z"}
    if order.pay_type:
        data["pay_type"] = order.pay_type
    if order.discount_cents:
        data["discount"] = format_cents(order.discount_cents)
    if order.points_used:
        data["points_used"] = order.points_used
        data["points_discount"] = format_cents(order.points_discount_cents)
    return data


def buyer_order_view(session: Session, vault: Vault, order_no: str, *, token: str | None = None,
                     query_password: str | None = None) -> dict:
    """The order as CONTRACT.md §2 shows it to its buyer; NotFound for anyone else, the
    same as for an order that does not exist."""
    rows = session.connection().execute(_LOOKUP, {"order_no": str(order_no)[:32]}).all()
    order = rows[0] if rows else None
    ok = False
    if order is not None and token:
        ok = hmac.compare_digest(bytes(order.token_hash), token_hash(token))
    elif order is not None and query_password and order.query_password_hash:
        ok = verify_password(order.query_password_hash, query_password)
    elif query_password:
        verify_password(None, query_password)  # same time as a real check
    if not ok:
        raise NotFound("order not found")
    data = _facts(order)
    if order.status == "delivered":
        data["keys"] = [vault.decrypt_card_key(order.product_id, r.fingerprint, r.nonce, r.ciphertext,
                                               r.key_version).decode("utf-8")
                        for r in rows if r.ciphertext is not None]
    return data


def order_view(session: Session, vault: Vault, order: Order) -> dict:
    """The same view of an Order its buyer already proved to own (the storefront's pages)."""
    data = _facts(order)
    if order.status == "delivered":
        data["keys"] = order_keys(session, vault, order)
    return data

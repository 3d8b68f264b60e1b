"""Placing an order: the hot path of the shop, shared by the API and the storefront.

Everything slow happens before the write transaction: the input is checked,
the query password hashed (argon2, ~100 ms) and the channel's merchant key
decrypted (cached per process, keyed by the secret's nonce, so a changed key
is never used stale). The transaction itself is three statements on SQLite
(four on MySQL): one SELECT reads the product, the channel, the order
timeout and whether paid buyers wait for this product; one INSERT writes the
order; one UPDATE reserves its keys (MySQL: SELECT … FOR UPDATE SKIP LOCKED,
then UPDATE). The pay URL and the answer are built before the commit; the
request boundary commits.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
from dataclasses import dataclass
from urllib.parse import urlencode

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..accounts.passwords import hash_password
from ..catalog.models import Product
from ..database import utcnow
from ..errors import InvalidRequest, NotFound, OutOfStock
from ..inventory.models import CardKey
from ..money import format_cents
from ..payments import epay
from ..payments.keycache import channel_secrets_cached, has_cached
from ..payments.models import PaymentChannel
from ..settings.services import decode_setting, setting_value_query
from ..vault import Vault
from .models import Order
from .validation import check_order_input

_p, _c, _o, _k = Product.__table__, PaymentChannel.__table__, Order.__table__, CardKey.__table__

# One statement for everything an order needs to know. The channel is a LEFT
# JOIN: a missing channel is an input error, a missing product a 404.
_CHECK = (
    sa.select(_p.c.name, _p.c.price_cents, _p.c.currency, _p.c.is_active, _p.c.delivery_mode,
              _p.c.min_quantity, _p.c.max_quantity,
              _c.c.id.label("channel_id"), _c.c.type.label("channel_type"), _c.c.is_enabled, _c.c.options,
              _c.c.secret_nonce, _c.c.secret_ciphertext, _c.c.secret_key_version,
              setting_value_query("orders.timeout_minutes").label("timeout"),
              # Buyers who already paid come first: while one waits for this
              # product, nobody new buys it (imports, expiries and the sweep serve them).
              sa.exists().where(_o.c.status == "paid", _o.c.product_id == _p.c.id).label("waiting"))
    .select_from(_p.outerjoin(_c, _c.c.code == sa.bindparam("code")))
    .where(_p.c.id == sa.bindparam("product_id")))

_INSERT = _o.insert()

# SQLite holds the write lock for the whole transaction: one UPDATE picks and claims.
_RESERVE_SQLITE = (
    _k.update()
    .where(_k.c.id.in_(sa.select(_k.c.id).where(_k.c.product_id == sa.bindparam("pid"),
                                                 _k.c.status == "available")
                       .order_by(_k.c.id).limit(sa.bindparam("n")).scalar_subquery()),
           _k.c.status == "available")
    .values(status="reserved", order_id=sa.bindparam("oid"), reserved_until=sa.bindparam("until")))
_UNRESERVE = (_k.update().where(_k.c.order_id == sa.bindparam("oid"), _k.c.status == "reserved")
              .values(status="available", order_id=None, reserved_until=None))
_PICK_MYSQL = (sa.select(_k.c.id).where(_k.c.product_id == sa.bindparam("pid"), _k.c.status == "available")
               .order_by(_k.c.id).limit(sa.bindparam("n")).with_for_update(skip_locked=True))
_CLAIM_MYSQL = (_k.update().where(_k.c.id.in_(sa.bindparam("ids", expanding=True)), _k.c.status == "available")
                .values(status="reserved", order_id=sa.bindparam("oid"), reserved_until=sa.bindparam("until")))


def new_order_no(now: dt.datetime) -> str:
    """Date for humans, then 20 random digits (66 bits) from the CSPRNG."""
    return f"{now:%Y%m%d}{secrets.randbelow(10**20):020d}"


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass
class PlacedOrder:
    order_id: int
    order_no: str
    token: str
    status: str
    amount_cents: int
    currency: str
    quantity: int
    product_id: int
    expires_at: dt.datetime
    pay_url: str | None

    def as_api(self) -> dict:
        """The answer of POST /api/v1/orders (CONTRACT.md §2)."""
        return {"order_no": self.order_no, "token": self.token, "status": self.status,
                "amount": format_cents(self.amount_cents), "currency": self.currency, "pay_url": self.pay_url,
                "expires_at": self.expires_at.isoformat(timespec="seconds") + "Z",
                "quantity": self.quantity, "product_id": self.product_id}


def reserve_keys(session: Session, *, product_id: int, quantity: int, order_id: int,
                 until: dt.datetime) -> int:
    """Claim `quantity` available keys for the order, or raise OutOfStock and claim none
    (the caller's transaction, or savepoint, is rolled back)."""
    params = {"pid": product_id, "n": quantity, "oid": order_id, "until": until}
    conn = session.connection()
    if conn.dialect.name == "sqlite":
        claimed = conn.execute(_RESERVE_SQLITE, params).rowcount
    else:
        ids = conn.execute(_PICK_MYSQL, params).scalars().all()
        if len(ids) < quantity:
            raise OutOfStock("not enough stock for this quantity")
        claimed = conn.execute(_CLAIM_MYSQL, {**params, "ids": ids}).rowcount
    if claimed != quantity:
        if claimed:   # SQLite claimed what there was: give it back (the caller rolls back the rest)
            conn.execute(_UNRESERVE, {"oid": order_id})
        raise OutOfStock("not enough stock for this quantity")
    return quantity


def place_order(session: Session, vault: Vault | None, *, product_id, quantity, email, channel_code,
                query_password=None, coupon=None, client_ip: str | None = None, site_url: str = "",
                now: dt.datetime | None = None) -> PlacedOrder:
    """Create a pending order with its keys reserved; the pay URL is built when a vault is given.

    Raises InvalidRequest, NotFound or OutOfStock, having written nothing.
    """
    email = check_order_input(product_id, quantity, email, channel_code, query_password, coupon)
    password_hash = hash_password(query_password) if query_password else None   # before any lock
    for _ in range(3):
        # Core on the session's connection: the ORM's statement handling costs
        # as much as SQLite itself here.
        conn = session.connection()
        row = conn.execute(_CHECK, {"product_id": product_id, "code": channel_code}).first()
        if row is None or not row.is_active:
            raise NotFound(f"product {product_id} not found")
        if not row.min_quantity <= quantity <= row.max_quantity:
            raise InvalidRequest(f"quantity: between {row.min_quantity} and {row.max_quantity}")
        if row.channel_id is None or not row.is_enabled:
            raise InvalidRequest(f"channel: {channel_code!r} is not an enabled payment channel")
        if vault is None or row.secret_nonce is None or has_cached(row.channel_id, row.secret_nonce):
            break
        # The merchant key is not decrypted in this process yet: never while
        # holding the write lock. Let go, decrypt, start again.
        session.rollback()
        channel_secrets_cached(vault, row.channel_id, channel_code, row.secret_nonce, row.secret_ciphertext,
                               row.secret_key_version)
    if row.delivery_mode == "auto" and row.waiting:
        raise OutOfStock("not enough stock for this quantity")
    now = now or utcnow()
    expires = now + dt.timedelta(minutes=decode_setting("orders.timeout_minutes", row.timeout))
    token = secrets.token_urlsafe(24)
    order_no = new_order_no(now)
    amount = row.price_cents * quantity
    order_id = conn.execute(_INSERT, {
        "order_no": order_no, "product_id": product_id, "channel_id": row.channel_id, "quantity": quantity,
        "unit_price_cents": row.price_cents, "amount_cents": amount, "currency": row.currency, "email": email,
        "status": "pending", "token_hash": token_hash(token), "query_password_hash": password_hash,
        "client_ip": client_ip, "created_at": now, "updated_at": now, "expires_at": expires,
        "delivery_attempts": 0}).inserted_primary_key[0]
    if row.delivery_mode == "auto":
        reserve_keys(session, product_id=product_id, quantity=quantity, order_id=order_id, until=expires)
    url = None
    if vault is not None and row.secret_nonce is not None:
        secrets_ = channel_secrets_cached(vault, row.channel_id, channel_code, row.secret_nonce,
                                          row.secret_ciphertext, row.secret_key_version)
        url = pay_url(row, channel_code, secrets_, order_no=order_no, amount_cents=amount, token=token,
                      site_url=site_url)
    return PlacedOrder(order_id, order_no, token, "pending", amount, row.currency, quantity, product_id,
                       expires, url)


def pay_url(row, channel_code: str, channel_secrets: dict, *, order_no: str, amount_cents: int, token: str,
            site_url: str) -> str | None:
    if row.channel_type != "epay":
        return None
    options = json.loads(row.options)
    site = site_url.rstrip("/")
    return epay.pay_url(
        gateway=options.get("gateway", ""), pid=options.get("pid", ""), key=channel_secrets["key"],
        pay_type=options.get("pay_type", "alipay"), order_no=order_no, name=row.name[:100],
        money=format_cents(amount_cents), notify_url=f"{site}/pay/{channel_code}/notify",
        # The buyer comes back to their keys: the token rides in the return URL.
        return_url=f"{site}/pay/{channel_code}/return?{urlencode({'order_no': order_no, 'token': token})}")

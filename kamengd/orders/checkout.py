"""Placing an order: the hot path of the shop, shared by the API and the storefront.

Everything slow happens before the write transaction: the input is checked,
the query password hashed (argon2, ~100 ms), the product and the channel
read (kept per process: the offer), the merchant key decrypted (cached per
process, keyed by the secret's nonce), the pay URL and the answer built.
The write lock is then held for two statements on SQLite (three on MySQL):
one INSERT … SELECT writes the order only if the product, the channel and
the order timeout and site.url are still what the answer was built from, and nobody who
paid waits for this product; one UPDATE reserves its keys (MySQL: SELECT …
FOR UPDATE SKIP LOCKED, then UPDATE). An offer that no longer holds (a staff
edit, another process's) is read again and the order tried once more; an
error is only ever answered from a fresh read. The request boundary commits.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
import threading
from dataclasses import dataclass
from urllib.parse import urlencode

import sqlalchemy as sa
from sqlalchemy.orm import Session, scoped_session

from ..accounts.passwords import hash_password
from ..agents.models import Agent, AgentLevel, AgentPrice, LevelPrice
from ..agents.services import station_price
from ..ledger.services import DEFAULT_CURRENCY as AGENTS_CURRENCY
from ..catalog import inputs, limits, pricing
from ..catalog.models import Product
from ..catalog.services import supplier_stock_query
from ..database import database_key, utcnow
from ..errors import Busy, CaptchaRequired, Forbidden, InsufficientBalance, InvalidRequest, NotFound, OutOfStock
from ..inventory.models import CardKey, on_sale_again
from ..marketing import coupons, points
from ..risk import captcha as captchas, engine as risk
from ..money import format_cents
from ..context import get_config
from ..payments import epay, methods, routing, sandbox
from ..payments.gateways import SPECS
from ..payments.paths import balance_url, start_url
from ..payments.keycache import channel_secrets_cached, secrets_problem_cached
from ..payments.models import PaymentChannel
from ..settings.services import decode_setting, setting_value_query
from ..vault import Vault
from .models import Order
from .validation import check_order_input

_p, _c, _o, _k = Product.__table__, PaymentChannel.__table__, Order.__table__, CardKey.__table__
_a, _l, _lp, _ap = Agent.__table__, AgentLevel.__table__, LevelPrice.__table__, AgentPrice.__table__

# A loop-key product sells while it has a key (every buyer gets the same one).
_LOOP_KEY = sa.exists().where(_k.c.product_id == _p.c.id, _k.c.status == "available")

# Everything an order needs to know about its product and channel. The
# channel is a LEFT JOIN: a missing channel is an input error, a missing
# product a 404.
_OFFER = (
    sa.select(_p.c.name, _p.c.price_cents, _p.c.currency, _p.c.is_active, _p.c.delivery_mode,
              _p.c.category_id, _p.c.buyer_daily_limit, _p.c.price_tiers, _p.c.sale_price_cents,
              _p.c.sale_starts_at, _p.c.sale_ends_at, _p.c.min_quantity, _p.c.max_quantity, _p.c.input_fields,
              _p.c.member_price_cents,
              _c.c.id.label("channel_id"), _c.c.type.label("channel_type"), _c.c.is_enabled, _c.c.options,
              _c.c.secret_nonce, _c.c.secret_ciphertext, _c.c.secret_key_version,
              _c.c.health, _c.c.min_amount_cents, _c.c.max_amount_cents, _c.c.daily_cap_cents,
              routing.allowed_for_product(_p.c.id).label("allowed"),
              setting_value_query("orders.timeout_minutes").label("timeout"),
              setting_value_query("site.url").label("site_url"),
              # Buyers who already paid come first: while one waits for this
              # product, nobody new buys it (imports, expiries and the sweep serve them).
              sa.exists().where(_o.c.status == "paid", _o.c.product_id == _p.c.id).label("waiting"),
              supplier_stock_query(_p).label("supplier_stock"),
              _LOOP_KEY.label("has_loop_key"))
    .select_from(_p.outerjoin(_c, _c.c.code == sa.bindparam("code")))
    .where(_p.c.id == sa.bindparam("product_id")))


def _bind(column):
    return sa.bindparam(column.name, type_=column.type)


_ORDER_FIELDS = ("order_no", "product_id", "channel_id", "quantity", "unit_price_cents", "amount_cents",
                 "currency", "email", "status", "token_hash", "query_password_hash", "lookup_tag", "client_ip",
                 "created_at", "updated_at", "expires_at", "delivery_attempts", "buyer_input", "pay_type",
                 "cap_day", "coupon_id", "discount_cents", "coupon_held", "device_tag", "risk_review", "email_folded",
                 "limit_day", "member_id", "points_used", "points_discount_cents", "points_held")


def _still_holds(price_param: str) -> list:
    """What an order's answer was built from, checked in the write lock by its INSERT (no row
    read there): the product (at the price bound as `price_param`), the channel, the order
    timeout and site.url, and nobody who paid waiting for this product."""
    return [_p.c.id == sa.bindparam("product_id"), _p.c.is_active.is_(True),
            _p.c.name == sa.bindparam("name"), _p.c.price_cents == sa.bindparam(price_param),
            _p.c.currency == sa.bindparam("currency"), _p.c.delivery_mode == sa.bindparam("delivery_mode"),
            _p.c.min_quantity <= sa.bindparam("quantity"), _p.c.max_quantity >= sa.bindparam("quantity"),
            _c.c.code == sa.bindparam("code"), _c.c.is_enabled.is_(True), _c.c.type == sa.bindparam("channel_type"),
            _c.c.options == sa.bindparam("options"),
            # Routing: still healthy, the amount within its limits, the product allowed there.
            _c.c.health == "ok", routing.within_amounts(sa.bindparam("amount_cents")),
            routing.allowed_for_product(sa.bindparam("product_id")),
            _c.c.daily_cap_cents.is_not_distinct_from(sa.bindparam("daily_cap", type_=sa.BigInteger())),
            _p.c.input_fields.is_not_distinct_from(sa.bindparam("input_fields", type_=sa.Text())),
            # (a coupon for a category priced the order)
            _p.c.category_id.is_not_distinct_from(sa.bindparam("category_id", type_=sa.Integer())),
            _p.c.buyer_daily_limit.is_not_distinct_from(sa.bindparam("buyer_daily_limit", type_=sa.Integer())),
            # (the unit price was made of these too: kamengd.catalog.pricing)
            _p.c.price_tiers.is_not_distinct_from(sa.bindparam("price_tiers", type_=sa.Text())),
            _p.c.sale_price_cents.is_not_distinct_from(sa.bindparam("sale_price", type_=sa.BigInteger())),
            _p.c.sale_starts_at.is_not_distinct_from(sa.bindparam("sale_starts", type_=_p.c.sale_starts_at.type)),
            _p.c.sale_ends_at.is_not_distinct_from(sa.bindparam("sale_ends", type_=_p.c.sale_ends_at.type)),
            _p.c.member_price_cents.is_not_distinct_from(sa.bindparam("member_price", type_=sa.BigInteger())),
            _c.c.secret_nonce.is_not_distinct_from(sa.bindparam("secret_nonce", type_=_c.c.secret_nonce.type)),
            setting_value_query("orders.timeout_minutes").is_not_distinct_from(
                sa.bindparam("timeout", type_=sa.Text())),
            setting_value_query("site.url").is_not_distinct_from(sa.bindparam("site_url_setting", type_=sa.Text())),
            sa.or_(_p.c.delivery_mode != "auto",
                   ~sa.exists().where(_o.c.status == "paid", _o.c.product_id == _p.c.id)),
            # Bought upstream: the supplier's stock as last synced covers it (a cached offer may not know).
            sa.or_(_p.c.delivery_mode != "supplier",
                   sa.func.coalesce(supplier_stock_query(_p), 0) >= sa.bindparam("quantity")),
            sa.or_(_p.c.delivery_mode != "loop", _LOOP_KEY)]


def _insert(fields: tuple[str, ...], guards: list):
    return _o.insert().from_select(list(fields), sa.select(*(_bind(_o.c[name]) for name in fields))
                                   .select_from(_p.join(_c, _c.c.id == sa.bindparam("channel_id"))).where(*guards))


_OWN = _still_holds("product_price_cents")
_INSERT = _insert(_ORDER_FIELDS, _OWN)

# A sale through an agent (its sub-station, or its invite link on the shop): what its price
# is made of, read like the offer, and checked again by its INSERT.
_LEVEL_OWN = sa.select(_lp.c.price_cents).where(_lp.c.level_id == _a.c.level_id,
                                                _lp.c.product_id == sa.bindparam("product_id")).scalar_subquery()
_AGENT_OWN = sa.select(_ap.c.price_cents).where(_ap.c.agent_id == _a.c.id,
                                                _ap.c.product_id == sa.bindparam("product_id")).scalar_subquery()
_SELLER = (sa.select(_a.c.is_active, _a.c.level_id, _a.c.has_pool, _l.c.discount_bp,
                     _LEVEL_OWN.label("level_own"), _AGENT_OWN.label("own"))
           .select_from(_a.join(_l, _l.c.id == _a.c.level_id)).where(_a.c.id == sa.bindparam("seller_agent_id")))
# The product's price is checked as read (the unit price is the agent's), and the agent is
# still active at the level, discount and prices its price was made of.
_SOLD = _OWN + [
    sa.exists().select_from(_a.join(_l, _l.c.id == _a.c.level_id)).where(
        _a.c.id == sa.bindparam("seller_agent_id"), _a.c.is_active.is_(True),
        _a.c.level_id == sa.bindparam("seller_level_id"), _l.c.discount_bp == sa.bindparam("seller_discount"),
        sa.func.coalesce(_LEVEL_OWN, -1) == sa.bindparam("seller_level_own"),
        sa.func.coalesce(_AGENT_OWN, -1) == sa.bindparam("seller_own"))]
_INSERT_SOLD = _insert(_ORDER_FIELDS + ("seller_agent_id",), _SOLD)
_guarded: dict[tuple, sa.Insert] = {}


def _below_limits(sold: bool, uncounted: risk.Uncounted) -> sa.Insert:
    """The order's INSERT that also counts the velocity rules left to it: it writes the order
    only while each is below its limit (built once per set of rules)."""
    key = (sold, uncounted.key)
    found = _guarded.get(key)
    if found is None:
        fields, guards = (_ORDER_FIELDS + ("seller_agent_id",), _SOLD) if sold else (_ORDER_FIELDS, _OWN)
        found = _insert(fields, guards + [risk.below_limits(uncounted)])
        if len(_guarded) > 100:
            _guarded.clear()
        _guarded[key] = found
    return found


@dataclass(frozen=True)
class Seller:
    """Who a buyer's order is sold through: an agent's sub-station (`station`: at the agent's
    own selling price) or its invite link on the shop (at the shop's price). The agent earns
    its margin on delivery (kamengd.agents.commission)."""
    agent_id: int
    station: bool


def _seller_terms(session: Session, seller: Seller, product_id: int):
    params = {"seller_agent_id": seller.agent_id, "product_id": product_id}
    if session.in_transaction():
        return session.connection().execute(_SELLER, params).first()
    row = session.connection(execution_options={"kamengd_readonly": True}).execute(_SELLER, params).first()
    session.rollback()
    return row


def seller_price(product_price_cents: int, terms, station: bool) -> int:
    """What the buyer pays a unit through this agent: on its station its own price (the shop's
    without one), never below its cost; through its invite link the shop's price."""
    if not station:
        return product_price_cents
    return station_price(product_price_cents, terms.discount_bp, terms.level_own, terms.own)


def _pickable(pooled: bool) -> list:
    """Keys on sale for a claim: the shop's stock, or one agent's pool (bound as "pool")."""
    if pooled:
        return [_k.c.product_id == sa.bindparam("pid"), _k.c.status == "pool",
                _k.c.pool_agent_id == sa.bindparam("pool")]
    return [_k.c.product_id == sa.bindparam("pid"), _k.c.status == "available"]


def _claimed(sold: bool) -> dict:
    """Reserved for an unpaid order, or sold at once to one paid in the same transaction."""
    if sold:
        return {"status": "sold", "order_id": sa.bindparam("oid"), "sold_at": sa.bindparam("sold_at"),
                "reserved_until": None}
    return {"status": "reserved", "order_id": sa.bindparam("oid"), "reserved_until": sa.bindparam("until")}


# SQLite holds the write lock for the whole transaction: one UPDATE picks and claims.
# MySQL: SELECT … FOR UPDATE SKIP LOCKED picks (two buyers never wait on one key), then UPDATE.
# Each by (from an agent's pool, claimed as sold).
_CLAIM_SQLITE, _PICK_MYSQL, _CLAIM_MYSQL = {}, {}, {}
for _pooled in (False, True):
    _PICK_MYSQL[_pooled] = (sa.select(_k.c.id).where(*_pickable(_pooled)).order_by(_k.c.id)
                            .limit(sa.bindparam("n")).with_for_update(skip_locked=True))
    for _sold in (False, True):
        _CLAIM_SQLITE[_pooled, _sold] = (
            _k.update().where(_k.c.id.in_(sa.select(_k.c.id).where(*_pickable(_pooled)).order_by(_k.c.id)
                                          .limit(sa.bindparam("n")).scalar_subquery()),
                              *_pickable(_pooled)[1:2])
            .values(**_claimed(_sold)))
        _CLAIM_MYSQL[_pooled, _sold] = (
            _k.update().where(_k.c.id.in_(sa.bindparam("ids", expanding=True)), *_pickable(_pooled)[1:2])
            .values(**_claimed(_sold)))
# Back on sale (a claim that fell short): to the pool the key came from, or the shop's stock.
_UNRESERVE = (_k.update().where(_k.c.order_id == sa.bindparam("oid"), _k.c.status.in_(("reserved", "sold")))
              .values(status=on_sale_again(_k), order_id=None, reserved_until=None, sold_at=None))


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
    pay_type: str | None = None
    coupon: str | None = None
    discount_cents: int = 0
    points_used: int = 0
    points_discount_cents: int = 0

    def as_api(self) -> dict:
        """The answer of POST /api/v1/orders (CONTRACT.md §2); `amount` is what the buyer
        pays, after the coupon's `discount` and what its member's points took off."""
        return {"order_no": self.order_no, "token": self.token, "status": self.status,
                "amount": format_cents(self.amount_cents), "currency": self.currency, "pay_url": self.pay_url,
                "expires_at": self.expires_at.isoformat(timespec="seconds") + "Z",
                "quantity": self.quantity, "product_id": self.product_id,
                **({"pay_type": self.pay_type} if self.pay_type else {}),
                **({"coupon": self.coupon, "discount": format_cents(self.discount_cents)} if self.coupon else {}),
                **({"points_used": self.points_used, "points_discount": format_cents(self.points_discount_cents)}
                   if self.points_used else {})}


def reserve_keys(session: Session, *, product_id: int, quantity: int, order_id: int,
                 until: dt.datetime, sold_at: dt.datetime | None = None, pool: int | None = None) -> int:
    """Claim `quantity` keys for the order, or raise OutOfStock and claim none (the caller's
    transaction, or savepoint, is rolled back). With `sold_at` (an order paid in this same
    transaction) they are claimed as sold, not reserved. With `pool` (an order of that agent,
    or sold through it) its stock pool is drawn on first, then the shop's stock."""
    params = {"pid": product_id, "oid": order_id, "until": until, "sold_at": sold_at, "pool": pool}
    conn = session.connection()
    sold = sold_at is not None
    claimed = 0
    for pooled in ((True, False) if pool is not None else (False,)):
        wanted = {**params, "n": quantity - claimed}
        if conn.dialect.name == "sqlite":
            claimed += conn.execute(_CLAIM_SQLITE[pooled, sold], wanted).rowcount
        else:
            ids = conn.execute(_PICK_MYSQL[pooled], wanted).scalars().all()
            if ids:
                claimed += conn.execute(_CLAIM_MYSQL[pooled, sold], {**wanted, "ids": ids}).rowcount
        if claimed == quantity:
            return quantity
    if claimed:   # what there was goes back (the caller rolls back the rest)
        conn.execute(_UNRESERVE, {"oid": order_id})
    raise OutOfStock("not enough stock for this quantity")


_offers: dict[tuple[str, int, str], object] = {}   # by database, product and channel
_offers_lock = threading.Lock()
MAX_OFFERS = 1024


def _offer(session: Session, product_id: int, channel_code: str, *, fresh: bool):
    """The product and channel row for an order: from this process's cache unless `fresh`,
    else read outside any write lock (in the caller's transaction if it has one)."""
    key = (database_key(session), product_id, channel_code)
    if not fresh and (found := _offers.get(key)) is not None:
        return found
    params = {"product_id": product_id, "code": channel_code}
    if session.in_transaction():
        row = session.connection().execute(_OFFER, params).first()
    else:
        row = session.connection(execution_options={"kamengd_readonly": True}).execute(_OFFER, params).first()
        session.rollback()
    if row is not None and row.is_active and row.channel_id is not None:   # only what exists is kept
        with _offers_lock:
            if len(_offers) >= MAX_OFFERS:
                _offers.clear()
            _offers[key] = row
    else:
        _offers.pop(key, None)
    return row


class Reroute(Exception):
    """The chosen channel cannot take this order (`reason`): another of the same `method` may."""

    def __init__(self, reason: str, method: str):
        super().__init__(reason)
        self.reason, self.method = reason, method


# Channels one order may be offered to before it is refused (each is tried once).
MAX_REROUTES = 20


def place_order(session: Session, vault: Vault | None, *, product_id, quantity, email, channel_code,
                query_password=None, coupon=None, client_ip: str | None = None, site_url: str = "",
                buyer_input=None, pay_type=None, now: dt.datetime | None = None,
                seller: Seller | None = None, return_site: str | None = None,
                device_tag: str | None = None, captcha: str | None = None,
                member_id: int | None = None, use_points: bool = False) -> PlacedOrder:
    """Create a pending order with its keys reserved; the pay URL is built when a vault is given.
    With a `seller`, the order is sold through that agent (at its price on its station). With
    a `member_id` (the buyer signed in to the portal), that member earns its points on delivery;
    with `use_points` too, its points take what the shop allows off the amount (积分抵扣), spent
    in the order's transaction.

    Raises InvalidRequest, NotFound or OutOfStock, having written nothing.
    """
    by_method = channel_code is None and pay_type is not None   # the shop picks the channel for the method
    email = check_order_input(product_id, quantity, email, "-" if by_method else channel_code, query_password,
                              coupon)
    if pay_type is not None and (not isinstance(pay_type, str) or not methods.TYPE_RE.match(pay_type)):
        raise InvalidRequest("pay_type: a pay type of the channel such as alipay or wxpay, or leave it out")
    code = coupons.normalise_code(coupon) if coupon not in (None, "") else None
    if code is not None and seller is not None and seller.station:
        raise InvalidRequest("coupon: coupons are taken on the shop's own site only")
    if use_points and seller is not None and seller.station:
        raise InvalidRequest("points: points are taken off orders on the shop's own site only")
    if (code is not None or use_points) and seller is not None:
        # Through an agent's invite link: the shop's discount, and no commission on top of it
        # (the agent's margin would be booked on the undiscounted price: the shop could lose).
        seller = None
    password_hash = hash_password(query_password) if query_password else None   # before any lock
    # The e-mail + query password lookup finds the order by this tag (no vault: no tag,
    # the argon2 hash alone, as for orders placed before tags).
    lookup_tag = vault.lookup_tags(email, query_password)[0] if query_password and vault is not None else None
    session = session() if isinstance(session, scoped_session) else session
    ours = not session.in_transaction()   # else the caller's transaction: read and write in it
    points_offer = None
    if use_points:   # (read now, in a read of its own; spent, and so checked, in the order's transaction)
        if ours:
            session.connection(execution_options={"kamengd_readonly": True})
        points_offer = points.discount_offer(session, member_id)
        if ours:
            session.rollback()
    if by_method:
        channel_code, pay_type = _route_by_method(session, ours, product_id=product_id, quantity=quantity,
                                                  method=pay_type, site_url=site_url, now=now or utcnow())
    fresh = False
    verdict = None   # the risk rules', asked once (before the order's transaction)
    counted = False  # whether the verdict was given with the velocity counts read
    tried: set[int] = set()
    changed = 0   # reads that the INSERT found out of date (reroutes are bounded by the channels)
    while changed < 3 and len(tried) < MAX_REROUTES:
        row = _offer(session, product_id, channel_code, fresh=fresh)
        terms = unit = None
        if seller is not None and row is not None:
            terms = _seller_terms(session, seller, product_id)
            usable = terms is not None and terms.is_active and row.currency == AGENTS_CURRENCY
            if not usable and seller.station:
                if terms is None or not terms.is_active:
                    raise NotFound("shop not found")   # a disabled agent's station sells nothing
                raise InvalidRequest("product: priced in %(currency)s, it is sold on the shop itself only",
                                     currency=row.currency)
            if usable:   # on its station the agent's price; through an invite link the shop's (below)
                unit = seller_price(row.price_cents, terms, seller.station) if seller.station else None
            else:   # an invite from an agent since disabled (or a product its money cannot earn on)
                terms = None   # the shop's own sale, at the shop's price
        now = now or utcnow()
        offer = None
        if code is not None:   # (its terms as kept for a few seconds, or read now when `fresh`)
            offer = _coupon_offer(session, ours, code, email, fresh)
        try:
            placed, values = _prepare(row, vault, fresh=fresh, product_id=product_id, quantity=quantity,
                                      email=email, channel_code=channel_code, password_hash=password_hash,
                                      lookup_tag=lookup_tag, client_ip=client_ip, site_url=site_url, now=now,
                                      buyer_input=buyer_input, pay_type=pay_type, unit_cents=unit,
                                      return_site=return_site, coupon=offer, member_id=member_id,
                                      points_offer=points_offer)
        except Reroute as exc:
            channel_code, pay_type = _reroute(session, row, exc, tried, channel_code, ours=ours,
                                              product_id=product_id, site_url=site_url, now=now,
                                              amount_cents=(pricing.unit_price(row, quantity, now, member_id is not None)
                                                            if unit is None else unit) * quantity)
            fresh = False
            continue
        if placed is None:   # the cached offer said no: never answered without a fresh read
            fresh = True
            continue
        if verdict is None:
            verdict = _judge(session, ours, risk.Attempt(product_id, quantity, placed.amount_cents, row.currency,
                                                         email, client_ip, device_tag), now, captcha,
                             uncounted=not counted)
        values.update(device_tag=device_tag, risk_review=verdict.action == "review")
        if ours and session.in_transaction():
            session.rollback()   # the reads above end here: the writes below take the lock
        if offer is not None and ours:
            coupons.prepare_buyer(session, offer[0], email)   # (its own transaction, before the order's)
        if row.buyer_daily_limit is not None:
            values["limit_day"] = routing.shop_day(now, get_config().site.timezone)
            if ours:
                limits.prepare(session, product_id, email, values["limit_day"])   # (the same)
        if row.daily_cap_cents is not None:
            day = routing.shop_day(now, get_config().site.timezone)
            if not routing.take_capacity(session, row.channel_id, row.daily_cap_cents, day,
                                         placed.amount_cents):
                if ours:
                    session.rollback()
                if not fresh:   # the cap as cached may be old: read it again before going elsewhere
                    fresh = True
                    continue
                exc = Reroute("daily cap reached", values["pay_type"] or methods.offered(
                    row.channel_type, json.loads(row.options))[0])
                channel_code, pay_type = _reroute(session, row, exc, tried, channel_code, ours=ours,
                                                  product_id=product_id, amount_cents=placed.amount_cents,
                                                  site_url=site_url, now=now)
                fresh = False
                continue
            values["cap_day"] = day   # counted: given back once if it expires or moves
        statement = _INSERT
        if terms is not None:
            statement = _INSERT_SOLD
            values.update(product_price_cents=row.price_cents, seller_agent_id=seller.agent_id,
                          seller_level_id=terms.level_id, seller_discount=terms.discount_bp,
                          seller_level_own=-1 if terms.level_own is None else terms.level_own,
                          seller_own=-1 if terms.own is None else terms.own)
        # Core on the session's connection: the ORM's statement handling costs
        # as much as SQLite itself here. This begins the write transaction.
        if verdict.uncounted is not None:   # (and the velocity rules' counts, below their limits)
            statement = _below_limits(terms is not None, verdict.uncounted)
            values.update(verdict.uncounted.params)
        conn = session.connection()
        inserted = conn.execute(statement, values)
        if inserted.rowcount == 1 and offer is not None and not coupons.claim(session, offer[0], email, now):
            # Its last use went to another order, or staff changed it: priced again from a fresh read.
            if not ours:
                raise InvalidRequest("coupon: used up")
            session.rollback()
            fresh = True
            changed += 1
            continue
        if inserted.rowcount == 1 and row.buyer_daily_limit is not None and not limits.take(
                session, product_id, email, values["limit_day"], quantity, row.buyer_daily_limit):
            if ours:
                session.rollback()
            left = limits.left_today(session, product_id, email, values["limit_day"], row.buyer_daily_limit)
            if ours:
                session.rollback()
            raise InvalidRequest("quantity: at most %(limit)s a day for one buyer; %(left)s left today",
                                 limit=row.buyer_daily_limit, left=left)
        if inserted.rowcount == 1 and placed.points_used:
            try:
                points.spend_on_order(session, order_no=placed.order_no, member_id=member_id,
                                      points=placed.points_used, actor=f"member:{member_id}")
            except InsufficientBalance:
                if ours:
                    session.rollback()
                raise
        if inserted.rowcount == 1:
            placed.order_id = inserted.lastrowid
            risk.record_matches(session, verdict, stage="order", order_id=placed.order_id, outcome=verdict.outcome,
                                client_ip=client_ip, product_id=product_id, now=now)
            if row.delivery_mode == "auto":
                reserve_keys(session, product_id=product_id, quantity=quantity, order_id=placed.order_id,
                             until=placed.expires_at,
                             pool=seller.agent_id if terms is not None and terms.has_pool else None)
            return placed
        # What the answer was built from changed since it was read. Nothing was
        # written: let go of the write lock (a new merchant key is decrypted
        # outside it), read again.
        if ours:
            session.rollback()
        elif row.daily_cap_cents is not None:   # (the caller's transaction goes on: its count goes back)
            routing.give_back(conn, row.channel_id, routing.shop_day(now, get_config().site.timezone),
                              placed.amount_cents)
        fresh = True
        if verdict.uncounted is not None:   # a velocity rule may have reached its limit: asked again, counting
            verdict, counted = None, True
            continue
        changed += 1
    if changed < 3:
        raise InvalidRequest("channel: no payment channel can take this order now: choose another way to pay")
    raise Busy("the product or its payment channel is being changed: try again")


def _judge(session: Session, ours: bool, attempt: risk.Attempt, now: dt.datetime, captcha, *,
           uncounted: bool) -> risk.Verdict:
    """The risk rules' verdict, read outside any write lock (its velocity rules, unless
    `uncounted`, then counted by the order's INSERT); a refusal (or a captcha not solved) is
    recorded and raised."""
    if risk.none_known(session, "order"):
        return risk.Verdict()
    verdict = risk.judge_order(session, attempt, now, uncounted=uncounted)
    if ours and verdict.action in ("refuse", "captcha"):
        session.rollback()
    if verdict.action == "refuse":
        risk.record_refused(session, verdict, outcome="refuse", client_ip=attempt.client_ip,
                            product_id=attempt.product_id, now=now)
        raise Forbidden("order refused: the shop does not take this order; ask its customer service")
    if verdict.action == "captcha":
        if not captchas.solved(session, captcha):
            risk.record_refused(session, verdict, outcome="captcha", client_ip=attempt.client_ip,
                                product_id=attempt.product_id, now=now)
            raise CaptchaRequired("captcha: solve the captcha to place this order", challenge=captchas.challenge())
        verdict.outcome = "passed"
    return verdict


def _coupon_offer(session: Session, ours: bool, code: str, email: str, fresh: bool):
    """(the coupon's terms, whether this buyer has bought here before): as this process keeps
    them unless `fresh` (the claim checks them again in the write lock), else read outside any
    write lock, in a read the caller ends before its writes (or in its own transaction)."""
    if not fresh and (kept := coupons.kept_terms(session, code)) is not None:
        return kept.row, False, kept.within
    if ours and not session.in_transaction():   # a read: SQLite's write lock is not taken for it
        session.connection(execution_options={"kamengd_readonly": True})
    terms, within = coupons.read_terms(session, code, email)
    bought = terms is not None and terms.first_order and coupons.has_bought(session, email)
    return terms, bought, within


def _reroute(session: Session, row, exc: Reroute, tried: set[int], channel_code: str, *, ours: bool,
             product_id: int, amount_cents: int, site_url: str, now: dt.datetime) -> tuple[str, str | None]:
    """The next channel of the same method for an order its channel cannot take: (its code, the
    pay type to ask it for); InvalidRequest when there is none."""
    tried.add(row.channel_id)
    site = decode_setting("site.url", row.site_url) or site_url
    if ours and not session.in_transaction():   # a read: SQLite's write lock is not taken for it
        session.connection(execution_options={"kamengd_readonly": True})
    routes = routing.stand_ins(session, product_id=product_id, amount_cents=amount_cents, currency=row.currency,
                               method=exc.method, site_url=site, leave_out=tried,
                               day=routing.shop_day(now, get_config().site.timezone))
    if ours:
        session.rollback()   # (a read only: no transaction kept open before the order's write)
    if not routes:
        raise InvalidRequest("channel: %(code)r cannot take this order now (%(reason)s) and no other channel "
                             "for this way to pay can: choose another", code=channel_code, reason=exc.reason)
    route = routes[0]
    return route.code, (route.method if route.type in methods.WITH_PAY_TYPES else None)


def _route_by_method(session: Session, ours: bool, *, product_id: int, quantity: int, method: str, site_url: str,
                     now: dt.datetime) -> tuple[str, str | None]:
    """The channel an order paid by `method` goes to (and the pay type to ask it for), by the
    routing rules at the product's price; a misfit found later is rerouted like any other."""
    if ours and not session.in_transaction():   # a read: SQLite's write lock is not taken for it
        session.connection(execution_options={"kamengd_readonly": True})
    row = session.execute(sa.select(_p.c.price_cents, _p.c.currency,
                                    setting_value_query("site.url").label("site_url"))
                          .where(_p.c.id == product_id, _p.c.is_active.is_(True))).first()
    routes = [] if row is None else routing.stand_ins(
        session, product_id=product_id, amount_cents=row.price_cents * quantity, currency=row.currency,
        method=method,
        site_url=decode_setting("site.url", row.site_url) or site_url,
        day=routing.shop_day(now, get_config().site.timezone))
    if ours:
        session.rollback()
    if row is None:
        raise NotFound("product %(product_id)s not found", product_id=product_id)
    if not routes:
        raise InvalidRequest("pay_type: no payment channel takes %(method)r payments for this order now",
                             method=method)
    return routes[0].code, (method if routes[0].type in methods.WITH_PAY_TYPES else None)


def _prepare(row, vault: Vault | None, *, fresh: bool, product_id: int, quantity: int, email: str,
             channel_code: str, password_hash: str | None, lookup_tag: bytes | None, client_ip: str | None,
             site_url: str, now: dt.datetime, buyer_input=None, pay_type=None, unit_cents: int | None = None,
             return_site: str | None = None, coupon=None, member_id: int | None = None,
             points_offer: points.DiscountOffer | None = None):
    """(the answer, the INSERT's values) for an order from this offer; (None, None) when a
    cached offer refuses it (a fresh one raises the error instead)."""
    problem = None
    if row is None or not row.is_active:
        problem = NotFound("product %(product_id)s not found", product_id=product_id)
    elif not row.min_quantity <= quantity <= row.max_quantity:
        problem = InvalidRequest("quantity: between %(low)s and %(high)s", low=row.min_quantity, high=row.max_quantity)
    elif row.buyer_daily_limit is not None and quantity > row.buyer_daily_limit:
        problem = InvalidRequest("quantity: at most %(limit)s a day for one buyer", limit=row.buyer_daily_limit)
    elif row.channel_id is None or not row.is_enabled:
        problem = InvalidRequest("channel: %(code)r is not an enabled payment channel", code=channel_code)
    elif (row.delivery_mode == "auto" and row.waiting) or (row.delivery_mode == "loop" and not row.has_loop_key):
        problem = OutOfStock("not enough stock for this quantity")
    elif row.delivery_mode == "supplier" and (row.supplier_stock or 0) < quantity:
        problem = OutOfStock("not enough stock for this quantity")
    filled = chosen = None
    # The panel's site.url, else the config file's (the caller's).
    site = decode_setting("site.url", row.site_url) if row is not None else ""
    site = site or site_url
    if problem is None and row.channel_type == "sandbox" and not sandbox.takes_orders(json.loads(row.options), site):
        problem = InvalidRequest("channel: %(code)r is not an enabled payment channel", code=channel_code)
    if problem is None:
        options = json.loads(row.options)
        try:
            chosen = methods.choose(row.channel_type, options, pay_type)
        except InvalidRequest as exc:
            problem = exc
    if problem is None and (row.input_fields or buyer_input):
        try:
            filled = inputs.dump(inputs.check_values(inputs.load(row.input_fields), buyer_input))
        except InvalidRequest as exc:
            problem = exc
    unit = 0 if row is None else \
        pricing.unit_price(row, quantity, now, member_id is not None) if unit_cents is None else unit_cents
    amount = unit * quantity
    off = 0
    if problem is None and coupon is not None:
        terms, bought, within = coupon
        try:
            off = coupons.discount(terms, product_id=product_id, category_id=row.category_id, currency=row.currency,
                                   amount_cents=amount, now=now, bought_before=bought, within=within)
        except InvalidRequest as exc:
            problem = exc
    points_off = points_used = 0
    if problem is None and points_offer is not None:
        if row.currency != AGENTS_CURRENCY:
            problem = InvalidRequest("points: taken off orders in %(currency)s only", currency=AGENTS_CURRENCY)
        else:
            points_off, points_used = points.discount_for(amount - off, points_offer)
            if not points_used:   # (asked for: never an order at full price instead)
                problem = InsufficientBalance("points: your %(have)s points take nothing off this order",
                                              have=points_offer.have)
    if problem is not None:
        if fresh:
            raise problem
        return None, None
    amount -= off + points_off
    refused = routing.refusal(row, amount)
    if refused is not None:
        if fresh:
            raise Reroute(refused, chosen or methods.offered(row.channel_type, options)[0])
        return None, None
    expires = now + dt.timedelta(minutes=decode_setting("orders.timeout_minutes", row.timeout))
    token = secrets.token_urlsafe(24)
    order_no = new_order_no(now)
    url = None
    if vault is not None and row.secret_nonce is not None:
        # Decrypted at most once per process and secret, never under the write lock.
        secrets_ = channel_secrets_cached(vault, row.channel_id, channel_code, row.secret_nonce,
                                          row.secret_ciphertext, row.secret_key_version)
        if secrets_problem_cached(row.channel_type, row.channel_id, row.secret_nonce, secrets_):
            # A key anyone could guess signs nothing (the scheduler disables the channel too).
            if fresh:
                raise InvalidRequest("channel: %(code)r is not an enabled payment channel", code=channel_code)
            return None, None
        url = pay_url(row, channel_code, secrets_, order_no=order_no, amount_cents=amount, token=token,
                      site_url=site, options=options, pay_type=chosen, return_site=return_site)
    elif vault is not None and row.channel_type in ("balance", "points"):   # no secret: its pay page is ours
        url = pay_url(row, channel_code, {}, order_no=order_no, amount_cents=amount, token=token,
                      site_url=site, options=options, pay_type=chosen, return_site=return_site)
    placed = PlacedOrder(0, order_no, token, "pending", amount, row.currency, quantity, product_id, expires, url,
                         chosen, coupon[0].code if coupon is not None else None, off, points_used, points_off)
    values = {
        "order_no": order_no, "product_id": product_id, "channel_id": row.channel_id, "quantity": quantity,
        "unit_price_cents": unit, "amount_cents": amount, "currency": row.currency, "email": email,
        "status": "pending", "token_hash": token_hash(token), "query_password_hash": password_hash,
        "lookup_tag": lookup_tag, "client_ip": client_ip, "email_folded": email.casefold(), "created_at": now,
        "updated_at": now,
        "expires_at": expires, "delivery_attempts": 0, "buyer_input": filled, "pay_type": chosen, "cap_day": None,
        "coupon_id": coupon[0].id if coupon is not None else None, "discount_cents": off,
        "coupon_held": coupon is not None, "member_id": member_id,
        "points_used": points_used, "points_discount_cents": points_off, "points_held": points_used > 0,
        # What the answer was built from, checked again by the INSERT:
        "name": row.name, "delivery_mode": row.delivery_mode, "code": channel_code,
        "channel_type": row.channel_type, "options": row.options, "secret_nonce": row.secret_nonce,
        "timeout": row.timeout, "site_url_setting": row.site_url, "input_fields": row.input_fields,
        "daily_cap": row.daily_cap_cents, "category_id": row.category_id, "limit_day": None,
        "buyer_daily_limit": row.buyer_daily_limit, "product_price_cents": row.price_cents,
        "price_tiers": row.price_tiers, "sale_price": row.sale_price_cents, "sale_starts": row.sale_starts_at,
        "sale_ends": row.sale_ends_at, "member_price": row.member_price_cents}
    return placed, values


def pay_url(row, channel_code: str, channel_secrets: dict, *, order_no: str, amount_cents: int, token: str,
            site_url: str, options: dict, pay_type: str | None, return_site: str | None = None) -> str | None:
    """The gateway's address for the order; the buyer comes back to `return_site` (an agent's
    sub-station) or the shop, the gateway's callback always goes to the shop's site.url."""
    site = site_url.rstrip("/")
    back = (return_site or site_url).rstrip("/")
    if row.channel_type == "sandbox":
        return sandbox.pay_url(site_url=back, code=channel_code, order_no=order_no, token=token)
    if row.channel_type in ("balance", "points"):   # the shop's own address: the portal's sign-in is there
        return balance_url(site, channel_code, order_no, token, row.channel_type)
    if row.channel_type in SPECS:   # created at the gateway by the pay page, not here
        return start_url(back, channel_code, order_no, token)
    if row.channel_type != "epay":
        return None
    return epay.pay_url(
        gateway=options.get("gateway", ""), pid=options.get("pid", ""), key=channel_secrets["key"],
        pay_type=pay_type or methods.DEFAULT, order_no=order_no, name=row.name[:100],
        money=format_cents(amount_cents), notify_url=f"{site}/pay/{channel_code}/notify",
        # The buyer comes back to their keys: the token rides in the return URL.
        return_url=f"{back}/pay/{channel_code}/return?{urlencode({'order_no': order_no, 'token': token})}")

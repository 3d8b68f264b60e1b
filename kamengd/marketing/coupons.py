"""Coupons: every rule about them, in one place.

Staff make and change coupons here (the CLI and the panel both come here, every change
audited). Checkout reads a coupon's terms outside any lock (`read_terms`), prices the order
with them (`discount`: the reason in the buyer's words when it does not apply) and then, in
the order's own transaction, takes one use (`claim`): conditional UPDATEs that succeed only
while the coupon is still active, in its window, at the terms the order was priced with and
with a use left for everyone and for this buyer. Fifty buyers racing for the last ten uses
get exactly ten. An order that expires unpaid gives its use back once (`give_back_expired`,
cleared on the order first, like the channel caps' room).
"""
from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..audit.services import record
from ..catalog.models import Category, Product
from ..catalog.tree import read_tree
from ..database import database_key, insert_ignoring, utcnow, write_apart
from ..errors import Collector, Conflict, InvalidRequest, NotFound
from ..localtime import parse_when, shop_time  # noqa: F401 (the panel's and the CLI's too)
from ..money import MAX_CENTS, format_cents, parse_money
from ..orders.models import Order
from .models import COUPON_KINDS, COUPON_SCOPES, Coupon, CouponBuyer

CODE_RE = re.compile(r"[A-Z0-9][A-Z0-9_-]{2,31}")
MAX_NOTE = 200
MAX_USES = 10_000_000
# Orders of these statuses mean a buyer has bought here before (first-order coupons).
BOUGHT = ("paid", "delivered", "refunded", "held")

_cp, _cb, _o = Coupon.__table__, CouponBuyer.__table__, Order.__table__


def normalise_code(raw) -> str:
    """A buyer's or staff member's coupon code, upper case; InvalidRequest when it cannot be one."""
    code = raw.strip().upper() if isinstance(raw, str) else ""
    if not CODE_RE.fullmatch(code):
        raise InvalidRequest("coupon: unknown coupon")
    return code


def buyer_key(email: str) -> str:
    """One buyer however they type the address (as orders.email_folded)."""
    return email.strip().casefold()


# What an order is priced with, and the uses left for this buyer (bound as "email").
_TERMS = (sa.select(_cp.c.id, _cp.c.code, _cp.c.kind, _cp.c.amount_off_cents, _cp.c.percent_off_bp,
                    _cp.c.max_discount_cents, _cp.c.currency, _cp.c.scope, _cp.c.scope_id, _cp.c.min_amount_cents,
                    _cp.c.starts_at, _cp.c.ends_at, _cp.c.max_uses, _cp.c.used, _cp.c.per_buyer, _cp.c.first_order,
                    _cp.c.is_active, _cp.c.version, sa.func.coalesce(_cb.c.uses, 0).label("buyer_uses"))
          .select_from(_cp.outerjoin(_cb, sa.and_(_cb.c.coupon_id == _cp.c.id, _cb.c.email == sa.bindparam("email"))))
          .where(_cp.c.code == sa.bindparam("code")))


# Terms of coupons that do not depend on the buyer, kept per process for a few seconds: an
# order priced with them is checked by the claim's UPDATE (version, window, uses left), and
# one the kept terms refuse is priced again from a fresh read.
TERMS_TTL = 5.0
_kept: dict[tuple[str, str], tuple[float, object]] = {}


def kept_terms(session: Session, code: str):
    found = _kept.get((database_key(session), code))
    if found is not None and time.monotonic() - found[0] < TERMS_TTL:
        return found[1]
    return None


class Terms(NamedTuple):
    row: Any                        # the coupon's terms (None: no such code)
    within: frozenset[int] | None   # a category coupon: its category and every one under it


def read_terms(session: Session, code: str, email: str) -> Terms:
    """The coupon's terms as they are now, read in the caller's transaction if it has one,
    else outside any (SQLite's write lock is not taken for it)."""
    params = {"code": code, "email": buyer_key(email)}
    ours = not session.in_transaction()
    connection = session.connection(execution_options={"kamengd_readonly": True} if ours else None)
    row = connection.execute(_TERMS, params).first()
    within = None
    if row is not None and row.scope == "category":
        within = frozenset(read_tree(session).below(row.scope_id))
    if ours:
        session.rollback()
    terms = Terms(row, within)
    if row is not None and row.per_buyer is None and not row.first_order:
        if len(_kept) > 10_000:
            _kept.clear()
        _kept[(database_key(session), code)] = (time.monotonic(), terms)
    else:
        _kept.pop((database_key(session), code), None)
    return terms


def limited_per_buyer(terms) -> int | None:
    """How many uses one buyer may hold (None: no limit); a first-order coupon, one."""
    if terms.first_order:
        return 1 if terms.per_buyer is None else min(1, terms.per_buyer)
    return terms.per_buyer


def has_bought(session: Session, email: str) -> bool:
    """Has this e-mail address (in any case) ever paid for an order here?"""
    return session.execute(sa.select(sa.literal(1)).where(
        _o.c.email_folded == buyer_key(email), _o.c.status.in_(BOUGHT)).limit(1)).first() is not None


def discount(terms, *, product_id: int, category_id: int | None, currency: str, amount_cents: int,
             now: dt.datetime, bought_before: bool = False, within: frozenset[int] | None = None) -> int:
    """What the coupon takes off an order of `amount_cents` (before the discount), in cents;
    InvalidRequest saying why when it does not apply. At least 0.01 is always left to pay:
    no payment channel takes an order of nothing."""
    if terms is None or not terms.is_active:
        raise InvalidRequest("coupon: unknown coupon")
    if terms.starts_at is not None and now < terms.starts_at:
        raise InvalidRequest("coupon: not valid yet")
    if terms.ends_at is not None and now >= terms.ends_at:
        raise InvalidRequest("coupon: expired")
    if terms.max_uses is not None and terms.used >= terms.max_uses:
        raise InvalidRequest("coupon: used up")
    limit = limited_per_buyer(terms)
    if limit is not None and terms.buyer_uses >= limit:
        raise InvalidRequest("coupon: already used with this e-mail address")
    if terms.first_order and bought_before:
        raise InvalidRequest("coupon: for a buyer's first order only")
    if (terms.scope == "product" and terms.scope_id != product_id) or (
            terms.scope == "category" and category_id not in (within or {terms.scope_id})):
        raise InvalidRequest("coupon: not valid for this product")
    if terms.currency != currency and (terms.kind == "fixed" or terms.min_amount_cents
                                       or terms.max_discount_cents is not None):
        raise InvalidRequest("coupon: not valid for this product")   # (its amounts are in another currency)
    if amount_cents < terms.min_amount_cents:
        raise InvalidRequest("coupon: valid on orders of %(minimum)s or more",
                             minimum=format_cents(terms.min_amount_cents))
    if terms.kind == "fixed":
        off = terms.amount_off_cents
    else:
        off = amount_cents * terms.percent_off_bp // 10_000   # rounded down: never a cent too much
        if terms.max_discount_cents is not None:
            off = min(off, terms.max_discount_cents)
    off = min(off, amount_cents - 1)
    if off <= 0:
        raise InvalidRequest("coupon: takes nothing off this order")
    return off


_ADD_BUYER = insert_ignoring(_cb).values(coupon_id=sa.bindparam("cid"), email=sa.bindparam("email"), uses=0)


def prepare_buyer(session: Session, terms, email: str) -> None:
    """The buyer's row of a coupon limited per buyer, made before the order's transaction, in a
    short one of its own: made inside the order's, MySQL's INSERT IGNORE would hold a shared
    lock the claim's UPDATE then needs exclusively, and two orders of one buyer would deadlock."""
    if limited_per_buyer(terms) is None or session.in_transaction():
        return
    write_apart(session, _ADD_BUYER, {"cid": terms.id, "email": buyer_key(email)})


# One use taken while the coupon is still active, in its window, at the terms read (its
# version) and with a use left; then, for a coupon limited per buyer, one of the buyer's.
_CLAIM = (_cp.update().where(_cp.c.id == sa.bindparam("cid"), _cp.c.version == sa.bindparam("ver"),
                             _cp.c.is_active.is_(True),
                             sa.or_(_cp.c.starts_at.is_(None), _cp.c.starts_at <= sa.bindparam("now")),
                             sa.or_(_cp.c.ends_at.is_(None), _cp.c.ends_at > sa.bindparam("now")),
                             sa.or_(_cp.c.max_uses.is_(None), _cp.c.used < _cp.c.max_uses))
          .values(used=_cp.c.used + 1))
_CLAIM_BUYER = (_cb.update().where(_cb.c.coupon_id == sa.bindparam("cid"), _cb.c.email == sa.bindparam("b_email"),
                                   _cb.c.uses < sa.bindparam("most"))
                .values(uses=_cb.c.uses + 1))


def claim(session: Session, terms, email: str, now: dt.datetime) -> bool:
    """Take one use of the coupon for an order, in the caller's transaction: False (nothing
    taken) when it is no longer active, in its window or at these terms, or has no use left
    for everyone or for this buyer. The caller rolls back on False."""
    conn = session.connection()
    if conn.execute(_CLAIM, {"cid": terms.id, "ver": terms.version, "now": now}).rowcount != 1:
        return False
    limit = limited_per_buyer(terms)
    if limit is None:
        return True
    params = {"cid": terms.id, "b_email": buyer_key(email), "most": limit}
    if conn.execute(_CLAIM_BUYER, params).rowcount == 1:
        return True
    # No row yet (a caller's transaction): made here; a row another order just made is asked again.
    if conn.execute(_ADD_BUYER, {"cid": terms.id, "email": params["b_email"]}).rowcount == 1:
        return conn.execute(_CLAIM_BUYER, params).rowcount == 1
    return False


def take_again(session: Session, order) -> bool:
    """An expired order whose use went back is paid after all (the buyer kept the gateway's page
    open): its use is taken again, within the limits as they are now (not the terms: the buyer
    was priced with them). False, nothing taken, when the coupon has no use left for it."""
    if order.coupon_id is None or order.coupon_held:
        return True
    conn = session.connection()
    row = conn.execute(sa.select(_cp.c.per_buyer, _cp.c.first_order).where(_cp.c.id == order.coupon_id)).first()
    if row is None:
        return True   # (a coupon deleted since: nothing to count)
    if conn.execute(_cp.update().where(_cp.c.id == order.coupon_id,
                                       sa.or_(_cp.c.max_uses.is_(None), _cp.c.used < _cp.c.max_uses))
                    .values(used=_cp.c.used + 1)).rowcount != 1:
        return False
    limit = limited_per_buyer(row)
    if limit is not None:
        params = {"cid": order.coupon_id, "b_email": buyer_key(order.email), "most": limit}
        conn.execute(_ADD_BUYER, {"cid": order.coupon_id, "email": params["b_email"]})
        if conn.execute(_CLAIM_BUYER, params).rowcount != 1:
            conn.execute(_cp.update().where(_cp.c.id == order.coupon_id, _cp.c.used > 0).values(used=_cp.c.used - 1))
            return False
    conn.execute(_o.update().where(_o.c.id == order.id).values(coupon_held=True))
    return True


def give_back_expired(session: Session, order_ids: list[int]) -> int:
    """The coupon uses of orders that expired unpaid, each given back once: the order's
    coupon_held is cleared by a conditional UPDATE first, so two sweeps (two servers) never
    both give it back. The orders given back."""
    rows = session.execute(sa.select(_o.c.id, _o.c.coupon_id, _o.c.email)
                           .where(_o.c.id.in_(order_ids), _o.c.status == "expired", _o.c.coupon_held.is_(True))).all()
    conn = session.connection()
    given = 0
    for order_id, coupon_id, email in rows:
        if conn.execute(_o.update().where(_o.c.id == order_id, _o.c.status == "expired", _o.c.coupon_held.is_(True))
                        .values(coupon_held=False)).rowcount:
            conn.execute(_cp.update().where(_cp.c.id == coupon_id, _cp.c.used > 0).values(used=_cp.c.used - 1))
            conn.execute(_cb.update().where(_cb.c.coupon_id == coupon_id, _cb.c.email == buyer_key(email),
                                            _cb.c.uses > 0).values(uses=_cb.c.uses - 1))
            given += 1
    return given


# --- staff: making and changing coupons --------------------------------------------------

COUPON_FIELDS = ("note", "kind", "amount_off_cents", "percent_off_bp", "max_discount_cents", "currency", "scope",
                 "scope_id", "min_amount_cents", "starts_at", "ends_at", "max_uses", "per_buyer", "first_order",
                 "is_active")


@dataclass
class CouponStats:
    coupon: Coupon
    paid_orders: int
    discount_cents: int
    sales_cents: int


def parse_percent(text: str, field: str = "percent off") -> int:
    """'12.5' -> 1250 basis points, more than 0 and at most 100."""
    raw = (text or "").strip().rstrip("%").strip()
    if not re.fullmatch(r"[0-9]{1,3}(?:\.[0-9]{1,2})?", raw):
        raise InvalidRequest("%(field)s: a percentage such as 10 or 12.5", field=field)
    whole, _, frac = raw.partition(".")
    bp = int(whole) * 100 + int((frac + "00")[:2])
    if not 0 < bp <= 10_000:
        raise InvalidRequest("%(field)s: more than 0 and at most 100", field=field)
    return bp


def parse_coupon_form(form: Mapping[str, str], timezone: str) -> dict:
    """The panel's (or the CLI's) coupon fields, all text -> create_coupon/update_coupon values.
    Every field is read; one answer names every wrong one."""
    found = Collector()

    def read(parse, *args, **kwargs):
        with found:
            return parse(*args, **kwargs)
        return None

    def count(name: str, field: str) -> int | None:
        raw = (form.get(name) or "").strip()
        if not raw:
            return None
        if not re.fullmatch(r"[0-9]{1,9}", raw):
            found.add(InvalidRequest("%(field)s: a whole number, or leave it empty for no limit", field=field))
            return None
        return int(raw)

    kind = (form.get("kind") or "").strip()
    values = {
        "note": (form.get("note") or "").strip(),
        "kind": kind,
        "amount_off_cents": read(parse_money, form.get("amount_off") or "", field="amount off")
        if kind == "fixed" else None,
        "percent_off_bp": read(parse_percent, form.get("percent_off") or "") if kind == "percent" else None,
        "max_discount_cents": read(parse_money, form.get("max_discount"), field="largest discount")
        if kind == "percent" and (form.get("max_discount") or "").strip() else None,
        "currency": (form.get("currency") or "CNY").strip().upper(),
        "scope": (form.get("scope") or "all").strip(),
        "scope_id": None,
        "min_amount_cents": read(parse_money, form.get("min_amount"), field="minimum amount", allow_zero=True)
        if (form.get("min_amount") or "").strip() else 0,
        "starts_at": read(parse_when, form.get("starts_at") or "", "valid from", timezone),
        "ends_at": read(parse_when, form.get("ends_at") or "", "valid until", timezone),
        "max_uses": count("max_uses", "uses"),
        "per_buyer": count("per_buyer", "uses per buyer"),
        "first_order": form.get("first_order") in ("1", "on", "true", True),
        "is_active": form.get("is_active", "1") in ("1", "on", "true", True),
    }
    if kind not in COUPON_KINDS:
        found.add(InvalidRequest("kind: fixed (an amount off) or percent"))
    if values["scope"] not in COUPON_SCOPES:
        found.add(InvalidRequest("scope: all, category or product"))
    elif values["scope"] != "all":
        target = (form.get("scope_id") or "").strip()
        if not re.fullmatch(r"[0-9]{1,9}", target):
            found.add(InvalidRequest("scope: the number of the product or category"))
        else:
            values["scope_id"] = int(target)
    found.check()
    return values


def _check(session: Session, values: dict, *, coupon_id: int | None = None) -> None:
    found = Collector()
    if len(values["note"]) > MAX_NOTE:
        found.add(InvalidRequest("note: at most %(MAX_NOTE)s characters", MAX_NOTE=MAX_NOTE))
    if values["kind"] == "fixed" and not 0 < (values["amount_off_cents"] or 0) < MAX_CENTS:
        found.add(InvalidRequest("amount off: must be more than zero"))
    if values["kind"] == "percent" and not 0 < (values["percent_off_bp"] or 0) <= 10_000:
        found.add(InvalidRequest("percent off: more than 0 and at most 100"))
    if not re.fullmatch(r"[A-Z]{3}", values["currency"] or ""):
        found.add(InvalidRequest("currency: three letters such as CNY"))
    if values["scope"] == "product" and session.get(Product, values["scope_id"]) is None:
        found.add(InvalidRequest("scope: product %(id)s not found", id=values["scope_id"]))
    if values["scope"] == "category" and session.get(Category, values["scope_id"]) is None:
        found.add(InvalidRequest("scope: category %(id)s not found", id=values["scope_id"]))
    for name, field in (("max_uses", "uses"), ("per_buyer", "uses per buyer")):
        if values[name] is not None and not 1 <= values[name] <= MAX_USES:
            found.add(InvalidRequest("%(field)s: from 1 to %(most)s, or no limit", field=field, most=MAX_USES))
    if values["starts_at"] and values["ends_at"] and values["ends_at"] <= values["starts_at"]:
        found.add(InvalidRequest("valid until: must be after valid from"))
    if coupon_id is not None and values["max_uses"] is not None:
        used = session.scalar(sa.select(_cp.c.used).where(_cp.c.id == coupon_id))
        if used is not None and values["max_uses"] < used:
            found.add(InvalidRequest("uses: %(used)s are taken already", used=used))
    found.check()


def _audited(values: dict) -> dict:
    shown = {}
    for name, value in values.items():
        if name.endswith("_cents") and value is not None:
            shown[name.removesuffix("_cents")] = format_cents(value)
        elif isinstance(value, dt.datetime):
            shown[name] = value.isoformat(timespec="seconds") + "Z"
        else:
            shown[name] = value
    return shown


def create_coupon(session: Session, code: str, values: dict, *, actor: str, source_ip: str | None = None) -> Coupon:
    code = normalise_code(code) if isinstance(code, str) and CODE_RE.fullmatch(code.strip().upper()) else None
    if code is None:
        raise InvalidRequest("code: 3 to 32 letters, digits, - or _")
    _check(session, values)
    if session.scalar(sa.select(_cp.c.id).where(_cp.c.code == code)) is not None:
        raise Conflict("code: coupon %(code)s exists already", code=code)
    coupon = Coupon(code=code, created_by=actor, used=0, version=1, **values)
    session.add(coupon)
    session.flush()
    record(session, "coupon.create", actor=actor, target=f"coupon:{code}", source_ip=source_ip,
           details=_audited(values))
    return coupon


def get_coupon(session: Session, code_or_id) -> Coupon:
    coupon = None
    if isinstance(code_or_id, int):
        coupon = session.get(Coupon, code_or_id)
    elif isinstance(code_or_id, str) and code_or_id.strip():
        coupon = session.scalar(sa.select(Coupon).where(Coupon.code == code_or_id.strip().upper()))
    if coupon is None:
        raise NotFound("coupon %(code)s not found", code=str(code_or_id)[:40])
    return coupon


def update_coupon(session: Session, coupon: Coupon, values: dict, *, actor: str,
                  source_ip: str | None = None, version: int | None = None) -> dict:
    """Change a coupon's terms; orders priced with the old terms and not yet placed are priced
    again (the version). `version`: the one the staff member's form showed (a save over a
    change made since is refused). What changed, for the audit log (empty: nothing)."""
    if version is not None and version != coupon.version:
        raise Conflict("coupon %(code)s was changed or used meanwhile: look again", code=coupon.code)
    _check(session, values, coupon_id=coupon.id)
    changed = {name: value for name, value in values.items() if getattr(coupon, name) != value}
    if not changed:
        return {}
    # Conditional on the version read: two staff saving at once never both pass the checks above.
    # A lower maximum holds only if no order took a use past it since the check (the CHECK
    # constraint would refuse it: a Conflict to read, never an error page).
    within = [_cp.c.used <= changed["max_uses"]] if changed.get("max_uses") is not None else []
    moved = session.execute(_cp.update().where(_cp.c.id == coupon.id, _cp.c.version == coupon.version, *within)
                            .values(**changed, version=_cp.c.version + 1, updated_at=utcnow())).rowcount
    if moved != 1:
        raise Conflict("coupon %(code)s was changed or used meanwhile: look again", code=coupon.code)
    session.refresh(coupon)
    record(session, "coupon.update", actor=actor, target=f"coupon:{coupon.code}", source_ip=source_ip,
           details=_audited(changed))
    return changed


def set_active(session: Session, coupon: Coupon, active: bool, *, actor: str, source_ip: str | None = None) -> bool:
    if coupon.is_active == active:
        return False
    update_coupon(session, coupon, {**{f: getattr(coupon, f) for f in COUPON_FIELDS}, "is_active": active},
                  actor=actor, source_ip=source_ip)
    return True


def coupon_stats(session: Session, coupons: list[Coupon]) -> list[CouponStats]:
    """Each coupon with its paid orders, the discount they were given and what they paid."""
    ids = [c.id for c in coupons]
    figures = {}
    if ids:
        figures = {row.coupon_id: row for row in session.execute(
            sa.select(_o.c.coupon_id, sa.func.count().label("orders"),
                      sa.func.coalesce(sa.func.sum(_o.c.discount_cents), 0).label("discount"),
                      sa.func.coalesce(sa.func.sum(_o.c.amount_cents), 0).label("sales"))
            .where(_o.c.coupon_id.in_(ids), _o.c.status.in_(("paid", "delivered")))
            .group_by(_o.c.coupon_id))}
    return [CouponStats(c, figures[c.id].orders if c.id in figures else 0,
                        int(figures[c.id].discount) if c.id in figures else 0,
                        int(figures[c.id].sales) if c.id in figures else 0) for c in coupons]


def list_coupons(session: Session, *, active_only: bool = False) -> list[Coupon]:
    query = sa.select(Coupon).order_by(Coupon.created_at.desc(), Coupon.id.desc())
    if active_only:
        query = query.where(Coupon.is_active.is_(True))
    return list(session.scalars(query))


def percent_text(bp: int) -> str:
    """1250 basis points -> '12.5' (as parse_percent reads it)."""
    return f"{bp // 100}" + (f".{bp % 100:02d}".rstrip("0") if bp % 100 else "")


def describe(coupon) -> str:
    """'5.00 off' / '10% off (at most 20.00)', for lists (the buyer's pages say it in their language)."""
    if coupon.kind == "fixed":
        return f"{format_cents(coupon.amount_off_cents)} {coupon.currency}"
    text = percent_text(coupon.percent_off_bp) + "%"
    if coupon.max_discount_cents is not None:
        text += f" (≤ {format_cents(coupon.max_discount_cents)})"
    return text


def form_values(coupon: Coupon, timezone: str) -> dict[str, str]:
    """A coupon's terms as the form parse_coupon_form reads (the panel's edit page starts from them)."""
    def cents(value: int | None) -> str:
        return "" if value is None else format_cents(value)

    def count(value: int | None) -> str:
        return "" if value is None else str(value)

    return {"note": coupon.note, "kind": coupon.kind, "amount_off": cents(coupon.amount_off_cents),
            "percent_off": "" if coupon.percent_off_bp is None else percent_text(coupon.percent_off_bp),
            "max_discount": cents(coupon.max_discount_cents), "currency": coupon.currency, "scope": coupon.scope,
            "scope_id": count(coupon.scope_id), "min_amount": format_cents(coupon.min_amount_cents),
            "starts_at": shop_time(coupon.starts_at, timezone), "ends_at": shop_time(coupon.ends_at, timezone),
            "max_uses": count(coupon.max_uses), "per_buyer": count(coupon.per_buyer),
            "first_order": "1" if coupon.first_order else "0", "is_active": "1" if coupon.is_active else "0"}


def scope_choices(session: Session) -> tuple[list, list]:
    """(categories, products) a coupon can be limited to: (id, name) each, the categories as the
    tree goes ("游戏 › 点卡": a coupon for 游戏 is valid under it too), the products by name."""
    tree = read_tree(session)
    return ([(node.id, tree.label(node.id)) for node, _depth in tree.ordered()],
            session.execute(sa.select(Product.id, Product.name).order_by(Product.name, Product.id)).all())


def scope_names(session: Session, coupons: list[Coupon]) -> dict[tuple[str, int], str]:
    """The name of the category or product each coupon is limited to, by (scope, scope_id)."""
    names = {}
    for scope, model in (("category", Category), ("product", Product)):
        ids = {c.scope_id for c in coupons if c.scope == scope}
        if ids:
            names.update({(scope, row.id): row.name for row in session.execute(
                sa.select(model.id, model.name).where(model.id.in_(ids)))})
    return names

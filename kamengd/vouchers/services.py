"""Voucher terms, stores and their verifiers, and redemption (核销).

Redeeming is one conditional UPDATE of the voucher's row (what is left, its status and its
validity in the WHERE): two terminals redeeming a single-use code at once both send it,
one changes the row and the other changes nothing and is told who redeemed it, where and
when. A stored value never goes below zero (the same UPDATE, and a CHECK under it). Every
attempt, refused ones too, is a row of `redemptions`, written in the same transaction.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..accounts.models import StaffUser
from ..audit.services import record
from ..catalog.models import Product
from ..catalog.services import get_product
from ..database import utcnow
from ..errors import Collector, Conflict, InvalidRequest, NotFound
from ..inventory.models import CardKey
from ..money import MAX_CENTS, format_cents, parse_money
from ..settings.services import get_setting
from ..vault import Vault
from . import codes
from .models import Redemption, Store, StoreVerifier, Voucher, VoucherTerms

# Roles that may redeem at any store (and undo there) without being bound to it.
STORE_WIDE_ROLES = ("owner", "admin")


# -- terms -------------------------------------------------------------------------------

def terms_of(session: Session, product_id: int) -> VoucherTerms | None:
    return session.get(VoucherTerms, product_id)


def set_terms(session: Session, *, product_id: int, kind: str, uses=None, value=None, entitlement="",
              valid_days=None, valid_from: dt.datetime | None = None, valid_until: dt.datetime | None = None,
              alphabet: str | None = None, length=None, keep_in_stock=None, store_ids=None, actor: str,
              source_ip: str | None = None) -> VoucherTerms:
    """Make a product a voucher product, or change its terms (codes sold or issued keep what
    they hold; unsold codes get what the terms say when they are sold)."""
    product = get_product(session, product_id)
    terms = session.get(VoucherTerms, product_id)
    found = Collector()
    if kind not in ("uses", "value"):
        found.add(InvalidRequest("kind: uses or value"))
    if product.delivery_mode != "auto":
        found.add(InvalidRequest("product %(product_id)s is delivered %(mode)s: voucher codes are delivered "
                                 "automatically (delivery auto)", product_id=product_id, mode=product.delivery_mode))
    if terms is None:
        plain = session.scalar(sa.select(sa.func.count()).select_from(CardKey).where(
            CardKey.product_id == product_id, CardKey.status.in_(("available", "reserved", "pool"))))
        if plain:
            found.add(InvalidRequest("product %(product_id)s has %(count)s imported keys on sale: void them first "
                                     "(a voucher product's codes are made by kamengd)", product_id=product_id,
                                     count=plain))
    uses_n = _whole(found, uses, "uses", 1, 1000) if kind == "uses" else 0
    value_cents = 0
    if value not in (None, ""):
        try:
            value_cents = parse_money(str(value), field="value")
        except InvalidRequest as exc:
            found.add(exc)
    if kind == "value" and not value_cents:
        found.add(InvalidRequest("value: required for a stored-value voucher"))
    entitlement = (entitlement or "").strip()
    if len(entitlement) > 300 or any(ord(c) < 32 and c not in "\n" for c in entitlement):
        found.add(InvalidRequest("entitlement: at most 300 characters, no control characters"))
    days = _whole(found, valid_days, "valid days", 1, 3650) if valid_days not in (None, "") else None
    if valid_from and valid_until and valid_until <= valid_from:
        found.add(InvalidRequest("valid until: must be after valid from"))
    try:
        alphabet = codes.check_alphabet(alphabet or (terms.alphabet if terms else codes.DEFAULT_ALPHABET))
        length = codes.check_length(_plain_int(length, terms.code_length if terms else codes.DEFAULT_LENGTH),
                                    alphabet)
    except (codes.CodeError, ValueError) as exc:
        found.add(InvalidRequest(str(exc)))
    keep = _whole(found, keep_in_stock, "keep in stock", 0, 100000) if keep_in_stock not in (None, "") else \
        (terms.keep_in_stock if terms else 0)
    stores = _store_list(session, found, store_ids)
    if terms is not None and kind != terms.kind and session.scalar(
            sa.select(Voucher.id).where(Voucher.product_id == product_id).limit(1)) is not None:
        found.add(InvalidRequest("kind: the product's codes are %(kind)s vouchers already; make another product "
                                 "for the other kind", kind=terms.kind))
    if valid_until is not None and valid_until <= utcnow():
        found.add(InvalidRequest("valid until: already past"))
    found.check()
    before = _terms_details(terms) if terms else None
    if terms is None:
        terms = VoucherTerms(product_id=product_id)
        session.add(terms)
    terms.kind, terms.uses, terms.value_cents, terms.currency = kind, uses_n, value_cents, product.currency
    terms.entitlement, terms.valid_days, terms.valid_from, terms.valid_until = entitlement, days, valid_from, \
        valid_until
    terms.alphabet, terms.code_length, terms.keep_in_stock = alphabet, length, keep
    terms.store_ids = stores
    terms.updated_at = utcnow()
    session.flush()
    record(session, "voucher.terms", actor=actor, target=f"product:{product_id}", source_ip=source_ip,
           details={"before": before, "after": _terms_details(terms)})
    return terms


def _terms_details(terms: VoucherTerms) -> dict:
    return {"kind": terms.kind, "uses": terms.uses, "value": format_cents(terms.value_cents),
            "entitlement": terms.entitlement, "valid_days": terms.valid_days,
            "valid_from": terms.valid_from.isoformat() if terms.valid_from else None,
            "valid_until": terms.valid_until.isoformat() if terms.valid_until else None,
            "alphabet": terms.alphabet, "length": terms.code_length, "keep_in_stock": terms.keep_in_stock,
            "stores": terms.store_ids}


def _plain_int(value, default: int) -> int:
    if value in (None, ""):
        return default
    if isinstance(value, bool):
        raise ValueError("length: a whole number")
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueError("length: a whole number") from None


def _whole(found: Collector, value, name: str, low: int, high: int) -> int:
    try:
        n = _plain_int(value, low)
    except ValueError:
        n = None
    if n is None or not low <= n <= high:
        found.add(InvalidRequest("%(field)s: a whole number from %(low)s to %(high)s", field=name, low=low,
                                 high=high))
        return low
    return n


def _store_list(session: Session, found: Collector, store_ids) -> str | None:
    if store_ids in (None, "", [], ()):
        return None
    items = store_ids.replace(",", " ").split() if isinstance(store_ids, str) else list(store_ids)
    try:
        ids = sorted({int(i) for i in items})
    except (TypeError, ValueError, OverflowError):
        found.add(InvalidRequest("stores: store ids"))
        return None
    if any(not 0 < i < 2**31 for i in ids):
        found.add(InvalidRequest("stores: store ids"))
        return None
    known = set(session.scalars(sa.select(Store.id).where(Store.id.in_(ids)))) if ids else set()
    missing = [i for i in ids if i not in known]
    if missing:
        found.add(InvalidRequest("stores: no store %(ids)s", ids=", ".join(map(str, missing))))
    text = ",".join(map(str, ids))
    if len(text) > 400:
        found.add(InvalidRequest("stores: too many"))
    return text or None


def valid_window(terms: VoucherTerms, now: dt.datetime) -> tuple[dt.datetime | None, dt.datetime | None]:
    """When a code sold (or issued) now may be redeemed: the terms' window, cut to valid_days."""
    until = terms.valid_until
    if terms.valid_days:
        by_days = max(now, terms.valid_from or now) + dt.timedelta(days=terms.valid_days)
        until = by_days if until is None else min(until, by_days)
    return terms.valid_from, until


# -- what orders do to their codes ------------------------------------------------------

def activate_for_order(session: Session, order_id: int, product_id: int, now: dt.datetime) -> int:
    """A delivered order's codes become redeemable, valid from now. (Nothing for a product
    without terms: one primary-key read.)"""
    terms = session.get(VoucherTerms, product_id)
    if terms is None:
        return 0
    valid_from, valid_until = valid_window(terms, now)
    sold = sa.select(CardKey.id).where(CardKey.order_id == order_id, CardKey.status == "sold")
    # What a code holds is set when it is sold, by the terms of that moment (unsold codes follow
    # the terms as they change; sold ones keep what they were sold with).
    return session.execute(sa.update(Voucher).where(Voucher.card_key_id.in_(sold), Voucher.status == "stock")
                           .values(status="active", issued_at=now, order_id=order_id, valid_from=valid_from,
                                   valid_until=valid_until, uses_left=terms.uses if terms.kind == "uses" else 0,
                                   value_left_cents=terms.value_cents if terms.kind == "value" else 0)
                           .execution_options(synchronize_session=False)).rowcount


def refund_for_order(session: Session, order_id: int) -> int:
    """A refunded order's codes are redeemed no more (what was redeemed stays recorded)."""
    return session.execute(sa.update(Voucher).where(Voucher.order_id == order_id, Voucher.status == "active")
                           .values(status="refunded").execution_options(synchronize_session=False)).rowcount


def void_card_key(session: Session, card_key_id: int) -> int:
    """A voided key's code (a reissue) is redeemed no more."""
    return session.execute(sa.update(Voucher).where(Voucher.card_key_id == card_key_id,
                                                    Voucher.status.in_(("stock", "active")))
                           .values(status="void").execution_options(synchronize_session=False)).rowcount


def reissue_code(session: Session, old_key_id: int, new_key_id: int, order_id: int, product_id: int,
                 now: dt.datetime) -> bool:
    """A reissued code (kamengd.tickets): the new one holds what the old had left — its uses or
    value, its validity — and the old one is redeemed no more. False for a product without codes."""
    # Locked, and read as it is now: a redemption at a store committed a moment ago counts, one
    # waiting on the row is refused once it is void (never a use or value carried twice).
    old = session.scalar(sa.select(Voucher).where(Voucher.card_key_id == old_key_id).with_for_update()
                         .execution_options(populate_existing=True))
    if old is None:
        return False
    void_card_key(session, old_key_id)
    activate_for_order(session, order_id, product_id, now)
    if old.status in ("active", "void") and old.issued_at is not None:
        session.execute(sa.update(Voucher).where(Voucher.card_key_id == new_key_id)
                        .values(uses_left=old.uses_left, value_left_cents=old.value_left_cents,
                                valid_from=old.valid_from, valid_until=old.valid_until)
                        .execution_options(synchronize_session=False))
    return True


# -- stores and verifiers ---------------------------------------------------------------

def _text(value, name: str, limit: int, required: bool = False) -> str:
    text = (value or "").strip() if isinstance(value, str) or value is None else None
    if text is None or len(text) > limit or any(ord(c) < 32 for c in text):
        raise InvalidRequest("%(field)s: at most %(limit)s characters on one line", field=name, limit=limit)
    if required and not text:
        raise InvalidRequest("%(field)s: required", field=name)
    return text


def add_store(session: Session, *, name, address="", actor: str, source_ip: str | None = None) -> Store:
    name, address = _text(name, "name", 80, True), _text(address, "address", 200)
    if session.scalar(sa.select(Store.id).where(Store.name == name)) is not None:
        raise Conflict("a store named %(name)s exists", name=name)
    store = Store(name=name, address=address)
    session.add(store)
    try:
        with session.begin_nested():
            session.flush()
    except sa.exc.IntegrityError:
        raise Conflict("a store named %(name)s exists", name=name) from None
    record(session, "store.add", actor=actor, target=f"store:{store.id}", source_ip=source_ip,
           details={"name": name, "address": address})
    return store


def get_store(session: Session, store_id) -> Store:
    store = session.get(Store, store_id) if isinstance(store_id, int) and 0 < store_id < 2**31 else None
    if store is None:
        raise NotFound("store %(store_id)s not found", store_id=store_id)
    return store


def edit_store(session: Session, store_id: int, *, name=None, address=None, active: bool | None = None,
               actor: str, source_ip: str | None = None) -> Store:
    store = get_store(session, store_id)
    before = {"name": store.name, "address": store.address, "active": store.is_active}
    if name is not None:
        name = _text(name, "name", 80, True)
        other = session.scalar(sa.select(Store.id).where(Store.name == name, Store.id != store.id))
        if other is not None:
            raise Conflict("a store named %(name)s exists", name=name)
        store.name = name
    if address is not None:
        store.address = _text(address, "address", 200)
    if active is not None:
        store.is_active = bool(active)
    session.flush()
    record(session, "store.edit", actor=actor, target=f"store:{store.id}", source_ip=source_ip,
           details={"before": before, "after": {"name": store.name, "address": store.address,
                                                "active": store.is_active}})
    return store


def list_stores(session: Session) -> list[Store]:
    return list(session.scalars(sa.select(Store).order_by(Store.name)))


def verifier_accounts(session: Session) -> list[str]:
    """The active verifier accounts (what a store's form offers)."""
    return list(session.scalars(sa.select(StaffUser.username).where(StaffUser.role == "verifier",
                                                                    StaffUser.is_active.is_(True))
                                .order_by(StaffUser.username)))


def find_staff(session: Session, username: str) -> StaffUser:
    user = session.scalar(sa.select(StaffUser).where(StaffUser.username == str(username or "")[:64]))
    if user is None:
        raise NotFound("no staff member %(username)s", username=username)
    return user


def bind_verifier(session: Session, store_id: int, username: str, *, manager: bool = False, actor: str,
                  source_ip: str | None = None) -> StoreVerifier:
    """Let a verifier redeem at a store (a manager: also undo its redemptions)."""
    store = get_store(session, store_id)
    user = find_staff(session, username)
    if user.role != "verifier":
        raise InvalidRequest("%(username)s is %(role)s: only verifier accounts are bound to stores (owners and "
                             "admins redeem anywhere)", username=user.username, role=user.role)
    link = session.get(StoreVerifier, (store.id, user.id))
    if link is None:
        link = StoreVerifier(store_id=store.id, user_id=user.id, is_manager=bool(manager))
        session.add(link)
    link.is_manager = bool(manager)
    session.flush()
    record(session, "store.bind", actor=actor, target=f"store:{store.id}", source_ip=source_ip,
           details={"username": user.username, "manager": link.is_manager})
    return link


def unbind_verifier(session: Session, store_id: int, username: str, *, actor: str,
                    source_ip: str | None = None) -> None:
    store = get_store(session, store_id)
    user = find_staff(session, username)
    link = session.get(StoreVerifier, (store.id, user.id))
    if link is None:
        raise NotFound("%(username)s is not bound to store %(store_id)s", username=user.username, store_id=store.id)
    session.delete(link)
    session.flush()
    record(session, "store.unbind", actor=actor, target=f"store:{store.id}", source_ip=source_ip,
           details={"username": user.username})


def stores_for(session: Session, user: StaffUser) -> list[Store]:
    """The active stores where this staff member may redeem."""
    q = sa.select(Store).where(Store.is_active.is_(True)).order_by(Store.name)
    if user.role not in STORE_WIDE_ROLES:
        q = q.join(StoreVerifier, StoreVerifier.store_id == Store.id).where(StoreVerifier.user_id == user.id)
    return list(session.scalars(q))


def may_redeem_at(session: Session, user: StaffUser, store_id: int) -> Store:
    for store in stores_for(session, user):
        if store.id == store_id:
            return store
    raise NotFound("store %(store_id)s not found", store_id=store_id)


def may_undo_at(session: Session, user: StaffUser, store_id: int) -> bool:
    if user.role in STORE_WIDE_ROLES:
        return True
    link = session.get(StoreVerifier, (store_id, user.id))
    return link is not None and link.is_manager


def verifiers_of(session: Session, store_ids: list[int]) -> dict[int, list[tuple[str, bool]]]:
    rows = session.execute(sa.select(StoreVerifier.store_id, StaffUser.username, StoreVerifier.is_manager)
                           .join(StaffUser, StaffUser.id == StoreVerifier.user_id)
                           .where(StoreVerifier.store_id.in_(store_ids)).order_by(StaffUser.username)).all()
    found: dict[int, list[tuple[str, bool]]] = {}
    for store_id, username, manager in rows:
        found.setdefault(store_id, []).append((username, manager))
    return found


# -- looking a code up and redeeming it --------------------------------------------------

@dataclass
class Seen:
    """A code as a terminal shows it before it is redeemed (or after it was refused)."""
    code: str                                 # grouped, as typed (normalised)
    voucher: Voucher | None = None
    terms: VoucherTerms | None = None
    product_name: str = ""
    refusal: str | None = None                # why it cannot be redeemed now (REFUSALS)
    last: tuple[str, dt.datetime] | None = None   # where and when it was last redeemed
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.refusal is None

    def as_dict(self) -> dict:
        v, t = self.voucher, self.terms
        out = {"code": self.code, "ok": self.ok, "refusal": self.refusal}
        if v is not None and t is not None:
            out.update({"product": self.product_name, "kind": t.kind, "entitlement": t.entitlement,
                        "currency": t.currency, "status": v.status,
                        "valid_from": v.valid_from.isoformat() + "Z" if v.valid_from else None,
                        "valid_until": v.valid_until.isoformat() + "Z" if v.valid_until else None})
            if t.kind == "uses":
                out.update({"uses_left": v.uses_left, "uses": t.uses,
                            "face_value": format_cents(t.value_cents) if t.value_cents else None})
            else:
                out.update({"value_left": format_cents(v.value_left_cents), "value": format_cents(t.value_cents)})
        if self.last is not None:
            out["last_redeemed"] = {"store": self.last[0], "at": self.last[1].isoformat() + "Z"}
        return {**out, **self.extra}


def find_voucher(session: Session, vault: Vault, typed: str, *, lock: bool = False) -> tuple[str, Voucher | None]:
    code = codes.normalise(typed)
    if not code or not code.isascii():
        return code, None
    q = sa.select(Voucher).where(Voucher.lookup.in_([h for _v, h in vault.voucher_lookups(code)]))
    if lock:
        q = q.with_for_update()
    return code, session.scalars(q.execution_options(populate_existing=True)).first()


def _last_redemption(session: Session, voucher_id: int) -> tuple[str, dt.datetime] | None:
    row = session.execute(sa.select(Store.name, Redemption.created_at)
                          .join(Store, Store.id == Redemption.store_id)
                          .where(Redemption.voucher_id == voucher_id, Redemption.outcome == "redeemed",
                                 Redemption.undone_at.is_(None))
                          .order_by(Redemption.id.desc()).limit(1)).first()
    return (row[0], row[1]) if row else None


def _refusal(v: Voucher, terms: VoucherTerms, store_id: int, now: dt.datetime, uses: int, amount: int) -> str | None:
    if v.status == "stock":
        return "not_sold"
    if v.status in ("void", "refunded"):
        return v.status
    if v.valid_from is not None and now < v.valid_from:
        return "not_yet"
    if v.valid_until is not None and now >= v.valid_until:
        return "expired"
    if terms.store_ids and str(store_id) not in terms.store_ids.split(","):
        return "other_store"
    if terms.kind == "uses":
        if v.uses_left <= 0:
            return "used_up"
        if v.uses_left < uses:
            return "not_enough"
    else:
        if v.value_left_cents <= 0:
            return "used_up"
        if v.value_left_cents < amount:
            return "not_enough"
    return None


def look_up(session: Session, vault: Vault, typed: str, *, store_id: int, now: dt.datetime | None = None) -> Seen:
    """What a code is worth and whether it can be redeemed here now (nothing written)."""
    now = now or utcnow()
    code, v = find_voucher(session, vault, typed)
    seen = Seen(codes.grouped(code))
    if v is None:
        seen.refusal = _unknown(session, code)
        return seen
    seen.voucher, seen.terms = v, session.get(VoucherTerms, v.product_id)
    seen.product_name = session.scalar(sa.select(Product.name).where(Product.id == v.product_id)) or ""
    seen.refusal = _refusal(v, seen.terms, store_id, now, 1, 1)
    seen.last = _last_redemption(session, v.id)
    return seen


def _unknown(session: Session, code: str) -> str:
    """A code no voucher has: a typo (its check character does not match any alphabet in use), or unknown."""
    alphabets = set(session.scalars(sa.select(VoucherTerms.alphabet).distinct())) | {codes.DEFAULT_ALPHABET}
    return "unknown" if any(codes.is_well_formed(code, a) for a in alphabets) else "typo"


@dataclass
class Outcome:
    seen: Seen
    redemption_id: int | None = None
    uses: int = 0
    amount_cents: int = 0


def redeem(session: Session, vault: Vault, *, typed: str, store_id: int, user: StaffUser, uses=1, amount=None,
           now: dt.datetime | None = None, ours: bool = False) -> Outcome:
    """Redeem a code at a store: uses (a uses voucher) or an amount (a stored value). Refused
    or not, the attempt is a row; the caller commits either way.

    `ours`: the session's transaction is the caller's to end. The reads (the store, the code,
    its terms) are then made in it as a snapshot (the caller opened it read-only: SQLite's
    write lock is not taken for them), which is ended before the writes, so the lock is held
    for the conditional UPDATE and the row alone."""
    now = now or utcnow()
    store = may_redeem_at(session, user, store_id)
    store_name, user_id = store.name, user.id
    code, v = find_voucher(session, vault, typed)
    seen = Seen(codes.grouped(code))
    if v is None:
        seen.refusal = _unknown(session, code)
        _end_reads(session, ours)
        _row(session, None, None, store_id, user_id, "refused", seen.refusal, 0, 0, now,
             lookup=vault.voucher_lookups(code)[0][1] if code.isascii() else None)
        return Outcome(seen)
    terms = session.get(VoucherTerms, v.product_id)
    seen.product_name = session.scalar(sa.select(Product.name).where(Product.id == v.product_id)) or ""
    n, cents = _amounts(terms, uses, amount)
    voucher_id, product_id = v.id, v.product_id
    if ours:   # what was read stays as read (no reload under the lock)
        session.expunge(terms)
    _end_reads(session, ours)
    seen.terms = terms
    t = Voucher.__table__
    where = [t.c.id == voucher_id, t.c.status == "active",
             sa.or_(t.c.valid_from.is_(None), t.c.valid_from <= now),
             sa.or_(t.c.valid_until.is_(None), t.c.valid_until > now)]
    if terms.store_ids and str(store_id) not in terms.store_ids.split(","):
        where.append(sa.false())
    if terms.kind == "uses":
        change = {"uses_left": t.c.uses_left - n}
        where.append(t.c.uses_left >= n)
    else:
        change = {"value_left_cents": t.c.value_left_cents - cents}
        where.append(t.c.value_left_cents >= cents)
    done = session.execute(t.update().where(*where).values(**change)).rowcount
    v = session.get(Voucher, voucher_id, populate_existing=True)
    seen.voucher = v
    if done != 1:
        seen.refusal = _refusal(v, terms, store_id, now, n, cents) or "used_up"
        seen.last = _last_redemption(session, voucher_id)
        _row(session, voucher_id, product_id, store_id, user_id, "refused", seen.refusal, n, cents, now)
        return Outcome(seen)
    row = _row(session, voucher_id, product_id, store_id, user_id, "redeemed", None, n, cents, now)
    seen.last = (store_name, now)
    return Outcome(seen, row, n, cents)


def _end_reads(session: Session, ours: bool) -> None:
    if ours:
        session.rollback()   # a snapshot only: nothing written yet


def redemption_outcome(session: Session, redemption_id, store_ids: list[int]) -> Outcome | None:
    """A redemption made at one of these stores, as the terminal shows it after redeeming (the
    page the terminal is sent to after its POST, so a reload never redeems twice)."""
    try:
        rid = int(redemption_id)
    except (TypeError, ValueError, OverflowError):
        return None
    row = session.get(Redemption, rid) if 0 < rid < 2**62 else None
    if row is None or row.outcome != "redeemed" or row.store_id not in store_ids:
        return None
    v = session.get(Voucher, row.voucher_id)
    seen = Seen("", v, session.get(VoucherTerms, v.product_id),
                session.scalar(sa.select(Product.name).where(Product.id == v.product_id)) or "")
    seen.last = _last_redemption(session, v.id)
    return Outcome(seen, row.id, row.uses, row.amount_cents)


def _amounts(terms: VoucherTerms, uses, amount) -> tuple[int, int]:
    if terms.kind == "uses":
        try:
            n = int(str(uses if uses not in (None, "") else 1).strip())
        except ValueError:
            raise InvalidRequest("uses: a whole number") from None
        if not 1 <= n <= 1000:
            raise InvalidRequest("uses: a whole number from 1 to 1000")
        return n, 0
    if amount in (None, ""):
        raise InvalidRequest("amount: required for a stored-value voucher")
    cents = parse_money(str(amount), field="amount")
    if not 0 < cents <= MAX_CENTS:
        raise InvalidRequest("amount: more than 0.00")
    return 0, cents


def _row(session: Session, voucher_id, product_id, store_id, user_id: int, outcome, reason, uses, cents,
         now, lookup: bytes | None = None) -> int:
    t = Redemption.__table__
    return session.execute(t.insert().values(voucher_id=voucher_id, product_id=product_id, store_id=store_id,
                                             code_lookup=lookup, user_id=user_id, outcome=outcome, reason=reason, uses=uses,
                                             amount_cents=cents, created_at=now)).inserted_primary_key[0]


def undo_minutes(session: Session) -> int:
    return int(get_setting(session, "vouchers.undo_minutes"))


def undo(session: Session, *, redemption_id: int, user: StaffUser, reason, now: dt.datetime | None = None,
         source_ip: str | None = None) -> Redemption:
    """Give a redemption back (a mistake at the till): by a manager of its store, or an owner or
    admin, within vouchers.undo_minutes. Once (a conditional UPDATE). Audited."""
    now = now or utcnow()
    reason = _text(reason, "reason", 200, True)
    row = session.get(Redemption, redemption_id) if isinstance(redemption_id, int) and \
        0 < redemption_id < 2**62 else None
    if row is None or row.outcome != "redeemed" or not may_undo_at(session, user, row.store_id):
        raise NotFound("redemption %(id)s not found", id=redemption_id)
    window = dt.timedelta(minutes=undo_minutes(session))
    t = Redemption.__table__
    done = session.execute(t.update().where(t.c.id == row.id, t.c.undone_at.is_(None),
                                            t.c.created_at >= now - window)
                           .values(undone_at=now, undone_by=user.id, undo_reason=reason)).rowcount
    session.refresh(row)
    if done != 1:
        if row.undone_at is not None:
            raise Conflict("redemption %(id)s was undone already", id=row.id)
        raise Conflict("redemption %(id)s is older than %(minutes)s minutes: it can no longer be undone",
                       id=row.id, minutes=int(window.total_seconds() // 60))
    v = Voucher.__table__
    session.execute(v.update().where(v.c.id == row.voucher_id)
                    .values(uses_left=v.c.uses_left + row.uses, value_left_cents=v.c.value_left_cents
                            + row.amount_cents))
    record(session, "voucher.undo", actor=user.username, target=f"redemption:{row.id}", source_ip=source_ip,
           details={"voucher_id": row.voucher_id, "store_id": row.store_id, "uses": row.uses,
                    "amount": format_cents(row.amount_cents), "reason": reason,
                    "redeemed_at": row.created_at.isoformat()})
    return row


def recent_redemptions(session: Session, store_ids: list[int], limit: int = 20) -> list[tuple]:
    """A terminal's last redemptions (and refusals) at its stores, newest first."""
    if not store_ids:
        return []
    return session.execute(sa.select(Redemption, Store.name, Product.name)
                           .join(Store, Store.id == Redemption.store_id)
                           .outerjoin(Product, Product.id == Redemption.product_id)
                           .where(Redemption.store_id.in_(store_ids))
                           .order_by(Redemption.id.desc()).limit(limit)).all()


def void_voucher(session: Session, vault: Vault, *, typed: str, reason, actor: str,
                 source_ip: str | None = None) -> Voucher:
    """Staff stop a code (lost, sold by mistake): redeemed no more. Audited."""
    reason = _text(reason, "reason", 200, True)
    code, v = find_voucher(session, vault, typed, lock=True)
    if v is None:
        raise NotFound("no voucher has this code")
    if v.status not in ("stock", "active"):
        raise Conflict("the voucher is %(status)s already", status=v.status)
    previous = v.status
    if previous == "stock":   # not sold yet: it leaves the shop's stock (or an agent's pool) first
        taken = session.execute(sa.update(CardKey).where(CardKey.id == v.card_key_id,
                                                         CardKey.status.in_(("available", "pool")))
                                .values(status="void").execution_options(synchronize_session=False)).rowcount
        if taken != 1:   # reserved by an order being paid now: void it once that order is settled
            raise Conflict("the code is reserved by an order being paid: try again when the order is paid or "
                           "expired")
    session.execute(sa.update(Voucher).where(Voucher.id == v.id).values(status="void")
                    .execution_options(synchronize_session=False))
    session.refresh(v)
    record(session, "voucher.void", actor=actor, target=f"voucher:{v.id}", source_ip=source_ip,
           details={"product_id": v.product_id, "order_id": v.order_id, "batch_id": v.batch_id,
                    "previous_status": previous, "reason": reason})
    return v


# -- what the buyer sees -------------------------------------------------------------------

@dataclass
class Held:
    """One of an order's codes as its buyer sees it: the code, what it is worth, what is left."""
    code: str
    voucher: Voucher
    terms: VoucherTerms


def order_vouchers(session: Session, vault: Vault, order_id: int, product_id: int, limit: int = 50) -> list[Held]:
    """A delivered order's codes (for its page and its mail); nothing for other products."""
    terms = session.get(VoucherTerms, product_id)
    if terms is None:
        return []
    rows = session.execute(sa.select(CardKey, Voucher).join(Voucher, Voucher.card_key_id == CardKey.id)
                           .where(CardKey.order_id == order_id).order_by(CardKey.id).limit(limit)).all()
    return [Held(vault.decrypt_card_key(k.product_id, k.fingerprint, k.nonce, k.ciphertext, k.key_version)
                 .decode("ascii"), v, terms) for k, v in rows]

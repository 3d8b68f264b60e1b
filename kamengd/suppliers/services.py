"""Suppliers: added, synced (their products, costs, stock and our balance there), and their
products mapped to ours with a price rule.

A supplier is another kamengd; this shop is an agent there, with a key of that agent
account. Syncing reads the supplier's `GET /products` (its price to us is our cost) and
`GET /balance`. A mapped product of ours is sold at cost + the rule's markup, follows the
cost when it moves (warned as supplier.cost_changed), shows the supplier's stock, and
its paid orders are bought upstream (kamengd.suppliers.forwarding).
"""
from __future__ import annotations

import datetime as dt
import re
import urllib.parse

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..audit.services import record
from ..catalog.models import Product
from ..catalog.services import create_product
from ..inventory.models import CardKey
from ..database import utcnow
from ..errors import Conflict, InvalidRequest, NotFound
from ..money import format_cents, parse_plain_money
from ..notifications.events import emit
from ..vault import Vault, VaultError
from .client import Answer, Client, Unreachable
from .models import Supplier, SupplierProduct

NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
KEY_ID_RE = re.compile(r"[\x21-\x7e]{1,32}")
_PERCENT_RE = re.compile(r"([0-9]{1,4})(?:\.([0-9]{1,2}))?")
MAX_PERCENT_BP = 100_000   # a markup of at most 1000 %
MAX_REMOTE_INT = 2**31 - 1  # ids, stock and quantities are stored in INTEGER columns


def secret_context(name: str) -> str:
    return f"supplier:{name}"


def client_for(supplier: Supplier, vault: Vault) -> Client:
    try:
        secret = vault.decrypt_secret(secret_context(supplier.name), supplier.secret_nonce,
                                      supplier.secret_ciphertext, supplier.secret_key_version).decode()
    except VaultError:
        raise Conflict("the key of supplier %(name)s cannot be read: set it again", name=supplier.name) from None
    return Client(supplier.base_url, supplier.key_id, secret)


def parse_base_url(url) -> str:
    text = str(url or "").strip()
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password \
            or parts.query or parts.fragment or len(text) > 500:
        raise InvalidRequest("url: the supplier's address, such as https://shop.example.com (http or https, "
                             "no user name, query or fragment)")
    return text.rstrip("/")


def get_supplier(session: Session, name) -> Supplier:
    supplier = session.scalars(sa.select(Supplier).where(Supplier.name == str(name)[:32])).first()
    if supplier is None:
        raise NotFound("no supplier %(name)r", name=str(name)[:32])
    return supplier


def list_suppliers(session: Session) -> list[Supplier]:
    return session.scalars(sa.select(Supplier).order_by(Supplier.name)).all()


def add_supplier(session: Session, vault: Vault, *, name, url, key_id, secret, actor: str,
                 low_balance=None, source_ip: str | None = None) -> Supplier:
    """Store a supplier (the secret sealed, never shown again). Audited without the secret.
    Not checked against the supplier here: `sync` says whether the key works."""
    name = str(name or "").strip().lower()
    if not NAME_RE.fullmatch(name):
        raise InvalidRequest("name: 1 to 32 lower-case letters, digits, - or _")
    url = parse_base_url(url)
    key_id = str(key_id or "").strip()
    if not KEY_ID_RE.fullmatch(key_id):
        raise InvalidRequest("key id: the supplier's key id (1 to 32 printable characters)")
    secret = str(secret or "").strip()
    if not 16 <= len(secret) <= 200 or any(c.isspace() for c in secret):
        raise InvalidRequest("secret: the key's secret as the supplier showed it (16 to 200 characters)")
    if session.scalar(sa.select(Supplier.id).where(Supplier.name == name)) is not None:
        raise Conflict("supplier %(name)s exists", name=name)
    threshold = _low_balance(low_balance)
    nonce, ciphertext, version = vault.encrypt_secret(secret_context(name), secret.encode())
    supplier = Supplier(name=name, base_url=url, key_id=key_id, secret_nonce=nonce, secret_ciphertext=ciphertext,
                        secret_key_version=version, low_balance_cents=threshold)
    session.add(supplier)
    session.flush()
    record(session, "supplier.add", actor=actor, target=f"supplier:{name}", source_ip=source_ip,
           details={"url": url, "key_id": key_id, "low_balance": format_cents(threshold)})
    return supplier


def _low_balance(value) -> int:
    if value is None or str(value).strip() == "":
        return 0
    return parse_plain_money(str(value).strip(), field="low balance", allow_zero=True)


def set_supplier(session: Session, supplier: Supplier, *, actor: str, source_ip: str | None = None,
                 active: bool | None = None, low_balance=None, url=None) -> dict:
    """Change a supplier's switch, warning threshold or address; audited."""
    changes = {}
    if active is not None and supplier.is_active != active:
        changes["active"] = {"old": supplier.is_active, "new": active}
        supplier.is_active = active
    if low_balance is not None:
        cents = _low_balance(low_balance)
        if cents != supplier.low_balance_cents:
            changes["low_balance"] = {"old": format_cents(supplier.low_balance_cents), "new": format_cents(cents)}
            supplier.low_balance_cents, supplier.low_balance_warned = cents, False
    if url is not None:
        url = parse_base_url(url)
        if url != supplier.base_url:
            changes["url"] = {"old": supplier.base_url, "new": url}
            supplier.base_url = url
    if changes:
        session.flush()
        record(session, "supplier.change", actor=actor, target=f"supplier:{supplier.name}", source_ip=source_ip,
               details=changes)
    return changes


# --- prices ----------------------------------------------------------------------------------

def parse_markup(*, fixed=None, percent=None) -> tuple[str, int]:
    """('fixed', cents) or ('percent', hundredths of a percent): exactly one of the two."""
    if (fixed is None) == (percent is None):
        raise InvalidRequest("markup: give either a fixed amount or a percentage")
    if fixed is not None:
        return "fixed", parse_plain_money(str(fixed).strip(), field="markup", allow_zero=True)
    found = _PERCENT_RE.fullmatch(str(percent).strip())
    if not found:
        raise InvalidRequest("markup: a percentage such as 12.5")
    bp = int(found.group(1)) * 100 + int((found.group(2) or "").ljust(2, "0"))
    if bp > MAX_PERCENT_BP:
        raise InvalidRequest("markup: at most 1000 %")   # no params: not %-formatted
    return "percent", bp


def price_for(cost_cents: int, kind: str, value: int) -> int:
    """Our price for a supplier's cost: cost + fixed, or cost × (1 + percent), rounded up
    to the cent (a markup never rounds down to less than asked)."""
    if kind == "fixed":
        return cost_cents + value
    return cost_cents + -(-cost_cents * value // 10000)


def format_markup(kind: str | None, value: int | None) -> str:
    if kind == "fixed":
        return "+" + format_cents(value)
    if kind == "percent":
        return f"+{value // 100}.{value % 100:02d} %"
    return ""


# --- sync ------------------------------------------------------------------------------------

def sync_supplier(session: Session, vault: Vault, supplier: Supplier, *, now: dt.datetime | None = None) -> dict:
    """Read the supplier's products and our balance there; update costs, stock, mapped
    products' prices; warn of cost moves and a low balance. Commits (a job's or a command's
    unit); a supplier that cannot be reached keeps its last figures and records why."""
    now = now or utcnow()
    supplier_id = supplier.id
    try:
        client = client_for(supplier, vault)
    except Conflict as exc:   # its secret cannot be opened: recorded, the other suppliers go on
        return _sync_failed(session, supplier_id, exc.message, now)
    session.rollback()   # no transaction (on SQLite: no write lock) is held while the supplier answers
    try:
        products = client.call("GET", "/products")
        balance = client.call("GET", "/balance") if products.ok else None
    except Unreachable as exc:
        return _sync_failed(session, supplier_id, str(exc), now)
    if not products.ok:
        return _sync_failed(session, supplier_id, f"{products.error_code}: {products.error_message}", now)
    if not balance.ok:
        return _sync_failed(session, supplier_id, f"{balance.error_code}: {balance.error_message}", now)
    if not isinstance(products.body.get("products"), list):
        # Recorded like no answer (an exception here would stop sync_all's other suppliers).
        return _sync_failed(session, supplier_id, "the supplier answered products in an unknown shape", now)
    supplier = session.get(Supplier, supplier_id)
    counts = _store_products(session, supplier, products, now)
    _store_balance(session, supplier, balance, now)
    supplier.synced_at, supplier.last_error = now, None
    session.commit()
    return counts


def _sync_failed(session: Session, supplier_id: int, why: str, now: dt.datetime) -> dict:
    session.rollback()
    session.execute(sa.update(Supplier).where(Supplier.id == supplier_id).values(last_error=why[:300]))
    session.commit()
    return {"error": why}


def _store_products(session: Session, supplier: Supplier, answer: Answer, now: dt.datetime) -> dict:
    offered = answer.body.get("products")
    if not isinstance(offered, list):
        raise Conflict("supplier %(name)s answered products in an unknown shape", name=supplier.name)
    known = {p.remote_id: p for p in session.scalars(sa.select(SupplierProduct)
                                                     .where(SupplierProduct.supplier_id == supplier.id))}
    counts = {"products": 0, "new": 0, "gone": 0, "repriced": 0}
    seen = set()
    for item in offered:
        parsed = _remote_product(item)
        if parsed is None:
            continue
        remote_id, name, cost, currency, stock, low, high = parsed
        if remote_id in seen:   # the same id twice in one answer: the first one counts
            continue
        seen.add(remote_id)
        counts["products"] += 1
        row = known.get(remote_id)
        if row is None:
            row = SupplierProduct(supplier_id=supplier.id, remote_id=remote_id, name=name, cost_cents=cost,
                                  currency=currency, stock=stock, min_quantity=low, max_quantity=high,
                                  synced_at=now)
            session.add(row)
            counts["new"] += 1
            continue
        old_cost = row.cost_cents
        row.name, row.cost_cents, row.currency, row.stock, row.gone = name, cost, currency, stock, False
        row.min_quantity, row.max_quantity, row.synced_at = low, high, now
        if row.product_id is not None:
            counts["repriced"] += _follow_cost(session, supplier, row, old_cost, now)
    for remote_id, row in known.items():
        if remote_id not in seen and not row.gone:
            row.gone, row.stock = True, 0
            counts["gone"] += 1
    session.flush()
    return counts


def _remote_product(item) -> tuple | None:
    """(id, name, cost cents, currency, stock, min, max) of one product in a supplier's answer,
    or None for one we cannot read (skipped, never guessed)."""
    if not isinstance(item, dict):
        return None
    try:
        remote_id = item["id"]
        cost = _cents(item["price"])
        stock = item.get("stock", 0)
        low, high = item.get("min_quantity", 1), item.get("max_quantity", 100)
    except (KeyError, TypeError):
        return None
    name = str(item.get("name", ""))[:200]
    currency = str(item.get("currency", "CNY"))[:3]
    ints = (remote_id, stock, low, high)
    if cost is None or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_REMOTE_INT
                               for v in ints):
        return None
    return remote_id, name, cost, currency, stock, max(1, low), max(1, low, high)


def _cents(text) -> int | None:
    """An amount in a supplier's answer, or None when it is not one (never guessed)."""
    try:
        return parse_plain_money(text, allow_zero=True) if isinstance(text, str) else None
    except InvalidRequest:
        return None


def _follow_cost(session: Session, supplier: Supplier, row: SupplierProduct, old_cost: int,
                 now: dt.datetime) -> int:
    """Our mapped product at cost + markup; a cost move is warned. 1 if the price changed."""
    product = session.get(Product, row.product_id)
    if product is None:
        return 0
    price = price_for(row.cost_cents, row.markup_kind, row.markup_value)
    changed = 0
    if product.price_cents != price or product.cost_price_cents != row.cost_cents:
        old_price = product.price_cents
        product.price_cents, product.cost_price_cents, product.updated_at = price, row.cost_cents, now
        changed = int(old_price != price)
        record(session, "supplier.reprice", actor=f"supplier:{supplier.name}", target=f"product:{product.id}",
               details={"cost": {"old": format_cents(old_cost), "new": format_cents(row.cost_cents)},
                        "price": {"old": format_cents(old_price), "new": format_cents(price)}})
    if old_cost != row.cost_cents:
        emit(session, "supplier.cost_changed", {
            "supplier": supplier.name, "product_id": product.id, "product_name": product.name,
            "remote_product_id": row.remote_id, "old_cost": format_cents(old_cost),
            "cost": format_cents(row.cost_cents), "price": format_cents(product.price_cents),
            "currency": row.currency}, now)
    return changed


def _store_balance(session: Session, supplier: Supplier, answer: Answer, now: dt.datetime) -> None:
    cents = _cents(answer.body.get("balance"))
    if cents is None:
        return
    supplier.balance_cents, supplier.currency = cents, str(answer.body.get("currency", "CNY"))[:3]
    low = supplier.low_balance_cents and cents < supplier.low_balance_cents
    if low and not supplier.low_balance_warned:
        supplier.low_balance_warned = True
        emit(session, "supplier.low_balance", {"supplier": supplier.name, "balance": format_cents(cents),
                                               "threshold": format_cents(supplier.low_balance_cents),
                                               "currency": supplier.currency}, now)
    elif not low:
        supplier.low_balance_warned = False


def sync_all(session: Session, vault: Vault, *, now: dt.datetime | None = None) -> dict:
    """The job: every active supplier, one after another (one failing stops none)."""
    ids = session.scalars(sa.select(Supplier.id).where(Supplier.is_active.is_(True)).order_by(Supplier.id)).all()
    session.rollback()
    counts = {"suppliers": 0, "failed": 0}
    for supplier_id in ids:
        result = sync_supplier(session, vault, session.get(Supplier, supplier_id), now=now)
        counts["suppliers"] += 1
        counts["failed"] += "error" in result
    return counts


# --- mapping ---------------------------------------------------------------------------------

def supplier_products(session: Session, supplier: Supplier) -> list[SupplierProduct]:
    return session.scalars(sa.select(SupplierProduct).where(SupplierProduct.supplier_id == supplier.id)
                           .order_by(SupplierProduct.gone, SupplierProduct.remote_id)).all()


def map_product(session: Session, supplier: Supplier, *, remote_id, product_id=None, create_name=None,
                fixed=None, percent=None, actor: str, source_ip: str | None = None) -> SupplierProduct:
    """Sell the supplier's product `remote_id` as our product `product_id` (which becomes
    supplier-delivered), or as a new product (`create_name`), at cost + markup. Audited."""
    kind, value = parse_markup(fixed=fixed, percent=percent)
    if isinstance(remote_id, bool) or not isinstance(remote_id, int):
        raise InvalidRequest("remote product: the supplier's product id")
    row = session.scalars(sa.select(SupplierProduct).where(SupplierProduct.supplier_id == supplier.id,
                                                           SupplierProduct.remote_id == remote_id)
                          .with_for_update()).first()
    if row is None or row.gone:
        raise NotFound("supplier %(name)s offers no product %(remote)s (sync first)", name=supplier.name,
                       remote=remote_id)
    price = price_for(row.cost_cents, kind, value)
    if (product_id is None) == (create_name is None):
        raise InvalidRequest("product: give our product's id, or a name for a new one")
    if product_id is not None:
        product = session.get(Product, product_id) if isinstance(product_id, int) else None
        if product is None:
            raise NotFound("product %(product_id)s not found", product_id=product_id)
        if product.currency != row.currency:
            raise InvalidRequest("the supplier sells in %(theirs)s, product %(id)s is priced in %(ours)s",
                                 theirs=row.currency, id=product.id, ours=product.currency)
        other = session.scalar(sa.select(SupplierProduct.id).where(SupplierProduct.product_id == product.id,
                                                                   SupplierProduct.id != row.id))
        if other is not None:
            raise Conflict("product %(id)s is mapped to another supplier product", id=product.id)
        # Unpaid orders holding this shop's keys would be bought upstream and keep those keys
        # reserved for good: they go first (paid or expired).
        reserved = session.scalar(sa.select(sa.func.count()).select_from(CardKey).where(
            CardKey.product_id == product.id, CardKey.status == "reserved"))
        if reserved and product.delivery_mode != "supplier":
            raise Conflict("%(count)s keys of product %(id)s are reserved by unpaid orders: map it once they are "
                           "paid or expired", count=reserved, id=product.id)
    else:
        product = create_product(session, name=create_name, price_cents=price, actor=actor,
                                 currency=row.currency, cost_price_cents=row.cost_cents,
                                 min_quantity=row.min_quantity, max_quantity=row.max_quantity,
                                 source_ip=source_ip)
    if row.product_id not in (None, product.id):
        _unmap(session, row)
    row.product_id, row.markup_kind, row.markup_value = product.id, kind, value
    product.delivery_mode, product.price_cents, product.cost_price_cents = "supplier", price, row.cost_cents
    session.flush()
    record(session, "supplier.map", actor=actor, target=f"product:{product.id}", source_ip=source_ip,
           details={"supplier": supplier.name, "remote_product_id": remote_id,
                    "markup": format_markup(kind, value), "cost": format_cents(row.cost_cents),
                    "price": format_cents(price)})
    return row


def _unmap(session: Session, row: SupplierProduct) -> None:
    product = session.get(Product, row.product_id)
    if product is not None and product.delivery_mode == "supplier":
        product.delivery_mode = "auto"   # from now on, sold from keys imported here
    row.product_id = row.markup_kind = row.markup_value = None


def unmap_product(session: Session, *, product_id, actor: str, source_ip: str | None = None) -> SupplierProduct:
    """Our product is sold from our own stock again (paid orders already forwarded go on). Audited."""
    row = session.scalars(sa.select(SupplierProduct).where(SupplierProduct.product_id == product_id)
                          .with_for_update()).first() if isinstance(product_id, int) else None
    if row is None:
        raise NotFound("product %(product_id)s is not mapped to a supplier", product_id=product_id)
    supplier = session.get(Supplier, row.supplier_id)
    _unmap(session, row)
    session.flush()
    record(session, "supplier.unmap", actor=actor, target=f"product:{product_id}", source_ip=source_ip,
           details={"supplier": supplier.name, "remote_product_id": row.remote_id})
    return row

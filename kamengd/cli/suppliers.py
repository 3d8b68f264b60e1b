"""`kamengd supplier …`: other kamengd shops this one buys from (对接/进货)."""
from __future__ import annotations

import urllib.parse

import click

from ..audit.services import cli_actor
from ..catalog.models import Product
from ..context import get_vault
from ..extensions import db
from ..money import format_cents
from ..suppliers import forwarding
from ..suppliers import services as suppliers
from .group import cli, emit, json_option, with_app
from .install import read_password_file


@cli.group()
def supplier():
    """Suppliers: other kamengd shops whose products this shop resells (对接)."""


def _iso(value):
    return value.isoformat(timespec="seconds") + "Z" if value else None


def supplier_view(s) -> dict:
    return {"id": s.id, "name": s.name, "url": s.base_url, "key_id": s.key_id, "active": s.is_active,
            "balance": format_cents(s.balance_cents) if s.balance_cents is not None else None,
            "currency": s.currency, "low_balance": format_cents(s.low_balance_cents),
            "synced_at": _iso(s.synced_at), "last_error": s.last_error}


def _default_name(url: str) -> str:
    host = (urllib.parse.urlsplit(url).hostname or "supplier").lower()
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in host)[:32].strip("-_")
    return name or "supplier"


@supplier.command("add")
@click.option("--url", required=True, help="The supplier's address, e.g. https://shop.example.com.")
@click.option("--key-id", required=True, metavar="ID", help="The key id the supplier issued to this shop's agent.")
@click.option("--secret-file", required=True, metavar="F", help="File holding that key's secret.")
@click.option("--name", help="A short name for it (default: from the URL's host).")
@click.option("--low-balance", metavar="AMOUNT", help="Warn (supplier.low_balance) below this balance there.")
@click.option("--no-sync", is_flag=True, help="Do not sync at once (the scheduler syncs every 5 minutes).")
@json_option
@with_app
def supplier_add(url, key_id, secret_file, name, low_balance, no_sync, as_json):
    """Add a supplier (its secret sealed, never shown again) and sync it. Audited."""
    made = suppliers.add_supplier(db.session, get_vault(), name=name or _default_name(url), url=url, key_id=key_id,
                                  secret=read_password_file(secret_file), low_balance=low_balance,
                                  actor=cli_actor())
    result = {}
    if not no_sync:
        db.session.commit()   # stored even if the supplier does not answer now
        result = suppliers.sync_supplier(db.session, get_vault(), made)
    view = supplier_view(made)
    view["sync"] = result
    emit(as_json, view, f"added supplier {made.name} ({made.base_url})"
         + (f"; sync failed: {result['error']}" if "error" in result else
            f"; {result.get('products', 0)} products, balance {view['balance']} {view['currency']}"
            if result else ""))


@supplier.command("list")
@json_option
@with_app(readonly=True)
def supplier_list(as_json):
    """Suppliers with their balance, last sync and last error."""
    rows = [supplier_view(s) for s in suppliers.list_suppliers(db.session)]
    if as_json:
        emit(True, {"suppliers": rows}, "")
        return
    for r in rows:
        click.echo(f"{r['name']:<20} {'on ' if r['active'] else 'off'} {r['url']:<40} balance "
                   f"{r['balance'] or '?'} {r['currency'] or ''}  synced {r['synced_at'] or 'never'}"
                   + (f"  error: {r['last_error']}" if r["last_error"] else ""))


@supplier.command("sync")
@click.option("--name", help="One supplier (default: every active one).")
@json_option
@with_app
def supplier_sync(name, as_json):
    """Sync now: products, costs, stock, our balance there (mapped products follow the cost)."""
    if name:
        result = {name: suppliers.sync_supplier(db.session, get_vault(), suppliers.get_supplier(db.session, name))}
    else:
        result = {}
        for s in suppliers.list_suppliers(db.session):
            if s.is_active:
                result[s.name] = suppliers.sync_supplier(db.session, get_vault(), s)
    failed = {n: r["error"] for n, r in result.items() if "error" in r}
    emit(as_json, {"synced": result}, "\n".join(
        f"{n}: " + (f"failed: {r['error']}" if "error" in r else
                    f"{r['products']} products ({r['new']} new, {r['gone']} gone, {r['repriced']} repriced)")
        for n, r in result.items()) or "no active supplier")
    if failed:
        raise click.exceptions.Exit(1)


@supplier.command("products")
@click.option("--name", required=True, help="The supplier.")
@json_option
@with_app(readonly=True)
def supplier_products(name, as_json):
    """The supplier's products as last synced, with the product of ours each is sold as."""
    rows = [{"remote_id": p.remote_id, "name": p.name, "cost": format_cents(p.cost_cents), "currency": p.currency,
             "stock": p.stock, "gone": p.gone, "product_id": p.product_id,
             "markup": suppliers.format_markup(p.markup_kind, p.markup_value)}
            for p in suppliers.supplier_products(db.session, suppliers.get_supplier(db.session, name))]
    if as_json:
        emit(True, {"products": rows}, "")
        return
    for r in rows:
        click.echo(f"{r['remote_id']:>6}  {r['name'][:40]:<40} cost {r['cost']:>10} {r['currency']}  stock "
                   f"{r['stock']:>6}" + (f"  -> product {r['product_id']} {r['markup']}" if r["product_id"] else "")
                   + ("  (gone)" if r["gone"] else ""))


@supplier.command("map")
@click.option("--name", required=True, help="The supplier.")
@click.option("--remote-product", type=int, required=True, metavar="ID", help="The supplier's product id.")
@click.option("--product", "product_id", type=int, metavar="ID", help="Our product that becomes supplier-delivered.")
@click.option("--create", "create_name", metavar="NAME", help="Or: create a new product of ours with this name.")
@click.option("--markup-fixed", metavar="AMOUNT", help="Our price = cost + AMOUNT.")
@click.option("--markup-percent", metavar="PERCENT", help="Our price = cost + PERCENT %, rounded up to the cent.")
@json_option
@with_app
def supplier_map(name, remote_product, product_id, create_name, markup_fixed, markup_percent, as_json):
    """Sell a supplier's product as ours at cost + markup; its paid orders are bought upstream. Audited."""
    row = suppliers.map_product(db.session, suppliers.get_supplier(db.session, name), remote_id=remote_product,
                                product_id=product_id, create_name=create_name, fixed=markup_fixed,
                                percent=markup_percent, actor=cli_actor())
    product = db.session.get(Product, row.product_id)
    emit(as_json, {"product_id": product.id, "remote_product_id": row.remote_id,
                   "markup": suppliers.format_markup(row.markup_kind, row.markup_value),
                   "cost": format_cents(row.cost_cents), "price": format_cents(product.price_cents),
                   "stock": row.stock},
         f"product {product.id} ({product.name}) is bought from {name} #{row.remote_id}: cost "
         f"{format_cents(row.cost_cents)}, price {format_cents(product.price_cents)}")


@supplier.command("unmap")
@click.option("--product", "product_id", type=int, required=True, metavar="ID")
@json_option
@with_app
def supplier_unmap(product_id, as_json):
    """Sell our product from our own stock again. Audited."""
    suppliers.unmap_product(db.session, product_id=product_id, actor=cli_actor())
    emit(as_json, {"product_id": product_id, "mapped": False}, f"product {product_id} is sold from our stock again")


@supplier.command("set")
@click.option("--name", required=True)
@click.option("--enable/--disable", "active", default=None, help="Off: nothing is forwarded or synced.")
@click.option("--low-balance", metavar="AMOUNT")
@click.option("--url")
@json_option
@with_app
def supplier_set(name, active, low_balance, url, as_json):
    """Change a supplier's switch, low-balance warning or address. Audited."""
    found = suppliers.get_supplier(db.session, name)
    changes = suppliers.set_supplier(db.session, found, actor=cli_actor(), active=active,
                                     low_balance=low_balance, url=url)
    emit(as_json, {**supplier_view(found), "changed": sorted(changes)},
         f"supplier {name}: " + (", ".join(sorted(changes)) + " changed" if changes else "nothing changed"))


@supplier.command("orders")
@click.option("--name", help="One supplier.")
@click.option("--problems", is_flag=True, help="Only forwards not done after a try (waiting, refused, no answer).")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@json_option
@with_app(readonly=True)
def supplier_orders(name, problems, limit, as_json):
    """Orders forwarded to suppliers: status, tries, the supplier's order number, last error."""
    supplier_id = suppliers.get_supplier(db.session, name).id if name else None
    rows = [{"order_no": order_no, "order_status": order_status, "status": f.status, "attempts": f.attempts,
             "uncertain": f.uncertain, "remote_order_no": f.remote_order_no,
             "cost": format_cents(f.cost_cents) if f.cost_cents is not None else None,
             "last_error": f.last_error, "next_attempt_at": _iso(f.next_attempt_at)}
            for f, order_no, order_status in forwarding.forwards(db.session, supplier_id=supplier_id,
                                                                  problems_only=problems, limit=limit)]
    if as_json:
        emit(True, {"orders": rows}, "")
        return
    for r in rows:
        click.echo(f"{r['order_no']}  {r['order_status']:<9} -> {r['status']:<9} tries {r['attempts']:>3}  "
                   f"{r['remote_order_no'] or '-'}" + (f"  {r['last_error']}" if r["last_error"] else ""))

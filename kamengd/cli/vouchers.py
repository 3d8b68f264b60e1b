"""`kamengd voucher …` and `kamengd store …`: voucher products (卡券), their codes, the stores
where they are redeemed (核销) and the verifiers bound to them."""
from __future__ import annotations

from pathlib import Path

import click

from ..audit.services import cli_actor
from ..catalog.models import Product
from ..context import get_config, get_vault
from ..errors import InvalidRequest
from ..extensions import db
from ..localtime import parse_when
from ..money import format_cents
from ..vouchers import services as vouchers, stock
from ..vouchers.models import Store
from .group import cli, emit, json_option, with_app


def _iso(value):
    return value.isoformat(timespec="seconds") + "Z" if value else None


def terms_view(t) -> dict:
    return {"product_id": t.product_id, "kind": t.kind, "uses": t.uses, "value": format_cents(t.value_cents),
            "currency": t.currency, "entitlement": t.entitlement, "valid_days": t.valid_days,
            "valid_from": _iso(t.valid_from), "valid_until": _iso(t.valid_until), "alphabet": t.alphabet,
            "length": t.code_length, "keep_in_stock": t.keep_in_stock,
            "stores": [int(i) for i in t.store_ids.split(",")] if t.store_ids else None}


@cli.group()
def voucher():
    """Voucher products: codes kamengd makes, sold or issued in batches, redeemed at stores."""


@voucher.command("terms")
@click.argument("product_id", type=int)
@click.option("--kind", type=click.Choice(("uses", "value")), required=True,
              help="uses: redeemed whole, --uses times; value: a stored value redeemed in parts.")
@click.option("--uses", metavar="N", help="Times a code may be redeemed (kind uses; default 1).")
@click.option("--value", metavar="AMOUNT", help="The stored value (kind value), or the face value shown (uses).")
@click.option("--entitlement", default="", help="What the holder gets, in words (shown at the till).")
@click.option("--valid-days", metavar="N", help="Valid this many days from the sale (or the batch).")
@click.option("--valid-from", metavar="TIME", help="Not before (the shop's time zone), e.g. 2027-01-01 00:00.")
@click.option("--valid-until", metavar="TIME", help="Not after (the shop's time zone).")
@click.option("--alphabet", help="The codes' characters (default: digits and letters without look-alikes).")
@click.option("--length", metavar="N", help="The codes' length, check character included (default 16).")
@click.option("--keep-in-stock", metavar="N", help="The scheduler keeps this many unsold codes (0: off).")
@click.option("--stores", metavar="IDS", help="Only at these stores (ids, comma-separated; default: all).")
@json_option
@with_app
def voucher_terms(product_id, kind, uses, value, entitlement, valid_days, valid_from, valid_until, alphabet, length,
                  keep_in_stock, stores, as_json):
    """Make a product a voucher product, or change its terms. Audited."""
    zone = get_config().site.timezone
    terms = vouchers.set_terms(db.session, product_id=product_id, kind=kind, uses=uses, value=value,
                               entitlement=entitlement, valid_days=valid_days,
                               valid_from=parse_when(valid_from or "", "valid from", zone),
                               valid_until=parse_when(valid_until or "", "valid until", zone),
                               alphabet=alphabet, length=length, keep_in_stock=keep_in_stock, store_ids=stores,
                               actor=cli_actor())
    emit(as_json, terms_view(terms), f"product {product_id}: voucher terms set ({terms.kind})")


@voucher.command("generate")
@click.argument("product_id", type=int)
@click.option("--count", type=int, required=True, help="How many codes to make for sale.")
@json_option
@with_app
def voucher_generate(product_id, count, as_json):
    """Make codes for sale (the product's stock). Audited."""
    made = stock.generate_stock(db.session, get_vault(), product_id=product_id, count=count, actor=cli_actor())
    emit(as_json, {"product_id": product_id, "generated": made}, f"product {product_id}: {made} codes generated")


@voucher.command("batch")
@click.argument("product_id", type=int)
@click.option("--count", type=int, required=True, help="How many codes to issue.")
@click.option("--reason", required=True, help="Why (for whom) they are issued: kept in the audit log.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The file the codes are written to (.csv or .xlsx), mode 0600.")
@json_option
@with_app
def voucher_batch(product_id, count, reason, output, as_json):
    """Issue codes outside any order (a corporate gift), active at once, into a CSV or XLSX file.
    Audited (issue and export)."""
    fmt = _format(output)
    issued = stock.issue_batch(db.session, get_vault(), product_id=product_id, count=count, reason=reason,
                               actor=cli_actor())
    stock.audit_export(db.session, issued.batch, reason=reason, actor=cli_actor(), fmt=fmt)
    db.session.flush()
    _write(product_id, issued.batch.id, output, fmt)
    emit(as_json, {"batch_id": issued.batch.id, "count": count, "output": str(output.absolute())},
         f"batch {issued.batch.id}: {count} codes issued into {output}")


@voucher.command("export")
@click.argument("batch_id", type=int)
@click.option("--reason", required=True, help="Why the codes are exported again: kept in the audit log.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The file (.csv or .xlsx), mode 0600.")
@with_app
def voucher_export(batch_id, reason, output):
    """Write a batch's codes (and what each has left) to a file again. Audited."""
    fmt = _format(output)
    batch, _rows = stock.batch_codes(db.session, get_vault(), batch_id)
    stock.audit_export(db.session, batch, reason=reason, actor=cli_actor(), fmt=fmt)
    _write(batch.product_id, batch.id, output, fmt)
    emit(False, {}, f"batch {batch.id}: {batch.count} codes written to {output}")


def _format(output: Path) -> str:
    fmt = output.suffix.lower().lstrip(".")
    if fmt not in ("csv", "xlsx"):
        raise InvalidRequest("output: a .csv or .xlsx file")
    return fmt


def _write(product_id: int, batch_id: int, output: Path, fmt: str) -> None:
    # Written before the commit: a failed commit leaves a file of codes that do not exist, never
    # codes that exist with no file (the file is the company's only copy).
    product = db.session.get(Product, product_id)
    terms = vouchers.terms_of(db.session, product_id)
    _batch, rows = stock.batch_codes(db.session, get_vault(), batch_id)
    data = stock.export_rows(product, terms, rows)
    stock.write_private(output, stock.render_csv(data) if fmt == "csv" else stock.render_xlsx(data))


@voucher.command("check")
@click.argument("code")
@click.option("--store", "store_id", type=int, required=True, help="The store it would be redeemed at.")
@with_app(readonly=True)
def voucher_check(code, store_id):
    """What a code is worth, and whether it can be redeemed at the store now (nothing written)."""
    seen = vouchers.look_up(db.session, get_vault(), code, store_id=store_id)
    emit(True, seen.as_dict(), "")


@voucher.command("void")
@click.argument("code")
@click.option("--reason", required=True, help="Why: kept in the audit log.")
@with_app
def voucher_void(code, reason):
    """Stop a code (lost, sold by mistake): it is redeemed no more. Audited."""
    v = vouchers.void_voucher(db.session, get_vault(), typed=code, reason=reason, actor=cli_actor())
    emit(False, {}, f"voucher {v.id} voided")


@voucher.command("void-batch")
@click.argument("batch_id", type=int)
@click.option("--reason", required=True, help="Why the batch is withdrawn: kept in the audit log.")
@with_app
def voucher_void_batch(batch_id, reason):
    """Withdraw a batch: its codes are redeemed no more (what was redeemed stays). Audited."""
    stopped = stock.void_batch(db.session, batch_id=batch_id, reason=reason, actor=cli_actor())
    emit(False, {}, f"batch {batch_id} withdrawn: {stopped} codes stopped")


@cli.group()
def store():
    """Stores (门店) where vouchers are redeemed, and the verifiers bound to them."""


def store_view(s: Store, verifiers=()) -> dict:
    return {"id": s.id, "name": s.name, "address": s.address, "active": s.is_active,
            "verifiers": [{"username": u, "manager": m} for u, m in verifiers]}


@store.command("add")
@click.option("--name", required=True)
@click.option("--address", default="")
@json_option
@with_app
def store_add(name, address, as_json):
    """Add a store. Audited."""
    s = vouchers.add_store(db.session, name=name, address=address, actor=cli_actor())
    emit(as_json, store_view(s), f"store {s.id} added: {s.name}")


@store.command("edit")
@click.argument("store_id", type=int)
@click.option("--name")
@click.option("--address")
@click.option("--active/--inactive", default=None, help="An inactive store redeems nothing.")
@json_option
@with_app
def store_edit(store_id, name, address, active, as_json):
    """Change a store. Audited."""
    s = vouchers.edit_store(db.session, store_id, name=name, address=address, active=active, actor=cli_actor())
    emit(as_json, store_view(s), f"store {s.id} changed")


@store.command("list")
@json_option
@with_app(readonly=True)
def store_list(as_json):
    """The stores and their verifiers."""
    stores = vouchers.list_stores(db.session)
    bound = vouchers.verifiers_of(db.session, [s.id for s in stores])
    views = [store_view(s, bound.get(s.id, ())) for s in stores]
    if as_json:
        emit(True, {"stores": views}, "")
        return
    for v in views:
        who = ", ".join(u["username"] + (" (manager)" if u["manager"] else "") for u in v["verifiers"]) or "-"
        emit(False, {}, f"{v['id']}\t{v['name']}\t{'active' if v['active'] else 'inactive'}\t{who}")


@store.command("bind")
@click.argument("store_id", type=int)
@click.argument("username")
@click.option("--manager", is_flag=True, help="May also undo the store's redemptions.")
@with_app
def store_bind(store_id, username, manager):
    """Let a verifier redeem at a store. Audited."""
    vouchers.bind_verifier(db.session, store_id, username, manager=manager, actor=cli_actor())
    emit(False, {}, f"{username} verifies at store {store_id}" + (" (manager)" if manager else ""))


@store.command("unbind")
@click.argument("store_id", type=int)
@click.argument("username")
@with_app
def store_unbind(store_id, username):
    """Take a verifier off a store. Audited."""
    vouchers.unbind_verifier(db.session, store_id, username, actor=cli_actor())
    emit(False, {}, f"{username} no longer verifies at store {store_id}")

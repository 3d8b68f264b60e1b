"""`kamengd coupon …`: discount codes buyers enter when they order (优惠券)."""
from __future__ import annotations

import click

from ..audit.services import cli_actor
from ..context import get_config
from ..extensions import db
from ..marketing import coupons
from ..money import format_cents
from .group import cli, emit, json_option, with_app


@cli.group()
def coupon():
    """Coupons: a fixed amount or a percentage off an order, with limits."""


def _iso(value):
    return value.isoformat(timespec="seconds") + "Z" if value else None


def coupon_view(stats: coupons.CouponStats) -> dict:
    c = stats.coupon
    return {"id": c.id, "code": c.code, "note": c.note, "kind": c.kind,
            "amount_off": format_cents(c.amount_off_cents) if c.amount_off_cents is not None else None,
            "percent_off": f"{c.percent_off_bp / 100:.2f}" if c.percent_off_bp is not None else None,
            "max_discount": format_cents(c.max_discount_cents) if c.max_discount_cents is not None else None,
            "currency": c.currency, "scope": c.scope, "scope_id": c.scope_id,
            "min_amount": format_cents(c.min_amount_cents), "starts_at": _iso(c.starts_at), "ends_at": _iso(c.ends_at),
            "max_uses": c.max_uses, "used": c.used, "per_buyer": c.per_buyer, "first_order": c.first_order,
            "active": c.is_active, "paid_orders": stats.paid_orders, "discount_given": format_cents(stats.discount_cents),
            "sales": format_cents(stats.sales_cents)}


def _terms(options: dict, current=None) -> dict:
    """The command's options as the panel's form would send them (unset: as they are)."""
    form = {}
    if current is not None:
        view = coupon_view(coupons.CouponStats(current, 0, 0, 0))
        zone = get_config().site.timezone
        form = {"note": current.note, "kind": current.kind, "amount_off": view["amount_off"] or "",
                "percent_off": view["percent_off"] or "", "max_discount": view["max_discount"] or "",
                "currency": current.currency, "scope": current.scope,
                "scope_id": "" if current.scope_id is None else str(current.scope_id),
                "min_amount": view["min_amount"], "max_uses": "" if current.max_uses is None else str(current.max_uses),
                "per_buyer": "" if current.per_buyer is None else str(current.per_buyer),
                "first_order": "1" if current.first_order else "0", "is_active": "1" if current.is_active else "0",
                "starts_at": coupons.shop_time(current.starts_at, zone),
                "ends_at": coupons.shop_time(current.ends_at, zone)}
    if options.get("amount_off") is not None:
        form.update(kind="fixed", amount_off=options["amount_off"], percent_off="", max_discount="")
    if options.get("percent_off") is not None:
        form.update(kind="percent", percent_off=options["percent_off"], amount_off="")
    for name in ("max_discount", "note", "currency", "min_amount", "starts_at", "ends_at", "max_uses", "per_buyer"):
        if options.get(name) is not None:
            form[name] = options[name]
    if options.get("product") is not None:
        form.update(scope="product", scope_id=str(options["product"]))
    elif options.get("category") is not None:
        form.update(scope="category", scope_id=str(options["category"]))
    elif options.get("everything"):
        form.update(scope="all", scope_id="")
    if options.get("first_order") is not None:
        form["first_order"] = "1" if options["first_order"] else "0"
    return form


def _terms_options(fn):
    for option in reversed((
        click.option("--amount-off", metavar="AMOUNT", help="A fixed amount off the order, e.g. 5.00."),
        click.option("--percent-off", metavar="PERCENT", help="A percentage off the order, e.g. 10 or 12.5."),
        click.option("--max-discount", metavar="AMOUNT", help="A percentage coupon takes at most this off."),
        click.option("--currency", metavar="CODE", help="The currency of a fixed amount (default CNY)."),
        click.option("--product", type=int, metavar="ID", help="Only for this product."),
        click.option("--category", type=int, metavar="ID", help="Only for products of this category."),
        click.option("--min-amount", metavar="AMOUNT", help="Only for orders of this amount or more."),
        click.option("--starts-at", metavar="TIME", help="Valid from (the shop's time zone), e.g. 2026-12-24 20:00."),
        click.option("--ends-at", metavar="TIME", help="Valid until (the shop's time zone)."),
        click.option("--max-uses", metavar="N", help="Uses in all (empty: no limit)."),
        click.option("--per-buyer", metavar="N", help="Uses per buyer, by e-mail (empty: no limit)."),
        click.option("--first-order/--any-order", default=None,
                     help="Only for a buyer's first order (once per e-mail address)."),
        click.option("--note", help="What it is for (shown to staff)."),
    )):
        fn = option(fn)
    return fn


@coupon.command("add")
@click.option("--code", required=True, help="The code buyers type: 3 to 32 letters, digits, - or _.")
@_terms_options
@json_option
@with_app
def coupon_add(code, as_json, **options):
    """Add a coupon. Audited."""
    if (options["amount_off"] is None) == (options["percent_off"] is None):
        raise click.UsageError("give --amount-off or --percent-off")
    values = coupons.parse_coupon_form(_terms(options), get_config().site.timezone)
    made = coupons.create_coupon(db.session, code, values, actor=cli_actor())
    emit(as_json, coupon_view(coupons.CouponStats(made, 0, 0, 0)),
         f"added coupon {made.code}: {coupons.describe(made)} off")


@coupon.command("edit")
@click.argument("code")
@click.option("--everything", is_flag=True, help="For every product (undoes --product/--category).")
@_terms_options
@json_option
@with_app
def coupon_edit(code, as_json, **options):
    """Change a coupon's terms (the options given; the rest stay). Audited."""
    current = coupons.get_coupon(db.session, code)
    values = coupons.parse_coupon_form(_terms(options, current), get_config().site.timezone)
    changed = coupons.update_coupon(db.session, current, values, actor=cli_actor())
    emit(as_json, {**coupon_view(coupons.coupon_stats(db.session, [current])[0]), "changed": sorted(changed)},
         f"coupon {current.code}: " + (", ".join(sorted(changed)) + " changed" if changed else "nothing changed"))


def _switch(code: str, active: bool) -> None:
    found = coupons.get_coupon(db.session, code)
    word = "enabled" if active else "disabled"
    changed = coupons.set_active(db.session, found, active, actor=cli_actor())
    emit(False, {}, f"coupon {found.code} {word}" if changed else f"coupon {found.code} was {word} already")


@coupon.command("disable")
@click.argument("code")
@with_app
def coupon_disable(code):
    """Stop taking a coupon (orders placed with it keep their discount). Audited."""
    _switch(code, False)


@coupon.command("enable")
@click.argument("code")
@with_app
def coupon_enable(code):
    """Take a disabled coupon again. Audited."""
    _switch(code, True)


@coupon.command("list")
@click.option("--active", is_flag=True, help="Only the coupons buyers can use now.")
@json_option
@with_app(readonly=True)
def coupon_list(active, as_json):
    """Coupons with their uses, the paid orders that used them and the discount given."""
    rows = [coupon_view(s) for s in coupons.coupon_stats(db.session, coupons.list_coupons(db.session,
                                                                                        active_only=active))]
    if as_json:
        emit(True, {"coupons": rows}, "")
        return
    for r in rows:
        uses = f"{r['used']}/{r['max_uses'] if r['max_uses'] is not None else '∞'}"
        off = f"{r['amount_off']} {r['currency']}" if r["kind"] == "fixed" else f"{r['percent_off']}%"
        click.echo(f"{r['code']:<20} {'on ' if r['active'] else 'off'} {off:<14} {r['scope']:<8} uses {uses:<12} "
                   f"paid orders {r['paid_orders']}, discount {r['discount_given']}")

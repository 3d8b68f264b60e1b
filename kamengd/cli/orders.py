from __future__ import annotations

import json

import click

from ..context import get_config, get_vault
from ..audit.services import cli_actor
from ..extensions import db
from ..inventory.importer import check_key, iter_lines
from ..money import format_cents
from ..orders.attention import flagged_orders
from ..orders import staff as order_staff
from ..orders.models import ORDER_STATUSES
from ..orders.staff import extra_payments_to_refund, refund_extra_payment
from ..orders.services import deliver_manually
from ..payments.refunds import refund_through_channel
from .group import cli, emit, json_option, with_app
from .keys import open_seekable


@cli.group()
def order():
    """Orders."""


@order.command("deliver")
@click.argument("order_no")
@click.option("--file", "keys_file", required=True, metavar="FILE", help="The order's keys, one per line (- for stdin).")
@click.option("--encoding", help="Force the file's encoding.")
@json_option
@with_app
def order_deliver(order_no, keys_file, encoding, as_json):
    """Deliver a paid order by hand (manual-delivery products); audited."""
    limit = get_config().inventory.max_key_length
    with open_seekable(keys_file) as fh:
        _, lines = iter_lines(fh, encoding)
        keys = []
        for lineno, line in lines:
            key = line.strip()
            if key:
                check_key(lineno, key, limit)
                keys.append(key)
    delivered = deliver_manually(db.session, get_vault(), order_no=order_no, keys=keys, actor=cli_actor())
    emit(as_json, {"order_no": delivered.order_no, "status": delivered.status, "keys": len(keys)},
         f"order {delivered.order_no} delivered ({len(keys)} keys)")


@order.command("flagged")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@json_option
@with_app(readonly=True)
def order_flagged(limit, as_json):
    """Orders that need a person: held payments, waiting too long, past the manual SLA, mail failed."""
    orders = [{"order_no": o.order_no, "status": o.status, "amount": format_cents(o.amount_cents),
               "currency": o.currency, "flagged_at": o.flagged_at.isoformat(timespec="seconds") + "Z",
               "reason": o.flag_reason} for o in flagged_orders(db.session, limit)]
    lines = [f"{o['flagged_at']}  {o['order_no']}  {o['status']:<9} {o['amount']} {o['currency']}  {o['reason']}"
             for o in orders] or ["no flagged orders"]
    emit(as_json, {"orders": orders}, "\n".join(lines))


@order.command("extra-payments")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@json_option
@with_app(readonly=True)
def order_extra_payments(limit, as_json):
    """Second payments for orders already paid (buyers charged twice): money to give back."""
    count, rows = extra_payments_to_refund(db.session, limit)
    payments = [{"id": p.id, "order_no": order_no, "channel": code, "trade_no": p.trade_no,
                 "amount": format_cents(p.amount_cents), "received_at": p.created_at.isoformat(timespec="seconds") + "Z"}
                for p, order_no, code in rows]
    lines = [f"{p['received_at']}  #{p['id']}  {p['order_no']}  {p['channel']}  {p['trade_no']}  {p['amount']}"
             for p in payments] or ["no extra payments to refund"]
    emit(as_json, {"count": count, "payments": payments}, "\n".join(lines))


@order.command("refund-extra")
@click.argument("order_no")
@click.argument("payment_id", type=int)
@click.option("--note", default="", help="How it was given back (the gateway's refund number, say).")
@json_option
@with_app
def order_refund_extra(order_no, payment_id, note, as_json):
    """Record that an extra payment was given back at the gateway; audited."""
    payment = refund_extra_payment(db.session, order_no=order_no, payment_id=payment_id, note=note,
                                   actor=cli_actor())
    emit(as_json, {"id": payment.id, "order_no": order_no, "trade_no": payment.trade_no, "status": payment.status,
                   "amount": format_cents(payment.amount_cents)},
         f"payment #{payment.id} ({payment.trade_no}, {format_cents(payment.amount_cents)}) of order {order_no} "
         "recorded as refunded")


def _order_row(order, product_name) -> dict:
    def iso(value):
        return value.isoformat(timespec="seconds") + "Z" if value else None
    return {"order_no": order.order_no, "status": order.status, "product_id": order.product_id,
            "product": product_name, "quantity": order.quantity, "amount": format_cents(order.amount_cents),
            "currency": order.currency, "email": order.email, "created_at": iso(order.created_at),
            "paid_at": iso(order.paid_at), "delivered_at": iso(order.delivered_at), "flag": order.flag_reason}


@order.command("list")
@click.option("--status", type=click.Choice(ORDER_STATUSES))
@click.option("--email", default="", help="The buyer's e-mail (any letter case).")
@click.option("--product", "product_id", type=click.IntRange(1, 2**31 - 1))
@click.option("--flagged", is_flag=True, help="Only orders that need a person.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@json_option
@with_app(readonly=True)
def order_list(status, email, product_id, flagged, limit, as_json):
    """Orders, newest first (never their keys)."""
    search = order_staff.OrderSearch(status=status or "", email=email.strip()[:254], product_id=product_id,
                                     flagged=flagged)
    rows, total = order_staff.search_orders(db.session, search, page=1, page_size=limit)
    orders = [_order_row(o, name) for o, name in rows]
    lines = [f"{o['created_at']}  {o['order_no']}  {o['status']:<9} {o['amount']} {o['currency']}  {o['email']}  "
             f"{o['product']}" for o in orders]
    emit(as_json, {"total": total, "orders": orders}, "\n".join(lines) or "no orders match")


@order.command("show")
@click.argument("order_no")
@json_option
@with_app(readonly=True)
def order_show(order_no, as_json):
    """One order: its facts, payments and what the buyer filled in (never its keys)."""
    detail = order_staff.order_detail(db.session, order_no)
    row = _order_row(detail.order, detail.product.name)
    row["payments"] = [{"id": p.id, "channel": code, "trade_no": p.trade_no, "amount": format_cents(p.amount_cents),
                        "status": p.status} for p, code in detail.payments]
    row["input"] = json.loads(detail.order.buyer_input) if detail.order.buyer_input else []
    row["keys"] = detail.keys
    text = "\n".join([f"{row['order_no']}  {row['status']}  {row['amount']} {row['currency']}  {row['email']}",
                      f"product: {row['product']} (#{row['product_id']}) x{row['quantity']}",
                      *(f"{i['label']}: {i['value']}" for i in row["input"]),
                      *(f"payment #{p['id']} {p['channel']} {p['trade_no']} {p['amount']} {p['status']}"
                        for p in row["payments"]),
                      *([f"flag: {row['flag']}"] if row["flag"] else [])])
    emit(as_json, row, text)


@order.command("refund")
@click.argument("order_no")
@click.option("--reason", required=True, help="Why (kept in the audit log).")
@click.option("--through-channel", is_flag=True,
              help="Give the money back at the gateway it was paid through first (Stripe, Alipay).")
@json_option
@with_app
def order_refund(order_no, reason, through_channel, as_json):
    """Mark a paid, held or delivered order refunded (the money goes back outside kamengd, or to the
    balance that paid it, or at the gateway with --through-channel); reserved keys
    go back on sale, agents' commission on it is reversed. Once; audited."""
    extra = {}
    if through_channel:
        given = refund_through_channel(db.session, get_vault(), order_no=order_no, reason=reason, actor=cli_actor())
        done = given.refund
        extra = {"refunded_at_gateway": format_cents(given.amount_cents), "gateway_ref": given.gateway_ref}
    else:
        done = order_staff.refund_order(db.session, order_no=order_no, reason=reason, actor=cli_actor())
        if done.to_balance_cents:
            extra = {"refunded_to_balance": format_cents(done.to_balance_cents)}
    if done.points is not None and done.points.as_details():
        extra["points"] = done.points.as_details()
    emit(as_json, {"order_no": done.order.order_no, "status": done.order.status, "previous_status": done.previous_status,
                   "keys_released": done.keys_released, "keys_kept_sold": done.keys_sold, **extra},
         f"order {done.order.order_no} refunded (was {done.previous_status})"
         + (f"; {extra['refunded_at_gateway']} given back at the gateway" if "refunded_at_gateway" in extra else "")
         + (f"; {extra['refunded_to_balance']} given back to the balance that paid it"
            if "refunded_to_balance" in extra else "")
         + (f"; points: {', '.join(f'{k} {v}' for k, v in extra['points'].items())}" if "points" in extra else ""))

"""Orders for staff: find them, look at one, act on it (kamengd.orders.staff does the work)."""
from __future__ import annotations

import csv
import datetime as dt
import io

import sqlalchemy as sa
from flask import Response, abort, flash, redirect, render_template, request, stream_with_context, url_for
from flask_babel import gettext as _

from ..agents.models import Agent
from ..context import get_config, get_vault
from ..audit.services import record
from ..catalog import inputs
from ..catalog.models import Product
from ..database import utcnow
from ..errors import NotFound
from ..extensions import db
from ..ledger import services as ledger
from ..money import format_cents
from ..orders import staff as order_staff
from ..orders.models import ORDER_STATUSES
from ..payments.models import PaymentChannel
from ..payments.refunds import refund_through_channel, refundable_payment
from ..risk import engine as risk
from ..tickets import services as tickets
from ..settings.messaging import mail_server
from ..transaction import read_only
from ..validation import spreadsheet_cell
from .blueprint import bp
from .helpers import PAGE_SIZE, attempt, local_day_start, page_number, when
from .session import actor, client_ip


def _day(value: str) -> dt.date | None:
    try:
        day = dt.date.fromisoformat(value)
    except ValueError:
        return None
    return day if 1970 <= day.year <= 9998 else None   # clear of the calendar's ends in any zone


def _search() -> tuple[dict, order_staff.OrderSearch, list[str]]:
    """The list's filters from the query string; what could not be read is said, then ignored."""
    args = request.args
    status = args.get("status", "")
    filters = {"q": args.get("q", "").strip()[:32], "email": args.get("email", "").strip()[:254],
               "status": status if status in ORDER_STATUSES else "",
               "from": args.get("from", "").strip()[:10], "to": args.get("to", "").strip()[:10],
               "flagged": "1" if args.get("flagged") else "", "extra": "1" if args.get("extra") else "",
               "product": _id_arg("product"), "channel": _id_arg("channel")}
    key = args.get("key", "").strip()[:get_config().inventory.max_key_length]
    problems, start, end = [], None, None
    if filters["from"]:
        day = _day(filters["from"])
        start = local_day_start(day.isoformat()) if day else None
        if start is None:
            problems.append(_("“From” is not a date (YYYY-MM-DD); it is ignored."))
    if filters["to"]:
        day = _day(filters["to"])
        end = local_day_start((day + dt.timedelta(days=1)).isoformat()) if day else None
        if end is None:
            problems.append(_("“To” is not a date (YYYY-MM-DD); it is ignored."))
    search = order_staff.OrderSearch(order_no=filters["q"], email=filters["email"], status=filters["status"],
                                     created_from=start, created_to=end, flagged=bool(filters["flagged"]),
                                     extra_payment=bool(filters["extra"]),
                                     product_id=int(filters["product"]) if filters["product"] else None,
                                     channel_id=int(filters["channel"]) if filters["channel"] else None)
    if key:
        # The key is searched by its fingerprint; it never goes back into a link or a log.
        search.order_ids = order_staff.orders_with_key(db.session, get_vault(), key)
    return {k: v for k, v in filters.items() if v}, search, problems


def _id_arg(name: str) -> str:
    raw = request.args.get(name, "").strip()
    return raw if raw.isascii() and raw.isdigit() and 0 < len(raw) < 10 else ""


def _choices():
    products = db.session.execute(sa.select(Product.id, Product.name).order_by(Product.name, Product.id)).all()
    channels = db.session.execute(sa.select(PaymentChannel.id, PaymentChannel.code, PaymentChannel.name)
                                  .order_by(PaymentChannel.sort_order, PaymentChannel.id)).all()
    return products, channels


@bp.get("/orders")
def orders():
    read_only()
    filters, search, problems = _search()
    page = page_number()
    rows, total = order_staff.search_orders(db.session, search, page=page, page_size=PAGE_SIZE)
    products, channels = _choices()
    return render_template("panel/orders_list.html", rows=rows, total=total, page=page,
                           pages=max(1, -(-total // PAGE_SIZE)), filters=filters, problems=problems,
                           statuses=ORDER_STATUSES, products=products, channels=channels,
                           key_searched=bool(request.args.get("key", "").strip()))


EXPORT_LIMIT = 100_000


@bp.get("/orders/export.csv")
def orders_export():
    """The orders the filters find, as CSV (UTF-8 with a BOM, so Excel reads Chinese),
    streamed; buyer e-mails are personal data: exporting is its own permission, audited."""
    filters, search, _problems = _search()
    db.session.rollback()   # the guard's read-only snapshot ends before the audit entry is written
    record(db.session, "orders.export", actor=actor(), target="orders", source_ip=client_ip(),
           details={"filters": {k: v for k, v in filters.items()}, "by_key": search.order_ids is not None})
    db.session.commit()   # the audit entry stays even if the download is cut

    def local(value):
        return when(value, seconds=True) if value else ""

    def rows():
        # The download reads a snapshot: a slow client never holds SQLite's write lock.
        db.session.connection(execution_options={"kamengd_readonly": True})
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["order_no", "created", "product", "quantity", "amount", "currency", "email", "status",
                         "channel", "pay_type", "paid", "delivered", "flag", "input"])
        yield "\ufeff" + out.getvalue()
        codes = dict(db.session.execute(sa.select(PaymentChannel.id, PaymentChannel.code)).all())
        for page in range(1, EXPORT_LIMIT // 1000 + 1):
            found, _total = order_staff.search_orders(db.session, search, page=page, page_size=1000)
            for order, product_name in found:
                out.seek(0)
                out.truncate()
                writer.writerow([order.order_no, local(order.created_at), _cell(product_name), order.quantity,
                                 format_cents(order.amount_cents), order.currency, _cell(order.email), order.status,
                                 codes.get(order.channel_id, ""), order.pay_type or "", local(order.paid_at),
                                 local(order.delivered_at), _cell(order.flag_reason or ""),
                                 _cell("; ".join(f"{v['label']}: {v['value']}" for v in inputs.load(order.buyer_input)))])
                yield out.getvalue()
            if len(found) < 1000:
                break
        db.session.rollback()

    name = f"orders-{utcnow():%Y%m%d-%H%M%S}.csv"
    return Response(stream_with_context(rows()), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"})


_cell = spreadsheet_cell   # no formula in a spreadsheet cell


def _detail_page(order_no: str, *, status: int = 200, keys: list[str] | None = None):
    try:
        detail = order_staff.order_detail(db.session, order_no)
    except NotFound:
        abort(404)
    refundable = detail.order.status in order_staff.REFUNDABLE
    found = refundable_payment(db.session, detail.order) if refundable else None
    paid_from = ledger.paid_from_balance(db.session, detail.order.order_no) if refundable else None
    return render_template("panel/orders_detail.html", d=detail, keys=keys,
                           refund_channel=found[1] if found else None,
                           balance_payer=db.session.get(Agent, paid_from[0]) if paid_from else None,
                           buyer_input=inputs.load(detail.order.buyer_input),
                           risk_decisions=risk.decisions_of(db.session, detail.order.id),
                           order_tickets=tickets.of_order(db.session, detail.order.id),
                           smtp_configured=bool(mail_server(db.session, get_config())[0]), form=request.form), status


@bp.get("/orders/<order_no>")
def order_detail(order_no):
    read_only()
    return _detail_page(order_no)


def _attempt(order_no: str, action):
    """Run one staff action: (result, None) when it is done, else (None, the order's page saying why)."""
    return attempt(action, lambda status: _detail_page(order_no, status=status))


def _act(order_no: str, action, message):
    """A staff action, then back to the order's page (PRG)."""
    result, refused = _attempt(order_no, action)
    if refused:
        return refused
    flash(message(result), "success")
    return redirect(url_for("panel.order_detail", order_no=order_no), code=303)


@bp.post("/orders/<order_no>/keys")
def order_keys(order_no):
    """The delivered keys of this one order, on this answer only (never a GET, never cached)."""
    result, refused = _attempt(order_no, lambda: order_staff.reveal_keys(
        db.session, get_vault(), order_no=order_no, actor=actor(), source_ip=client_ip()))
    if refused:
        return refused
    order, keys = result
    read_only()
    return _detail_page(order.order_no, keys=keys)


@bp.post("/orders/<order_no>/deliver")
def order_deliver(order_no):
    return _act(order_no, lambda: order_staff.deliver_pasted_keys(
        db.session, get_vault(), order_no=order_no, text=request.form.get("keys", ""),
        max_key_length=get_config().inventory.max_key_length, actor=actor(), source_ip=client_ip()),
        lambda order: _("Order delivered (keys: %(n)s); the mail to the buyer is queued.", n=order.quantity))


def _released(outcome: str) -> str:
    return {order_staff.RELEASED_DELIVERED: _("Payment accepted; the order is delivered."),
            order_staff.RELEASED_WAITING: _("Payment accepted; the order waits for stock and is delivered "
                                            "as soon as keys come in."),
            order_staff.RELEASED_MANUAL: _("Payment accepted; the order now waits for manual delivery.")}[outcome]


@bp.post("/orders/<order_no>/release")
def order_release(order_no):
    return _act(order_no, lambda: order_staff.release_held(
        db.session, order_no=order_no, reason=request.form.get("release_reason", ""), actor=actor(),
        source_ip=client_ip()), _released)


@bp.post("/orders/<order_no>/refund")
def order_refund(order_no):
    if request.form.get("through_channel") == "1":
        return _act(order_no, lambda: refund_through_channel(
            db.session, get_vault(), order_no=order_no, reason=request.form.get("refund_reason", ""),
            actor=actor(), source_ip=client_ip()),
            lambda given: _("Order refunded: %(amount)s given back through the payment channel (its reference "
                            "%(ref)s); %(n)s reserved keys back on sale.", amount=format_cents(given.amount_cents),
                            ref=given.gateway_ref, n=given.refund.keys_released))
    return _act(order_no, lambda: order_staff.refund_order(
        db.session, order_no=order_no, reason=request.form.get("refund_reason", ""), actor=actor(),
        source_ip=client_ip()),
        lambda refund: _("Order refunded: %(amount)s given back to the balance that paid it; %(n)s reserved keys "
                         "back on sale.", amount=format_cents(refund.to_balance_cents), n=refund.keys_released)
        if refund.to_balance_cents else
        _("Order marked refunded (%(n)s reserved keys back on sale). Return the money at the "
          "payment gateway: kamengd does not move money.", n=refund.keys_released))


@bp.post("/orders/<order_no>/resend")
def order_resend(order_no):
    return _act(order_no, lambda: order_staff.resend_delivery_email(
        db.session, order_no=order_no, smtp_configured=bool(mail_server(db.session, get_config())[0]), actor=actor(),
        source_ip=client_ip()),
        lambda mail: _("The delivery e-mail to %(to)s is queued again.", to=mail.to_address))


@bp.post("/orders/<order_no>/acknowledge")
def order_acknowledge(order_no):
    return _act(order_no, lambda: order_staff.acknowledge_flag(
        db.session, order_no=order_no, note=request.form.get("note", ""), actor=actor(),
        source_ip=client_ip()),
        lambda reason: _("Flag cleared."))


@bp.post("/orders/<order_no>/payments/<int:payment_id>/refund")
def order_refund_extra(order_no, payment_id):
    return _act(order_no, lambda: order_staff.refund_extra_payment(
        db.session, order_no=order_no, payment_id=payment_id, note=request.form.get("note", ""), actor=actor(),
        source_ip=client_ip()),
        lambda payment: _("The extra payment %(trade)s is recorded as given back.", trade=payment.trade_no))

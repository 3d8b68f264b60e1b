"""After-sales tickets for staff: the queue, one ticket's thread, and its answers and endings
(kamengd.tickets.services does the work)."""
from __future__ import annotations

from flask import abort, flash, make_response, redirect, render_template, request, url_for
from flask_babel import gettext as _

from ..context import get_vault
from ..errors import NotFound
from ..extensions import db
from ..money import format_cents
from ..orders.models import Order
from ..orders import staff as order_staff
from ..catalog.models import Product
from ..payments.refunds import refundable_payment
from ..ledger import services as ledger
from ..marketing import points
from ..tickets import services as tickets
from ..tickets.models import TICKET_STATUSES
from ..transaction import read_only
from .blueprint import bp, staff_can
from .helpers import PAGE_SIZE, attempt, page_number
from .session import actor, client_ip


@bp.get("/tickets")
def tickets_list():
    read_only()
    status = request.args.get("status", "live")
    status = status if status in (*TICKET_STATUSES, "live", "all") else "live"
    overdue = bool(request.args.get("overdue"))
    page = page_number()
    rows, total = tickets.list_tickets(db.session, status=status, overdue=overdue, page=page, page_size=PAGE_SIZE)
    return render_template("panel/tickets_list.html", rows=rows, total=total, page=page,
                           pages=max(1, -(-total // PAGE_SIZE)), status=status, overdue=overdue,
                           statuses=TICKET_STATUSES, counts=tickets.counts(db.session))


def _page(ticket_id, *, status: int = 200):
    try:
        ticket = tickets.get_ticket(db.session, ticket_id)
    except NotFound:
        abort(404)
    order = db.session.get(Order, ticket.order_id)
    live = ticket.status in ("open", "answered")
    may_reissue = live and staff_can("orders.deliver") and order.status == "delivered"
    may_refund = live and staff_can("orders.refund") and order.status in order_staff.REFUNDABLE
    found = refundable_payment(db.session, order) if may_refund else None
    return render_template("panel/ticket_detail.html", thread=tickets.thread(db.session, ticket), order=order,
                           product=db.session.get(Product, order.product_id), live=live,
                           keys=tickets.delivered_keys(db.session, get_vault(), order) if may_reissue else [],
                           may_reissue=may_reissue, may_refund=may_refund,
                           refund_channel=found[1] if found else None,
                           paid_from_balance=bool(may_refund and ledger.paid_from_balance(db.session, order.order_no)),
                           paid_with_points=bool(may_refund and points.paid_with_points(db.session, order.order_no)),
                           sla_hours=tickets.sla_hours(db.session), form=request.form), status


@bp.get("/tickets/<ticket_id>")
def ticket_detail(ticket_id):
    read_only()
    return _page(ticket_id)


def _act(ticket_id, action, message):
    """A staff action on the ticket, then back to its page (PRG); refused: the page says why."""
    result, refused = attempt(action, lambda status: _page(ticket_id, status=status))
    if refused:
        return refused
    flash(message(result), "success")
    return redirect(url_for("panel.ticket_detail", ticket_id=ticket_id), code=303)


@bp.post("/tickets/<ticket_id>/reply")
def ticket_reply(ticket_id):
    return _act(ticket_id, lambda: tickets.reply(db.session, ticket_id, body=request.form.get("message", ""),
                                                 actor=actor(), source_ip=client_ip()),
                lambda _m: _("Answer sent; the buyer gets it by mail and on the order's page."))


@bp.post("/tickets/<ticket_id>/close")
def ticket_close(ticket_id):
    return _act(ticket_id, lambda: tickets.close(db.session, ticket_id, note=request.form.get("note", ""),
                                                 actor=actor(), source_ip=client_ip()),
                lambda _t: _("Ticket closed."))


@bp.post("/tickets/<ticket_id>/reissue")
def ticket_reissue(ticket_id):
    return _act(ticket_id, lambda: tickets.reissue(db.session, ticket_id, key_ids=request.form.getlist("key"),
                                                   reason=request.form.get("reason", ""), actor=actor(),
                                                   source_ip=client_ip()),
                lambda pairs: _("%(n)s key(s) replaced; the buyer gets the new ones by mail and on the order's page.",
                                n=len(pairs)))


@bp.post("/tickets/<ticket_id>/refund")
def ticket_refund(ticket_id):
    def said(outcome: tickets.TicketRefund) -> str:
        if outcome.through_channel:
            return _("Refunded: %(amount)s given back through the payment channel (its reference %(ref)s).",
                     amount=format_cents(outcome.amount_cents), ref=outcome.gateway_ref)
        if outcome.to_balance_cents:
            return _("Refunded: %(amount)s given back to the balance that paid it.",
                     amount=format_cents(outcome.to_balance_cents))
        if outcome.points_returned:
            return _("Refunded: %(n)s points given back to the member.", n=outcome.points_returned)
        return _("Order marked refunded. Return the money at the payment gateway: kamengd does not move money.")
    return _act(ticket_id, lambda: tickets.refund(db.session, get_vault(), ticket_id,
                                                  reason=request.form.get("reason", ""), actor=actor(),
                                                  source_ip=client_ip()), said)


@bp.get("/tickets/pictures/<image_id>")
def ticket_picture(image_id):
    read_only()
    try:
        data = tickets.image_data(db.session, image_id)
    except NotFound:
        abort(404)
    response = make_response(data)
    response.headers["Content-Type"] = "image/webp"
    response.headers["Cache-Control"] = "private, no-store"
    return response

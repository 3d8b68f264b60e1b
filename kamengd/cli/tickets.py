"""`kamengd ticket …`: buyers' after-sales tickets (售后) from the command line — the queue, one
ticket's thread, an answer (mailed), and ending one with a refund, a reissued key or closing it."""
from __future__ import annotations

import click

from ..audit.services import cli_actor
from ..context import get_vault
from ..extensions import db
from ..money import format_cents
from ..orders.models import Order
from ..tickets import services as tickets
from ..tickets.models import TICKET_STATUSES
from .group import cli, emit, json_option, with_app


def _iso(value):
    return value.isoformat(timespec="seconds") + "Z" if value else None


def _ticket(t) -> dict:
    return {"id": t.id, "status": t.status, "resolution": t.resolution, "created_at": _iso(t.created_at),
            "updated_at": _iso(t.updated_at), "waiting_since": _iso(t.waiting_since), "overdue": t.overdue_at is not None,
            "ended_at": _iso(t.ended_at), "ended_by": t.ended_by}


def _text(value: str | None, path) -> str | None:
    if path is not None:
        return path.read()
    return value


@cli.group()
def ticket():
    """Buyers' after-sales tickets: read, answer, refund, replace keys, close."""


@ticket.command("list")
@click.option("--status", type=click.Choice(("live", *TICKET_STATUSES, "all")), default="live", show_default=True,
              help="live: open or answered (not ended).")
@click.option("--overdue", is_flag=True, help="Only tickets past tickets.sla_hours.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@json_option
@with_app(readonly=True)
def ticket_list(status, overdue, limit, as_json):
    """Tickets, those waiting longest first."""
    rows, total = tickets.list_tickets(db.session, status=status, overdue=overdue, page_size=limit)
    found = [{**_ticket(r.ticket), "order_no": r.order_no, "email": r.email, "product": r.product_name} for r in rows]
    emit(as_json, {"tickets": found, "total": total},
         "\n".join(f"{t['id']}\t{t['status']}{' overdue' if t['overdue'] else ''}\t{t['order_no']}\t{t['email']}\t"
                   f"{t['product']}" for t in found) or "no ticket")


@ticket.command("show")
@click.argument("ticket_id")
@json_option
@with_app(readonly=True)
def ticket_show(ticket_id, as_json):
    """One ticket: its order, its messages, and the order's keys (masked, by id, for `ticket reissue`)."""
    t = tickets.get_ticket(db.session, ticket_id)
    order = db.session.get(Order, t.order_id)
    thread = tickets.thread(db.session, t)
    keys = tickets.delivered_keys(db.session, get_vault(), order) if order.status == "delivered" else []
    payload = {**_ticket(t), "order_no": order.order_no, "order_status": order.status, "email": order.email,
               "amount": format_cents(order.amount_cents), "currency": order.currency,
               "messages": [{"author": m.author, "staff": m.staff, "at": _iso(m.created_at), "body": m.body,
                             "picture": image_id is not None} for m, image_id in thread.messages],
               "keys": [{"id": k.id, "masked": k.masked, "replaced": k.replaced} for k in keys]}
    lines = [f"ticket {t.id} ({t.status}) about order {order.order_no} ({order.status}), {order.email}"]
    for m in payload["messages"]:
        lines.append(f"--- {m['author']}{' ' + m['staff'] if m['staff'] else ''} {m['at']}"
                     f"{' [picture: see the panel]' if m['picture'] else ''}")
        lines.append(m["body"])
    lines += [f"key {k['id']}: {k['masked']}{' (replaced)' if k['replaced'] else ''}" for k in payload["keys"]]
    emit(as_json, payload, "\n".join(lines))


@ticket.command("reply")
@click.argument("ticket_id")
@click.option("--message", help="The answer (mailed to the buyer, shown on its order page).")
@click.option("--message-file", type=click.File("r", encoding="utf-8"), help="The answer from a file (- : stdin).")
@json_option
@with_app
def ticket_reply(ticket_id, message, message_file, as_json):
    """Answer the buyer. Audited."""
    sent = tickets.reply(db.session, ticket_id, body=_text(message, message_file), actor=cli_actor())
    emit(as_json, {"ticket_id": sent.ticket_id, "message_id": sent.id}, f"ticket {sent.ticket_id}: answer sent")


@ticket.command("close")
@click.argument("ticket_id")
@click.option("--note", default="", help="A last word to the buyer (mailed), optional.")
@json_option
@with_app
def ticket_close(ticket_id, note, as_json):
    """End the ticket without an action. Audited."""
    t = tickets.close(db.session, ticket_id, note=note, actor=cli_actor())
    emit(as_json, _ticket(t), f"ticket {t.id}: closed")


@ticket.command("reissue")
@click.argument("ticket_id")
@click.option("--key", "keys", multiple=True, required=True, metavar="KEY_ID",
              help="A key of the order to replace (its id, from `ticket show`); repeat for several.")
@click.option("--reason", required=True, help="Why (shown to the buyer, kept in the audit log).")
@json_option
@with_app
def ticket_reissue(ticket_id, keys, reason, as_json):
    """Void the chosen keys and deliver fresh ones from stock, in one transaction; the ticket is
    resolved. Audited."""
    pairs = tickets.reissue(db.session, ticket_id, key_ids=list(keys), reason=reason, actor=cli_actor())
    emit(as_json, {"ticket_id": int(ticket_id), "replaced": [{"old_key_id": o, "new_key_id": n} for o, n in pairs]},
         f"ticket {ticket_id}: {len(pairs)} key(s) replaced")


@ticket.command("refund")
@click.argument("ticket_id")
@click.option("--reason", required=True, help="Why (shown to the buyer, kept in the audit log).")
@json_option
@with_app
def ticket_refund(ticket_id, reason, as_json):
    """Refund the order — through its payment channel where it can give money back, else to the
    balance that paid it, else marked refunded (return the money at the gateway) — and resolve
    the ticket. Audited."""
    done = tickets.refund(db.session, get_vault(), ticket_id, reason=reason, actor=cli_actor())
    how = "through the channel" if done.through_channel else \
        "to the balance that paid it" if done.to_balance_cents else \
        f"{done.points_returned} points given back" if done.points_returned else \
        "marked refunded: return the money at the gateway"
    emit(as_json, {"ticket_id": int(ticket_id), "through_channel": done.through_channel,
                   "amount": format_cents(done.amount_cents), "to_balance": format_cents(done.to_balance_cents),
                   "gateway_ref": done.gateway_ref, "points_returned": done.points_returned},
         f"ticket {ticket_id}: refunded ({how})")

"""What every panel page uses: names, times, money, paging, the navigation."""
from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from flask import abort, current_app, flash, g, request
from flask_babel import gettext as _, pgettext
from sqlalchemy.exc import SQLAlchemyError

from ..context import get_config
from ..errors import KamengdError, NotFound
from ..extensions import db
from ..money import format_cents
from ..orders import reasons
from ..payments import services as payments
from ..settings.services import shop_url
from ..transaction import read_only
from .blueprint import bp

PAGE_SIZE = 50


def role_names() -> dict[str, str]:
    return {"owner": _("Owner"), "admin": _("Admin"), "operator": _("Operator"), "support": _("Support"),
            "finance": _("Finance"), "auditor": _("Auditor"), "verifier": _("Verifier")}


@bp.app_template_global()
def role_name(role: str) -> str:
    return role_names().get(role, role)


def order_status_names() -> dict[str, str]:
    return {"pending": _("Unpaid"), "paid": _("Paid, not delivered"), "delivered": _("Delivered"),
            "expired": _("Expired"), "cancelled": _("Cancelled"), "refunded": _("Refunded"),
            "held": _("Held")}


@bp.app_template_global()
def order_status_name(status: str) -> str:
    return order_status_names().get(status, status)


def payment_status_names() -> dict[str, str]:
    return {"received": _("Received"), "held": _("Held: wrong amount"), "extra": _("Extra: to refund"),
            "refunded": _("Extra: refunded")}


@bp.app_template_global()
def payment_status_name(status: str) -> str:
    return payment_status_names().get(status, status)


def shop_zone() -> ZoneInfo:
    return ZoneInfo(get_config().site.timezone)


@bp.app_template_global()
def when(value: dt.datetime | None, seconds: bool = False) -> str:
    """A UTC time from the database, in the shop's time zone."""
    if value is None:
        return "—"
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(shop_zone()).strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


@bp.app_template_global()
def money(cents: int | None, currency: str = "CNY") -> str:
    return "—" if cents is None else format_cents(cents)


@bp.app_template_global()
def nav_items() -> list[tuple[str, str, str]]:
    """(permission, endpoint, label) in menu order; the menu shows what the role may open."""
    items = [
        ("dashboard.view", "panel.dashboard", _("Dashboard")),
        ("reports.view", "panel.reports", _("Reports")),
        ("lists.export", "panel.report_lists", _("Lists to download")),
        ("orders.view", "panel.orders", _("Orders")),
        ("tickets.handle", "panel.tickets_list", _("After-sales")),
        ("catalog.view", "panel.products", _("Products")),
        ("catalog.view", "panel.categories", _("Categories")),
        ("stock.view", "panel.stock", _("Stock")),
        ("coupons.manage", "panel.coupons_list", _("Coupons")),
        ("risk.manage", "panel.risk_rules", _("Risk rules")),
        ("orders.release", "panel.risk_queue", _("Risk review")),
        ("vouchers.redeem", "panel.terminal", _("Redeem vouchers")),
        ("vouchers.report", "panel.vouchers_report", _("Redemptions")),
        ("channels.manage", "panel.channels", _("Payment channels")),
        ("suppliers.manage", "panel.suppliers_list", _("Suppliers")),
        ("agents.view", "panel.agents_list", _("Agents")),
        ("finance.manage", "panel.withdrawals_list", _("Withdrawals")),
        ("ops.view", "panel.reconcile", _("Reconciliation")),
        ("ops.view", "panel.jobs", _("Jobs")),
        ("ops.view", "panel.notifications", _("Notifications")),
        ("staff.manage", "panel.staff", _("Staff")),
        ("settings.manage", "panel.settings", _("Settings")),
        ("audit.view", "panel.audit", _("Audit log")),
    ]
    return [item for item in items if item[1] in current_app.view_functions]


def page_number() -> int:
    try:
        return max(1, min(int(request.args.get("page", "1")), 100000))
    except ValueError:
        return 1


def local_day_start(value: str) -> dt.datetime | None:
    """'YYYY-MM-DD' in the shop's zone -> naive UTC start of that day; None if blank or bad."""
    try:
        day = dt.date.fromisoformat(value.strip())
    except (ValueError, AttributeError):
        return None
    start = dt.datetime.combine(day, dt.time(), tzinfo=shop_zone())
    try:
        return start.astimezone(dt.timezone.utc).replace(tzinfo=None)
    except OverflowError:   # 0001-01-01 east of UTC
        return None


@bp.app_template_global()
def event_name(event_type: str) -> str:
    """What an event means, in the staff member's language (its code stays visible beside it)."""
    return {
        "*": _("all events"), "stock.low": _("Stock running low"), "stock.restocked": _("Stock refilled"),
        "order.paid": _("Order paid"), "order.delivered": _("Order delivered"),
        "order.held": _("Payment held for a check"), "order.stuck": _("Order needs a person"),
        "payment.extra": _("Order paid twice"), "reconcile.mismatch": _("Reconciliation mismatch"),
        "scheduler.failover": _("Scheduler moved to another server"),
        "withdrawal.requested": _("Withdrawal to review"), "order.refunded": _("Order refunded"),
        "balance.changed": _("Agent's balance changed"),
        "supplier.low_balance": _("Balance at a supplier running low"),
        "supplier.cost_changed": _("A supplier's cost changed"),
        "channel.down": _("Payment channel down"), "channel.up": _("Payment channel back"),
        "channel.failover": _("Order moved to a backup payment channel"),
        "ticket.opened": _("After-sales ticket opened"),
        "ticket.overdue": _("After-sales ticket waiting too long"),
    }.get(event_type, event_type)


@bp.app_template_global()
def job_name(job: str) -> str:
    """What a scheduler job does, in the staff member's language (its name stays visible beside it)."""
    return {
        "expire_reservations": _("Cancel unpaid orders"), "serve_waiting_orders": _("Deliver orders waiting for stock"),
        "send_emails": _("Send delivery mails"), "send_notifications": _("Send notifications"),
        "reconcile_payments": _("Ask gateways about missed payments"), "check_low_stock": _("Check low stock"),
        "flag_stuck_orders": _("Flag orders that need a person"), "check_channel_keys": _("Check channel keys"),
        "settle_payments": _("Daily settlement"), "daily_backup": _("Daily backup"),
        "retire_old_keys": _("Retire old data keys"), "prune_history": _("Prune old history"),
        "prune_api_nonces": _("Forget old agent API nonces"),
        "prune_risk_records": _("Forget solved captchas and old failed lookups"),
        "release_commissions": _("Release agents' commission after its hold"),
        "adjust_agent_levels": _("Move agents to the levels their sales earn"),
        "forward_supplier_orders": _("Buy paid orders from suppliers"),
        "sync_suppliers": _("Sync suppliers' products, costs and balance"),
        "refill_vouchers": _("Make voucher codes up to each product's stock level"),
        "flag_overdue_tickets": _("Mark after-sales tickets waiting past the answer time overdue"),
        "summarise_sales": _("Write the reports' figures of each day that has ended"),
        "prune_exports": _("Delete downloaded lists after a day"),
        "check_channels": _("Check payment channels' health"),
    }.get(job, job)


@bp.app_template_global()
def flag_reason(text: str | None) -> str:
    """A stored flag reason in the staff member's language."""
    return reasons.localized(text, _)


def status_words() -> dict[str, str]:
    """An order's or a payment's status inside a sentence ("order … is refunded"): the
    English keeps the code's word; Chinese says it."""
    return {"pending": pgettext("status", "pending"), "paid": pgettext("status", "paid"),
            "delivered": pgettext("status", "delivered"), "expired": pgettext("status", "expired"),
            "cancelled": pgettext("status", "cancelled"), "refunded": pgettext("status", "refunded"),
            "held": pgettext("status", "held"), "received": pgettext("status", "received"),
            "extra": pgettext("status", "extra")}


def _shown_value(name: str, value):
    """An error's value in words where it is a code: an order's or a payment's status.
    (A setting's key stays as it is: the settings page shows each field's key.)"""
    if name in ("status", "payment_status") and isinstance(value, str):
        return status_words().get(value, value)
    if name == "roles" and isinstance(value, str):   # "owner, admin, …": what may be chosen
        return ", ".join(role_name(role) for role in value.split(", "))
    return value


def error_text(exc: KamengdError) -> str:
    """A service's error in the staff member's language, with its values."""
    return exc.localized(_, _shown_value)


def attempt(action, refused_page):
    """Run one staff action: (its result, None) when done (the request commits it); else nothing is
    done and (None, refused_page(status) with the errors flashed); a NotFound is a 404."""
    try:
        return action(), None
    except NotFound:
        db.session.rollback()
        abort(404)
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        read_only()
        return None, refused_page(exc.http_status)


def flash_errors(exc: KamengdError) -> None:
    """A service's error(s) in the staff member's language: one message per mistake
    (a form's FormErrors names every wrong field at once)."""
    for error in exc.errors:
        flash(error_text(error), "error")


@bp.app_template_global()
def forced_sandboxes() -> list[str]:
    """Sandbox channels taking orders on a shop others can reach: every panel page says so in
    red (anyone can get keys there without paying)."""
    if g.get("staff") is None:
        return []
    try:
        return payments.forced_sandboxes(db.session, shop_url())
    except SQLAlchemyError:   # an error page (the database away) still renders
        db.session.rollback()
        return []

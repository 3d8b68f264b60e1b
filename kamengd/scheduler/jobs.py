"""The periodic jobs. Each is a plain function of a session that returns counts;
the scheduler (kamengd.scheduler.runner) decides who runs them (one leader per
database), commits each run and records it.

Each job is also idempotent (conditional updates), so a second runner by
mistake would change nothing twice."""
from __future__ import annotations

from sqlalchemy.orm import Session

from ..agents.auth import prune_nonces
from ..agents.commission import release_commissions as release_due_commissions
from ..agents.levels import adjust_levels
from ..agents import webhooks
from ..backup import services as backup
from ..context import get_config, get_vault
from ..inventory import warnings
from ..notifications.dispatch import deliver_notifications
from ..notifications.email import send_due_emails
from ..operations import history, rotation
from ..orders import attention
from ..orders.services import expire_orders
from ..payments import settlement
from ..reports import export_jobs, summary as report_summary
from ..risk import captcha, engine as risk
from ..payments.reconcile import reconcile_pending
from ..payments.services import check_channels as check_channel_health, disable_weak_channels
from ..settings.services import shop_url
from ..settings.messaging import effective_config
from ..suppliers import forwarding, services as suppliers
from ..tickets import services as tickets
from ..vouchers import stock as voucher_stock


def expire_reservations(session: Session) -> dict:
    total = 0
    while True:
        n = expire_orders(session)
        session.commit()   # a batch at a time: buyers get the write lock between batches
        total += n
        if n == 0:
            return {"expired": total}


def serve_waiting_orders(session: Session) -> dict:
    """Paid orders waiting for stock (a payment and an import that crossed, keys
    released elsewhere): deliver them oldest first, backing off per order."""
    return attention.retry_waiting_deliveries(session)


def flag_stuck_orders(session: Session) -> dict:
    return attention.flag_stuck_orders(session)


def check_low_stock(session: Session) -> dict:
    return warnings.check_low_stock(session)


def send_notifications(session: Session) -> dict:
    """Events to staff's webhooks and mail and to agents' own webhooks (their orders, and
    their balance's movements, announced here first)."""
    vault = get_vault()
    config = effective_config(session, vault, get_config())
    session.commit()   # read at the start of the run; no transaction held while sending
    announced = webhooks.announce_balance_changes(session)
    counts = deliver_notifications(session, config, extra_targets=webhooks.extra_targets,
                                   extra_events=webhooks.ORDER_EVENTS,
                                   agent_secret=lambda s, webhook_id: webhooks.webhook_secret(s, vault, webhook_id))
    return {"balance_changes": announced, **counts}


def send_emails(session: Session) -> dict:
    vault = get_vault()
    config = effective_config(session, vault, get_config())
    session.commit()   # read at the start of the run; no transaction held while sending
    return send_due_emails(session, vault, config)


def reconcile_payments(session: Session) -> dict:
    """Missed callbacks (掉单): ask the gateway about unpaid orders."""
    return reconcile_pending(session, get_vault())


def check_channel_keys(session: Session) -> dict:
    """Channels whose key anyone could guess (kept from an older version) are disabled."""
    disabled = disable_weak_channels(session, get_vault())
    return {"disabled": len(disabled)}


def check_channels(session: Session) -> dict:
    """Payment channels' health: a channel that is down comes back once a check succeeds;
    gateways are asked every few minutes."""
    return check_channel_health(session, get_vault(), shop_url())


def settle_payments(session: Session) -> dict:
    """The daily settlement report (yesterday, from 02:00 local time), a chunk per run."""
    return settlement.settle_payments(session, get_vault(), get_config().site.timezone)


def daily_backup(session: Session) -> dict:
    """A backup a day into backup.directory, keeping backup.keep of them."""
    return backup.daily_backup(session, get_config())


def retire_old_keys(session: Session) -> dict:
    """Old data-key versions leave the key file an hour after a rotation, once unused."""
    return rotation.retire_old_keys(session, get_config().security.data_key_file)


def prune_history(session: Session) -> dict:
    return history.prune(session)


def prune_api_nonces(session: Session) -> dict:
    """Agent API nonces past their window (a request that old is refused by its timestamp)."""
    return {"nonces": prune_nonces(session)}


def prune_risk_records(session: Session) -> dict:
    """Solved captchas past their expiry, lookups that failed over a day ago (the risk rules')."""
    return {"captchas": captcha.prune(session), "lookup_failures": risk.forget_lookup_failures(session)}


def release_commissions(session: Session) -> dict:
    """Agents' commissions past their hold (agents.commission_hold_days) become spendable."""
    return release_due_commissions(session)


def adjust_agent_levels(session: Session) -> dict:
    """Agents' levels by their recent sales (the level rules); pinned levels stay."""
    return adjust_levels(session)


def forward_supplier_orders(session: Session) -> dict:
    """Paid orders of products bought upstream: forwarded to their supplier, retried with the
    same Idempotency-Key until it answers, delivered with the keys it sends."""
    return forwarding.forward_due(session, get_vault())


def sync_suppliers(session: Session) -> dict:
    """Suppliers' products, costs, stock and our balance there (cost moves and a low balance warned)."""
    return suppliers.sync_all(session, get_vault())


def refill_vouchers(session: Session) -> dict:
    """Voucher products with keep_in_stock get new codes up to that many unsold ones."""
    return {"generated": sum(voucher_stock.refill(session, get_vault()).values())}


def flag_overdue_tickets(session: Session) -> dict:
    """After-sales tickets waiting for staff longer than tickets.sla_hours become overdue."""
    return {"overdue": tickets.flag_overdue(session)}


def summarise_sales(session: Session) -> dict:
    """The reports' summary rows of each day that has closed (kamengd.reports.summary)."""
    return report_summary.summarise(session, get_config().site.timezone)


def prune_exports(session: Session) -> dict:
    """Staff's downloaded lists after a day; an export whose worker died marked failed."""
    return export_jobs.prune(session)


# name -> (function, interval in seconds)
JOBS = {
    "expire_reservations": (expire_reservations, 30),
    "serve_waiting_orders": (serve_waiting_orders, 30),
    "send_emails": (send_emails, 15),
    "send_notifications": (send_notifications, 10),
    "reconcile_payments": (reconcile_payments, 30),
    "check_low_stock": (check_low_stock, 60),
    "flag_stuck_orders": (flag_stuck_orders, 60),
    "check_channel_keys": (check_channel_keys, 60),
    "check_channels": (check_channels, 60),
    "settle_payments": (settle_payments, 60),
    "daily_backup": (daily_backup, 600),
    "retire_old_keys": (retire_old_keys, 600),
    "prune_history": (prune_history, 3600),
    "prune_api_nonces": (prune_api_nonces, 300),
    "prune_risk_records": (prune_risk_records, 600),
    "release_commissions": (release_commissions, 300),
    "adjust_agent_levels": (adjust_agent_levels, 3600),
    "forward_supplier_orders": (forward_supplier_orders, 0),   # every tick: a buyer waits for these keys
    "sync_suppliers": (sync_suppliers, 300),
    "refill_vouchers": (refill_vouchers, 60),
    "flag_overdue_tickets": (flag_overdue_tickets, 60),
    "summarise_sales": (summarise_sales, 60),
    "prune_exports": (prune_exports, 600),
}

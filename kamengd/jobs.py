"""The periodic jobs. Each is a plain function of a session that commits its
own work and returns counts; the scheduler (kamengd.scheduler.runner) decides
who runs them (one leader per database) and records every run.

Each job is also idempotent (conditional updates), so a second runner by
mistake would change nothing twice."""
from __future__ import annotations

from sqlalchemy.orm import Session


def expire_reservations(session: Session) -> dict:
    from .orders.services import expire_orders

    total = 0
    while True:
        n = expire_orders(session)
        session.commit()
        total += n
        if n == 0:
            return {"expired": total}


def serve_waiting_orders(session: Session) -> dict:
    """Paid orders waiting for stock (a payment and an import that crossed, keys
    released elsewhere): deliver them oldest first, backing off per order."""
    from .orders.attention import retry_waiting_deliveries

    return retry_waiting_deliveries(session)


def flag_stuck_orders(session: Session) -> dict:
    from .orders.attention import flag_stuck_orders as flag

    return flag(session)


def check_low_stock(session: Session) -> dict:
    from .inventory.warnings import check_low_stock as check

    return check(session)


def send_notifications(session: Session) -> dict:
    from .context import get_config, get_vault
    from .notifications.dispatch import deliver_notifications
    from .settings.messaging import effective_config

    config = effective_config(session, get_vault(), get_config())
    session.commit()   # read at the start of the run; no transaction held while sending
    return deliver_notifications(session, config)


def send_emails(session: Session) -> dict:
    from .context import get_config, get_vault
    from .notifications.email import send_due_emails
    from .settings.messaging import effective_config

    vault = get_vault()
    config = effective_config(session, vault, get_config())
    session.commit()
    return send_due_emails(session, vault, config)


def reconcile_payments(session: Session) -> dict:
    """Missed callbacks (掉单): ask the gateway about unpaid orders."""
    from .context import get_vault
    from .payments.reconcile import reconcile_pending

    return reconcile_pending(session, get_vault())


def settle_payments(session: Session) -> dict:
    """The daily settlement report (yesterday, from 02:00 local time), a chunk per run."""
    from .context import get_config, get_vault
    from .payments.settlement import settle_payments as settle

    return settle(session, get_vault(), get_config().site.timezone)


def daily_backup(session: Session) -> dict:
    """A backup a day into backup.directory, keeping backup.keep of them."""
    from .context import get_config
    from .backup.services import daily_backup as backup

    return backup(session, get_config())


def retire_old_keys(session: Session) -> dict:
    """Old data-key versions leave the key file an hour after a rotation, once unused."""
    from .context import get_config
    from .rotation import retire_old_keys as retire

    return retire(session, get_config().security.data_key_file)


def prune_history(session: Session) -> dict:
    from .history import prune

    return prune(session)


# name -> (function, interval in seconds)
JOBS = {
    "expire_reservations": (expire_reservations, 30),
    "serve_waiting_orders": (serve_waiting_orders, 30),
    "send_emails": (send_emails, 15),
    "send_notifications": (send_notifications, 10),
    "reconcile_payments": (reconcile_payments, 30),
    "check_low_stock": (check_low_stock, 60),
    "flag_stuck_orders": (flag_stuck_orders, 60),
    "settle_payments": (settle_payments, 60),
    "daily_backup": (daily_backup, 600),
    "retire_old_keys": (retire_old_keys, 600),
    "prune_history": (prune_history, 3600),
}

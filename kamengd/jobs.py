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
    """Paid orders waiting while stock is on the shelf (a payment and an import
    that crossed on MySQL): deliver them, oldest first."""
    from .orders.services import deliver_all_waiting

    delivered = deliver_all_waiting(session)
    session.commit()
    return {"delivered": delivered}


def send_emails(session: Session) -> dict:
    from .app import get_config, get_vault
    from .notifications.email import send_due_emails

    return send_due_emails(session, get_vault(), get_config())


def reconcile_payments(session: Session) -> dict:
    """Missed callbacks (掉单): ask the gateway about unpaid orders."""
    from .app import get_vault
    from .payments.reconcile import reconcile_pending

    return reconcile_pending(session, get_vault())


# name -> (function, interval in seconds)
JOBS = {
    "expire_reservations": (expire_reservations, 30),
    "serve_waiting_orders": (serve_waiting_orders, 30),
    "send_emails": (send_emails, 15),
    "reconcile_payments": (reconcile_payments, 30),
}

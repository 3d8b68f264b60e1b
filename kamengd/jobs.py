"""Periodic work, for now run in-process by `kamengd serve` (K3 adds the
single-leader scheduler). Each job is a conditional, idempotent update, so a
second process running it at the same time changes nothing twice."""
from __future__ import annotations

import logging

from apscheduler.schedulers.background import BackgroundScheduler

log = logging.getLogger("kamengd.jobs")


def expire_reservations(app) -> int:
    from .extensions import db
    from .orders.services import expire_orders

    total = 0
    with app.app_context():
        try:
            while True:
                n = expire_orders(db.session)
                db.session.commit()
                total += n
                if n == 0:
                    break
        except Exception:
            db.session.rollback()
            log.exception("expire_reservations failed; retried next tick")
        finally:
            db.session.remove()
    if total:
        log.info("expired %d unpaid orders; their keys are back on sale", total)
    return total


def serve_waiting_orders(app) -> int:
    """Paid orders waiting while stock is on the shelf (a payment and an import
    that crossed on MySQL): deliver them, oldest first."""
    from .extensions import db
    from .orders.services import deliver_all_waiting

    with app.app_context():
        try:
            n = deliver_all_waiting(db.session)
            db.session.commit()
            return n
        except Exception:
            db.session.rollback()
            log.exception("serve_waiting_orders failed; retried next tick")
            return 0
        finally:
            db.session.remove()


def send_emails(app) -> dict:
    from .app import get_config, get_vault
    from .extensions import db
    from .notifications.email import send_due_emails

    with app.app_context():
        try:
            return send_due_emails(db.session, get_vault(), get_config())
        except Exception:
            db.session.rollback()
            log.exception("send_emails failed; retried next tick")
            return {}
        finally:
            db.session.remove()


def start_scheduler(app, interval_seconds: int = 30) -> BackgroundScheduler:
    scheduler = BackgroundScheduler(daemon=True)
    scheduler.add_job(expire_reservations, "interval", seconds=interval_seconds, args=[app],
                      id="expire_reservations", max_instances=1, coalesce=True)
    scheduler.add_job(send_emails, "interval", seconds=15, args=[app], id="send_emails",
                      max_instances=1, coalesce=True)
    scheduler.add_job(serve_waiting_orders, "interval", seconds=interval_seconds, args=[app],
                      id="serve_waiting_orders", max_instances=1, coalesce=True)
    scheduler.start()
    return scheduler

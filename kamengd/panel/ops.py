"""Operations: the scheduler's jobs and their runs, the daily settlement reports, notifications."""
from __future__ import annotations

import datetime as dt
import re

from flask import abort, render_template, request

from ..reports import events, scheduler, settlements
from ..context import get_config
from ..database import utcnow
from ..extensions import db
from ..scheduler.jobs import JOBS
from ..payments.settlement import KINDS, report_entries
from ..transaction import read_only
from .blueprint import bp
from .audit import compact_details
from .helpers import PAGE_SIZE, page_number

DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _page(fetch):
    """fetch(limit, offset) for the current page: (items, page, has_next)."""
    page = page_number()
    items = fetch(PAGE_SIZE + 1, (page - 1) * PAGE_SIZE)
    return items[:PAGE_SIZE], page, len(items) > PAGE_SIZE


@bp.get("/jobs")
def jobs():
    read_only()
    job = request.args.get("job", "")
    job = job if job in JOBS else ""
    runs, page, has_next = _page(lambda limit, offset: scheduler.job_runs(db.session, job=job or None,
                                                                           limit=limit, offset=offset))
    config = get_config()
    return render_template("panel/ops_jobs.html", jobs={name: interval for name, (_fn, interval) in JOBS.items()},
                           last=scheduler.last_runs(db.session, JOBS), runs=runs, page=page, has_next=has_next,
                           job=job, seconds=scheduler.run_seconds,
                           scheduler=scheduler.scheduler_status(db.session, utcnow(),
                                                                config.scheduler.lease_seconds))


@bp.get("/reconcile")
def reconcile():
    read_only()
    items, page, has_next = _page(lambda limit, offset: settlements.settlement_reports(db.session, limit=limit,
                                                                                   offset=offset))
    return render_template("panel/ops_reconcile.html", items=items, kinds=KINDS, page=page, has_next=has_next)


@bp.get("/reconcile/<day>")
def reconcile_report(day: str):
    read_only()
    try:
        parsed = dt.date.fromisoformat(day) if DAY_RE.match(day) else None
    except ValueError:
        parsed = None
    report = settlements.settlement_report(db.session, parsed) if parsed else None
    if report is None:
        abort(404)
    return render_template("panel/ops_reconcile_report.html", report=report,
                           entries=report_entries(db.session, report))


@bp.get("/notifications")
def notifications():
    read_only()
    status = request.args.get("status", "")
    status = status if status in events.NOTIFICATION_STATUSES else ""
    rows, page, has_next = _page(lambda limit, offset: events.recent_events(db.session, status=status or None,
                                                                             limit=limit, offset=offset))
    return render_template("panel/ops_notifications.html", events=rows, page=page, has_next=has_next,
                           status=status, statuses=events.NOTIFICATION_STATUSES, payload=compact_details)

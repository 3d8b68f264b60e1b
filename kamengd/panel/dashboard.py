"""The dashboard: today's sales and the week, orders by status, low stock, what needs a person,
the scheduler and its jobs. Every figure comes from kamengd.reports."""
from __future__ import annotations

from flask import current_app, render_template, url_for
from werkzeug.routing import BuildError

from ..reports import scheduler, shop
from ..context import get_config, get_vault
from ..database import utcnow
from ..extensions import db
from ..orders.staff import extra_payments_to_refund
from ..payments.services import weak_channels
from ..risk.engine import review_count
from ..scheduler.jobs import JOBS
from ..tickets import services as tickets
from ..transaction import read_only
from .blueprint import bp, staff_can
from .helpers import error_text
from .permissions import ENDPOINTS


@bp.app_template_global()
def panel_link(endpoint: str, **values) -> str | None:
    """The URL of a panel page when it exists and the signed-in staff member may open it; else None
    (the page shows plain text instead of a link)."""
    if endpoint not in current_app.view_functions or not staff_can(ENDPOINTS.get(endpoint, "")):
        return None
    try:
        return url_for(endpoint, **values)
    except BuildError:
        return None


@bp.get("/dashboard")
def dashboard():
    read_only()
    config, now = get_config(), utcnow()
    tz = config.site.timezone
    week = shop.daily_sales(db.session, now, tz, days=7)
    attention_count, attention = shop.orders_needing_attention(db.session, limit=10)
    extra_count, extra = extra_payments_to_refund(db.session, limit=10)
    weak = [(channel.code, error_text(problem)) for channel, problem in weak_channels(db.session, get_vault())]
    return render_template(
        "panel/dashboard.html", today=week[0], week=week, timezone=tz, extra_count=extra_count, extra=extra,
        weak_channels=weak,
        by_status=shop.orders_by_status(db.session),
        low_stock=shop.low_stock_products(db.session),
        attention_count=attention_count, attention=attention, review_count=review_count(db.session),
        tickets=tickets.counts(db.session),
        scheduler=scheduler.scheduler_status(db.session, now, config.scheduler.lease_seconds),
        runs=scheduler.last_runs(db.session, JOBS))

"""The dashboard: today's sales and the week, orders by status, low stock, what needs a person,
the scheduler and its jobs. Every figure comes from kamengd.reports."""
from __future__ import annotations

import datetime as dt

from flask import current_app, render_template, url_for
from flask_babel import gettext as _
from werkzeug.routing import BuildError

from ..payments.settlement import day_bounds
from ..reports import charts, figures, scheduler, shop
from ..context import get_config, get_vault
from ..database import utcnow
from ..extensions import db
from ..money import format_cents
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
    reader = figures.Reader(db.session, tz, now)
    today = reader.today
    month = today - dt.timedelta(days=29)
    days = figures.daily(reader, month, today)
    periods = [(label, figures.totals(reader, today - dt.timedelta(days=n - 1), today))
               for label, n in ((_("Today"), 1), (_("7 days"), 7), (_("30 days"), 30))]
    currency = figures.main_currency({t.currency: t.counters["paid"] for t in periods[-1][1]})
    top = sorted((ln for ln in figures.profit(reader, month, today) if ln.currency == currency),
                 key=lambda ln: (-ln.counters["revenue_cents"], ln.name))[:10]
    attention_count, attention = shop.orders_needing_attention(db.session, limit=10)
    extra_count, extra = extra_payments_to_refund(db.session, limit=10)
    weak = [(channel.code, error_text(problem)) for channel, problem in weak_channels(db.session, get_vault())]
    revenue_chart = charts.bars(
        [(day.strftime("%m-%d"), sums.get(currency, {}).get("revenue_cents", 0)) for day, sums in days],
        title=_("Sales per day, last 30 days (%(currency)s)", currency=currency), value_label=format_cents,
        empty=_("No sales in the last 30 days."))
    top_chart = charts.hbars([(ln.name, ln.counters["revenue_cents"]) for ln in top],
                             title=_("Top products, last 30 days (%(currency)s)", currency=currency),
                             value_label=format_cents, empty=_("No sales in the last 30 days."))
    return render_template(
        "panel/dashboard.html", today=today, periods=periods, week=days[-7:][::-1], currency=currency,
        show_profit=staff_can("reports.view"),   # (built from cost prices: not every role's to see)
        revenue_chart=revenue_chart, top_chart=top_chart, top=top, summarised_through=reader.through,
        timezone=tz, extra_count=extra_count, extra=extra, weak_channels=weak,
        by_status=shop.orders_by_status(db.session, since=day_bounds(month, tz)[0]),
        low_stock=shop.low_stock_products(db.session),
        attention_count=attention_count, attention=attention, review_count=review_count(db.session),
        waiting_count=shop.waiting_for_stock(db.session), withdrawal_count=shop.withdrawals_requested(db.session),
        tickets=tickets.counts(db.session),
        scheduler=scheduler.scheduler_status(db.session, now, config.scheduler.lease_seconds),
        runs=scheduler.last_runs(db.session, JOBS))

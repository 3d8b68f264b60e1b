"""Reports in the panel: one page per report over a range of the shop's days, a chart drawn on
the server, its table, and the same table as CSV or XLSX (audited). The figures come from
kamengd.reports (tables: what each report holds; charts: how it is drawn)."""
from __future__ import annotations

import datetime as dt
import io
import threading
from decimal import Decimal

from flask import Response, abort, current_app, redirect, render_template, request, stream_with_context, url_for
from flask_babel import gettext as _

from ..audit.services import record
from ..context import get_config
from ..database import utcnow
from ..errors import InvalidRequest, KamengdError
from ..extensions import db
from ..money import format_cents
from ..reports import charts, export_jobs, exports, figures, tables
from ..transaction import read_only
from .blueprint import bp, staff_can
from .helpers import flash_errors
from .session import actor, client_ip

FORMATS = {"csv": "text/csv; charset=utf-8",
           "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}


def _day(name: str, default: dt.date) -> dt.date:
    return figures.parse_day(request.args.get(name), name, default)


def _asked(reader: figures.Reader) -> tuple[str, dt.date, dt.date, str]:
    name = request.args.get("report", "sales")
    first = _day("from", reader.today - dt.timedelta(days=29))
    last = _day("to", reader.today)
    return name, first, last, request.args.get("by", "product")


def _chart(name: str, table: tables.Table, first: dt.date, last: dt.date):
    """The report's picture: what a merchant reads first on it."""
    rows = table.rows
    if name == "sales":
        paid: dict[str, int] = {}
        for row in rows:
            paid[row[1]] = paid.get(row[1], 0) + row[3]
        currency = figures.main_currency(paid)
        per_day = {row[0]: int(row[4] * 100) for row in rows if row[1] == currency}
        days = [(first + dt.timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]
        return charts.bars([(d[5:], per_day.get(d, 0)) for d in days], value_label=format_cents,
                           title=_("Sales per day (%(currency)s)", currency=currency), empty=_("No sales in the range."))
    if name == "hours":
        return charts.heatmap([row[1:25] for row in rows], rows=[tables.text(row[0], _) for row in rows],
                              columns=[f"{h:02d}" for h in range(24)], title=_("Paid orders by hour and weekday"),
                              empty=_("No sales in the range."))
    if name == "repurchase":
        return charts.bars([(str(days), n) for days, n in table.series[:60]],
                           title=_("Days between a buyer's purchases"), empty=_("No buyer paid again in the range."))
    ranking = {"profit": (8, _("Profit")), "channels": (3, _("Paid orders")), "agents": (3, _("Sales")),
               "coupons": (2, _("Paid orders")), "risk": (-1, _("Decisions")), "stores": (1, _("Redeemed"))}
    column, label = ranking[name]
    money = bool(rows) and isinstance(rows[0][column], Decimal)   # (cents on the bar, money beside it)
    points = [(f"{row[0]} ({row[1]})" if name in ("profit", "channels", "agents", "coupons") else str(row[0]),
               int(row[column] * 100) if money else int(row[column])) for row in rows[:15]]
    return charts.hbars(points, title=label, value_label=format_cents if money else str, empty=_("Nothing in the range."))


@bp.get("/reports")
def reports():
    read_only()
    reader = figures.Reader(db.session, get_config().site.timezone, utcnow())
    name, first, last, by = "sales", reader.today - dt.timedelta(days=29), reader.today, "product"
    table = chart = None
    status = 200
    try:
        name, first, last, by = _asked(reader)
        table = tables.build(reader, name, first, last, by)
        chart = _chart(name, table, first, last)
    except InvalidRequest as exc:
        flash_errors(exc)
        status = 400
    return render_template("panel/reports.html", name=name if name in tables.REPORTS else "sales", first=first,
                           last=last, by=by, table=table, chart=chart, names=tables.TITLES,
                           text=lambda cell: tables.text(cell, _), translate=_, through=reader.through, today=reader.today,
                           timezone=reader.tz, by_choices=figures.PROFIT_BY), status


@bp.get("/reports/export")
def report_export():
    """The report's table as CSV (UTF-8 with a BOM) or XLSX; audited (figures of the business)."""
    reader = figures.Reader(db.session, get_config().site.timezone, utcnow())
    fmt = request.args.get("format", "csv")
    try:
        if fmt not in FORMATS:
            raise InvalidRequest("format: one of %(choices)s", choices=", ".join(FORMATS))
        name, first, last, by = _asked(reader)
        table = tables.build(reader, name, first, last, by)
    except InvalidRequest as exc:
        flash_errors(exc)
        return redirect(url_for("panel.reports", **{k: v for k, v in request.args.items() if k != "format"}))
    out = io.BytesIO()
    (exports.write_csv if fmt == "csv" else exports.write_xlsx)(table.header(_), table.cells(_), out, **(
        {"sheet": name} if fmt == "xlsx" else {}))
    db.session.rollback()
    record(db.session, "report.export", actor=actor(), target=f"report:{name}", source_ip=client_ip(),
           details={"report": name, "from": first.isoformat(), "to": last.isoformat(), "format": fmt,
                    "rows": len(table.rows), **({"by": by} if name == "profit" else {})})
    db.session.commit()
    filename = f"{name}-{first.isoformat()}-{last.isoformat()}.{fmt}"
    return Response(out.getvalue(), mimetype=FORMATS[fmt],
                    headers={"Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store"})


# -- big lists in the background ------------------------------------------------------------

# Who may take each list out of the shop (the routes need lists.export, the list its own right).
LIST_PERMISSIONS = {"orders": "orders.export", "ledger": "finance.manage", "redemptions": "vouchers.report"}


def _work(app, export_id: int) -> None:
    with app.app_context():
        try:
            export_jobs.run_export(db.session, db.engine, export_id, get_config().site.timezone)
        finally:
            db.session.remove()


def _lists_page(status: int = 200, form: dict | None = None):
    today = figures.Reader(db.session, get_config().site.timezone, utcnow()).today
    form = form or {"list": "orders", "format": "csv", "from": (today - dt.timedelta(days=29)).isoformat(),
                    "to": today.isoformat()}
    lists = [k for k in export_jobs.KINDS if staff_can(LIST_PERMISSIONS[k])]
    return render_template("panel/report_lists.html", exports=export_jobs.recent(db.session, actor()), form=form,
                           lists=lists, now=utcnow(), stale=export_jobs.STALE), status


@bp.get("/reports/lists")
def report_lists():
    read_only()
    return _lists_page()


@bp.post("/reports/lists")
def report_list_start():
    form = {k: request.form.get(k, "").strip() for k in ("list", "format", "from", "to")}
    try:
        if form["list"] in LIST_PERMISSIONS and not staff_can(LIST_PERMISSIONS[form["list"]]):
            abort(403)
        first, last = figures.parse_day(form["from"], "from"), figures.parse_day(form["to"], "to")
        if first is None or last is None:
            raise InvalidRequest("%(field)s: a day (YYYY-MM-DD)", field="from" if first is None else "to")
        export = export_jobs.request_export(db.session, kind=form["list"], fmt=form["format"], first=first, last=last,
                                            actor=actor(), source_ip=client_ip())
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        return _lists_page(exc.http_status, form)
    db.session.commit()   # the worker reads the row from its own session
    threading.Thread(target=_work, args=(current_app._get_current_object(), export.id), daemon=True,
                     name=f"kamengd-export-{export.id}").start()
    return redirect(url_for("panel.report_list_detail", export_id=export.id), 303)


def _mine(export_id: int):
    """The signed-in staff member's own list (another's is not found: a list holds buyers' data
    and is handed to whoever asked for it), if its kind is still theirs to take."""
    export = export_jobs.get_export(db.session, export_id, requested_by=actor())
    if not staff_can(LIST_PERMISSIONS[export.kind]):
        abort(403)
    return export


@bp.get("/reports/lists/<int:export_id>")
def report_list_detail(export_id: int):
    read_only()
    return render_template("panel/report_list.html", export=_mine(export_id))


@bp.get("/reports/lists/<int:export_id>/download")
def report_list_download(export_id: int):
    export = _mine(export_id)
    if export.status != "done":
        abort(404)
    export_id, fmt, size = export.id, export.format, export.size_bytes
    name = f"{export.kind}-{export.first_day.isoformat()}-{export.last_day.isoformat()}.{fmt}"
    details = {"list": export.kind, "format": fmt, "rows": export.rows_done}
    # The guard's read-only snapshot ends before the audit entry is written (on SQLite a snapshot
    # cannot become a writer once another has committed since it began).
    db.session.rollback()
    record(db.session, "report.download", actor=actor(), target=f"export:{export_id}", source_ip=client_ip(),
           details=details)
    db.session.commit()   # the audit entry stays even if the download is cut
    return Response(stream_with_context(export_jobs.parts(db.session, export_id)), mimetype=FORMATS[fmt],
                    headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store",
                             "Content-Length": str(size)})

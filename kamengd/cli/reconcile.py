from __future__ import annotations

import datetime as dt
import zoneinfo

import click

from ..context import get_config, get_vault
from ..audit.services import cli_actor, record
from ..database import utcnow
from ..extensions import db
from ..money import format_cents
from ..payments.models import SettlementReport
from ..payments.settlement import day_to_settle, report_entries, run_settlement
from ..reports.settlements import settlement_report
from .group import cli, emit, fail, json_option, with_app


@cli.group()
def reconcile():
    """The daily settlement against the payment gateway."""


def _day(value: str | None) -> dt.date:
    if value is None:
        return day_to_settle(utcnow(), get_config().site.timezone)
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        fail(f"--date: expected a date as YYYY-MM-DD, got {value!r}")


def _money(cents):
    return None if cents is None else format_cents(cents)


def _show(report: SettlementReport, as_json: bool) -> None:
    entries = report_entries(db.session, report)
    payload = {"day": report.day.isoformat(), "timezone": report.timezone, "status": report.status,
               "checked": report.checked, "mismatches": report.mismatches, "unverified": report.unverified,
               "started_at": report.started_at.isoformat(timespec="seconds") + "Z",
               "finished_at": report.finished_at.isoformat(timespec="seconds") + "Z" if report.finished_at else None,
               "entries": [{"order_no": e.order_no, "kind": e.kind, "our_status": e.our_status,
                            "our_amount": _money(e.our_amount_cents), "gateway_status": e.gateway_status,
                            "gateway_amount": _money(e.gateway_amount_cents), "detail": e.detail}
                           for e in entries]}
    lines = [f"settlement {payload['day']} ({report.timezone}): {report.status}, {report.checked} orders checked, "
             f"{report.mismatches} mismatches, {report.unverified} unverified"]
    lines += [f"  {e['order_no']}  {e['kind']:<20} {e['detail']}" for e in payload["entries"]]
    emit(as_json, payload, "\n".join(lines))


@reconcile.command("report")
@click.option("--date", "day", metavar="YYYY-MM-DD", help="The day (site.timezone); default: yesterday.")
@json_option
@with_app(readonly=True)
def reconcile_report(day, as_json):
    """Print a day's settlement report: every order where the gateway and the shop disagree."""
    day = _day(day)
    report = settlement_report(db.session, day)
    if report is None:
        fail(f"no settlement report for {day} yet (the scheduler settles each day after 02:00 the next "
             f"day; `kamengd reconcile run --date {day}` runs it now)")
    _show(report, as_json)


@reconcile.command("run")
@click.option("--date", "day", metavar="YYYY-MM-DD", help="The day (site.timezone); default: yesterday.")
@click.option("--restart", is_flag=True, help="Discard the day's report and check every order again.")
@json_option
@with_app
def reconcile_run(day, restart, as_json):
    """Settle a day now: ask the gateway about each of its orders (audited)."""
    day = _day(day)
    tz = get_config().site.timezone
    if day >= dt.datetime.now(zoneinfo.ZoneInfo(tz)).date():
        fail(f"--date: {day} is not over yet in {tz}")
    record(db.session, "reconcile.run", actor=cli_actor(), target=f"settlement:{day}",
           details={"restart": restart})
    db.session.commit()   # the run is recorded before it asks the gateways; the settlement commits per chunk
    _show(run_settlement(db.session, get_vault(), day, tz, restart=restart), as_json)

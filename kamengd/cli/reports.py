"""`kamengd report NAME`: a report, or the orders, ledger or redemptions list, over a range of
the shop's days, into a CSV or XLSX file (mode 0600, audited); `kamengd report rebuild`
writes the reports' daily summaries again."""
from __future__ import annotations

import datetime as dt
import os
import tempfile
from pathlib import Path

import click

from ..audit.services import cli_actor, record
from ..context import get_config
from ..database import utcnow
from ..errors import InvalidRequest, KamengdError
from ..extensions import db
from ..payments.settlement import day_bounds
from ..reports import exports, figures, summary, tables
from .group import cli, emit, json_option, with_app

LISTS = ("orders", "ledger", "redemptions")
NAMES = (*tables.REPORTS, *LISTS, "rebuild")


def _list(name: str, first: dt.date, last: dt.date, tz: str) -> exports.Export:
    start, _ = day_bounds(first, tz)
    _, end = day_bounds(last, tz)
    if name == "orders":
        return exports.orders(db.session, start=start, end=end, tz=tz, newest_first=False)
    if name == "ledger":
        return exports.ledger_entries(db.session, start=start, end=end, tz=tz)
    return exports.redemptions(db.session, start=start, end=end, tz=tz)


def _open_output(output: Path, force: bool):
    """A temporary file beside `output` (mode 0600), renamed onto it once whole: a failed export
    leaves no half-written file."""
    if output.exists() and (output.is_dir() or not force):
        raise KamengdError(f"{output} is a directory" if output.is_dir() else f"{output} already exists (--force "
                                                                              "overwrites it)")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent or Path("."))
    except OSError as exc:
        raise KamengdError(f"cannot write in {output.parent}: {exc.strerror}") from None
    return os.fdopen(fd, "wb"), Path(tmp)


@cli.command("report")
@click.argument("name", type=click.Choice(NAMES))
@click.option("--from", "first", metavar="YYYY-MM-DD", help="First day (the shop's time zone); default: 30 days ago.")
@click.option("--to", "last", metavar="YYYY-MM-DD", help="Last day, included; default: today.")
@click.option("--by", type=click.Choice(figures.PROFIT_BY), default="product", show_default=True,
              help="profit: by product (each variant), product with its variants, or category.")
@click.option("--format", "fmt", type=click.Choice(("csv", "xlsx")), help="Default: the output's suffix, else csv.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="The file to write (mode 0600).")
@click.option("--force", is_flag=True, help="Overwrite the output file if it exists.")
@json_option
@with_app
def report(name, first, last, by, fmt, output, force, as_json):
    """Write a report (sales, profit, channels, hours, repurchase, agents, coupons, risk, stores) or
    a list (orders, ledger, redemptions) over a range of days to a CSV or XLSX file. Audited.
    `kamengd report rebuild` drops the daily summaries and writes them again (the new cost prices)."""
    tz = get_config().site.timezone
    if name == "rebuild":
        done = summary.rebuild(db.session, tz)
        record(db.session, "report.rebuild", actor=cli_actor(), target="reports", details=done)
        emit(as_json, done, f"summaries written again: {done['days']} days")
        return
    if output is None:
        raise InvalidRequest("output: the file to write (--output)")
    fmt = fmt or ("xlsx" if output.suffix.lower() == ".xlsx" else "csv")
    reader = figures.Reader(db.session, tz, utcnow())
    last_day = figures.parse_day(last, "to", reader.today)
    first_day = figures.parse_day(first, "from", last_day - dt.timedelta(days=29))
    figures.check_range(first_day, last_day)
    fh, tmp = _open_output(output, force)
    try:
        # The audit entry first, in its own commit: a long export reads a snapshot after it,
        # and never has to write (SQLite) at its end.
        record(db.session, "report.export", actor=cli_actor(), target=f"report:{name}",
               details={"report": name, "from": first_day.isoformat(), "to": last_day.isoformat(), "format": fmt,
                        "output": str(output.absolute()), **({"by": by} if name == "profit" else {})})
        db.session.commit()
        db.session.connection(execution_options={"kamengd_readonly": True})   # a snapshot, no write lock
        if name in LISTS:
            found = _list(name, first_day, last_day, tz)
            header, rows = found.header, found.rows
        else:
            table = tables.build(figures.Reader(db.session, tz, utcnow()), name, first_day, last_day, by)
            header, rows = table.header(), table.cells()
        with fh:
            count = (exports.write_csv if fmt == "csv" else exports.write_xlsx)(
                header, rows, fh, **({"sheet": name} if fmt == "xlsx" else {}))
        os.replace(tmp, output)
    except BaseException:
        fh.close()
        tmp.unlink(missing_ok=True)
        raise
    emit(as_json, {"report": name, "rows": count, "output": str(output.absolute()), "format": fmt,
                   "from": first_day.isoformat(), "to": last_day.isoformat()},
         f"{name}: {count} rows written to {output}")

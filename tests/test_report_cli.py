"""`kamengd report` through real processes: a report and the orders list into CSV and XLSX
(the same cells), mode 0600, audited; bad input one line and no file."""
from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import secrets
import stat
import zoneinfo
from decimal import Decimal, InvalidOperation

import pytest

from conftest import assert_one_line_error, run_cli

TZ = "Asia/Shanghai"
D1 = (dt.datetime.now(zoneinfo.ZoneInfo(TZ)).date() - dt.timedelta(days=3)).isoformat()
D2 = (dt.date.fromisoformat(D1) + dt.timedelta(days=1)).isoformat()


def utc(local: str) -> dt.datetime:
    return (dt.datetime.fromisoformat(local).replace(tzinfo=zoneinfo.ZoneInfo(TZ))
            .astimezone(dt.UTC).replace(tzinfo=None))


@pytest.fixture(scope="module")
def old_orders(app):
    """Orders of three and two days ago (the shop's days), committed; a formula-like e-mail too.
    (Recent days: `report rebuild` rewrites from the shared database's first order on.)"""
    from kamengd.catalog.services import create_product
    from kamengd.extensions import db
    from kamengd.orders.models import Order

    with app.app_context():
        tag = secrets.token_hex(3)
        product = create_product(db.session, name=f"cli <b>{tag}", price_cents=1500, cost_price_cents=500, actor="t")
        made = []
        for i, local in enumerate((f"{D1} 23:59:30", f"{D2} 00:00:30", f"{D2} 12:00:00")):
            at, no = utc(local), f"KC{secrets.token_hex(6).upper()}"
            email = "=cmd()@example.com" if i == 0 else f"c{i}{tag}@example.com"
            made.append(Order(order_no=no, product_id=product.id, quantity=1, unit_price_cents=1500,
                              amount_cents=1500, currency="CNY", email=email, email_folded=email, status="delivered",
                              token_hash=hashlib.sha256(no.encode()).digest(), created_at=at, updated_at=at,
                              expires_at=at + dt.timedelta(minutes=15), paid_at=at, delivered_at=at))
        db.session.add_all(made)
        db.session.commit()
        return {"product": product.name, "orders": [o.order_no for o in made]}


def same(value):
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return str(value)


def read_both(csv_path, xlsx_path):
    from openpyxl import load_workbook
    rows = list(csv.reader(io.StringIO(csv_path.read_bytes().decode("utf-8-sig"))))
    sheet = load_workbook(xlsx_path, read_only=True).active
    def trimmed(row):   # (a workbook keeps no empty cell at a row's end)
        row = [same(v) for v in row]
        while row and row[-1] == "":
            row.pop()
        return row
    return [trimmed(r) for r in rows], [trimmed(r) for r in sheet.iter_rows(values_only=True)]


def test_reports_and_lists_into_files(app, installed, old_orders, tmp_path):
    config = installed.path
    rebuilt = json.loads(run_cli("report", "rebuild", "--json", config=config, check=True).out)
    assert rebuilt["days"] >= 2
    for fmt in ("csv", "xlsx"):
        out = tmp_path / f"profit.{fmt}"
        done = json.loads(run_cli("report", "profit", "--from", D1, "--to", D2,
                                  "--output", out, "--json", config=config, check=True).out)
        assert done["format"] == fmt and done["rows"] >= 1
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
    rows, cells = read_both(tmp_path / "profit.csv", tmp_path / "profit.xlsx")
    assert rows == cells
    [line] = [r for r in rows if r[0] == old_orders["product"]]
    assert line[1:4] == ["CNY", Decimal(3), Decimal("45.00")] and line[8] == Decimal("30.00")   # 45 − 3 × 5
    # The orders list: times in the shop's zone, the formula-like e-mail made harmless.
    for fmt in ("csv", "xlsx"):
        run_cli("report", "orders", "--from", D1, "--to", D2, "--output",
                tmp_path / f"orders.{fmt}", config=config, check=True)
    rows, cells = read_both(tmp_path / "orders.csv", tmp_path / "orders.xlsx")
    mine = [r for r in rows if r[0] in old_orders["orders"]]
    assert [r[0] for r in mine] == old_orders["orders"]
    assert mine[0][1] == f"{D1} 23:59:30" and not str(mine[0][6]).startswith("=")
    assert rows == cells
    # Only the first day: the order at 23:59:30 Shanghai (15:59:30 UTC) is in, the next one is not.
    run_cli("report", "orders", "--from", D1, "--to", D1, "--output", tmp_path / "one.csv",
            config=config, check=True)
    assert sum(no in (tmp_path / "one.csv").read_text("utf-8-sig") for no in old_orders["orders"]) == 1
    from kamengd.audit.models import AuditEntry
    from kamengd.extensions import db
    import sqlalchemy as sa
    with app.app_context():
        actions = db.session.scalars(sa.select(AuditEntry.target).where(AuditEntry.action == "report.export")).all()
    assert {"report:profit", "report:orders"} <= set(actions)


def test_bad_input_is_one_line_and_writes_nothing(installed, tmp_path):
    config = installed.path
    out = tmp_path / "x.csv"
    for day in ("2021-02-30", "0001-01-01"):
        assert_one_line_error(run_cli("report", "orders", "--from", day, "--output", out, config=config),
                              "from", "not a day")
    assert_one_line_error(run_cli("report", "sales", "--from", "2021-03-05", "--to", "2021-03-01", "--output", out,
                                  config=config), "ends before it starts")
    assert_one_line_error(run_cli("report", "sales", config=config), "--output")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    out.write_text("keep")
    assert_one_line_error(run_cli("report", "sales", "--output", out, config=config), "already exists")
    assert out.read_text() == "keep"
    assert run_cli("report", "sales", "--output", out, "--force", config=config).returncode == 0
    assert out.read_text("utf-8-sig").startswith("Day,Currency")

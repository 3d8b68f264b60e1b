"""The panel's reports: every report's page (chart and table), its CSV and XLSX (the same
cells), audited; bad ranges refused with a message; only the roles that see the figures."""
from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import re
import secrets
import zoneinfo
from decimal import Decimal, InvalidOperation

import pytest
import sqlalchemy as sa

from kamengd.orders.models import Order
from panel_support import login, make_staff

TZ = "Asia/Shanghai"
NAMES = ("sales", "profit", "channels", "hours", "repurchase", "agents", "coupons", "risk", "stores")


def utc(local: str) -> dt.datetime:
    return (dt.datetime.fromisoformat(local).replace(tzinfo=zoneinfo.ZoneInfo(TZ))
            .astimezone(dt.UTC).replace(tzinfo=None))


@pytest.fixture(scope="module")
def report_data(app):
    """Bare order rows on days no other test uses (2036-02): a product <b>, sold three times,
    once refunded, one order created and never paid."""
    from kamengd.catalog.services import create_product
    from kamengd.extensions import db

    with app.app_context():
        tag = secrets.token_hex(3)
        product = create_product(db.session, name=f"rep <b>{tag}</b>", price_cents=2000, cost_price_cents=1200,
                                 actor="test")
        rows = []
        for paid, status, refunded in (("2036-02-10 23:59", "delivered", None), ("2036-02-11 00:01", "delivered", None),
                                       ("2036-02-11 10:00", "refunded", "2036-02-12 09:00"), (None, "expired", None)):
            no = f"KR{secrets.token_hex(6).upper()}"
            at = utc(paid) if paid else utc("2036-02-11 12:00")
            rows.append(Order(order_no=no, product_id=product.id, quantity=1, unit_price_cents=2000, amount_cents=2000,
                              currency="CNY", email=f"r{len(rows) % 2}{tag}@example.com",
                              email_folded=f"r{len(rows) % 2}{tag}@example.com", status=status,
                              token_hash=hashlib.sha256(no.encode()).digest(), created_at=at - dt.timedelta(minutes=1),
                              updated_at=at, expires_at=at + dt.timedelta(minutes=15),
                              paid_at=at if paid else None, delivered_at=at if paid else None,
                              refunded_at=utc(refunded) if refunded else None))
        db.session.add_all(rows)
        db.session.commit()
        return {"product": product.name, "tag": tag}


@pytest.fixture(autouse=True)
def clock(monkeypatch):
    """The shop's clock in March 2036, after the orders' days."""
    monkeypatch.setattr("kamengd.panel.reports.utcnow", lambda: utc("2036-03-01 12:00"))


@pytest.fixture
def owner_client(app):
    client = app.test_client()
    client.get("/admin/login?lang=en")
    login(client, make_staff(app, "owner"))
    return client


def same(value):
    """A cell as a comparable value: money and counts as numbers (the XLSX holds numbers)."""
    if value is None:
        return ""
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return str(value)


def page(client, **args):
    args = {"from": "2036-02-10", "to": "2036-02-12", **args}
    return client.get("/admin/reports", query_string=args)


def test_every_report_has_a_page_a_chart_and_both_files(app, report_data, owner_client):
    for name in NAMES:
        resp = page(owner_client, report=name)
        assert resp.status_code == 200, name
        html = resp.get_data(as_text=True)
        assert 'aria-current="page"' in html and "<svg" in html, name
        csv_resp = owner_client.get("/admin/reports/export", query_string={"report": name, "from": "2036-02-10",
                                                                           "to": "2036-02-12", "format": "csv"})
        assert csv_resp.status_code == 200 and csv_resp.headers["Content-Disposition"].endswith(f'{name}-2036-02-10-2036-02-12.csv"')
        body = csv_resp.get_data()
        assert body.startswith(b"\xef\xbb\xbf")
        rows = list(csv.reader(io.StringIO(body.decode("utf-8-sig"))))
        xlsx = owner_client.get("/admin/reports/export", query_string={"report": name, "from": "2036-02-10",
                                                                       "to": "2036-02-12", "format": "xlsx"})
        assert xlsx.status_code == 200
        from openpyxl import load_workbook
        sheet = load_workbook(io.BytesIO(xlsx.get_data()), read_only=True).active
        cells = [[same(v) for v in row] for row in sheet.iter_rows(values_only=True)]
        assert cells == [[same(v) for v in row] for row in rows], name


def test_the_profit_and_sales_figures_on_the_page(app, report_data, owner_client):
    html = page(owner_client, report="profit").get_data(as_text=True)
    name = report_data["product"].replace("<", "&lt;").replace(">", "&gt;")
    assert report_data["product"] not in html and name in html              # escaped, never markup
    row = re.search(rf"<th scope=\"row\">{re.escape(name)}</th>(.*?)</tr>", html).group(1)
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", row)
    # three sold (60.00), one refunded (20.00), cost 3 × 12.00: profit 4.00, 6.7 % of sales
    assert cells[:9] == ["CNY", "3", "60.00", "20.00", "36.00", "0.00", "0.00", "4.00", "6.7"]
    sales = page(owner_client, report="sales").get_data(as_text=True)
    days = dict(re.findall(r'<th scope="row">(2036-02-1\d)</th><td>CNY</td><td class="num">\d+</td>'
                           r'<td class="num">(\d+)</td>', sales))
    assert days == {"2036-02-10": "1", "2036-02-11": "2", "2036-02-12": "0"}


def test_a_bad_range_is_refused_with_a_message(app, report_data, owner_client):
    for args, words in (({"from": "2036-13-01"}, "is not a day"), ({"from": "0001-01-01"}, "is not a day"),
                        ({"to": "9999-12-31"}, "is not a day"), ({"from": "2036-02-12", "to": "2036-02-01"},
                                                                   "ends before it starts"),
                        ({"from": "2030-01-01", "to": "2036-01-01"}, "at most 731 days"),
                        ({"report": "nope"}, "report: one of"), ({"report": "profit", "by": "x"}, "by: one of")):
        resp = page(owner_client, **args)
        assert resp.status_code == 400 and words in resp.get_data(as_text=True), args
    resp = owner_client.get("/admin/reports/export", query_string={"report": "sales", "format": "pdf"})
    assert resp.status_code == 302
    assert "format: one of" in owner_client.get(resp.headers["Location"]).get_data(as_text=True)


def test_an_export_is_audited_and_only_some_roles_see_reports(app, report_data, owner_client):
    from kamengd.audit.models import AuditEntry
    from kamengd.extensions import db

    owner_client.get("/admin/reports/export", query_string={"report": "channels", "from": "2036-02-10",
                                                            "to": "2036-02-12", "format": "xlsx"})
    with app.app_context():
        entry = db.session.scalars(sa.select(AuditEntry).where(AuditEntry.action == "report.export")
                                   .order_by(AuditEntry.id.desc()).limit(1)).one()
        assert entry.target == "report:channels" and json.loads(entry.details)["format"] == "xlsx"
    for role, status in (("finance", 200), ("admin", 200), ("support", 403), ("operator", 403), ("auditor", 403)):
        client = app.test_client()
        login(client, make_staff(app, role))
        assert page(client).status_code == status, role



def wait_for(client, location: str, seconds: float = 60) -> str:
    import time
    deadline = time.monotonic() + seconds
    while True:
        html = client.get(location).get_data(as_text=True)
        found = re.search(r'data-status="(\w+)"', html)
        assert found, html[-3000:]
        status = found.group(1)
        if status not in ("queued", "running") or time.monotonic() > deadline:
            return html
        time.sleep(0.2)


def test_a_list_is_written_in_the_background_and_downloaded(app, report_data, owner_client):
    from panel_support import csrf_of

    form_page = owner_client.get("/admin/reports/lists").get_data(as_text=True)
    for fmt in ("csv", "xlsx"):
        resp = owner_client.post("/admin/reports/lists", data={"csrf_token": csrf_of(form_page), "list": "orders",
                                                               "format": fmt, "from": "2036-02-10", "to": "2036-02-11"})
        assert resp.status_code == 303
        location = resp.headers["Location"]
        html = wait_for(owner_client, location)
        assert 'data-status="done"' in html and 'id="download"' in html, html[-2000:]
        download = owner_client.get(location + "/download")
        assert download.status_code == 200 and int(download.headers["Content-Length"]) == len(download.get_data())
        if fmt == "csv":
            rows = list(csv.reader(io.StringIO(download.get_data().decode("utf-8-sig"))))
        else:
            from openpyxl import load_workbook
            rows = [list(r) for r in load_workbook(io.BytesIO(download.get_data()), read_only=True).active
                    .iter_rows(values_only=True)]
        assert rows[0][0] == "order_no"
        mine = [r for r in rows[1:] if r[2] == report_data["product"]]
        assert len(mine) == 4          # created on the 10th and 11th (Shanghai): the three sold, the one expired
    # Bad input: said on the page, nothing queued.
    from kamengd.extensions import db
    from kamengd.reports.models import ReportExport
    with app.app_context():
        before = db.session.scalar(sa.select(sa.func.count()).select_from(ReportExport))
    for data, words in (({"list": "keys"}, "list: one of"), ({"format": "pdf"}, "format: one of"),
                        ({"from": "2036-02-31"}, "is not a day"), ({"from": "0001-01-01"}, "is not a day"),
                        ({"to": "9999-12-31"}, "is not a day"), ({"to": "2035-01-01"}, "ends before it starts")):
        resp = owner_client.post("/admin/reports/lists", data={"csrf_token": csrf_of(form_page), "list": "orders",
                                                               "format": "csv", "from": "2036-02-10",
                                                               "to": "2036-02-11", **data})
        assert resp.status_code == 400 and words in resp.get_data(as_text=True), data
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(ReportExport)) == before
    for path in ("/admin/reports/lists/999999", "/admin/reports/lists/99999999999999999999999",
                 "/admin/reports/lists/99999999999999999999999/download"):
        assert owner_client.get(path).status_code == 404, path
    # Another staff member does not see the list, nor can take it; taking it is in the audit log.
    from kamengd.audit.models import AuditEntry
    export_id = int(location.rsplit("/", 1)[1])
    other = app.test_client()
    login(other, make_staff(app, "finance"))
    assert other.get(location).status_code == 404 and other.get(location + "/download").status_code == 404
    assert f"/admin/reports/lists/{export_id}" not in other.get("/admin/reports/lists").get_data(as_text=True)
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(AuditEntry).where(
            AuditEntry.action == "report.download", AuditEntry.target == f"export:{export_id}")) == 1


def test_one_list_at_a_time_per_person(app, report_data, owner_client):
    from panel_support import csrf_of
    from kamengd.extensions import db
    from kamengd.reports.models import ReportExport

    staff = make_staff(app, "finance")
    client = app.test_client()
    client.get("/admin/login?lang=en")
    login(client, staff)
    with app.app_context():   # a list of this person's still being written
        db.session.add(ReportExport(kind="orders", format="csv", first_day=dt.date(2036, 2, 1),
                                    last_day=dt.date(2036, 2, 2), status="running", rows_expected=10, rows_done=3,
                                    size_bytes=0, requested_by=f"staff:{staff.username}",
                                    heartbeat_at=dt.datetime.utcnow()))
        db.session.commit()
    page_html = client.get("/admin/reports/lists").get_data(as_text=True)
    resp = client.post("/admin/reports/lists", data={"csrf_token": csrf_of(page_html), "list": "orders",
                                                     "format": "csv", "from": "2036-02-10", "to": "2036-02-11"})
    assert resp.status_code == 409 and "still being written" in resp.get_data(as_text=True)


def test_a_dead_worker_shows_failed_and_old_lists_go(app, report_data):
    from kamengd.extensions import db
    from kamengd.reports import export_jobs
    from kamengd.reports.models import ReportExport, ReportExportPart

    with app.app_context():
        now = dt.datetime(2036, 3, 1, 12, 0)
        old = ReportExport(kind="orders", format="csv", first_day=dt.date(2036, 2, 1), last_day=dt.date(2036, 2, 2),
                           status="done", rows_expected=1, rows_done=1, size_bytes=3, requested_by="t",
                           created_at=now - dt.timedelta(days=2), heartbeat_at=now - dt.timedelta(days=2))
        dead = ReportExport(kind="orders", format="csv", first_day=dt.date(2036, 2, 1), last_day=dt.date(2036, 2, 2),
                            status="running", rows_expected=10, rows_done=3, size_bytes=0, requested_by="t",
                            created_at=now - dt.timedelta(minutes=5), heartbeat_at=now - dt.timedelta(minutes=3))
        db.session.add_all([old, dead])
        db.session.flush()
        db.session.add(ReportExportPart(export_id=old.id, seq=0, data=b"a,b"))
        db.session.commit()
        old_id, dead_id = old.id, dead.id
        assert export_jobs.get_export(db.session, dead.id, now=now).status == "failed"
        db.session.rollback()
        assert export_jobs.run_export(db.session, db.engine, dead.id, TZ) == "not queued"   # never twice
        pruned = export_jobs.prune(db.session, now=now)   # (the other tests' lists are older still)
        assert pruned["deleted"] >= 1 and pruned["interrupted"] == 1
        db.session.commit()
        assert db.session.get(ReportExport, old_id) is None
        assert db.session.get(ReportExport, dead_id).error == "interrupted"

"""The audit log viewer and its chain check; the jobs, reconciliation and notification pages."""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import re
import secrets

import pytest
import sqlalchemy as sa

from kamengd.reports import events, settlements
from kamengd.audit.models import AuditEntry
from kamengd.audit.services import find_entries, record
from kamengd.notifications.models import Event, Notification
from kamengd.orders.models import Order
from kamengd.payments.models import SettlementEntry, SettlementReport
from kamengd.scheduler.models import JobRun
from panel_support import login, make_staff, post

DAY = dt.date(2031, 3, 14)


def bare_order(product_id: int, now: dt.datetime) -> Order:
    no = f"KO{secrets.token_hex(6).upper()}"
    return Order(order_no=no, product_id=product_id, quantity=1, unit_price_cents=990, amount_cents=990,
                 currency="CNY", email="ops@example.com", status="delivered",
                 token_hash=hashlib.sha256(no.encode()).digest(), created_at=now, updated_at=now,
                 expires_at=now + dt.timedelta(minutes=15), paid_at=now)


def seqs(html: str) -> list[int]:
    return [int(s) for s in re.findall(r'data-seq="(\d+)"', html)]


def signed_in(app, role: str):
    client = app.test_client()
    client.get("/admin/login?lang=en")
    login(client, make_staff(app, role))
    return client


@pytest.fixture(scope="module")
def shop(backend, databases, tmp_path_factory):
    """An installation of its own (job runs, notifications, reports: nothing shared) with some of each."""
    from kamengd.app import create_app
    from kamengd.catalog.services import create_product
    from kamengd.config import load_config
    from kamengd.extensions import db
    from kamengd.operations.installation import install

    data_dir = tmp_path_factory.mktemp(f"ops-{backend}") / "data"
    url = None if backend == "sqlite" else databases.new_url(backend)
    config = load_config(install(data_dir, admin_password="correct horse battery", database_url=url).config_path,
                         env={})
    config = dataclasses.replace(config, ratelimit=dataclasses.replace(config.ratelimit, enabled=False))
    app = create_app(config)
    app.config["TESTING"] = True
    now = dt.datetime.utcnow().replace(microsecond=0)
    with app.app_context():
        product = create_product(db.session, name="ops product", price_cents=990, actor="test")
        orders = [bare_order(product.id, now) for _ in range(3)]
        db.session.add_all(orders)
        db.session.flush()
        report = SettlementReport(day=DAY, timezone="Asia/Shanghai", status="complete", last_order_id=orders[-1].id,
                                  checked=7, mismatches=2, unverified=1, failures=0, started_at=now,
                                  finished_at=now)
        running = SettlementReport(day=DAY + dt.timedelta(days=1), timezone="Asia/Shanghai", status="running",
                                   last_order_id=0, checked=0, mismatches=0, unverified=0, failures=0,
                                   started_at=now)
        db.session.add_all([report, running])
        db.session.flush()
        db.session.add_all([
            SettlementEntry(report_id=report.id, order_id=orders[0].id, order_no=orders[0].order_no,
                            kind="amount_differs", our_status="delivered", our_amount_cents=990,
                            gateway_status="paid", gateway_amount_cents=99,
                            detail="gateway 0.99, recorded here 9.90 <i>"),
            SettlementEntry(report_id=report.id, order_id=orders[1].id, order_no=orders[1].order_no,
                            kind="missing_at_gateway", our_status="delivered", our_amount_cents=990,
                            gateway_status="no record", gateway_amount_cents=None, detail="no record there"),
            SettlementEntry(report_id=report.id, order_id=orders[2].id, order_no=orders[2].order_no,
                            kind="unverified", our_status="delivered", our_amount_cents=990,
                            gateway_status="error", gateway_amount_cents=None, detail="timed out")])
        for i in range(3):
            db.session.add(JobRun(job="daily_backup", owner="host:1:aa", started_at=now - dt.timedelta(minutes=10 - i),
                                  finished_at=now - dt.timedelta(minutes=10 - i, seconds=-2), outcome="ok",
                                  counts='{"kept": 3}'))
        db.session.add(JobRun(job="send_emails", owner="host:1:aa", started_at=now,
                              finished_at=now + dt.timedelta(milliseconds=1500), outcome="error", counts="{}",
                              error="SMTPError: relay refused"))
        paid = Event(type="order.paid", payload='{"order_no": "KX1", "amount": "9.90"}', created_at=now,
                     dispatched=True)
        quiet = Event(type="stock.low", payload='{"product_name": "ops product"}', created_at=now, dispatched=True)
        db.session.add_all([paid, quiet])
        db.session.flush()
        db.session.add_all([
            Notification(event_id=paid.id, channel="webhook", target="https://sent.example/hook", status="sent",
                         attempts=1, next_attempt_at=now, created_at=now, sent_at=now),
            Notification(event_id=paid.id, channel="email", target="boss@example.com", status="failed",
                         attempts=6, next_attempt_at=now, created_at=now, last_error="550 mailbox unavailable"),
            Notification(event_id=paid.id, channel="webhook", target="https://later.example/hook", status="pending",
                         attempts=2, next_attempt_at=dt.datetime(2099, 1, 2, 3, 4), created_at=now,
                         last_error="HTTP 502")])
        db.session.commit()
        ids = {"orders": [o.order_no for o in orders], "paid_event": paid.id, "quiet_event": quiet.id}
    return app, ids


# --- services ----------------------------------------------------------------------------------

def test_find_entries_filters(backend, session):
    tag = secrets.token_hex(4)
    one = record(session, f"t{tag}.one", actor=f"cli:alice-{tag}", target=f"order:K{tag}A")
    two = record(session, f"t{tag}.two", actor=f"staff:bob-{tag}", target=f"product:{tag}")
    like = record(session, f"t{tag}x.one", actor=f"cli:100%_{tag}", target="")

    def ids(**kw):
        return [e.id for e in find_entries(session, limit=1000, **kw)]

    assert ids(actor=tag) == [like.id, two.id, one.id]                      # newest first
    assert ids(actor=f"alice-{tag}") == [one.id]
    assert ids(actor="100%_") == [like.id]                                  # LIKE characters are literal
    assert ids(actor="10%0") == [] and ids(actor=f"_{tag}", action=f"t{tag}.one") == []
    assert ids(action=f"t{tag}.one") == [one.id]                           # exact
    assert ids(action=f"t{tag}.") == [two.id, one.id]                       # a prefix ending with '.'
    assert ids(action=f"t{tag}*") == [like.id, two.id, one.id]              # or with '*'
    assert ids(action=f"t{tag}") == []
    assert ids(target=f"K{tag}") == [one.id]
    assert ids(actor=tag, since=one.created_at) == [like.id, two.id, one.id]
    assert ids(actor=tag, until=one.created_at) == []
    assert ids(actor=tag, since=one.created_at + dt.timedelta(days=1)) == []
    assert [e.id for e in find_entries(session, actor=tag, limit=1, offset=1)] == [two.id]


def test_settlement_reports_count_entries_by_kind(backend, session, make_product):
    p = make_product()
    now = dt.datetime(2032, 1, 2, 3, 4)
    report = SettlementReport(day=dt.date(2032, 1, 1), timezone="UTC", status="complete", last_order_id=0,
                              checked=3, mismatches=2, unverified=0, failures=0, started_at=now, finished_at=now)
    session.add(report)
    orders = [bare_order(p.id, now) for _ in range(2)]
    session.add_all(orders)
    session.flush()
    for o in orders:
        session.add(SettlementEntry(report_id=report.id, order_id=o.id, order_no=o.order_no, kind="amount_differs",
                                    our_status="delivered", our_amount_cents=1, gateway_status="paid",
                                    gateway_amount_cents=2, detail=""))
    session.flush()
    found = {s.report.day: s.kinds for s in settlements.settlement_reports(session, limit=1000)}
    assert found[dt.date(2032, 1, 1)] == {"paid_at_gateway_only": 0, "amount_differs": 2, "missing_at_gateway": 0,
                                          "unverified": 0}
    assert settlements.settlement_report(session, dt.date(2032, 1, 1)).id == report.id
    assert settlements.settlement_report(session, dt.date(1999, 1, 1)) is None


def test_recent_events_with_their_notifications(backend, session):
    now = dt.datetime(2032, 5, 5)
    mark = f"https://{secrets.token_hex(4)}.example/"
    event = Event(type="order.paid", payload="{}", created_at=now, dispatched=True)
    lonely = Event(type="stock.low", payload="{}", created_at=now, dispatched=True)
    session.add_all([event, lonely])
    session.flush()
    session.add_all([Notification(event_id=event.id, channel="webhook", target=mark + "a", status="sent",
                                  attempts=1, next_attempt_at=now, created_at=now),
                     Notification(event_id=event.id, channel="webhook", target=mark + "b", status="failed",
                                  attempts=3, next_attempt_at=now, created_at=now)])
    session.flush()
    rows = {r.event.id: r for r in events.recent_events(session, limit=1000)}
    assert [n.target for n in rows[event.id].notifications] == [mark + "a", mark + "b"]
    assert rows[lonely.id].notifications == []
    failed = {r.event.id: r for r in events.recent_events(session, status="failed", limit=1000)}
    assert [n.target for n in failed[event.id].notifications] == [mark + "b"] and lonely.id not in failed
    listed = events.recent_notifications(session, status="failed", limit=1000)
    assert (listed[0][0].target, listed[0][1]) == (mark + "b", "order.paid")


# --- the audit log page ------------------------------------------------------------------------

@pytest.fixture
def audited(app):
    """Entries of a test's own, committed in the shared database."""
    from kamengd.extensions import db

    tag = secrets.token_hex(4)
    with app.app_context():
        entries = [record(db.session, f"x{tag}.one", actor=f"cli:alice-{tag}", target=f"order:K{tag}",
                          source_ip="203.0.113.7", details={"note": "<script>alert(1)</script>", "n": 1}),
                   record(db.session, f"x{tag}.two", actor=f"staff:bob-{tag}", target=f"product:{tag}"),
                   record(db.session, f"y{tag}.one", actor=f"staff:bob-{tag}", target="")]
        db.session.commit()
        return tag, [e.seq for e in entries]


def test_audit_page_filters(app, audited):
    tag, (one, two, three) = audited
    client = signed_in(app, "auditor")
    resp = client.get("/admin/audit")
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    assert seqs(html) == sorted(seqs(html), reverse=True) and len(seqs(html)) <= 50   # newest first, a page
    assert seqs(client.get(f"/admin/audit?actor={tag}").get_data(as_text=True)) == [three, two, one]
    assert seqs(client.get(f"/admin/audit?actor=bob-{tag}").get_data(as_text=True)) == [three, two]
    assert seqs(client.get(f"/admin/audit?action=x{tag}.one").get_data(as_text=True)) == [one]
    assert seqs(client.get(f"/admin/audit?action=x{tag}.").get_data(as_text=True)) == [two, one]
    assert seqs(client.get(f"/admin/audit?target=K{tag}").get_data(as_text=True)) == [one]
    # Days in the shop's zone: today holds them, yesterday does not.
    from kamengd.panel.helpers import shop_zone
    with app.app_context():
        today = dt.datetime.now(shop_zone()).date()
    yesterday = today - dt.timedelta(days=1)
    assert seqs(client.get(f"/admin/audit?actor={tag}&since={today}&until={today}").get_data(as_text=True)) \
        == [three, two, one]
    assert seqs(client.get(f"/admin/audit?actor={tag}&until={yesterday}").get_data(as_text=True)) == []
    assert seqs(client.get(f"/admin/audit?actor={tag}&since={today + dt.timedelta(days=1)}")
                .get_data(as_text=True)) == []
    row = client.get(f"/admin/audit?action=x{tag}.one").get_data(as_text=True)
    assert "203.0.113.7" in row and f"cli:alice-{tag}" in row and f"order:K{tag}" in row
    assert "<script>alert" not in row and "note=&lt;script&gt;alert(1)&lt;/script&gt;" in row


def test_audit_page_bad_input_and_paging(app):
    from kamengd.extensions import db

    tag = secrets.token_hex(4)
    with app.app_context():
        for i in range(51):
            record(db.session, "test.paging", actor=f"cli:pager-{tag}", details={"i": i})
        db.session.commit()
    client = signed_in(app, "admin")
    first = client.get(f"/admin/audit?actor=pager-{tag}").get_data(as_text=True)
    assert len(seqs(first)) == 50 and "page=2" in first and "Older" in first
    second = client.get(f"/admin/audit?actor=pager-{tag}&page=2").get_data(as_text=True)
    assert len(seqs(second)) == 1 and seqs(second)[0] < min(seqs(first)) and "Older" not in second
    for query in ("page=abc", "page=-3", "since=2026-02-30", "until=yesterday", "since=" + "9" * 5000,
                  "action=" + "a" * 5000, "actor=%00%FF", "page=99999"):
        resp = client.get(f"/admin/audit?{query}")
        assert resp.status_code == 200, query
    bad = client.get(f"/admin/audit?actor=pager-{tag}&since=2026-02-30").get_data(as_text=True)
    assert "From: a day as YYYY-MM-DD." in bad and len(seqs(bad)) == 50   # the bad day is left out, said so


def test_verify_on_an_intact_chain_is_audited(app):
    from kamengd.extensions import db

    client = signed_in(app, "auditor")
    resp = post(client, "/admin/audit/verify", page_url="/admin/audit")
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/admin/audit")
    html = client.get("/admin/audit").get_data(as_text=True)
    assert re.search(r'class="flash success">The audit log is intact: \d+ entries checked.', html)
    with app.app_context():
        last = db.session.scalars(sa.select(AuditEntry).order_by(AuditEntry.id.desc()).limit(1)).one()
        assert last.action == "audit.verify" and last.actor.startswith("staff:auditor-")
        assert '"ok":true' in last.details and last.source_ip == "127.0.0.1"


def test_verify_names_the_altered_entry(backend, make_install):
    from kamengd.app import create_app
    from kamengd.extensions import db

    config = make_install(backend)
    app = create_app(dataclasses.replace(config, ratelimit=dataclasses.replace(config.ratelimit, enabled=False)))
    app.config["TESTING"] = True
    client = signed_in(app, "owner")
    with app.app_context():
        victim = record(db.session, "test.victim", actor="cli:someone", details={"amount": "1.00"})
        db.session.commit()
        victim_id, victim_seq = victim.id, victim.seq
        db.session.execute(sa.text("UPDATE audit_log SET details = :d WHERE id = :id"),
                           {"d": '{"amount":"1000.00"}', "id": victim_id})
        db.session.commit()
    resp = post(client, "/admin/audit/verify", page_url="/admin/audit", follow_redirects=True)
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200
    assert f"The audit log is NOT intact: entry #{victim_id} (seq {victim_seq}): content was altered" in html
    with app.app_context():
        last = db.session.scalars(sa.select(AuditEntry).order_by(AuditEntry.id.desc()).limit(1)).one()
        assert last.action == "audit.verify" and '"ok":false' in last.details
        assert f'"bad_entry":{victim_id}' in last.details and "content was altered" in last.details


def test_audit_pages_need_audit_view(app):
    finance = signed_in(app, "finance")
    assert finance.get("/admin/audit").status_code == 403
    assert post(finance, "/admin/audit/verify", page_url="/admin/dashboard").status_code == 403


# --- operations pages --------------------------------------------------------------------------

def test_jobs_page(shop):
    app, _ids = shop
    client = signed_in(app, "finance")
    resp = client.get("/admin/jobs")
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    from kamengd.scheduler.jobs import JOBS
    for name, (_fn, interval) in JOBS.items():
        assert f'data-job="{name}"' in html
    row = html[html.index('data-job="send_emails"'):]
    row = row[:row.index("</tr>")]
    assert "badge bad" in row and "SMTPError: relay refused" in row and ">1.5<" in row and ">15<" in row
    backup = html[html.index('data-job="daily_backup"'):]
    assert "badge ok" in backup[:backup.index("</tr>")]
    never = html[html.index('data-job="prune_history"'):]
    assert "never" in never[:never.index("</tr>")]
    assert "none" in html[html.index('id="scheduler"'):html.index('id="jobs"')]    # no leader in this shop
    runs = html[html.index('id="runs"'):]
    assert runs.count("<code>daily_backup</code>") == 3 and runs.count("<code>send_emails</code>") == 1
    only = client.get("/admin/jobs?job=daily_backup").get_data(as_text=True)
    runs = only[only.index('id="runs"'):]
    assert runs.count("<code>daily_backup</code>") == 3 and "<code>send_emails</code>" not in runs
    for query in ("job=nope", "job=" + "x" * 3000, "page=zz", "page=500"):
        assert client.get(f"/admin/jobs?{query}").status_code == 200, query


def test_reconcile_pages(shop):
    app, ids = shop
    client = signed_in(app, "finance")
    html = client.get("/admin/reconcile").get_data(as_text=True)
    row = html[html.index(f'data-day="{DAY}"'):]
    row = row[:row.index("</tr>")]
    assert f'href="/admin/reconcile/{DAY}"' in row and ">7<" in row
    assert re.findall(r'data-kind="(\w+)">(\d+)<', row) == [("paid_at_gateway_only", "0"), ("amount_differs", "1"),
                                                            ("missing_at_gateway", "1"), ("unverified", "1")]
    assert "badge warn" in html[html.index(f'data-day="{DAY + dt.timedelta(days=1)}"'):]   # still running
    assert html.index(f'data-day="{DAY + dt.timedelta(days=1)}"') < html.index(f'data-day="{DAY}"')   # newest first

    report = client.get(f"/admin/reconcile/{DAY}")
    assert report.status_code == 200
    page = report.get_data(as_text=True)
    for no in ids["orders"]:
        assert no in page
    if "panel.order_detail" in app.view_functions:
        assert f'href="/admin/orders/{ids["orders"][0]}"' in page
    assert "Amount differs" in page and "9.90" in page and "0.99" in page
    assert "gateway 0.99, recorded here 9.90 &lt;i&gt;" in page and "timed out" in page

    for bad in ("2031-02-30", "2031-3-14", "yesterday", "20310314", "2031-03-14x", "9999-99-99", "2099-01-01",
                "%00"):
        resp = client.get(f"/admin/reconcile/{bad}")
        assert resp.status_code == 404, bad
        assert "Not found" in resp.get_data(as_text=True)


def test_notifications_page(shop):
    app, ids = shop
    client = signed_in(app, "admin")
    html = client.get("/admin/notifications").get_data(as_text=True)
    # Newest first: the quiet event (no subscriber) was written after the paid one.
    assert html.index(f'data-event="{ids["quiet_event"]}"') < html.index(f'data-event="{ids["paid_event"]}"')
    event = html[html.index(f'data-event="{ids["paid_event"]}"'):html.index("</table>")]
    for target in ("https://sent.example/hook", "boss@example.com", "https://later.example/hook"):
        assert target in event
    assert "550 mailbox unavailable" in event and "HTTP 502" in event and "2099-01-02" in event
    assert "order_no=KX1" in html and "nobody is subscribed" in html
    failed = client.get("/admin/notifications?status=failed").get_data(as_text=True)
    assert "boss@example.com" in failed and "https://sent.example/hook" not in failed
    assert f'data-event="{ids["quiet_event"]}"' not in failed
    assert 'value="failed" selected' in failed
    pending = client.get("/admin/notifications?status=pending").get_data(as_text=True)
    assert "https://later.example/hook" in pending and "boss@example.com" not in pending
    for query in ("status=bogus", "status=", "page=-1", "page=x"):
        assert client.get(f"/admin/notifications?{query}").status_code == 200, query
    assert "https://sent.example/hook" in client.get("/admin/notifications?status=bogus").get_data(as_text=True)


def test_ops_pages_by_role(shop):
    app, _ids = shop
    auditor = signed_in(app, "auditor")
    for url in ("/admin/jobs", "/admin/reconcile", f"/admin/reconcile/{DAY}", "/admin/notifications",
                "/admin/dashboard"):
        assert auditor.get(url).status_code == 403, url
    assert auditor.get("/admin/audit").status_code == 200
    owner = signed_in(app, "owner")
    for url in ("/admin/jobs", "/admin/reconcile", f"/admin/reconcile/{DAY}", "/admin/notifications",
                "/admin/dashboard", "/admin/audit"):
        assert owner.get(url).status_code == 200, url


def test_one_pager_for_every_list(app):
    """The lists share one pager: page N of M when the total is known, Newer/Older when newest first."""
    with app.test_request_context("/admin/orders?lang=en"):
        pager = app.jinja_env.get_template("panel/macros.html").module.pager
        middle = str(pager("panel.orders", 2, True, pages=3, newest_first=True, args={"status": "held", "q": None}))
        assert 'href="/admin/orders?page=1&amp;status=held" rel="prev">Newer</a>' in middle
        assert 'href="/admin/orders?page=3&amp;status=held" rel="next">Older</a>' in middle
        assert "Page 2 of 3" in middle
        last = str(pager("panel.products", 4, False))
        assert 'rel="prev">Previous</a>' in last and 'rel="next"' not in last and "Page 4" in last
        assert str(pager("panel.stock", 1, False)).strip() == ""   # one page: no pager at all

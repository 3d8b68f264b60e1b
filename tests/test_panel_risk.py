"""Risk rules in the panel: the list in words with the report, add (every kind), edit, switch on
and off, errors shown with what was typed (nothing stored), the review queue (approve delivers,
reject refunds), the decisions on the order's page, who may, CSRF and the audit log. The rules
themselves (what each kind matches) are tested in tests/test_risk.py; its `shop` fixture switches
every rule off after each test (the test database is shared)."""
import html
import json
import re

import pytest
import sqlalchemy as sa

from kamengd.audit.models import AuditEntry
from panel_support import csrf_of, login, make_staff, post
from test_error_language import english_runs, flashes
from test_panel_coupons import admin  # noqa: F401 (fixture: an admin signed in, pages in English)
from test_risk import _db, _pay, order, rule, shop  # noqa: F401 (fixture)

# Harmless parameters for each kind: nothing the tests place matches them.
KINDS = {
    "ip_velocity": {"limit": "100000", "minutes": "5"},
    "email_velocity": {"limit": "100000", "minutes": "60"},
    "device_velocity": {"limit": "100000", "minutes": "10080"},
    "ip_list": {"ranges": "192.0.2.0/24\n2001:db8::/32"},
    "email_list": {"emails": "Fraud@Example.com", "domains": "spam.invalid\nmore.invalid"},
    "amount_anomaly": {"factor": "999.5", "days": "7", "min_orders": "50"},
    "repeat_payment": {"limit": "100"},
    "failed_lookups": {"limit": "100000", "minutes": "30"},
}
STORED = {
    "ip_velocity": {"limit": 100000, "minutes": 5},
    "email_velocity": {"limit": 100000, "minutes": 60},
    "device_velocity": {"limit": 100000, "minutes": 10080},
    "ip_list": {"ranges": ["192.0.2.0/24", "2001:db8::/32"]},
    "email_list": {"emails": ["fraud@example.com"], "domains": ["more.invalid", "spam.invalid"]},
    "amount_anomaly": {"factor": "999.5", "days": 7, "min_orders": 50},
    "repeat_payment": {"limit": 100},
    "failed_lookups": {"limit": 100000, "minutes": 30},
}
ACTION = {"repeat_payment": "review", "failed_lookups": "captcha"}


def form(**changes) -> dict:
    """The add form as a browser sends it (every parameter field is sent, most empty)."""
    values = {"name": "watch", "kind": "ip_velocity", "action": "review", "sort_order": "0", "limit": "",
              "minutes": "", "ranges": "", "emails": "", "domains": "", "factor": "", "days": "30", "min_orders": "20"}
    values.update(changes)
    return {name: value for name, value in values.items() if value is not None}


def send(client, url: str, data: dict, page_url: str = "/admin/risk/rules/new"):
    return post(client, url, data, page_url=page_url)


def stored(app, **where) -> list[dict]:
    from kamengd.risk.models import RiskRule
    db = _db()
    with app.app_context():
        found = [{"id": r.id, "name": r.name, "kind": r.kind, "action": r.action, "params": json.loads(r.params),
                  "sort_order": r.sort_order, "active": r.is_active}
                 for r in db.session.scalars(sa.select(RiskRule).filter_by(**where).order_by(RiskRule.id))]
        db.session.remove()
    return found


def rule_count(app) -> int:
    from kamengd.risk.models import RiskRule
    db = _db()
    with app.app_context():
        n = db.session.scalar(sa.select(sa.func.count()).select_from(RiskRule))
        db.session.remove()
    return n


def audits(app, target: str) -> list[tuple[str, str, str, dict]]:
    db = _db()
    with app.app_context():
        rows = [(a.action, a.actor, a.source_ip, json.loads(a.details)) for a in db.session.scalars(
            sa.select(AuditEntry).where(AuditEntry.target == target).order_by(AuditEntry.seq))]
        db.session.remove()
    return rows


def order_status(app, order_no: str) -> str:
    from kamengd.orders.models import Order
    db = _db()
    with app.app_context():
        status = db.session.scalar(sa.select(Order.status).where(Order.order_no == order_no))
        db.session.remove()
    return status


def words(page: str) -> str:
    """The text of some HTML, its tags taken out."""
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page)))


def row_of(page: str, rule_id: int) -> str:
    return words(re.search(rf'<tr id="risk-rule-{rule_id}">.*?</tr>', page, re.S).group(0))


def held_order(app, client, shop, *, name: str) -> dict:
    """An order a review rule held: placed from the shop's address, then paid."""
    rule(app, "ip_list", "review", ranges=shop["ip"], name=name)
    placed = order(client, shop, email=f"held-{shop['tag']}@example.com").get_json()
    _pay(client, shop, placed)
    assert order_status(app, placed["order_no"]) == "held"
    return placed


def test_the_list_says_each_rule_in_words_with_what_the_rules_decided(backend, app, client, shop, admin):
    velocity = rule(app, "ip_velocity", "refuse", limit=100000, minutes=10, name="too fast", sort_order=3)
    listed = rule(app, "email_list", "review", emails="a@example.com", domains="spam.invalid", name="<b>bad</b>")
    held_order(app, client, shop, name=f"watch {shop['tag']}")
    page = client.get("/admin/risk/rules").get_data(as_text=True)
    assert '<a href="/admin/risk/rules" aria-current="page">Risk rules</a>' in page
    assert row_of(page, velocity).split() == (
        "too fast Orders from one address ip_velocity After 100000 orders from one address in 10 minutes, "
        "the next ones Refuse 3 On Edit Disable").split()
    assert "Domains (and their subdomains): spam.invalid" in row_of(page, listed)
    assert "&lt;b&gt;bad&lt;/b&gt;" in page and "<b>bad</b>" not in page
    report = words(re.search(r'<section class="card" id="risk-report">.*?</section>', page, re.S).group(0))
    assert f"watch {shop['tag']} Hold for review Held for review 1" in report
    assert 'aria-current="page">Last 7 days' in page
    for days in ("1", "30", "nonsense"):
        assert client.get(f"/admin/risk/rules?days={days}").status_code == 200


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_an_admin_adds_a_rule_of_each_kind(backend, app, client, shop, admin, kind):
    page = client.get("/admin/risk/rules/new").get_data(as_text=True)
    assert f'<option value="{kind}"' in page and 'data-show-by' in page
    name = f"new {kind} {shop['tag']}"
    answer = send(client, "/admin/risk/rules/new", form(name=name, kind=kind, action=ACTION.get(kind, "review"),
                                                      sort_order="7", **KINDS[kind]))
    assert answer.status_code == 303 and answer.headers["Location"] == "/admin/risk/rules"
    [made] = stored(app, name=name)
    assert (made["kind"], made["action"], made["sort_order"], made["active"]) == \
        (kind, ACTION.get(kind, "review"), 7, True)
    assert made["params"] == STORED[kind]
    listed = client.get("/admin/risk/rules").get_data(as_text=True)
    assert f"Risk rule {name} added and on" in listed and name in row_of(listed, made["id"])
    [entry] = audits(app, f"risk_rule:{made['id']}")
    assert entry[:3] == ("risk.rule_create", f"staff:{admin.username}", "127.0.0.1")
    assert entry[3]["params"] == STORED[kind]


def test_an_admin_edits_and_switches_a_rule(backend, app, client, shop, admin):
    rule_id = rule(app, "email_list", "review", emails="one@example.com", name=f"list {shop['tag']}")
    edit_url = f"/admin/risk/rules/{rule_id}"
    page = client.get(edit_url).get_data(as_text=True)
    assert 'id="kind"' not in page and "Listed e-mail addresses and domains" in page   # the kind is fixed
    assert ">one@example.com</textarea>" in page and 'id="limit"' not in page and 'id="factor"' not in page
    assert 'id="is_active" name="is_active" type="checkbox" value="1" checked' in page
    saved = send(client, edit_url, form(name="renamed", kind="ip_list", action="refuse", sort_order="12",
                                        emails="two@example.com\nthree@example.com", domains="", ranges="10.0.0.0/8"),
                 page_url=edit_url)      # switched off too (the box unticked); a kind sent is ignored
    assert saved.status_code == 303
    [after] = stored(app, id=rule_id)
    assert (after["name"], after["kind"], after["action"], after["sort_order"], after["active"]) == \
        ("renamed", "email_list", "refuse", 12, False)
    assert after["params"] == {"emails": ["three@example.com", "two@example.com"], "domains": []}
    assert "Risk rule renamed saved." in client.get("/admin/risk/rules").get_data(as_text=True)
    again = send(client, edit_url, form(name="renamed", action="refuse", sort_order="12",
                                        emails="three@example.com two@example.com"), page_url=edit_url)
    assert again.status_code == 303 and "Nothing changed." in client.get("/admin/risk/rules").get_data(as_text=True)

    toggle = f"/admin/risk/rules/{rule_id}/toggle"
    assert send(client, toggle, {"active": "1"}, page_url="/admin/risk/rules").status_code == 303
    assert "Risk rule renamed is on" in client.get("/admin/risk/rules").get_data(as_text=True)
    send(client, toggle, {"active": "1"}, page_url="/admin/risk/rules")
    assert "Risk rule renamed was already in that state." in client.get("/admin/risk/rules").get_data(as_text=True)
    send(client, toggle, {"active": "0"}, page_url="/admin/risk/rules")
    assert stored(app, id=rule_id)[0]["active"] is False
    assert "Risk rule renamed is off" in client.get("/admin/risk/rules").get_data(as_text=True)
    send(client, toggle, {"active": "maybe"}, page_url="/admin/risk/rules")
    assert "Choose whether to switch the rule on or off." in client.get("/admin/risk/rules").get_data(as_text=True)

    entries = audits(app, f"risk_rule:{rule_id}")
    assert [e[0] for e in entries] == ["risk.rule_create"] + ["risk.rule_update"] * 3
    assert {(e[1], e[2]) for e in entries[1:]} == {(f"staff:{admin.username}", "127.0.0.1")}
    assert entries[1][3]["name"] == "renamed" and entries[1][3]["is_active"] is False
    assert entries[2][3] == {"is_active": True} and entries[3][3] == {"is_active": False}
    assert client.get("/admin/risk/rules/999999999").status_code == 404
    assert client.get(f"/admin/risk/rules/{2**40}").status_code == 404


def test_a_bad_form_says_what_is_wrong_keeps_what_was_typed_and_stores_nothing(backend, app, client, shop, admin):
    before = rule_count(app)
    answer = send(client, "/admin/risk/rules/new", form(name="kept 名字", kind="ip_list", ranges="10.0.0.0/8\nnot-an-ip",
                                                      sort_order="soon"))
    page = answer.get_data(as_text=True)
    assert answer.status_code == 400
    assert flashes(answer) == ["sort order: a whole number from 0 to 9999",
                               "ranges: 'not-an-ip' is not an address or a range such as 10.0.0.0/8"]
    for kept in ('value="kept 名字"', 'value="soon"', ">10.0.0.0/8\nnot-an-ip</textarea>",
                 '<option value="ip_list" selected>'):
        assert kept in page, kept
    for data, words_ in ((form(name="", limit="5", minutes="5"), "name: 1 to 100 characters"),
                         (form(limit="0", minutes="5"), "limit: a whole number from 1 to 1000000"),
                         (form(limit="5", minutes="99999"), "minutes: a whole number from 1 to 10080"),
                         (form(kind="repeat_payment", action="captcha"), "action: a payment can only be held"),
                         (form(kind="failed_lookups", action="review", limit="3", minutes="5"), "action: lookups"),
                         (form(kind="email_list"), "emails: at least one e-mail address or domain"),
                         (form(kind="amount_anomaly", factor="1"), "factor: a number above 1"),
                         (form(kind="nonsense"), "kind: one of"),
                         (form(action="nonsense", limit="5", minutes="5"), "action: allow, captcha")):
        answer = send(client, "/admin/risk/rules/new", data)
        assert answer.status_code == 400 and any(words_ in f for f in flashes(answer)), flashes(answer)
    assert rule_count(app) == before

    rule_id = rule(app, "ip_velocity", "review", limit=100000, minutes=5, name=f"fast {shop['tag']}")
    edit_url = f"/admin/risk/rules/{rule_id}"
    answer = send(client, edit_url, form(name="changed", limit="lots", minutes="5", is_active="1"), page_url=edit_url)
    assert answer.status_code == 400 and flashes(answer) == ["limit: a whole number from 1 to 1000000"]
    assert 'value="lots"' in answer.get_data(as_text=True) and 'value="changed"' in answer.get_data(as_text=True)
    [after] = stored(app, id=rule_id)
    assert (after["name"], after["params"]) == (f"fast {shop['tag']}", {"limit": 100000, "minutes": 5})
    assert [e[0] for e in audits(app, f"risk_rule:{rule_id}")] == ["risk.rule_create"]


def test_errors_are_in_the_readers_language(backend, app, client, shop, admin):
    client.set_cookie("lang", "zh")
    answer = send(client, "/admin/risk/rules/new", form(kind="amount_anomaly", factor="很多", days="0",
                                                      min_orders="x"))
    assert answer.status_code == 400
    messages = flashes(answer)
    assert len(messages) == 3 and not any(english_runs(m) for m in messages), messages
    assert 'value="很多"' in answer.get_data(as_text=True) and "添加风控规则" in answer.get_data(as_text=True)
    answer = send(client, "/admin/risk/rules/new", form(limit="x", minutes="0", sort_order="-1"))
    assert len(flashes(answer)) == 3 and not any(english_runs(m) for m in flashes(answer)), flashes(answer)


def test_the_queue_shows_a_held_order_with_its_decision_and_approving_delivers_it(backend, app, client, shop, admin):
    placed = held_order(app, client, shop, name=f"new address <{shop['tag']}>")
    no = placed["order_no"]
    queue = client.get("/admin/risk/queue").get_data(as_text=True)
    card = re.search(rf'<section class="card review" id="review-{no}".*?</section>', queue, re.S).group(0)
    text = words(card)
    assert f"new address &lt;{shop['tag']}&gt;" in card and f"<{shop['tag']}>" not in card
    for shown in ("Held", "2.00 CNY", f"held-{shop['tag']}@example.com", shop["ip"], "Listed addresses",
                  "Hold for review", "Held for review", f"Address: {shop['ip']}", f"Listed range: {shop['ip']}/32",
                  f"held for review by the risk rule new address <{shop['tag']}>"):
        assert shown in text, (shown, text)
    assert f'href="/admin/orders/{no}#refund"' in card and f'action="/admin/risk/queue/{no}/approve"' in card
    assert '<a href="/admin/risk/queue" aria-current="page">Risk review</a>' in queue

    # The order's page says the same.
    page = client.get(f"/admin/orders/{no}").get_data(as_text=True)
    decisions = words(re.search(r'<section class="card" id="risk-decisions">.*?</section>', page, re.S).group(0))
    assert f"new address <{shop['tag']}>" not in page
    assert "Listed addresses" in decisions and f"Listed range: {shop['ip']}/32" in decisions
    assert "Approve the order" in page and 'id="refund"' in page

    refused = post(client, f"/admin/risk/queue/{no}/approve", {"reason": "  "}, page_url="/admin/risk/queue")
    assert refused.status_code == 400 and flashes(refused) == ["reason: required"]
    assert order_status(app, no) == "held"
    approved = post(client, f"/admin/risk/queue/{no}/approve", {"reason": "known buyer"},
                    page_url="/admin/risk/queue")
    assert approved.status_code == 303 and approved.headers["Location"] == "/admin/risk/queue"
    queue = client.get("/admin/risk/queue").get_data(as_text=True)
    assert f"Order {no} approved and delivered." in queue and f'id="review-{no}"' not in queue
    assert order_status(app, no) == "delivered"
    again = post(client, f"/admin/risk/queue/{no}/approve", {"reason": "twice"}, page_url="/admin/risk/queue")
    assert again.status_code == 409 and "only a held order can be released" in flashes(again)[0]
    assert post(client, "/admin/risk/queue/NOPE/approve", {"reason": "x"}).status_code == 404
    [entry] = [e for e in audits(app, f"order:{no}") if e[0] == "order.release"]
    assert entry[1:3] == (f"staff:{admin.username}", "127.0.0.1") and entry[3]["reason"] == "known buyer"
    assert entry[3]["outcome"] == "delivered"
    assert client.get(f"/api/v1/orders/{no}?token={placed['token']}").get_json()["status"] == "delivered"


def test_a_rejected_order_is_refunded_from_its_page_and_leaves_the_queue(backend, app, client, shop, admin):
    placed = held_order(app, client, shop, name=f"reject {shop['tag']}")
    no = placed["order_no"]
    dashboard = client.get("/admin/dashboard").get_data(as_text=True)
    count = int(re.search(r'id="review-count">(\d+)<', dashboard).group(1))
    assert count >= 1 and '<a href="/admin/risk/queue">Orders held for review</a>' in dashboard
    answer = post(client, f"/admin/orders/{no}/refund", {"refund_reason": "stolen card"},
                  page_url=f"/admin/orders/{no}")
    assert answer.status_code == 303 and order_status(app, no) == "refunded"
    assert f'id="review-{no}"' not in client.get("/admin/risk/queue").get_data(as_text=True)
    assert int(re.search(r'id="review-count">(\d+)<', client.get("/admin/dashboard").get_data(as_text=True))
               .group(1)) == count - 1
    [entry] = [e for e in audits(app, f"order:{no}") if e[0] == "order.refund"]
    assert entry[1:3] == (f"staff:{admin.username}", "127.0.0.1")


def test_an_order_no_rule_matched_shows_no_risk_section(backend, app, client, shop, admin):
    placed = order(client, shop, email="plain@example.com").get_json()
    page = client.get(f"/admin/orders/{placed['order_no']}").get_data(as_text=True)
    assert 'id="risk-decisions"' not in page


@pytest.mark.parametrize("role", ["operator", "support", "auditor"])
def test_only_those_who_release_held_orders_see_the_queue_and_only_managers_the_rules(backend, app, client, shop,
                                                                                     role):
    rule_id = rule(app, "ip_list", "review", ranges="192.0.2.1", name="perm")
    staff = make_staff(app, role)
    assert login(client, staff).status_code == 302
    menu = client.get("/admin/account").get_data(as_text=True)
    assert "/admin/risk/" not in menu
    for url in ("/admin/risk/rules", "/admin/risk/rules/new", f"/admin/risk/rules/{rule_id}", "/admin/risk/queue"):
        assert client.get(url).status_code == 403, url
    for url, data in (("/admin/risk/rules/new", form(limit="5", minutes="5")),
                      (f"/admin/risk/rules/{rule_id}/toggle", {"active": "0"}),
                      ("/admin/risk/queue/X/approve", {"reason": "x"})):
        assert post(client, url, data).status_code == 403, url
    assert stored(app, id=rule_id)[0]["active"] is True
    assert [e[0] for e in audits(app, f"risk_rule:{rule_id}")] == ["risk.rule_create"]


def test_finance_approves_from_the_queue_but_does_not_change_rules(backend, app, client, shop):
    placed = held_order(app, client, shop, name=f"finance {shop['tag']}")
    staff = make_staff(app, "finance")
    assert login(client, staff).status_code == 302
    menu = client.get("/admin/account").get_data(as_text=True)
    assert 'href="/admin/risk/queue"' in menu and 'href="/admin/risk/rules"' not in menu
    queue = client.get("/admin/risk/queue").get_data(as_text=True)
    assert f'id="review-{placed["order_no"]}"' in queue
    assert 'href="/admin/risk/rules/' not in queue          # the rule's name, not a link to a page it may not open
    assert client.get("/admin/risk/rules").status_code == 403
    answer = post(client, f"/admin/risk/queue/{placed['order_no']}/approve", {"reason": "checked"},
                  page_url="/admin/risk/queue")
    assert answer.status_code == 303 and order_status(app, placed["order_no"]) == "delivered"


def test_every_risk_form_needs_the_csrf_token(backend, app, client, shop):
    owner = make_staff(app, "owner")
    assert login(client, owner).status_code == 302
    placed = held_order(app, client, shop, name=f"csrf {shop['tag']}")
    [made] = stored(app, name=f"csrf {shop['tag']}")
    before = rule_count(app)
    for url, data in (("/admin/risk/rules/new", form(name="NO-TOKEN", limit="5", minutes="5")),
                      (f"/admin/risk/rules/{made['id']}", form(name="NO-TOKEN", ranges="10.0.0.1")),
                      (f"/admin/risk/rules/{made['id']}/toggle", {"active": "0"}),
                      (f"/admin/risk/queue/{placed['order_no']}/approve", {"reason": "no token"})):
        refused_post = client.post(url, data=data)
        assert refused_post.status_code == 303 and refused_post.headers["Location"].endswith("restore=1"), url
    token = csrf_of(client.get("/admin/risk/rules").get_data(as_text=True))
    assert client.post(f"/admin/risk/rules/{made['id']}/toggle", data={"active": "0", "csrf_token": token[::-1]}) \
        .status_code == 303
    assert rule_count(app) == before and stored(app, id=made["id"])[0]["active"] is True
    assert stored(app, id=made["id"])[0]["name"] == f"csrf {shop['tag']}"
    assert order_status(app, placed["order_no"]) == "held"
    assert [e[0] for e in audits(app, f"risk_rule:{made['id']}")] == ["risk.rule_create"]

"""Coupons in the panel: the list with each coupon's report, add, edit, enable and disable,
errors shown with what was typed (nothing stored), CSRF, who may, and the audit log. The
coupons themselves (pricing, limits, races) are tested in tests/test_coupons.py."""
import json
import re
import secrets

import pytest
import sqlalchemy as sa

from kamengd.audit.models import AuditEntry
from kamengd.marketing.models import Coupon
from panel_support import csrf_of, login, make_staff, post
from test_coupons import KEY, make_coupon, order, refused, shop  # noqa: F401 (fixture)
from test_error_language import english_runs, flashes


def _db():
    from kamengd.extensions import db
    return db


@pytest.fixture
def admin(app, client):
    staff = make_staff(app, "admin")
    client.set_cookie("lang", "en")
    assert login(client, staff).status_code == 302
    return staff


def form(**changes) -> dict:
    """The add form as a browser sends it (an unticked box is not sent at all)."""
    values = {"code": f"P{secrets.token_hex(4)}".upper(), "kind": "fixed", "amount_off": "2.50", "currency": "CNY",
              "percent_off": "", "max_discount": "", "applies_to": "all", "min_amount": "", "starts_at": "",
              "ends_at": "", "max_uses": "", "per_buyer": "", "note": "", "is_active": "1"}
    values.update(changes)
    return {name: value for name, value in values.items() if value is not None}


def send(client, url: str, data: dict, page_url: str = "/admin/coupons/new"):
    return post(client, url, data, page_url=page_url)


def stored(app, code: str) -> Coupon | None:
    db = _db()
    with app.app_context():
        found = db.session.scalar(sa.select(Coupon).where(Coupon.code == code))
        db.session.expunge_all()
        db.session.remove()
    return found


def audits(app, code: str) -> list[tuple[str, str, str, dict]]:
    db = _db()
    with app.app_context():
        rows = [(a.action, a.actor, a.source_ip, json.loads(a.details)) for a in db.session.scalars(
            sa.select(AuditEntry).where(AuditEntry.target == f"coupon:{code}").order_by(AuditEntry.seq))]
        db.session.remove()
    return rows


def pay(client, shop, placed: dict) -> None:
    """The Epay channel says the order is paid (it is then delivered)."""
    import hashlib

    from kamengd.payments import epay
    params = {"pid": "7007", "trade_no": f"T{placed['order_no']}", "out_trade_no": placed["order_no"],
              "type": "alipay", "name": "x", "money": placed["amount"], "trade_status": "TRADE_SUCCESS"}
    params["sign"] = hashlib.md5((epay.signing_string(params) + KEY).encode()).hexdigest()
    assert client.get(f"/pay/{shop['channel']}/notify", query_string=params).get_data(as_text=True) == "success"


def row_of(page: str, code: str) -> str:
    """The list's row of one coupon, its tags taken out."""
    [row] = [r for r in re.findall(r"<tr>.*?</tr>", page, re.S) if f"<code>{code}</code>" in r]
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", row))


def test_the_list_reports_uses_paid_orders_discount_and_sales(backend, app, client, shop, admin):
    from kamengd.marketing import coupons

    code = make_coupon(app, amount_off="2.50", max_uses=10, per_buyer=2, scope="category",
                       scope_id=shop["category"], note="春节")
    pay(client, shop, order(client, shop, code, quantity=2).get_json())     # 20.00, 17.50 to pay
    order(client, shop, code, email="other@example.com")                   # not paid: a use, no sales
    db = _db()
    with app.app_context():
        figures = coupons.coupon_stats(db.session, coupons.list_coupons(db.session))
        db.session.remove()
    page = client.get("/admin/coupons").get_data(as_text=True)
    row = row_of(page, code)
    assert "2.50 CNY" in row and f"Category: coupons {shop['tag']}" in row and "春节" in row
    assert "2 / 10" in row and "2 per buyer" in row and "Enabled" in row
    assert re.search(r"\b1 2\.50 17\.50\b", row), row          # paid orders, discount given, sales
    total = re.search(r"<tfoot>.*?</tfoot>", page, re.S).group(0)
    assert f"{sum(f.discount_cents for f in figures) / 100:.2f}" in total
    assert f"{sum(f.sales_cents for f in figures) / 100:.2f}" in total
    assert '<a href="/admin/coupons" aria-current="page">Coupons</a>' in page


def test_an_admin_adds_edits_disables_and_enables_a_coupon(backend, app, client, shop, admin):
    page = client.get("/admin/coupons/new").get_data(as_text=True)
    assert f'<option value="product:{shop["big"]}">coupon big {shop["tag"]} (#{shop["big"]})</option>' in page
    assert f'value="category:{shop["category"]}"' in page
    code = f"new-{secrets.token_hex(3)}"
    added = send(client, "/admin/coupons/new", form(
        code=code, kind="percent", amount_off="", percent_off="12.5", max_discount="5", applies_to=f"product:{shop['big']}",
        min_amount="10", starts_at="2030-01-01T10:00", ends_at="2030-02-01T10:00", max_uses="3", per_buyer="1",
        first_order="1", note="双十二"))
    assert added.status_code == 303 and added.headers["Location"] == "/admin/coupons"
    code = code.upper()
    made = stored(app, code)
    assert (made.kind, made.percent_off_bp, made.max_discount_cents, made.amount_off_cents) == ("percent", 1250, 500, None)
    assert (made.scope, made.scope_id, made.min_amount_cents, made.max_uses, made.per_buyer) == \
        ("product", shop["big"], 1000, 3, 1)
    assert (made.first_order, made.is_active, made.note) == (True, True, "双十二")
    assert made.starts_at.isoformat() == "2030-01-01T02:00:00"     # 10:00 in Shanghai
    listed = client.get("/admin/coupons").get_data(as_text=True)
    assert f"Coupon {code} added: 12.5% (≤ 5.00) off." in listed
    assert f"Product: coupon big {shop['tag']}" in row_of(listed, code)

    edit_url = f"/admin/coupons/{made.id}"
    page = client.get(edit_url).get_data(as_text=True)
    for shown in ('value="12.5"', 'value="5.00"', 'value="2030-01-01T10:00"', 'value="3"', 'value="双十二"',
                  f'<option value="product:{shop["big"]}" selected>'):
        assert shown in page, shown
    assert 'id="code"' not in page                                 # a code is never changed
    # Fixed 3.00 off everything, no longer usable (the box unticked).
    saved = send(client, edit_url, form(code=None, amount_off="3", is_active=None, starts_at="", ends_at="",
                                        max_uses="3", per_buyer="1", note="双十二"), page_url=edit_url)
    assert saved.status_code == 303
    after = stored(app, code)
    assert (after.kind, after.amount_off_cents, after.percent_off_bp, after.scope, after.scope_id) == \
        ("fixed", 300, None, "all", None)
    assert (after.is_active, after.starts_at, after.first_order, after.version) == (False, None, False, 2)
    unchanged = send(client, edit_url, form(code=None, amount_off="3.00", is_active=None, max_uses="3", per_buyer="1",
                                            note="双十二"), page_url=edit_url)
    assert unchanged.status_code == 303 and "Nothing changed." in client.get("/admin/coupons").get_data(as_text=True)

    toggle = f"/admin/coupons/{made.id}/toggle"
    assert send(client, toggle, {"active": "1"}, page_url="/admin/coupons").status_code == 303
    assert f"Coupon {code} is enabled" in client.get("/admin/coupons").get_data(as_text=True)
    send(client, toggle, {"active": "1"}, page_url="/admin/coupons")
    assert f"Coupon {code} was already in that state." in client.get("/admin/coupons").get_data(as_text=True)
    assert order(client, shop, code, product="small").get_json()["discount"] == "2.99"   # a cent is left
    send(client, toggle, {"active": "0"}, page_url="/admin/coupons")
    assert stored(app, code).is_active is False
    refused(order(client, shop, code, product="small", email="late@example.com"), "unknown coupon")
    send(client, toggle, {"active": "maybe"}, page_url="/admin/coupons")
    assert "Choose whether to enable or disable the coupon." in client.get("/admin/coupons").get_data(as_text=True)

    entries = audits(app, code)
    assert [e[0] for e in entries] == ["coupon.create", "coupon.update", "coupon.update", "coupon.update"]
    assert {(e[1], e[2]) for e in entries} == {(f"staff:{admin.username}", "127.0.0.1")}
    assert entries[0][3]["percent_off_bp"] == 1250 and entries[1][3]["amount_off"] == "3.00"
    assert entries[2][3] == {"is_active": True} and entries[3][3] == {"is_active": False}


def test_a_save_over_someone_elses_change_is_refused_and_shows_the_terms_as_they_are(backend, app, client,
                                                                                       shop, admin):
    """Two staff open the same coupon; the first saves; the second's save (from the form as it
    was) is refused, nothing of it stored, and the form shows the first one's terms."""
    code = make_coupon(app, amount_off="1.00")
    edit_url = f"/admin/coupons/{stored(app, code).id}"
    page = client.get(edit_url).get_data(as_text=True)
    assert 'name="version" value="1"' in page
    first = send(client, edit_url, form(code=None, amount_off="2.00", version="1"), page_url=edit_url)
    assert first.status_code == 303 and stored(app, code).amount_off_cents == 200
    second = send(client, edit_url, form(code=None, amount_off="5.00", note="late", version="1"), page_url=edit_url)
    page = second.get_data(as_text=True)
    assert second.status_code == 409 and "changed or used meanwhile" in page
    assert 'name="version" value="2"' in page and 'value="2.00"' in page and 'value="late"' not in page
    after = stored(app, code)
    assert (after.amount_off_cents, after.note, after.version) == (200, "", 2)
    assert [e[0] for e in audits(app, code)] == ["coupon.create", "coupon.update"]


def test_a_bad_form_says_what_is_wrong_keeps_what_was_typed_and_stores_nothing(backend, app, client, shop, admin):
    db = _db()
    with app.app_context():
        before = db.session.scalar(sa.select(sa.func.count()).select_from(Coupon))
        db.session.remove()
    answer = send(client, "/admin/coupons/new", form(amount_off="abc", max_uses="lots", note="留着", first_order="1"))
    page = answer.get_data(as_text=True)
    assert answer.status_code == 400
    assert flashes(answer) == ["amount off: 'abc' is not a decimal amount",
                               "uses: a whole number, or leave it empty for no limit"]
    for kept in ('value="abc"', 'value="lots"', 'value="留着"', 'id="first_order" name="first_order" type="checkbox" '
                 'value="1" checked'):
        assert kept in page, kept
    for data, status, words in ((form(code="x"), 400, "code: 3 to 32 letters"),
                                (form(ends_at="2030-01-01T10:00", starts_at="2030-02-01T10:00"), 400,
                                 "valid until: must be after valid from"),
                                (form(starts_at="0001-01-01T00:00"), 400, "valid from: a date and time"),
                                (form(applies_to="product:999999999"), 400, "product 999999999 not found"),
                                (form(kind="percent", amount_off="", percent_off="101"), 400, "percent off")):
        answer = send(client, "/admin/coupons/new", data)
        assert answer.status_code == status and any(words in f for f in flashes(answer)), flashes(answer)
    taken = make_coupon(app, amount_off="1")
    assert send(client, "/admin/coupons/new", form(code=taken.lower())).status_code == 409
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Coupon)) == before + 1
        db.session.remove()

    # An edit below the uses already taken: refused, the coupon as it was.
    code = make_coupon(app, amount_off="1", max_uses=5)
    order(client, shop, code)
    order(client, shop, code, email="two@example.com")
    coupon = stored(app, code)
    edit_url = f"/admin/coupons/{coupon.id}"
    answer = send(client, edit_url, form(code=None, amount_off="9", max_uses="1"), page_url=edit_url)
    assert answer.status_code == 400 and flashes(answer) == ["uses: 2 are taken already"]
    assert 'value="9"' in answer.get_data(as_text=True)
    assert (stored(app, code).amount_off_cents, stored(app, code).version) == (100, 1)
    assert [e[0] for e in audits(app, code)] == ["coupon.create"]
    assert client.get("/admin/coupons/999999999").status_code == 404
    assert client.get(f"/admin/coupons/{2**40}").status_code == 404


def test_errors_are_in_the_readers_language(backend, app, client, admin):
    client.set_cookie("lang", "zh")
    answer = send(client, "/admin/coupons/new", form(amount_off="九块九", per_buyer="x"))
    assert answer.status_code == 400
    messages = flashes(answer)
    assert len(messages) == 2 and "九块九" in messages[0]
    assert not any(english_runs(m) for m in messages), messages
    assert "添加优惠券" in answer.get_data(as_text=True)


@pytest.mark.parametrize("role", ["operator", "support", "finance", "auditor"])
def test_only_owners_and_admins_manage_coupons(backend, app, client, role):
    code = make_coupon(app, amount_off="2.50")
    coupon = stored(app, code)
    staff = make_staff(app, role)
    assert login(client, staff).status_code == 302
    home = client.get("/admin/account").get_data(as_text=True)
    assert "/admin/coupons" not in home
    for url in ("/admin/coupons", "/admin/coupons/new", f"/admin/coupons/{coupon.id}"):
        assert client.get(url).status_code == 403, url
    for url, data in (("/admin/coupons/new", form()), (f"/admin/coupons/{coupon.id}/toggle", {"active": "0"})):
        assert post(client, url, data).status_code == 403, url
    assert stored(app, code).is_active is True and [e[0] for e in audits(app, code)] == ["coupon.create"]


def test_every_coupon_form_needs_the_csrf_token(backend, app, client):
    owner = make_staff(app, "owner")
    assert login(client, owner).status_code == 302
    code = make_coupon(app, amount_off="2.50")
    coupon = stored(app, code)
    assert "/admin/coupons" in client.get("/admin/account").get_data(as_text=True)   # in the owner's menu
    for url, data in (("/admin/coupons/new", form(code="NO-TOKEN")),
                      (f"/admin/coupons/{coupon.id}", form(code=None, amount_off="9")),
                      (f"/admin/coupons/{coupon.id}/toggle", {"active": "0"})):
        refused_post = client.post(url, data=data)
        assert refused_post.status_code == 303 and refused_post.headers["Location"].endswith("restore=1"), url
    token = csrf_of(client.get("/admin/coupons").get_data(as_text=True))
    assert client.post("/admin/coupons/new", data={**form(code="BAD-TOKEN"), "csrf_token": token[::-1]}) \
        .status_code == 303
    assert stored(app, "NO-TOKEN") is None and stored(app, "BAD-TOKEN") is None
    assert (stored(app, code).amount_off_cents, stored(app, code).is_active) == (250, True)
    assert [e[0] for e in audits(app, code)] == ["coupon.create"]

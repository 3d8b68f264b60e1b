"""The staff panel in real headless Chromium against a real server: 2FA sign-in, a
10,000-key upload, what a support user may not see, and every page screenshotted."""
import datetime as dt
import re
from zoneinfo import ZoneInfo

import pytest

from browser_support import Tab, chromium, sign_in, start_shop, tab  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]

# Panel GET endpoints the page sweep does not open by address: sign-in (its own
# test) and the bare /admin/ (a redirect to the dashboard).
NOT_SWEPT = {"panel.login", "panel.login_2fa", "panel.home"}


@pytest.fixture(scope="module")
def shop(backend, databases, tmp_path_factory):
    yield from start_shop(backend, databases, tmp_path_factory, "panel")


@pytest.fixture(scope="module")
def owner(shop):
    """The owner every tab of the sweep signs in as (its own list is among the pages)."""
    return shop.staff("owner")


@pytest.fixture(scope="module")
def data(shop, owner):
    """Something on every page: products, keys, orders in several states, staff of every role."""
    from kamengd.payments.models import PaymentChannel

    games = shop.category("游戏点卡")
    month, _ = shop.product("月卡 Monthly pass", 1990, keys=20, category_id=games, low_stock_threshold=5)
    manual, _ = shop.product("代充服务 Top-up by hand", 5000, delivery_mode="manual")
    delivered, _ = shop.paid_order(month, 2, email="buyer@example.com")
    waiting, _ = shop.paid_order(manual, 1, email="vip@example.com")
    shop.order(month, 1, email="later@example.com")
    held_no, _, _ = shop.order(month, 1, email="short@example.com")
    assert shop.notify(held_no, "0.01") == "success"        # paid the wrong amount: held
    shop.setting("site.notice", "春节期间正常发货。")
    settle_today(shop, {delivered: "39.80", waiting: "49.00", held_no: "0.01"})   # one amount differs
    staff = {role: shop.staff(role) for role in ("admin", "operator", "support", "finance", "auditor")}
    channel_ids = shop.run(lambda s, v: {c.code: c.id for c in s.query(PaymentChannel)})
    return {"category": games, "product": month, "manual": manual, "delivered": delivered,
            "waiting": waiting, "held": held_no, "staff": staff, "channel": channel_ids[shop.channels[0]],
            "agent": shop.run(_an_agent_asking_to_be_paid), "supplier": shop.run(_a_supplier),
            "coupon": shop.run(lambda s, _v: _a_coupon(s, games)), **_an_order_held_for_review(shop, month),
            **shop.run(lambda s, _v: _a_ticket(s, delivered)), "export": shop.run(lambda s, _v: _a_list_export(s, f"staff:{owner.username}"))}


def _a_list_export(session, requested_by: str) -> int:
    """A finished orders list of the owner's (its pages: the progress page, the download)."""
    import datetime as dt

    from kamengd.database import utcnow
    from kamengd.reports.models import ReportExport, ReportExportPart
    export = ReportExport(kind="orders", format="csv", first_day=dt.date.today(), last_day=dt.date.today(),
                          status="done", rows_expected=1, rows_done=1, size_bytes=9, requested_by=requested_by,
                          heartbeat_at=utcnow())
    session.add(export)
    session.flush()
    session.add(ReportExportPart(export_id=export.id, seq=0, data=b"order_no\n"))
    return export.id


def _a_ticket(session, order_no: str) -> dict:
    """The buyer's after-sales ticket about a delivered order, with a screenshot (its pages)."""
    import io

    import sqlalchemy as sa
    from PIL import Image

    from kamengd.orders.models import Order
    from kamengd.tickets import services
    from kamengd.tickets.models import TicketImage, TicketMessage
    shot = io.BytesIO()
    Image.new("RGB", (600, 300), (40, 90, 200)).save(shot, "PNG")
    order = session.scalar(sa.select(Order).where(Order.order_no == order_no))
    ticket = services.write_as_buyer(session, order, body="卡密提示无效 The key says invalid", picture=shot.getvalue())
    image = session.scalar(sa.select(TicketImage.id).join(TicketMessage).where(TicketMessage.ticket_id == ticket.id))
    return {"ticket": ticket.id, "image": image}


def _an_order_held_for_review(shop, product_id: int) -> dict:
    """A review rule for one buyer's e-mail and the order it held once paid (the risk pages);
    another rule, switched off, that no order matches."""
    from kamengd.risk import rules

    def make(session, _vault):
        rules.create_rule(session, name="异常金额 Unusual amount", kind="amount_anomaly", action="review",
                          form={"factor": "10"}, sort_order=5, actor="test").is_active = False
        return rules.create_rule(session, name="新买家 New buyer", kind="email_list", action="review",
                                 form={"emails": "risky@example.com", "domains": "mailinator.com"}, actor="test").id
    rule_id = shop.run(make)
    order_no, _token, amount = shop.order(product_id, 1, email="risky@example.com")   # judged in this process
    assert shop.notify(order_no, amount) == "success"                                # held by the server
    return {"rule": rule_id, "review": order_no}


def _a_coupon(session, category_id: int) -> int:
    """A coupon limited to a category, with a window and uses (the coupons' list and form)."""
    from kamengd.marketing import coupons

    made = coupons.create_coupon(session, "CHUNJIE-10", coupons.parse_coupon_form(
        {"kind": "percent", "percent_off": "10", "max_discount": "20", "scope": "category", "scope_id": str(category_id),
         "ends_at": "2099-02-01 00:00", "max_uses": "100", "per_buyer": "1", "note": "春节"}, "Asia/Shanghai"),
        actor="test")
    return made.id


def _a_supplier(session, vault) -> int:
    """A supplier with two products as a sync would have stored them, one sold here."""
    from kamengd.suppliers import services as suppliers
    from kamengd.suppliers.models import SupplierProduct

    made = suppliers.add_supplier(session, vault, name="shangyou", url="http://127.0.0.1:9", key_id="ak_upstream01",
                                  secret="s" * 32, low_balance="100", actor="test")
    session.add_all([SupplierProduct(supplier_id=made.id, remote_id=7, name="上游月卡", cost_cents=800, currency="CNY",
                                     stock=42),
                     SupplierProduct(supplier_id=made.id, remote_id=8, name="上游周卡", cost_cents=300, currency="CNY",
                                     stock=0)])
    session.flush()
    suppliers.map_product(session, made, remote_id=7, create_name="转售月卡", percent="25", actor="test")
    return made.id


def _an_agent_asking_to_be_paid(session, _vault) -> int:
    """An agent with a balance, a payout account and a withdrawal to review: the agents' pages."""
    from kamengd.agents import services as agents
    from kamengd.agents import withdrawals

    level, _ = agents.set_level(session, name="金牌", discount="12.5", actor="test")
    agent = agents.create_agent(session, username="daili-01", level=level.name, actor="test")
    agents.credit_balance(session, agent, 12000, reason="首次充值", actor="test")
    account = withdrawals.add_payout_account(session, agent, kind="alipay", account="13800138000", holder="张三",
                                             actor="test")
    withdrawals.request_withdrawal(session, agent, payout_account_id=account.id, amount="50", actor="test")
    return agent.id


def today(shop) -> dt.date:
    return dt.datetime.now(ZoneInfo(shop.config.site.timezone)).date()


def settle_today(shop, paid_at_gateway: dict[str, str]) -> None:
    """Today's settlement report, against what the gateway says was paid."""
    from kamengd.payments.settlement import run_settlement

    def query(_gateway, _pid, _key, order_no):
        if order_no in paid_at_gateway:
            return {"code": 1, "status": 1, "money": paid_at_gateway[order_no], "out_trade_no": order_no,
                    "trade_no": f"GW{order_no}"}
        return {"code": 1, "status": 0, "out_trade_no": order_no}
    shop.run(lambda s, v: run_settlement(s, v, today(shop), shop.config.site.timezone, query=query))


@pytest.fixture(scope="module")
def owner_state(shop, chromium, owner):
    """An owner signed in once (TOTP codes are single-use); later tabs reuse the cookies."""
    context = chromium.new_context()
    try:
        t = Tab(context, shop, None)
        sign_in(t, owner)
        return context.storage_state()
    finally:
        context.close()


def route_args(endpoint: str, arguments: set[str], data: dict, shop) -> dict:
    """Real objects for a panel address's parts."""
    known = {"product_id": data["product"], "category_id": data["category"], "order_no": data["delivered"],
             "channel_id": data["channel"], "user_id": data["staff"]["support"].id, "day": today(shop).isoformat(),
             "agent_id": data["agent"], "supplier_id": data["supplier"],
             "coupon_id": data["coupon"], "rule_id": data["rule"], "ticket_id": data["ticket"],
             "image_id": data["image"], "export_id": data["export"]}
    unknown = arguments - known.keys()
    assert not unknown, f"{endpoint}: teach route_args() about {sorted(unknown)}"
    return {name: known[name] for name in arguments}


def panel_pages(shop, data) -> list[tuple[str, str]]:
    """(screenshot name, path) of every panel page a GET opens, from the app's own routes."""
    from flask import url_for

    pages = []
    with shop.app.test_request_context():
        for rule in shop.app.url_map.iter_rules():
            if not rule.endpoint.startswith("panel.") or "GET" not in rule.methods or rule.endpoint in NOT_SWEPT:
                continue
            path = url_for(rule.endpoint, **route_args(rule.endpoint, set(rule.arguments), data, shop))
            pages.append(("panel-" + rule.endpoint.removeprefix("panel.").replace("_", "-"), path))
    return sorted(pages)


def test_owner_signs_in_with_2fa_and_imports_10000_keys(shop, data, tab, tmp_path):
    owner = shop.staff("owner")
    pid, _ = shop.product("点卡 10000 张 Bulk", 100)
    t = tab()
    page = t.page
    t.open("/admin/dashboard")                     # not signed in: the sign-in page
    assert "/admin/login" in page.url
    page.fill("#username", owner.username)
    page.fill("#password", owner.password)
    t.shot("panel-login")
    with page.expect_navigation():
        page.click("form button[type=submit]")
    assert page.url.endswith("/admin/login/2fa")
    page.fill("#code", owner.code())
    t.shot("panel-login-2fa")
    with page.expect_navigation():
        page.click("form button[type=submit]")
    assert page.url.endswith("/admin/dashboard"), page.url

    # Stock, from the menu; then the product's import page.
    with page.expect_navigation():
        page.click("nav.sidenav a[href='/admin/stock']")
    t.shot("panel-stock-before-import")
    t.open(f"/admin/stock/{pid}/import")
    keys = tmp_path / "keys.txt"
    keys.write_text("".join(f"BULK-{i:05d}-{pid}\n" for i in range(10_000)))
    form = page.locator("form[data-upload-progress]")
    form.locator("input[type=file][name=file]").set_input_files(str(keys))
    t.shot("panel-stock-import-file-chosen")
    page.evaluate("document.documentElement.dataset.beforeUpload = '1'")
    form.locator("button[type=submit]").click()
    # panel.js sends the file with XHR and then shows the page the server answers.
    page.wait_for_function("() => !document.documentElement.dataset.beforeUpload && !!document.querySelector('h1')",
                           timeout=180_000)
    result = t.text()
    assert re.search(r"10[,\s]?000", result), result
    t.shot("panel-stock-import-result")

    t.open("/admin/stock")
    row = page.locator("tr", has_text="点卡 10000 张 Bulk")
    assert re.search(r"\b10[,\s]?000\b", row.inner_text()), row.inner_text()
    t.shot("panel-stock-after-import")
    t.assert_clean()


def test_support_sees_no_stock_and_cannot_export(shop, data, tab):
    t = tab()
    page = t.page
    sign_in(t, data["staff"]["support"])
    t.open("/admin/orders")
    nav = page.locator("nav.sidenav")
    assert nav.locator("a[href='/admin/orders']").count() == 1
    assert nav.locator("a[href^='/admin/stock']").count() == 0
    t.shot("panel-support-orders")
    for path in (f"/admin/stock/{data['product']}/export", "/admin/stock"):
        t.open(path, status=403)
        assert page.locator("h1").count() == 1
        assert "BULK-" not in page.content() and "K-" not in t.text()
    t.shot("panel-support-stock-export-403")
    t.assert_clean(allow_status=(403,))


def test_every_panel_page_renders(shop, data, tab, owner_state):
    t = tab(storage_state=owner_state)
    page = t.page
    pages = panel_pages(shop, data)
    assert len(pages) >= 15, pages
    failures = []
    for name, path in pages:
        response = page.request.get(t.url(path), max_redirects=0)
        if response.status in (302, 303):
            continue      # e.g. 2FA enrolment for an owner who has it: not a page of its own
        if response.status != 200:
            failures.append(f"{path}: {response.status}")
            continue
        if not response.headers.get("content-type", "").startswith("text/html"):
            continue      # the 2FA QR code image and other files: answered, nothing to look at
        t.open(path)
        assert page.locator("main h1").count() == 1, path
        t.shot(name)
    assert not failures, failures
    nav = page.locator("nav.sidenav")
    if "panel.stock" in shop.app.view_functions:
        assert nav.locator("a[href='/admin/stock']").count() == 1
    # A few filtered lists, as staff use them.
    for name, path in (("panel-orders-held", "/admin/orders?status=held"),
                       ("panel-orders-search", f"/admin/orders?q={data['delivered']}"),
                       ("panel-audit-filtered", "/admin/audit?action=product.create"),
                       ("panel-order-held", f"/admin/orders/{data['held']}"),
                       ("panel-order-held-for-review", f"/admin/orders/{data['review']}"),
                       ("panel-order-waiting", f"/admin/orders/{data['waiting']}")):
        t.open(path)
        t.shot(name)
    t.open("/admin/dashboard?lang=en")
    t.shot("panel-dashboard-en")
    t.assert_clean()


def test_finance_gives_back_a_double_payment_in_one_click(shop, data, tab):
    """A buyer charged twice (W9): the dashboard names it, the order's page records the
    refund with one click and a confirmation, and the dashboard is clear again."""
    order_no, _ = shop.paid_order(data["product"], 1, email="twice@example.com")
    assert shop.notify(order_no, "19.90", trade_no=f"GW2-{order_no}") == "success"
    t = tab()
    sign_in(t, data["staff"]["finance"])
    page = t.page
    t.open("/admin/dashboard?lang=en")
    row = page.locator("#extra-payments tbody tr", has_text=order_no)
    assert row.count() == 1 and f"GW2-{order_no}" in row.inner_text()
    with page.expect_navigation():
        row.locator("a").click()
    t.shot("panel-order-paid-twice")
    form = page.locator("form.inline-form")
    assert form.count() == 1
    form.locator("input[name=note]").fill("ALIPAY-RF-1")
    t.accept_dialogs = True
    with page.expect_navigation():
        form.locator("button").click()
    assert t.dialogs and "19.90" in t.dialogs[-1]
    assert f"GW2-{order_no} is recorded as given back" in t.text(".flashes")
    assert page.locator("form.inline-form").count() == 0
    t.open("/admin/dashboard?lang=en")
    assert page.locator("#extra-payments tbody tr", has_text=order_no).count() == 0
    t.assert_clean()


def test_a_form_sent_after_the_session_ended_is_not_lost(shop, data, tab):
    """W10 §8: the session ends while an operator types a new product; sending it leads
    through sign-in back to the form, filled in as it was, and it can be sent."""
    operator = data["staff"]["operator"]
    t = tab()
    page = t.page
    sign_in(t, operator)
    t.open("/admin/products/new")
    page.fill("#name", "草稿商品 Draft kept")
    page.fill("#description", "写了很久的说明。\nA long description.")
    page.fill("#price", "12.34")
    t.context.clear_cookies()            # the session ends (idle timeout, a restart of the browser)
    with page.expect_navigation():
        page.get_by_role("button", name=re.compile("添加商品|Add product")).click()
    assert "/admin/login" in page.url and "restore" in page.url
    assert "请重新登录" in t.text() or "Sign in again" in t.text()
    page.fill("#username", operator.username)
    page.fill("#password", operator.password)
    with page.expect_navigation():
        page.click("form button[type=submit]")
    assert page.url.endswith("/admin/products/new?restore=1"), page.url
    assert page.input_value("#name") == "草稿商品 Draft kept"
    assert page.input_value("#price") == "12.34" and "A long description." in page.input_value("#description")
    t.shot("panel-form-restored")
    with page.expect_navigation():
        page.get_by_role("button", name=re.compile("添加商品|Add product")).click()
    assert "草稿商品 Draft kept" in t.text()
    t.assert_clean(allow_status=(400,))


def test_an_owner_adds_a_coupon_after_a_mistake_and_sees_it_in_the_report(shop, data, tab, owner_state):
    """Coupons from the menu; a wrong amount comes back with the form as typed; then the coupon is listed."""
    t = tab(storage_state=owner_state)
    page = t.page
    t.open("/admin/dashboard?lang=en")
    with page.expect_navigation():
        page.click("nav.sidenav a[href='/admin/coupons']")
    assert "CHUNJIE-10" in t.text("#coupons") and "10% (≤ 20.00)" in t.text("#coupons")
    with page.expect_navigation():
        page.get_by_role("link", name="Add a coupon").click()
    page.fill("#code", "new-year-5")
    page.check("input[name=kind][value=fixed]")
    page.fill("#amount_off", "five")
    page.select_option("#applies_to", f"product:{data['product']}")
    page.fill("#ends_at", "2099-01-31T23:59")
    page.fill("#note", "元旦")
    with page.expect_navigation():
        page.get_by_role("button", name="Add coupon").click()
    assert "amount off: 'five' is not a decimal amount" in t.text(".flashes")
    assert page.input_value("#code") == "new-year-5" and page.input_value("#ends_at") == "2099-01-31T23:59"
    assert page.input_value("#applies_to") == f"product:{data['product']}"
    t.shot("panel-coupon-new-error")
    page.fill("#amount_off", "5")
    with page.expect_navigation():
        page.get_by_role("button", name="Add coupon").click()
    row = page.locator("#coupons tbody tr", has_text="NEW-YEAR-5")
    assert "5.00 CNY" in row.inner_text() and "月卡 Monthly pass" in row.inner_text()
    t.shot("panel-coupons-added")
    t.assert_clean(allow_status=(400,))


def test_an_owner_adds_a_risk_rule_and_approves_the_order_a_rule_held(shop, data, tab, owner_state):
    """Risk rules from the menu: the form shows the chosen kind's fields (panel.js), a bad range
    comes back as typed, then the rule is listed; the review queue approves the held order."""
    t = tab(storage_state=owner_state)
    page = t.page
    t.open("/admin/dashboard?lang=en")
    with page.expect_navigation():
        page.click("nav.sidenav a[href='/admin/risk/rules']")
    assert "新买家 New buyer" in t.text("#risk-rules") and "risky@example.com" in t.text("#risk-rules")
    with page.expect_navigation():
        page.get_by_role("link", name="Add a rule").click()
    assert page.is_visible("#limit") and not page.is_visible("#ranges")
    page.select_option("#kind", "ip_list")
    assert page.is_visible("#ranges") and not page.is_visible("#limit") and not page.is_visible("#factor")
    page.fill("#name", "机房 Data centre")
    page.select_option("#action", "refuse")
    page.fill("#ranges", "198.51.100.0/24\nnot-an-address")
    with page.expect_navigation():
        page.get_by_role("button", name="Add rule").click()
    assert "ranges: 'not-an-address' is not an address" in t.text(".flashes")
    assert page.input_value("#name") == "机房 Data centre" and page.input_value("#kind") == "ip_list"
    assert page.is_visible("#ranges") and not page.is_visible("#limit")
    t.shot("panel-risk-rule-new-error")
    page.fill("#ranges", "198.51.100.0/24")
    with page.expect_navigation():
        page.get_by_role("button", name="Add rule").click()
    row = page.locator("#risk-rules tbody tr", has_text="机房 Data centre")
    assert "198.51.100.0/24" in row.inner_text() and "Refuse" in row.inner_text()
    t.accept_dialogs = True
    with page.expect_navigation():
        row.get_by_role("button", name="Disable").click()
    assert "is off" in t.text(".flashes")
    t.shot("panel-risk-rules-added")

    with page.expect_navigation():
        page.click("nav.sidenav a[href='/admin/risk/queue']")
    card = page.locator(f"#review-{data['review']}")
    assert "新买家 New buyer" in card.inner_text() and "risky@example.com" in card.inner_text()
    card.locator("input[name=reason]").fill("老客户 known buyer")
    with page.expect_navigation():
        card.get_by_role("button", name="Approve").click()
    assert f"Order {data['review']} approved and delivered." in t.text(".flashes")
    assert page.locator(f"#review-{data['review']}").count() == 0
    t.shot("panel-risk-queue-approved")
    t.assert_clean(allow_status=(400,))


def test_mobile_dashboard(shop, data, tab, owner_state):
    t = tab(viewport=(390, 844), mobile=True, storage_state=owner_state)
    t.open("/admin/dashboard")
    t.shot("panel-dashboard-mobile")
    t.open("/admin/orders")
    t.shot("panel-orders-mobile")
    t.assert_clean()


def test_staff_work_the_panel_from_the_keyboard(shop, data, tab):
    """Sign in with 2FA, skip the menu, open a page from the menu and search orders: keys only, no mouse."""
    admin = shop.staff("admin")
    t = tab()
    page = t.page
    t.open("/admin/login")
    # autofocus: type at once (Chromium applies it just after the load, hence the wait)
    page.wait_for_function("() => document.activeElement && document.activeElement.id === 'username'")
    page.keyboard.type(admin.username)
    t.press_until_focused("#password")
    assert t.focus_is_visible()
    page.keyboard.type(admin.password)
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.url.endswith("/admin/login/2fa")
    page.wait_for_function("() => document.activeElement && document.activeElement.id === 'code'")
    page.keyboard.type(admin.code())
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.url.endswith("/admin/dashboard"), page.url

    # The first Tab reaches "skip to content", which moves the focus past the menu.
    page.keyboard.press("Tab")
    skip = page.locator("a.skip")
    assert skip.evaluate("el => el === document.activeElement") and skip.is_visible()
    page.keyboard.press("Enter")
    # A same-page jump updates the address a moment after the key press.
    page.wait_for_url("**/admin/dashboard#main", timeout=5000)

    # The menu, by Tab, then Enter.
    t.open("/admin/dashboard")
    t.press_until_focused("nav.sidenav a[href='/admin/orders']")
    assert t.focus_is_visible()
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.url.endswith("/admin/orders")
    t.press_until_focused("input[name=q]")
    page.keyboard.type(data["delivered"])
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert data["delivered"] in t.text("main table")
    t.shot("panel-orders-keyboard")
    t.assert_clean()


def test_an_admin_without_2fa_must_enrol_then_signs_in_with_a_recovery_code(shop, data, tab):
    """The QR code shows, the typed-in key works, the recovery codes are shown once and sign in once."""
    import pyotp

    admin = shop.staff("admin", totp=False)
    t = tab()
    page = t.page
    t.open("/admin/login")
    page.fill("#username", admin.username)
    page.fill("#password", admin.password)
    with page.expect_navigation():
        page.click("form button[type=submit]")
    t.open("/admin/orders")                                  # anything else: sent to the set-up first
    assert page.url.endswith("/admin/account/2fa"), page.url
    qr = page.locator("img.qr")
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=qr.element_handle())
    secret = page.inner_text("#totp-secret").strip()
    t.shot("panel-totp-enrol")
    page.fill("#code", pyotp.TOTP(secret).now())
    with page.expect_navigation():
        page.click("main form button[type=submit]")
    codes = [c.strip() for c in page.locator("main code").all_inner_texts() if c.strip()]
    assert len(codes) == 10 and len(set(codes)) == 10, codes
    t.shot("panel-recovery-codes")
    with page.expect_navigation():
        page.locator("header form button[type=submit]").click()   # sign out

    # A lost phone: one recovery code signs in, once.
    for attempt in ("first", "again"):
        t.open("/admin/login")
        page.fill("#username", admin.username)
        page.fill("#password", admin.password)
        with page.expect_navigation():
            page.click("form button[type=submit]")
        page.fill("#code", codes[0])
        with page.expect_navigation():
            page.click("form button[type=submit]")
        if attempt == "first":
            assert page.url.endswith("/admin/dashboard"), page.url
            with page.expect_navigation():
                page.locator("header form button[type=submit]").click()
        else:
            assert "/admin/login" in page.url and page.locator(".flash.error").count() == 1
    t.assert_clean(allow_status=(401,))


HOSTILE = '"><img src=x onerror=alert(1)><script>alert(2)</script>{{7*7}}'


def test_hostile_names_stored_by_staff_do_not_run_in_the_panel(shop, data, tab, owner_state):
    # Last in the module: it leaves hostile names in this shop.
    category = shop.category(HOSTILE[:50])
    pid, _ = shop.product(HOSTILE, 100, keys=2, category_id=category, description=HOSTILE)
    order_no, _ = shop.paid_order(pid, 1, email="hostile@example.com")
    shop.setting("site.notice", HOSTILE)
    shop.setting("site.name", HOSTILE[:40])
    t = tab(storage_state=owner_state)
    page = t.page
    for path in ("/admin/dashboard", "/admin/products", f"/admin/products/{pid}", "/admin/categories",
                 "/admin/orders", f"/admin/orders/{order_no}", "/admin/stock", "/admin/audit",
                 "/admin/settings"):
        t.open(path)
        assert page.locator("main img:not(.qr), main script").count() == 0, path   # shown as text, never markup
    t.open("/admin/products")
    assert HOSTILE in t.text()
    t.shot("panel-hostile-names")
    page.wait_for_timeout(300)
    assert t.dialogs == []
    t.assert_clean()

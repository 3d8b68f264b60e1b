"""A shop's daily work in the panel, in real headless Chromium against a real server:
the catalogue, pasted stock, held, manual and refunded orders, a payment channel, a
staff account, the settings with a mail server and a test mail (a real local SMTP
server), the audit log's verify button and a key export with a reason."""
import re
import secrets

import pytest
import sqlalchemy as sa

from browser_support import chromium, sign_in, start_shop, tab  # noqa: F401 (fixtures)
from test_email import smtp_server  # noqa: F401 (fixture)

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]


@pytest.fixture(scope="module")
def shop(backend, databases, tmp_path_factory):
    yield from start_shop(backend, databases, tmp_path_factory, "daily")


@pytest.fixture
def owner_tab(shop, tab):
    """A signed-in owner (a new one each time: a TOTP code counts once) in English, answering "OK"."""
    t = tab()
    sign_in(t, shop.staff("owner"))
    t.open("/admin/dashboard?lang=en")
    t.accept_dialogs = True
    return t


def flash(t) -> str:
    return t.text(".flashes") if t.page.locator(".flashes").count() else ""


def submit(t, form_selector: str, button: str = "button[type=submit]"):
    with t.page.expect_navigation():
        t.page.locator(form_selector).locator(button).click()


def audit_actions(shop, target: str) -> list[str]:
    from kamengd.audit.models import AuditEntry

    return shop.run(lambda s, v: [a for (a,) in s.execute(sa.select(AuditEntry.action).where(
        AuditEntry.target == target).order_by(AuditEntry.seq))])


def test_catalogue_and_pasted_stock(shop, owner_tab):
    t, page = owner_tab, owner_tab.page
    tag = secrets.token_hex(3)
    t.open("/admin/categories")
    page.fill("#new-name", f"礼品卡 {tag}")
    page.check("#new-active")
    submit(t, "form[action='/admin/categories/new']")
    assert f"礼品卡 {tag}" in t.text("main")
    t.shot("daily-category-added")

    t.open("/admin/products/new")
    page.fill("#name", f"Steam 钱包 {tag}")
    page.select_option("#category_id", label=f"礼品卡 {tag}")
    page.fill("#description", "充值码，一次有效。")
    page.fill("#price", "12.50")
    page.select_option("#delivery_mode", "auto")
    page.fill("#min_quantity", "1")
    page.fill("#max_quantity", "3")
    page.fill("#low_stock_threshold", "2")
    page.check("#is_active")
    t.shot("daily-product-form")
    submit(t, "main form.form")
    assert "12.50" in t.text("main") and f"Steam 钱包 {tag}" in t.text("main"), t.text("main")
    product_id = int(re.search(r"/admin/products/(\d+)", page.locator(
        "a", has_text=f"Steam 钱包 {tag}").first.get_attribute("href")).group(1))

    keys = [f"STEAM-{tag}-{i}" for i in range(5)]
    t.open(f"/admin/stock/{product_id}/import")
    page.fill("#keys", "\n".join(keys + [keys[0], ""]))   # a repeat and a blank line
    page.evaluate("document.documentElement.dataset.beforeUpload = '1'")
    page.locator("form[data-upload-progress] button[type=submit]").click()
    page.wait_for_function("() => !document.documentElement.dataset.beforeUpload && !!document.querySelector('h1')")
    assert re.search(r"imported 5 keys; 1 duplicates? skipped", flash(t)), flash(t)
    t.shot("daily-stock-pasted")

    t.open("/")
    row = page.locator("li.product", has_text=f"Steam 钱包 {tag}")
    assert "12.50" in row.inner_text() and re.search(r"\b5\b", row.locator(".badge").inner_text())
    t.assert_clean()


def test_held_manual_and_refunded_orders(shop, owner_tab):
    from kamengd.orders.models import Order

    t, page = owner_tab, owner_tab.page
    auto, keys = shop.product(f"点卡 {secrets.token_hex(3)}", 990, keys=4)
    manual, _ = shop.product(f"代充 {secrets.token_hex(3)}", 5000, delivery_mode="manual")
    held, _, _ = shop.order(auto, 1, email="short@example.com")
    assert shop.notify(held, "0.01") == "success"                 # paid the wrong amount: held
    waiting, _ = shop.paid_order(manual, 1, email="vip@example.com")
    delivered, _ = shop.paid_order(auto, 1, email="refund.me@example.com")

    def status(order_no):
        return shop.run(lambda s, v: s.scalar(sa.select(Order.status).where(Order.order_no == order_no)))

    # The held order: finance's call, taken here by the owner, with a reason.
    t.open("/admin/orders?status=held")
    with page.expect_navigation():
        page.locator("a", has_text=held).click()
    page.fill("#release-reason", "买家补付了差额，已线下核实")
    t.shot("daily-order-held")
    submit(t, f"form[action='/admin/orders/{held}/release']")
    assert status(held) == "delivered", flash(t)
    assert "order.release" in audit_actions(shop, f"order:{held}")

    # The manual order: keys typed in by hand reach the buyer.
    t.open(f"/admin/orders/{waiting}")
    page.fill("#deliver-keys", "TOPUP-OK-123456")
    submit(t, f"form[action='/admin/orders/{waiting}/deliver']")
    assert status(waiting) == "delivered", flash(t)
    assert "TOPUP-OK-123456" not in page.content()                # shown only on request
    with page.expect_navigation():
        page.locator(f"form[action='/admin/orders/{waiting}/keys'] button").click()
    assert page.locator("#keys code, ul code").first.inner_text() == "TOPUP-OK-123456" or \
        "TOPUP-OK-123456" in t.text("main")
    t.shot("daily-order-keys-shown")
    assert {"order.deliver", "order.keys_view"} <= set(audit_actions(shop, f"order:{waiting}"))

    # A refund, with its reason, and the search that finds it.
    t.open(f"/admin/orders/{delivered}")
    page.fill("#refund-reason", "买家重复购买，已原路退款")
    submit(t, f"form[action='/admin/orders/{delivered}/refund']")
    assert status(delivered) == "refunded", flash(t)
    t.open("/admin/orders")
    page.fill("#f-email", "refund.me@example.com")
    page.select_option("#f-status", "refunded")
    with page.expect_navigation():
        page.locator("form.filters button[type=submit]").click()
    assert delivered in t.text("main table")
    t.shot("daily-orders-refunded")
    t.assert_clean()


def test_channel_staff_settings_audit_and_export(shop, owner_tab, smtp_server, tmp_path):
    port, inbox = smtp_server
    t, page = owner_tab, owner_tab.page
    code = f"qq{secrets.token_hex(2)}"

    # A payment channel, then its self-test.
    t.open("/admin/channels/new")
    page.fill("#code", code)
    page.fill("#name", "QQ 钱包")
    page.fill("#gateway", shop.gateway.url)
    page.fill("#pid", "1001")
    page.fill("#key", "a-new-merchant-key-0123")
    page.check("input[name=pay_types][value=qqpay]")
    submit(t, "main form.form")
    assert f"Payment channel {code} added." in flash(t)
    row = page.locator("tr", has_text=code)
    with page.expect_navigation():
        row.locator("form[action$='/test'] button").click()
    assert f"Channel {code}" in flash(t) and "signs and verifies" in flash(t), flash(t)
    assert "a-new-merchant-key-0123" not in page.content()
    t.shot("daily-channel-tested")

    # A staff account.
    name = f"kefu-{secrets.token_hex(2)}"
    t.open("/admin/staff/new")
    page.fill("#username", name)
    page.select_option("#role", "support")
    page.fill("#password", "a long support password")
    page.fill("#password_repeat", "a long support password")
    submit(t, "main form.form")
    assert name in t.text("main")

    # Settings: the notice, then a mail server set here and a test mail through it.
    t.open("/admin/settings")
    page.fill("#setting-site-notice", "今晚 23:00 维护十分钟。")
    submit(t, "form[action='/admin/settings']")
    assert "Saved: site.notice." in flash(t)
    form = page.locator("form[action='/admin/settings/mail']")
    form.locator("input[name='smtp.source'][value=panel]").check()
    page.fill("#smtp-host", "127.0.0.1")
    page.fill("#smtp-port", str(port))
    page.select_option("#smtp-security", "none")
    page.fill("#smtp-from", "shop@daily.example")
    submit(t, "form[action='/admin/settings/mail']")
    assert "Saved:" in flash(t) and "smtp.host" in flash(t), flash(t)
    page.fill("#test-mail-to", "owner@example.com")
    t.shot("daily-settings-mail")
    submit(t, "form[action='/admin/settings/test-mail']")
    assert "Test mail to owner@example.com accepted by 127.0.0.1." in flash(t), flash(t)
    assert inbox.messages[-1][0] == ["owner@example.com"] and inbox.messages[-1][1]["From"] == "shop@daily.example"
    t.open("/")
    assert "今晚 23:00 维护十分钟。" in t.text(".notice")

    # The audit log: everything above is there, and the chain verifies.
    t.open("/admin/audit?action=setting.")
    assert "smtp.host" in t.text("main") and "site.notice" in t.text("main")
    submit(t, "form[action='/admin/audit/verify']")
    assert re.search(r"The audit log is intact: \d+ entries checked", flash(t)), flash(t)
    t.shot("daily-audit-verified")

    # A key export: a reason is required, the file holds the keys, the export is audited.
    pid, keys = shop.product(f"导出 {secrets.token_hex(3)}", 100, keys=3)
    t.open(f"/admin/stock/{pid}/export")
    page.select_option("#status", "available")
    page.fill("#reason", "迁移到新店铺，导出未售卡密")
    with page.expect_download() as download:
        page.locator("main form.form button[type=submit]").click()
    saved = tmp_path / "export.txt"
    download.value.save_as(saved)
    assert sorted(saved.read_text(encoding="utf-8").split()) == sorted(keys)
    assert "keys.export" in audit_actions(shop, f"product:{pid}")
    t.assert_clean()

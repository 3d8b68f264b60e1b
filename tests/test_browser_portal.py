"""The agent portal and an agent's sub-station in real headless Chromium against a real
server: an agent signs in, every portal page renders at desk and phone width without a
CSP violation or a script error, its forms work (a price, an API key shown once, the
station's title), and the station at /s/<agent> sells at the agent's price."""
import re

import pytest

from browser_support import Tab, chromium, start_shop, tab  # noqa: F401 (fixtures)
from conftest import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]

NOT_SWEPT = {"portal.login", "portal.login_2fa", "portal.totp_qr",
             # files to download, and a batch's page (test_a_file_of_orders_on_a_phone opens one)
             "portal.batch_template", "portal.batch_result", "portal.batch_detail"}


@pytest.fixture(scope="module")
def shop(backend, databases, tmp_path_factory):
    yield from start_shop(backend, databases, tmp_path_factory, "portal")


@pytest.fixture(scope="module")
def data(shop):
    """A product with keys, an agent "zhan" (with a password, a balance, a payout account, a
    withdrawal, a sub-agent and an order of that sub-agent's paid by the API)."""
    product, _keys = shop.product("季卡 Season pass", 3000, keys=10)

    def agents_(session, vault):
        from kamengd.accounts import auth
        from kamengd.agents import services as agents
        from kamengd.agents import withdrawals

        level, _ = agents.set_level(session, name="银牌", discount="10", actor="test")
        sub_level, _ = agents.set_level(session, name="铜牌", discount="5", actor="test")
        zhan = agents.create_agent(session, username="zhan", level=level.name, actor="test")
        auth.reset_password(session, zhan, PASSWORD, actor="test", ip=None)
        agents.create_agent(session, username="zhan-sub", level=sub_level.name, parent="zhan", actor="test")
        agents.credit_balance(session, zhan, 20000, reason="首充", actor="test")
        account = withdrawals.add_payout_account(session, zhan, kind="alipay", account="13800138000", holder="张三",
                                                 actor="test")
        withdrawals.request_withdrawal(session, zhan, payout_account_id=account.id, amount="50", actor="test")
        return zhan.id
    return {"product": product, "agent": shop.run(agents_)}


def portal_sign_in(t: Tab) -> None:
    page = t.page
    t.open("/agent/login")
    page.fill("#username", "zhan")
    page.fill("#password", PASSWORD)
    with page.expect_navigation():
        page.click("form button[type=submit]")
    assert page.url.endswith("/agent/"), (page.url, t.text())


def portal_pages(shop) -> list[tuple[str, str]]:
    from flask import url_for

    pages = []
    with shop.app.test_request_context():
        for rule in shop.app.url_map.iter_rules():
            if rule.endpoint.startswith("portal.") and "GET" in rule.methods and rule.endpoint not in NOT_SWEPT:
                assert not rule.arguments or rule.endpoint == "portal.order_detail", rule.endpoint
                if not rule.arguments:
                    pages.append(("portal-" + rule.endpoint.removeprefix("portal.").replace("_", "-"),
                                  url_for(rule.endpoint)))
    return sorted(pages)


def test_every_portal_page_renders_on_a_desk_and_a_phone(shop, data, tab):
    for viewport, mobile, suffix in (((1280, 900), False, ""), ((390, 844), True, "-mobile")):
        t = tab(viewport=viewport, mobile=mobile)
        portal_sign_in(t)
        pages = portal_pages(shop)
        assert len(pages) >= 9, pages
        for name, path in pages:
            t.open(path)
            assert t.page.locator("main h1").count() == 1, path
            t.shot(name + suffix)
        t.open("/agent/?lang=en")
        assert "150.00 CNY" in t.text() and "zhan-sub" not in t.text()
        t.open("/agent/team")
        assert "zhan-sub" in t.text()
        t.assert_clean()


def test_an_agent_sets_its_price_issues_a_key_and_names_its_station(shop, data, tab):
    t = tab()
    page = t.page
    portal_sign_in(t)
    t.open("/agent/products?lang=en")
    field = page.locator(f"#price-{data['product']}")
    field.fill("26.00")                                   # below its cost of 27.00
    with page.expect_navigation():
        page.locator(f"form[action='/agent/products/{data['product']}/price'] button[type=submit]").first.click()
    assert "below your cost of 27.00" in t.text()
    page.locator(f"#price-{data['product']}").fill("33.00")
    with page.expect_navigation():
        page.locator(f"form[action='/agent/products/{data['product']}/price'] button[type=submit]").first.click()
    assert "33.00" in t.text() and "Price saved" in t.text()

    t.open("/agent/keys?lang=en")
    with page.expect_navigation():
        page.click("main form button[type=submit]")
    secret = page.inner_text("#key-secret")
    assert re.fullmatch(r"[A-Za-z0-9_-]{40,}", secret)
    t.open("/agent/keys")
    assert secret not in page.content()                   # shown once

    t.open("/agent/station?lang=en")
    page.fill("#title", "小展的店")
    page.fill("#notice", "全场自动发货")
    with page.expect_navigation():
        page.click("form[action='/agent/station'] button[type=submit]")
    t.shot("portal-station-saved")
    t.open("/s/zhan/")
    assert "小展的店" in t.text("body") and "33.00" in t.text() and "全场自动发货" in t.text()
    t.shot("station-index")
    t.open(f"/s/zhan/product/{data['product']}")
    assert "33.00" in t.text()
    t.assert_clean()


def test_an_agent_adds_a_webhook_on_a_phone_sees_its_deliveries_and_removes_it(shop, data, tab):
    from kamengd.scheduler.jobs import send_notifications
    from test_notifications import Receiver, verify

    receiver = Receiver()
    try:
        t = tab(viewport=(390, 844), mobile=True)
        t.accept_dialogs = True
        page = t.page
        portal_sign_in(t)
        t.open("/agent/webhooks?lang=en")
        page.fill("#url", receiver.url)
        for event in ("order.paid", "order.delivered", "order.refunded"):
            page.uncheck(f"input[name=event][value='{event}']")
        with page.expect_navigation():
            page.click("form[action='/agent/webhooks'] button[type=submit]")
        secret = page.inner_text("#webhook-secret")
        assert secret.startswith("whsec_") and "balance.changed" in t.text()
        t.shot("portal-webhook-added-mobile")
        t.open("/agent/webhooks")
        assert secret not in page.content() and receiver.url in t.text()     # shown once

        def top_up_and_run_the_job(session, _vault):
            from kamengd.agents import services as agents
            from kamengd.agents.models import Agent

            agents.credit_balance(session, session.get(Agent, data["agent"]), 1000, reason="top-up", actor="test")
            session.commit()
            send_notifications(session)
        shop.run(top_up_and_run_the_job)
        [(_path, headers, body)] = receiver.requests
        assert verify(headers, body, secret) and b'"balance.changed"' in body
        t.open("/agent/webhooks?lang=en")
        assert "delivered" in t.text(".deliveries") and "HTTP 200" in t.text(".deliveries")
        t.shot("portal-webhooks-deliveries-mobile")
        with page.expect_navigation():
            page.click("main form.inline button[type=submit]")
        assert "Webhook removed" in t.text() and "No webhooks yet." in t.text()
        t.assert_clean()
    finally:
        receiver.close()


def test_a_file_of_orders_on_a_phone(shop, data, tab, tmp_path):
    """The template downloads, a CSV of two lines is uploaded, each line's result shows, and the
    result file is offered."""
    t = tab(viewport=(390, 844), mobile=True)
    page = t.page
    portal_sign_in(t)
    t.open("/agent/batches?lang=en")
    with page.expect_download() as got:
        page.click("a[href$='/batches/template.xlsx']")
    assert got.value.suggested_filename == "kamengd-batch-template.xlsx"
    upload = tmp_path / "orders.csv"
    upload.write_text(f"product_id,quantity,ref\n{data['product']},1,PO-1\n{data['product']},999,PO-2\n")
    page.set_input_files("input[type=file]", str(upload))
    t.shot("portal-batch-upload-mobile")
    with page.expect_navigation():
        page.click("main form button[type=submit]")
    assert "1 lines ordered, 1 failed" in t.text() or "1 line" in t.text(), t.text()
    assert "PO-1" in t.text() and "invalid_request" in t.text()
    t.shot("portal-batch-detail-mobile")
    assert page.locator("a[href$='/result.xlsx']").count() >= 1
    t.assert_clean()

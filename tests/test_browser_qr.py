"""The QR payment page in real headless Chromium (W4 §3): Alipay 当面付 through a local Alipay
in its own process. The buyer sees the QR code, the amount and a countdown; once Alipay
notifies, the page moves on to the keys by itself; without JavaScript it refreshes."""
import pytest

from browser_support import chromium, start_shop, tab  # noqa: F401 (fixtures)
from test_channel_alipay import APP_ID, SELLER, FakeAlipay, bare

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]


@pytest.fixture(scope="module")
def shop(backend, databases, tmp_path_factory):
    yield from start_shop(backend, databases, tmp_path_factory, "qr")


@pytest.fixture(scope="module")
def alipay(shop, tmp_path_factory):
    from kamengd.payments.services import add_channel, set_product_channels

    fake = FakeAlipay(tmp_path_factory.mktemp("alipay"))
    shop.run(lambda s, v: add_channel(s, v, channel_type="alipay", code="f2f", name="支付宝扫码", actor="test",
                                      options={"app_id": APP_ID, "private_key": fake.app_private,
                                               "alipay_public_key": bare(fake.alipay_public),
                                               "seller_id": SELLER, "gateway": f"{fake.base}/gateway.do"}))
    product, keys = shop.product("扫码月卡 QR card", 660, keys=3)
    # Paid through 当面付 only: the shop's other channels offer 支付宝 too (routed by method).
    shop.run(lambda s, v: set_product_channels(s, product, "f2f", actor="test"))
    yield {"fake": fake, "product": product, "keys": keys}
    fake.stop()


def test_scan_the_qr_code_and_the_page_moves_on(shop, alipay, tab):
    t = tab(viewport=(390, 844), mobile=True)
    page = t.page
    t.open(f"/product/{alipay['product']}")
    page.fill("#email", "scan@example.com")
    page.get_by_label("支付宝").check()
    with page.expect_navigation(url=f"{shop.base}/pay/f2f/start?**"):
        page.get_by_role("button", name="立即购买").click()
    assert page.locator("figure.qr svg").count() == 1 and "6.60 CNY" in t.text()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    first = page.inner_text("#countdown")
    page.wait_for_function("t => document.getElementById('countdown').textContent !== t", arg=first)
    assert ":" in page.inner_text("#countdown")
    t.shot("pay-qr-phone")
    order_no = page.inner_text(".order-no")
    with page.expect_navigation(url=f"{shop.base}/order/**", timeout=30_000):
        assert alipay["fake"].pay(order_no, notify=f"{shop.base}/pay/f2f/notify")["answers"] == [[200, "success"]]
    keys = page.locator("#keys code").all_inner_texts()
    assert len(keys) == 1 and keys[0] in alipay["keys"]
    t.assert_clean()


def test_without_javascript_the_qr_page_refreshes(shop, alipay, chromium):
    context = chromium.new_context(java_script_enabled=False, locale="zh-CN")
    try:
        page = context.new_page()
        page.goto(f"{shop.base}/product/{alipay['product']}")
        page.fill("#email", "nojs@example.com")
        page.get_by_label("支付宝").check()
        with page.expect_navigation():
            page.get_by_role("button", name="立即购买").click()
        assert page.locator("figure.qr svg").count() == 1
        assert page.locator("noscript").count() >= 1
        order_no = page.inner_text(".order-no")
        alipay["fake"].pay(order_no, notify=f"{shop.base}/pay/f2f/notify")
        page.wait_for_url(f"{shop.base}/order/**", timeout=20_000)   # the meta refresh, then the redirect
        assert page.locator("#keys code").count() == 1
    finally:
        context.close()

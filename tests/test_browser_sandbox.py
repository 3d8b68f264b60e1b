"""The sandbox channel in real headless Chromium against a real server (W4 §5): a newcomer
browses, buys, presses pay on the sandbox's page and gets the keys; on a phone too."""
import pytest

from browser_support import chromium, start_shop, tab  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]


@pytest.fixture(scope="module")
def shop(backend, databases, tmp_path_factory):
    yield from start_shop(backend, databases, tmp_path_factory, "sandbox")


@pytest.fixture(scope="module")
def goods(shop):
    from kamengd.payments.services import add_channel

    shop.run(lambda s, v: add_channel(s, v, channel_type="sandbox", code="sandbox", name="沙箱测试 Sandbox",
                                      actor="test", sort_order=0))
    product, keys = shop.product("演示月卡 Demo card", 990, keys=4)
    return {"product": product, "keys": keys}


@pytest.mark.parametrize("phone", [False, True], ids=["desktop", "phone"])
def test_browse_buy_press_pay_get_the_keys(shop, goods, tab, phone):
    t = tab(viewport=(390, 844), mobile=True) if phone else tab()
    page = t.page
    t.open("/")
    with page.expect_navigation():
        page.get_by_role("link", name="演示月卡 Demo card").click()
    page.fill("#email", "newcomer@example.com")
    page.get_by_label("沙箱测试 Sandbox").check()
    with page.expect_navigation(url=f"{shop.base}/pay/sandbox/sandbox?**"):
        page.get_by_role("button", name="立即购买").click()
    assert "9.90 CNY" in t.text() and "不会真的扣款" in t.text()
    if phone:
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
    t.shot("sandbox-pay-phone" if phone else "sandbox-pay")
    with page.expect_navigation(url=f"{shop.base}/order/**"):
        page.get_by_role("button", name="付款（沙箱）").click()
    assert page.get_attribute("#status", "data-status") == "delivered"
    keys = page.locator("#keys code").all_inner_texts()
    assert len(keys) == 1 and keys[0] in goods["keys"]
    t.shot("sandbox-delivered-phone" if phone else "sandbox-delivered")
    # Back to the pay page (the back button): nothing more to pay.
    page.go_back()
    page.reload()
    assert page.get_by_role("button", name="付款（沙箱）").count() == 0
    t.assert_clean()

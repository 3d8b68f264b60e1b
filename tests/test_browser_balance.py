"""The balance channel in real headless Chromium against a real server (W4): a member browses,
buys with 余额, signs in from the pay page, comes back to it, pays and gets the keys; on a phone
too. The balance goes down by the order's amount, once."""
import pytest

from browser_support import chromium, start_shop, tab  # noqa: F401 (fixtures)
from conftest import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]


@pytest.fixture(scope="module")
def shop(backend, databases, tmp_path_factory):
    yield from start_shop(backend, databases, tmp_path_factory, "balance")


@pytest.fixture(scope="module")
def goods(shop):
    from kamengd.agents import services as agents
    from kamengd.payments.services import add_channel

    def setup(s, v):
        add_channel(s, v, channel_type="balance", code="yue", name="余额支付 Balance", actor="test")
        member = agents.create_member(s, username="mei", password=PASSWORD, actor="test")
        agents.credit_balance(s, member, 5000, reason="top-up", actor="test")
        return member.id

    member_id = shop.run(setup)
    product, keys = shop.product("会员月卡 Member card", 990, keys=4)
    return {"product": product, "keys": keys, "member": member_id}


def balance(shop, member_id: int) -> int:
    from kamengd.ledger import services as ledger

    return shop.run(lambda s, v: ledger.balances(s, member_id)["available"])


@pytest.mark.parametrize("phone", [False, True], ids=["desktop", "phone"])
def test_a_member_buys_signs_in_pays_from_its_balance(shop, goods, tab, phone):
    before = balance(shop, goods["member"])
    t = tab(viewport=(390, 844), mobile=True) if phone else tab()
    page = t.page
    t.open("/")
    with page.expect_navigation():
        page.get_by_role("link", name="会员月卡 Member card").click()
    page.fill("#email", "mei@example.com")
    page.get_by_label("余额").check()
    with page.expect_navigation(url=f"{shop.base}/pay/yue/balance?**"):
        page.get_by_role("button", name="立即购买").click()
    assert "9.90 CNY" in t.text()
    with page.expect_navigation(url=f"{shop.base}/agent/login?**"):
        page.get_by_role("link", name="登录后付款").click()
    page.fill("#username", "mei")
    page.fill("#password", PASSWORD)
    with page.expect_navigation(url=f"{shop.base}/pay/yue/balance?**"):
        page.get_by_role("button", name="登录").click()
    assert "mei" in t.text() and f"{before // 100}.{before % 100:02d} CNY" in t.text()
    if phone:
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
    t.shot("balance-pay-phone" if phone else "balance-pay")
    with page.expect_navigation(url=f"{shop.base}/order/**"):
        page.get_by_role("button", name="确认用余额支付 9.90 CNY").click()
    assert page.get_attribute("#status", "data-status") == "delivered"
    keys = page.locator("#keys code").all_inner_texts()
    assert len(keys) == 1 and keys[0] in goods["keys"]
    assert balance(shop, goods["member"]) == before - 990
    # Back to the pay page: nothing more to pay.
    page.go_back()
    page.reload()
    assert page.get_by_role("button", name="确认用余额支付 9.90 CNY").count() == 0
    t.assert_clean()

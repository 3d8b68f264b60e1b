"""W10 walked as a buyer and as staff would, on a phone and a desktop, in Chinese and in
English, in real headless Chromium against a real server (with its scheduler): what
each page shows is checked, screenshotted (CI artefacts) and checked for labels and
names. The finer points have their own tests (test_browser_shop, test_browser_panel,
test_storefront, test_pay_methods …); this one proves they hold together on every
screen a W10 point touches."""
import json
import re
import urllib.parse
import urllib.request

import pytest

from browser_support import EPAY_KEY, EPAY_PID, chromium, sign_in, start_shop, tab  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]

SCREENS = [((390, 844), "zh"), ((390, 844), "en"), ((1280, 900), "zh"), ((1280, 900), "en")]
IDS = ["phone-zh", "phone-en", "desktop-zh", "desktop-en"]
METHODS = {"zh": ["支付宝", "微信支付", "QQ 钱包", "USDT"], "en": ["Alipay", "WeChat Pay", "QQ Wallet", "USDT"]}


@pytest.fixture(scope="module")
def shop(backend, databases, tmp_path_factory):
    yield from start_shop(backend, databases, tmp_path_factory, "w10")


@pytest.fixture(scope="module")
def goods(shop):
    """60 products in stock (two index pages), one sold out, manual goods with input fields,
    and one Epay channel offering four pay types in place of the two single-type ones."""
    from kamengd.payments.models import PaymentChannel
    from kamengd.payments.services import add_channel, set_channel_enabled

    def channels(session, vault):
        for row in session.query(PaymentChannel).all():
            set_channel_enabled(session, row, False, vault=vault, actor="test")
        add_channel(session, vault, channel_type="epay", code="epay", name="易支付", actor="test",
                    options={"gateway": shop.gateway.url, "pid": EPAY_PID, "key": EPAY_KEY,
                             "pay_types": "alipay,wxpay,qqpay,usdt"})
    shop.run(channels)
    shop.channels = ["epay"]   # the staff's test orders are placed and paid there
    cards = shop.category("点卡", sort_order=1)
    many = [shop.product(f"点卡 {i:02d}", 100 + i, keys=2, category_id=cards)[0] for i in range(60)]
    sold_out, _ = shop.product("售罄商品 Sold out", 500, keys=0, category_id=cards)
    stocked, _ = shop.product("staff 的订单 Staff's orders", 200, keys=10)
    topup, _ = shop.product("代充 Top-up", 3000, delivery_mode="manual", max_quantity=3,
                            input_fields="充值QQ号 | qq | required\n备注 | text | optional")
    shop.setting("site.footer", "营业时间 9:00–22:00 Open 9 to 10")
    shop.setting("site.contact_qq", "10001")
    return {"first": many[0], "sold_out": sold_out, "topup": topup, "stocked": stocked}


def lang_tab(tab, viewport, lang):
    t = tab(viewport=viewport, mobile=viewport[0] < 500)
    t.open(f"/?lang={lang}")   # the storefront's choice, remembered in a cookie (the panel follows it)
    return t


def no_sideways_scroll(t):
    assert t.page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), t.page.url


@pytest.mark.parametrize("viewport, lang", SCREENS, ids=IDS)
def test_a_buyer_on_every_screen(shop, goods, tab, viewport, lang):
    zh = lang == "zh"
    name = f"{'phone' if viewport[0] < 500 else 'desktop'}-{lang}"
    t = lang_tab(tab, viewport, lang)
    page = t.page

    # §6 the index: a page of products, sold out hidden until asked for, page numbers
    assert page.locator("main .product, main li.product, main article").count() <= 48
    assert "售罄商品" not in t.text()
    assert page.locator("a[href*='page=2']").count() >= 1
    no_sideways_scroll(t)
    t.shot(f"w10-index-{name}")
    t.open(f"/?all=1&page=2&lang={lang}")
    assert "售罄商品" in t.text()

    # §4 the product page: methods by name with a mark, one quantity limit, a live total;
    # §3 the buyer's input for manual goods; §10 the footer and customer service
    t.open(f"/product/{goods['topup']}")
    labels = [text.strip() for text in page.locator("label.method > span").all_inner_texts()]
    assert labels == METHODS[lang], labels
    assert page.locator("label.method svg.pay-icon").count() == 4
    assert page.get_attribute("#quantity", "max") == "3"
    assert ("1 – 3" in t.text("#per-order"))
    page.fill("#quantity", "2")
    assert page.inner_text("#total") == "60.00"
    assert page.get_attribute("#query_password", "autocomplete") == "off"
    footer = t.text("footer")
    assert "营业时间" in footer and "10001" in footer
    page.fill("#input_f1", "12345678")
    page.fill("#email", "walker@example.com")
    page.get_by_label(METHODS[lang][1]).check()
    no_sideways_scroll(t)
    t.shot(f"w10-product-{name}")
    with page.expect_navigation(url=re.compile(re.escape(shop.gateway.url))):
        page.get_by_role("button", name="立即购买" if zh else "Buy now").click()
    pay = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(page.url).query))
    assert pay["type"] == "wxpay" and pay["money"] == "60.00"
    order_no = pay["out_trade_no"]

    # §1 back from the gateway before its callback: "confirming", the product, the method
    t.open(pay["return_url"])
    text = t.text()
    assert ("正在确认支付" if zh else "Confirming your payment") in text
    assert "代充 Top-up" in text and "12345678" in text and METHODS[lang][1] in text
    no_sideways_scroll(t)
    t.shot(f"w10-return-{name}")

    # §2 this browser's orders, without any password
    t.open("/lookup")
    assert order_no in t.text()
    t.shot(f"w10-lookup-{name}")

    # §5 a styled error page in the buyer's language
    t.open("/product/99999999", status=404)
    assert ("找不到" if zh else "not found") in t.text().lower() or ("不存在" if zh else "no longer") in t.text()
    assert page.locator("a[href='/']").count() >= 1
    t.shot(f"w10-404-{name}")
    t.assert_clean(allow_status=(404,))


@pytest.mark.parametrize("viewport, lang", SCREENS, ids=IDS)
def test_staff_on_every_screen(shop, goods, tab, viewport, lang):
    zh = lang == "zh"
    name = f"{'phone' if viewport[0] < 500 else 'desktop'}-{lang}"
    t = lang_tab(tab, viewport, lang)
    page = t.page
    order_no, token = shop.paid_order(goods["stocked"])
    with urllib.request.urlopen(f"{shop.base}/api/v1/orders/{order_no}?token={token}", timeout=10) as resp:
        [key] = json.load(resp)["keys"]   # what the buyer says "does not work"
    sign_in(t, shop.staff("admin"))

    # §9 the settings page names site.url and says a gateway cannot reach this one
    t.open("/admin/settings")
    assert page.locator("input[name='site.url']").count() == 1
    assert page.locator("#site-url-problem").is_visible()
    t.shot(f"w10-settings-{name}")

    # §7 the delivered key finds its order (by fingerprint); the order number does not wrap
    t.open("/admin/orders?status=delivered")
    assert order_no in t.text()
    row = page.locator("tr", has_text=order_no).first
    cell = row.locator("a", has_text=order_no).first
    assert cell.evaluate("el => el.getClientRects().length") <= 2, "the order number wraps"
    t.open(f"/admin/orders?key={urllib.parse.quote(key)}")
    assert order_no in t.text() and page.locator("tbody tr").count() == 1
    t.shot(f"w10-orders-{name}")

    # §7 the product's keys, masked, by batch
    t.open(f"/admin/stock/{goods['stocked']}/keys")
    assert page.locator("table").count() >= 1
    t.shot(f"w10-stock-keys-{name}")

    # §4 the channel offers four pay types, ticked on its form
    t.open("/admin/channels")
    assert "alipay, wxpay, qqpay, usdt" in t.text()
    t.shot(f"w10-channels-{name}")
    assert ("支付通道" if zh else "Payment channels") in t.text()
    t.assert_clean()

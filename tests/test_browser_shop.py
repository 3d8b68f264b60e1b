"""The storefront in real headless Chromium against a real server: buy, pay, copy the keys."""
import re
import urllib.parse

import pytest

from browser_support import chromium, start_shop, tab  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]

HOSTILE = '"><img src=x onerror=alert(1)><script>alert(2)</script>{{7*7}}'


@pytest.fixture(scope="module")
def shop(backend, databases, tmp_path_factory):
    yield from start_shop(backend, databases, tmp_path_factory, "storefront")


@pytest.fixture(scope="module")
def goods(shop):
    """Two categories, products in stock, low, out of stock, by hand, and one with no category."""
    games = shop.category("游戏点卡", sort_order=1)
    members = shop.category("会员", sort_order=2)
    shop.setting("site.notice", "春节期间正常发货。\nOrders are delivered as usual over the holidays.")
    month, month_keys = shop.product("月卡 Monthly pass", 1990, keys=6, category_id=games, max_quantity=5,
                                     description="30 天会员。\n兑换后立即生效。", low_stock_threshold=3)
    # (its options: the monthly pass itself, a quarterly one in stock, a yearly one sold out)
    quarter, _ = shop.product("季卡 Quarterly pass", 4990, keys=2, category_id=games, variant_of=month,
                              variant_name="季卡 Quarterly")
    shop.product("年卡 Yearly pass", 17900, keys=0, category_id=games, variant_of=month,
                 variant_name="年卡 Yearly")
    week, _ = shop.product("周卡 Weekly pass", 590, keys=2, category_id=games, low_stock_threshold=5)
    vip, _ = shop.product("年度会员 VIP", 19900, keys=0, category_id=members)
    manual, _ = shop.product("代充服务 Top-up by hand", 5000, category_id=members, delivery_mode="manual")
    misc, _ = shop.product("测试商品 Other", 100, keys=3)
    return {"games": games, "members": members, "month": month, "month_keys": month_keys, "week": week,
            "quarter": quarter,
            "vip": vip, "manual": manual, "misc": misc}


def test_buyer_buys_pays_and_copies_the_keys(shop, goods, tab):
    t = tab()
    page = t.page
    t.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=shop.base)
    t.open("/")
    assert "春节期间正常发货" in t.text(".notice")
    t.shot("shop-index")
    with page.expect_navigation():
        page.get_by_role("link", name="月卡 Monthly pass").click()
    assert page.url == f"{shop.base}/product/{goods['month']}"
    assert "19.90 CNY" in t.text() and page.inner_text("#stock") == "6"
    assert page.get_attribute("#quantity", "max") == "5"
    t.shot("shop-product")

    assert page.inner_text("#total") == "19.90"
    page.fill("#quantity", "2")
    assert page.inner_text("#total") == "39.80"        # the total follows the quantity (W10 §4)
    page.fill("#email", "buyer@example.com")
    page.fill("#query_password", "my-lookup-pw")
    page.get_by_label("微信支付").check()
    with page.expect_navigation(url=re.compile(re.escape(shop.gateway.url))):
        page.get_by_role("button", name="立即购买").click()
    pay = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(page.url).query))
    assert pay["money"] == "39.80" and pay["type"] == "wxpay" and pay["notify_url"] == f"{shop.base}/pay/wxpay/notify"
    order_no = pay["out_trade_no"]

    # Before the callback: the order waits for the payment, and offers the way back to the gateway.
    t.open(f"/order/{order_no}")
    assert page.get_attribute("#status", "data-status") == "pending"
    assert page.get_by_role("link", name="去付款").get_attribute("href").startswith(shop.gateway.url)
    t.shot("shop-order-pending")

    # The gateway calls back (signed); the buyer comes back through the return URL.
    assert shop.notify(order_no, "39.80", channel="wxpay") == "success"
    t.open(pay["return_url"])
    assert page.get_attribute("#status", "data-status") == "delivered"
    t.open(f"/order/{order_no}")
    page.reload()
    keys = page.locator("#keys code").all_inner_texts()
    assert len(keys) == 2 and set(keys) <= set(goods["month_keys"])
    t.shot("shop-order-delivered")

    # Copy buttons: shown by copy.js (no inline script), and they copy.
    buttons = page.locator("#keys button.copy")
    assert buttons.count() == 2 and buttons.first.is_visible()
    buttons.nth(1).click()
    page.wait_for_selector("#keys li:nth-child(2) button.copied")
    assert page.evaluate("navigator.clipboard.readText()") == keys[1]
    assert "已复制" in t.text(".copy-status")
    page.get_by_role("button", name="复制全部卡密").click()
    page.wait_for_selector("button.copy-all.copied")
    assert page.evaluate("navigator.clipboard.readText()") == "\n".join(keys)
    t.shot("shop-order-copied")

    # Another browser finds it with the e-mail and the query password.
    other = tab()
    other.open("/lookup")
    other.shot("shop-lookup")
    other.page.fill("#email", "buyer@example.com")
    other.page.fill("#query_password", "my-lookup-pw")
    with other.page.expect_navigation():
        other.page.get_by_role("button", name="查询").click()
    found = other.text()
    assert order_no in found and all(k in found for k in keys) and "月卡 Monthly pass" in found
    other.shot("shop-lookup-found")
    for each in (t, other):
        each.assert_clean()


@pytest.fixture(scope="module")
def points(shop, goods):
    """A product of its own for the return-page tests (each buys one)."""
    product, _ = shop.product("点数卡 Points", 300, keys=6, category_id=goods["games"])
    return product


def buy_and_come_back(shop, product, page, t, email):
    """Buy one through the storefront and come back from the (fake) gateway before
    its callback, as gateways often return the buyer: the pay URL's parameters."""
    t.open(f"/product/{product}")
    page.fill("#email", email)
    with page.expect_navigation(url=re.compile(re.escape(shop.gateway.url))):
        page.get_by_role("button", name="立即购买").click()
    pay = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(page.url).query))
    t.open(pay["return_url"])
    return pay


def callback_later(shop, pay, seconds=3.0):
    import threading

    timer = threading.Timer(seconds, shop.notify, args=(pay["out_trade_no"], pay["money"], "alipay"))
    timer.start()
    return timer


@pytest.mark.parametrize("viewport", [(390, 844), (1280, 900)], ids=["phone", "desktop"])
def test_back_from_the_gateway_before_its_callback_the_keys_appear_by_themselves(shop, points, tab, viewport):
    """W10 §1: "正在确认支付…", then the keys without a tap when the callback comes 3 s later."""
    t = tab(viewport=viewport, mobile=viewport[0] < 500)
    page = t.page
    pay = buy_and_come_back(shop, points, page, t, "return@example.com")
    assert page.get_attribute("#status", "data-status") == "pending"
    assert "正在确认支付" in t.text(".confirming")
    facts = t.text("dl.facts")
    assert "点数卡 Points" in facts and "付款期限" in facts
    assert page.get_by_role("link", name="去付款").get_attribute("href").startswith(shop.gateway.url)
    t.shot(f"shop-return-confirming-{'phone' if viewport[0] < 500 else 'desktop'}")
    timer = callback_later(shop, pay)
    page.wait_for_selector("#keys code", timeout=15_000)      # no reload by the test
    timer.join()
    assert page.get_attribute("#status", "data-status") == "delivered"
    assert page.locator("#keys code").count() == 1
    t.shot(f"shop-return-delivered-{'phone' if viewport[0] < 500 else 'desktop'}")
    # The lookup page lists this browser's orders (W10 §2).
    t.open("/lookup")
    assert pay["out_trade_no"] in t.text("#this-browser")
    t.shot(f"shop-lookup-this-browser-{'phone' if viewport[0] < 500 else 'desktop'}")
    t.assert_clean()


def test_without_javascript_the_return_page_refreshes_itself(shop, points, chromium):
    from browser_support import Tab, screenshot_dir

    context = chromium.new_context(java_script_enabled=False, viewport={"width": 390, "height": 844},
                                   locale="zh-CN")
    try:
        t = Tab(context, shop, screenshot_dir(shop.backend))
        page = t.page
        pay = buy_and_come_back(shop, points, page, t, "nojs@example.com")
        assert "正在确认支付" in t.text(".confirming")
        timer = callback_later(shop, pay)
        page.wait_for_selector("#keys code", timeout=20_000)   # the <noscript> refresh, every 5 s
        timer.join()
        t.shot("shop-return-delivered-nojs")
    finally:
        context.close()


def test_categories_search_and_stock_badges(shop, goods, tab):
    t = tab()
    page = t.page
    t.open("/")
    headings = page.locator("section.category h2").all_inner_texts()
    assert headings == ["游戏点卡", "会员", "其他"]
    # Sold out is hidden by default, and one tap away (W10 §6).
    assert "年度会员 VIP" not in t.text("main") and "1 个缺货商品已隐藏" in t.text(".sold-out-toggle")
    with page.expect_navigation():
        page.locator(".sold-out-toggle a").click()
    badges = {li.locator("a.name").inner_text(): li.locator(".badge").inner_text()
              for li in page.locator("li.product").all()}
    assert badges["周卡 Weekly pass"] == "库存紧张: 2" and badges["年度会员 VIP"] == "缺货"
    t.shot("shop-index-with-sold-out")
    assert badges["代充服务 Top-up by hand"] == "人工发货" and re.fullmatch(r"库存: \d+", badges["月卡 Monthly pass"])
    # A product with options is one card: its group's stock, its lowest price and up.
    assert "季卡 Quarterly pass" not in badges
    group_stock = int(badges["月卡 Monthly pass"].split(": ")[1])   # the monthly pass's own, and the quarter's 2
    month_card = page.locator("li.product", has=page.get_by_role("link", name="月卡 Monthly pass"))
    assert month_card.locator(".price").inner_text() == "19.90 CNY 起"

    with page.expect_navigation():
        page.locator("nav.categories").get_by_role("link", name="会员").click()
    assert f"category={goods['members']}" in page.url and "all=1" not in page.url
    names = page.locator("li.product a.name").all_inner_texts()
    assert names == ["代充服务 Top-up by hand"]       # the VIP pass is sold out
    assert page.locator("nav.categories a[aria-current=page]").inner_text() == "会员"
    t.shot("shop-category")

    # A search stays inside the chosen category; clearing it keeps the category.
    page.fill("#q", "VIP")
    with page.expect_navigation():
        page.get_by_role("button", name="搜索").click()
    assert page.locator("li.product a.name").all_inner_texts() == ["年度会员 VIP"]
    t.shot("shop-search")
    page.fill("#q", "不存在的商品")
    with page.expect_navigation():
        page.get_by_role("button", name="搜索").click()
    assert "没有找到匹配的商品" in t.text()
    t.shot("shop-search-empty")

    # The options: each its own page, the one shown marked; the sold-out one says so.
    t.open(f"/product/{goods['month']}")
    assert group_stock == int(t.text("#stock")) + 2
    options = page.locator("nav.options a")
    assert options.all_inner_texts()[0].startswith("月卡 Monthly pass") and options.count() == 3
    assert page.locator("nav.options a[aria-current=page]").inner_text().startswith("月卡")
    assert "缺货" in options.nth(2).inner_text()
    with page.expect_navigation():
        options.nth(1).click()
    assert page.url.endswith(f"/product/{goods['quarter']}") and t.text("#stock") == "2"
    assert page.locator("form.buy").get_attribute("action") == f"/product/{goods['quarter']}"
    assert "30 天会员" in t.text(".description")     # the monthly pass's words: the quarter has none of its own
    t.shot("shop-product-options")

    # Out of stock: no form; by hand: a form without a stock count.
    t.open(f"/product/{goods['vip']}")
    assert page.locator("form.buy").count() == 0 and "缺货" in t.text()
    t.shot("shop-product-out-of-stock")
    t.open(f"/product/{goods['manual']}")
    assert page.locator("form.buy").count() == 1 and "人工发货" in t.text()
    t.shot("shop-product-manual")

    t.open("/?lang=en")
    assert page.locator("section.category h2").last.inner_text() == "Other"
    assert page.get_attribute("html", "lang") == "en"
    t.shot("shop-index-en")
    t.open(f"/product/{goods['month']}")          # English is remembered
    assert "Buy now" in t.text()
    t.shot("shop-product-en")
    t.assert_clean()


def test_bad_purchase_shows_a_clear_error(shop, goods, tab):
    t = tab()
    page = t.page
    t.open(f"/product/{goods['week']}")
    # The browser's own checks (min/max, type=email) come first; past them, the server's.
    page.eval_on_selector("form.buy", "form => { form.noValidate = true; }")
    page.fill("#quantity", "101")
    page.fill("#email", "buyer@example.com")
    with page.expect_navigation():
        page.get_by_role("button", name="立即购买").click()
    assert "数量须在 1 到 100 之间" in t.text("#form-error")
    assert page.get_attribute("#quantity", "aria-invalid") == "true"
    assert page.input_value("#email") == "buyer@example.com"     # what the buyer typed stays
    t.shot("shop-product-error")

    page.eval_on_selector("form.buy", "form => { form.noValidate = true; }")
    page.fill("#quantity", "1")
    page.fill("#email", "not-an-address")
    with page.expect_navigation():
        page.get_by_role("button", name="立即购买").click()
    assert "请填写有效的邮箱地址" in t.text("#form-error")
    assert page.get_attribute("#email", "aria-invalid") == "true"

    page.eval_on_selector("form.buy", "form => { form.noValidate = true; }")
    page.fill("#quantity", "3")
    page.fill("#email", "buyer@example.com")
    with page.expect_navigation():
        page.get_by_role("button", name="立即购买").click()
    assert "库存不足" in t.text("#form-error")

    t.open("/order/K000000000000", status=404)
    assert "无法在此验证订单" in t.text()
    t.shot("shop-order-missing")
    t.assert_clean(allow_status=(400, 404, 409))


def test_mobile_layout(shop, goods, tab):
    order_no, token = shop.paid_order(goods["misc"], quantity=2)
    t = tab(viewport=(390, 844), mobile=True)
    page = t.page
    for path, name in (("/", "shop-index-mobile"), (f"/product/{goods['month']}", "shop-product-mobile"),
                       (f"/order/{order_no}?token={token}", "shop-order-mobile"), ("/lookup", "shop-lookup-mobile")):
        t.open(path)
        # Nothing wider than the phone: no sideways scrolling.
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, path
        t.shot(name)
    t.open(f"/product/{goods['month']}")
    button = page.get_by_role("button", name="立即购买").bounding_box()
    assert button["width"] > 300      # full width, easy to tap
    t.assert_clean()


def test_hostile_product_name_does_not_run(shop, tab):
    # Last in the module: it leaves a hostile product and notice in this shop.
    pid, _ = shop.product(HOSTILE, 100, keys=1, description=HOSTILE)
    shop.setting("site.notice", HOSTILE)
    t = tab()
    page = t.page
    for path in ("/", f"/product/{pid}", "/?" + urllib.parse.urlencode({"q": HOSTILE[:60]})):
        t.open(path)
        assert HOSTILE in t.text()                      # shown as text...
        assert page.locator("main img, main script").count() == 0   # ...not as markup
    assert t.text(".notice") == HOSTILE                 # the notice too; {{7*7}} not evaluated
    t.shot("shop-hostile-product")
    page.wait_for_timeout(300)
    assert t.dialogs == []
    t.assert_clean()


def test_buyer_buys_with_the_keyboard_only(shop, goods, tab):
    """From the shop's front page to the gateway with Tab, arrows, typing and Enter."""
    item, _ = shop.product("键盘 Keyboard pass", 100, keys=2)   # its own stock: other tests buy the rest
    t = tab()
    page = t.page
    t.open("/")
    t.press_until_focused(f"a.name[href='/product/{item}']")
    assert t.focus_is_visible()
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.url == f"{shop.base}/product/{item}"
    t.press_until_focused("#quantity")
    page.keyboard.press("Control+A")
    page.keyboard.type("2")
    t.press_until_focused("#email")
    page.keyboard.type("keys@example.com")
    # The payment choice is a radio group: Tab enters it, the arrow keys move in it.
    radios = page.locator("input[type=radio][name=channel]")
    assert radios.count() == 2
    t.press_until_focused("input[type=radio][name=channel]:checked")
    page.keyboard.press("ArrowDown")
    assert page.locator("input[type=radio][name=channel]:checked").get_attribute("value") == "wxpay:wxpay"
    t.press_until_focused("button[type=submit]")
    assert t.focus_is_visible()
    with page.expect_navigation(url=re.compile(re.escape(shop.gateway.url))):
        page.keyboard.press("Enter")
    pay = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(page.url).query))
    assert pay["money"] == "2.00" and pay["type"] == "wxpay"
    t.assert_clean()


def luminance(css_colour: str) -> float:
    """The relative luminance (WCAG 2) of a computed colour, "rgb(r, g, b)"."""
    def channel(v):
        v /= 255
        return v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4
    r, g, b = (channel(float(v)) for v in re.findall(r"[\d.]+", css_colour)[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: str, b: str) -> float:
    light, dark = sorted((luminance(a), luminance(b)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


# Every text of the storefront's pages that must be readable.
TEXTS = ("main p, main a, main label, main dt, main dd, main span, main h1, main h2, main h3, main li, main code, "
         "main button, main output, main legend, header a, footer p, footer span, footer a, footer code")


@pytest.fixture(scope="module")
def delivered(shop, goods):
    """A delivered order's page (with its token): two keys, the customer-service text beside them."""
    product, _ = shop.product("深色 Dark pass", 100, keys=2)
    shop.setting("site.contact", "客服 QQ 10001，9:00–22:00\nAfter hours: help@example.com")
    order_no, token = shop.paid_order(product, quantity=2)
    return f"/order/{order_no}?token={token}"


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("viewport", [(390, 844), (1280, 900)], ids=["phone", "desktop"])
def test_the_storefront_follows_the_systems_colour_scheme(shop, goods, delivered, tab, scheme, viewport):
    """W10 §10, W5: light or dark as the system says (prefers-color-scheme), on a phone and a desktop, in
    both languages: every text readable (WCAG AA, 4.5:1), the focus ring seen (3:1), labels and names there."""
    size = "phone" if viewport[0] < 500 else "desktop"
    t = tab(viewport=viewport, mobile=size == "phone", color_scheme=scheme)
    page = t.page
    for lang in ("zh", "en"):
        for path, name in (("/?all=1", "index"), (f"/product/{goods['month']}", "product"), (delivered, "order"),
                           ("/lookup", "lookup")):
            t.open(f"{path}{'&' if '?' in path else '?'}lang={lang}")
            assert page.get_attribute("html", "lang") == ("en" if lang == "en" else "zh-CN")
            body, main, text = page.evaluate("[document.body, document.querySelector('main'), document.body]"
                                             ".map((el, i) => getComputedStyle(el)[i < 2 ? 'backgroundColor' : 'color'])")
            if scheme == "dark":
                assert luminance(body) < 0.05 and luminance(main) < 0.05 and luminance(text) > 0.6, (body, main, text)
            else:
                assert luminance(main) > 0.9 and luminance(text) < 0.05, (body, main, text)
            low = t.low_contrast(TEXTS)
            assert not low, (path, lang, low)
            if name == "order":
                assert "客服 QQ 10001" in t.text(".order-help") and page.locator("#keys code").count() == 2
            t.shot(f"shop-{name}-{size}-{lang}-{scheme}")
    # The focus ring stands out from the form behind it (WCAG 2.2: 3:1).
    t.open(f"/product/{goods['month']}")
    t.press_until_focused("#email")
    assert t.focus_is_visible()
    ring, behind = page.evaluate("[getComputedStyle(document.activeElement).outlineColor, "
                                 "getComputedStyle(document.querySelector('main')).backgroundColor]")
    assert contrast(ring, behind) >= 3, (ring, behind)
    t.assert_clean()

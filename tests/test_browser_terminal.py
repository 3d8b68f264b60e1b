"""The verifier terminal (W6 §2) in real headless Chromium on a phone: a verifier signs in,
lands on the terminal, types a code (any case, with or without dashes), sees what it is worth
and redeems it; a second time it is refused with where and when; a photo of a QR code is read
by the vendored decoder and checked the same way. No CSP violation, script or server error."""
import pytest

from browser_support import chromium, sign_in, start_shop, tab  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]


@pytest.fixture(scope="module")
def shop(backend, databases, tmp_path_factory):
    yield from start_shop(backend, databases, tmp_path_factory, "terminal")


@pytest.fixture(scope="module")
def counter(shop):
    """A coffee voucher with codes for sale, a store, its verifier, and two paid orders' codes."""
    from kamengd.vouchers import services, stock

    product, _keys = shop.product("咖啡券 Coffee voucher", 1500)
    shop.run(lambda s, v: services.set_terms(s, product_id=product, kind="uses", uses=2, entitlement="一杯中杯拿铁",
                                             actor="test"))
    shop.run(lambda s, v: stock.generate_stock(s, v, product_id=product, count=5, actor="test"))
    store = shop.run(lambda s, v: services.add_store(s, name="人民广场店", address="南京东路 1 号", actor="test").id)
    verifier = shop.staff("verifier")
    shop.run(lambda s, v: services.bind_verifier(s, store, verifier.username, actor="test"))
    codes = []
    for _ in range(2):
        order_no, _token = shop.paid_order(product)

        def code_of(s, v, order_no=order_no):
            from kamengd.orders.models import Order
            from kamengd.orders.services import order_keys
            import sqlalchemy as sa
            return order_keys(s, v, s.scalar(sa.select(Order).where(Order.order_no == order_no)))[0]
        codes.append(shop.run(code_of))
    return {"verifier": verifier, "codes": codes, "store": "人民广场店"}


def test_a_verifier_types_a_code_on_a_phone_and_redeems_it(shop, counter, tab):
    t = tab(viewport=(390, 844), mobile=True)
    page = t.page
    sign_in(t, counter["verifier"])
    assert page.url.endswith("/admin/terminal"), page.url
    assert counter["store"] in t.text()
    t.shot("terminal-phone")
    code = counter["codes"][0]
    page.fill("#code", code.replace("-", " ").lower())
    with page.expect_navigation():
        page.click("#look-form button[type=submit]")
    assert "一杯中杯拿铁" in t.text() and page.locator("#redeem-form").count() == 1
    assert page.inner_text("#left").startswith("2")
    page.fill("#uses", "2")
    with page.expect_navigation():
        page.click("#redeem")
    assert page.locator("#redeemed").count() == 1 and page.inner_text("#left").startswith("0")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    t.shot("terminal-redeemed-phone")
    # The same code again: refused, with where and when it was redeemed.
    page.fill("#code", code)
    with page.expect_navigation():
        page.click("#look-form button[type=submit]")
    assert page.locator("#redeem-form").count() == 0
    assert counter["store"] in page.inner_text("#refusal")
    t.assert_clean(allow_status=(404, 409))


def test_a_photo_of_the_qr_code_is_read_and_checked(shop, counter, tab, tmp_path):
    import segno

    code = counter["codes"][1]
    picture = tmp_path / "voucher.png"
    # As a phone's camera would take it: the QR code with a margin, not alone on the page.
    segno.make(code, error="m").save(str(picture), kind="png", scale=8, border=6)
    t = tab(viewport=(390, 844), mobile=True)
    page = t.page
    loaded = []
    page.on("request", lambda request: loaded.append(request.url))
    sign_in(t, counter["verifier"])
    assert page.locator("#scan-photo-label").is_visible()
    with page.expect_navigation():
        page.set_input_files("#scan-photo", str(picture))
    assert page.input_value("#code") == code
    # Linux's Chromium has no BarcodeDetector: the vendored jsQR read it.
    native = page.evaluate("'BarcodeDetector' in window")
    assert native or any("/static/jsqr.js" in url for url in loaded), loaded
    assert "一杯中杯拿铁" in t.text() and page.locator("#redeem-form").count() == 1
    with page.expect_navigation():
        page.click("#redeem")
    assert page.locator("#redeemed").count() == 1
    # A picture without a QR code says so and submits nothing.
    blank = tmp_path / "blank.png"
    segno.make("x", error="l").save(str(blank), kind="png", scale=1, border=0, dark="white")
    page.set_input_files("#scan-photo", str(blank))
    page.wait_for_function("() => document.getElementById('scan-status').textContent.length > 0")
    t.assert_clean(allow_status=(404, 409))


def test_the_redemptions_page_counts_today_as_stores_redeem(shop, counter, tab):
    """The report's figure for today follows redemptions made while the page is open."""
    from kamengd.vouchers import services, stock

    admin = shop.staff("admin")
    product, _keys = shop.product("储值卡 Stored value", 5000)
    shop.run(lambda s, v: services.set_terms(s, product_id=product, kind="value", value="50.00", actor="test"))
    [code] = shop.run(lambda s, v: stock.issue_batch(s, v, product_id=product, count=1, reason="live count test",
                                                     actor="test").codes)
    t = tab(viewport=(1280, 900))
    page = t.page
    sign_in(t, admin, next_path="/admin/vouchers")
    before = int(page.inner_text("#today-redeemed"))
    t.shot("panel-redemptions")

    def redeem_at_the_till(s, v):
        from kamengd.accounts.models import StaffUser
        import sqlalchemy as sa
        store = services.list_stores(s)[0]
        owner = s.scalar(sa.select(StaffUser).where(StaffUser.username == admin.username))
        return services.redeem(s, v, typed=code, store_id=store.id, user=owner, amount="12.50").redemption_id
    assert shop.run(redeem_at_the_till)
    page.wait_for_function("n => Number(document.getElementById('today-redeemed').textContent) > n", arg=before,
                           timeout=25_000)
    assert counter["store"] in page.inner_text("#today-stores")
    t.assert_clean()

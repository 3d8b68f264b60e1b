"""Reports (W7) in real headless Chromium: the dashboard's charts and every report's chart drawn
(an image with a name, a real size) on a desktop and a phone, light and dark; a list written in
the background, its progress page, then its file downloaded. No CSP violation, script or
server error; labels and names checked on every page screenshotted."""
import csv
import io

import pytest

from browser_support import chromium, sign_in, start_shop, tab  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]

REPORTS = ("sales", "profit", "channels", "hours", "repurchase", "agents", "coupons", "risk", "stores")


@pytest.fixture(scope="module")
def shop(backend, databases, tmp_path_factory):
    yield from start_shop(backend, databases, tmp_path_factory, "reports")


def charts_drawn(t) -> list[dict]:
    return t.page.evaluate("""() => [...document.querySelectorAll('svg.chart')].map(svg => {
        const box = svg.getBoundingClientRect();
        const label = document.getElementById(svg.getAttribute('aria-labelledby').split(' ')[0]);
        return {role: svg.getAttribute('role'), name: label ? label.textContent : '', width: box.width,
                height: box.height, marks: svg.querySelectorAll('rect, circle').length};
    })""")


def test_charts_render_and_a_list_downloads(shop, tab, tmp_path):
    product, _keys = shop.product("报表商品 <Report> product", 1990, keys=10)
    orders = [shop.paid_order(product)[0] for _ in range(3)]
    owner, state = shop.staff("owner"), None
    for viewport, scheme in (((1280, 900), "light"), ((390, 844), "dark")):
        t = tab(viewport=viewport, mobile=viewport[0] < 500, color_scheme=scheme, storage_state=state)
        if state is None:   # (a TOTP code is good once: the phone reuses the desktop's session)
            sign_in(t, owner)
            state = t.page.context.storage_state()
        t.open("/admin/dashboard?lang=en")
        drawn = charts_drawn(t)
        assert len(drawn) == 2 and all(c["role"] == "img" and c["name"] and c["width"] > 100 and c["height"] > 15
                                       for c in drawn), drawn
        assert "<Report>" not in t.page.content() and "报表商品 <Report> product" in t.text()
        t.shot(f"reports-dashboard-{scheme}")
        for name in REPORTS:
            t.open(f"/admin/reports?report={name}")
            [chart] = charts_drawn(t)
            assert chart["role"] == "img" and chart["width"] > 100 and chart["height"] > 15, (name, chart)
            assert t.page.locator("main h1").count() == 1
            if name in ("sales", "hours", "profit"):
                assert chart["marks"] > 0, name
                t.shot(f"reports-{name}-{scheme}")
            if viewport[0] < 500:
                assert t.page.evaluate("document.documentElement.scrollWidth") <= 390 + 1, name
        t.assert_clean()

    # A list in the background: the progress page, then the file.
    t.open("/admin/reports/lists")
    t.page.select_option("#list", "orders")
    t.page.select_option("#format", "csv")
    with t.page.expect_navigation():
        t.page.click("#list-form button[type=submit]")
    t.page.wait_for_selector("#download", timeout=60_000)     # the page looks again by itself
    t.shot("reports-list-ready")
    with t.page.expect_download() as got:
        t.page.click("#download")
    path = tmp_path / "orders.csv"
    got.value.save_as(path)
    rows = list(csv.reader(io.StringIO(path.read_bytes().decode("utf-8-sig"))))
    assert rows[0][0] == "order_no" and set(orders) <= {r[0] for r in rows[1:]}
    t.assert_clean()

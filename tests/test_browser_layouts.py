"""A buyer's whole purchase in real Chromium, in every supported layout.

The buyer buys on the product page, goes to the gateway and comes back before
its callback (as gateways often send buyers back); the callback arrives 3 s
later and the keys appear without a tap. Each layout as deployed, its
scheduler running:

- waitress, the scheduler in the same process;
- gunicorn, the scheduler run by `serve` (a supervised child);
- gunicorn --no-scheduler beside a separate `kamengd scheduler`;
- two servers on one MariaDB: the buyer on one, the gateway's callback on the other.
"""
import json
import re
import threading
import time
import urllib.parse
import urllib.request

import pytest

from browser_support import LAYOUTS, chromium, start_shop, tab  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]


@pytest.fixture(scope="module", params=list(LAYOUTS))
def shop(request, backend, databases, tmp_path_factory):
    if request.param == "two-servers" and backend == "sqlite":
        pytest.skip("two servers share one database on MariaDB; a SQLite file belongs to one machine")
    yield from start_shop(backend, databases, tmp_path_factory, "layouts", request.param)


def wait_for_scheduler(shop):
    """The layout runs a scheduler: one of its processes holds the lease."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with urllib.request.urlopen(shop.base + "/healthz", timeout=5) as resp:
            if json.load(resp)["scheduler"]["leader"]:
                return
        time.sleep(0.3)
    raise AssertionError(f"{shop.layout}: no scheduler took the lease")


@pytest.mark.parametrize("viewport, lang", [((390, 844), "zh"), ((1280, 900), "en")], ids=["phone-zh", "desktop-en"])
def test_buy_come_back_before_the_callback_and_get_the_keys(shop, tab, viewport, lang):
    wait_for_scheduler(shop)
    product, keys = shop.product(f"布局 Layout {viewport[0]}", 450, keys=2)
    t = tab(viewport=viewport, mobile=viewport[0] < 500)
    page = t.page
    suffix = "" if lang == "zh" else "?lang=en"
    t.open(f"/product/{product}{suffix}")
    page.fill("#email", f"layout-{lang}@example.com")
    with page.expect_navigation(url=re.compile(re.escape(shop.gateway.url))):
        page.get_by_role("button", name="立即购买" if lang == "zh" else "Buy now").click()
    pay = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(page.url).query))
    assert pay["notify_url"] == f"{shop.base}/pay/{shop.channels[0]}/notify"
    t.open(pay["return_url"])
    assert page.get_attribute("#status", "data-status") == "pending"
    assert ("正在确认支付" if lang == "zh" else "Confirming your payment") in t.text(".confirming")
    name = f"{shop.layout.replace('+', '-')}-{'phone' if viewport[0] < 500 else 'desktop'}-{lang}"
    t.shot(f"layout-return-confirming-{name}")

    timer = threading.Timer(3.0, shop.notify, args=(pay["out_trade_no"], pay["money"]))
    timer.start()
    page.wait_for_selector("#keys code", timeout=20_000)     # no reload by the test
    timer.join()
    assert page.get_attribute("#status", "data-status") == "delivered"
    shown = page.locator("#keys code").all_inner_texts()
    assert len(shown) == 1 and shown[0] in keys
    t.shot(f"layout-return-delivered-{name}")
    t.assert_clean()

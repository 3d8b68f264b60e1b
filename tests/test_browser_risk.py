"""The captcha a risk rule asks for, in real headless Chromium against a real server: the
vendored ALTCHA widget solves the challenge under the shop's strict CSP (its worker and its
styles from the shop's own files), and the purchase goes on to the payment gateway."""
import re

import pytest

from browser_support import chromium, start_shop, tab  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]


@pytest.fixture(scope="module")
def shop(backend, databases, tmp_path_factory):
    yield from start_shop(backend, databases, tmp_path_factory, "captcha")


@pytest.mark.parametrize("mobile, scheme", [(False, "light"), (True, "light"), (True, "dark")],
                         ids=["desktop", "phone", "phone-dark"])
def test_the_captcha_is_solved_in_the_browser_and_the_order_goes_on(shop, tab, mobile, scheme):
    from kamengd.extensions import db
    from kamengd.risk.rules import create_rule

    name = ("phone" if mobile else "desktop") + ("-dark" if scheme == "dark" else "")
    product, _ = shop.product(f"验证 Captcha {name}", 300, keys=3)
    with shop.app.app_context():
        create_rule(db.session, name="everyone here", kind="ip_list", action="captcha",
                    form={"ranges": "127.0.0.1\n::1"}, actor="test")
        db.session.commit()
        db.session.remove()
    t = tab(viewport=(390, 844), mobile=True, color_scheme=scheme) if mobile else tab(color_scheme=scheme)
    page = t.page
    t.open(f"/product/{product}")
    page.fill("#email", "captcha@example.com")
    page.get_by_role("button", name="立即购买").click()
    page.wait_for_selector("altcha-widget")
    assert "人机验证" in t.text(".error, [role=alert], #form-error")
    # The widget solves it by itself (auto="onload") and puts the solution in the form.
    page.wait_for_function("() => { const f = document.querySelector('input[name=captcha]'); "
                           "return f && f.value.length > 20; }", timeout=30000)
    # The widget's label and the error above it stay readable in the dark theme too (WCAG AA).
    assert not t.low_contrast("#form-error, altcha-widget label, altcha-widget .altcha-label"), scheme
    t.shot("shop-captcha" + ("-" + name if name != "desktop" else ""))
    with page.expect_navigation(url=re.compile(re.escape(shop.gateway.url))):
        page.get_by_role("button", name="立即购买").click()
    t.assert_clean(allow_status=(400,))

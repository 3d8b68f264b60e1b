"""Browser tests: real headless Chromium against a real `kamengd serve` process.

Chromium is Debian's (/usr/bin/chromium, never downloaded; KAMENGD_CHROMIUM
names another); the Python package playwright drives it. Without either,
the browser tests skip loudly, or fail when KAMENGD_REQUIRE_BROWSER=1 (CI).

Every page a test visits is screenshotted to
$KAMENGD_ARTIFACTS_DIR/screenshots/ (default: test-artifacts/ in the
repository), one stable name per page (`shop-index.png`, `panel-orders.png`);
runs on MariaDB write to screenshots/mysql/. The server's log goes to
logs/ next to them.

The test modules import the fixtures below (`chromium`, `shop`, `tab`).
"""
from __future__ import annotations

import io
import os
import re
import secrets
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

import pytest

from conftest import PASSWORD, free_port

CHROMIUM = os.environ.get("KAMENGD_CHROMIUM", "/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
REPO = Path(__file__).resolve().parent.parent
EPAY_PID, EPAY_KEY = "1001", "browser-test-merchant-key"
SITE_NAME = "卡密小店"
# Reports CSP violations to the console even where Chromium would not.
CSP_REPORTER = ("document.addEventListener('securitypolicyviolation', function (e) {"
                " console.error('CSP violation: ' + e.violatedDirective + ' blocked ' + e.blockedURI); });")


# --- is there a browser? ---------------------------------------------------

def missing_browser() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is missing (pip install -e '.[test]')"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium; scripts/test does it when run as root)"
    return None


def require_browser() -> None:
    """Skip loudly without a browser; fail instead when KAMENGD_REQUIRE_BROWSER=1."""
    reason = missing_browser()
    if reason is None:
        return
    if os.environ.get("KAMENGD_REQUIRE_BROWSER") == "1":
        pytest.fail(f"browser tests cannot run and KAMENGD_REQUIRE_BROWSER=1: {reason}", pytrace=False)
    warnings.warn(pytest.PytestWarning(f"BROWSER TESTS NOT RUN: {reason}"))
    pytest.skip(f"BROWSER TESTS NOT RUN: {reason}")


# --- artifacts ---------------------------------------------------------------

def artifacts_dir() -> Path:
    root = os.environ.get("KAMENGD_ARTIFACTS_DIR")
    return Path(root) if root else REPO / "test-artifacts"


def screenshot_dir(backend: str) -> Path:
    path = artifacts_dir() / "screenshots"
    if backend != "sqlite":
        path = path / backend
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- the payment gateway -------------------------------------------------------

class GatewayPage:
    """The Epay site's payment page, where "Buy now" lands the buyer. Paying is the
    test's job: it sends the gateway's signed callback itself (LiveShop.notify)."""

    def __init__(self):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                body = ("<!doctype html><link rel=icon href='data:,'><title>Fake Epay</title>"
                        "<h1>Fake Epay gateway</h1>").encode()
                self.send_response(200 if self.path.startswith("/submit.php?") else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# --- a shop in real server processes ------------------------------------------

# The supported layouts: the processes each runs (`kamengd ARGS...`), servers first.
LAYOUTS = {
    "waitress": [["serve"]],                                             # the scheduler in the process
    "gunicorn": [["serve", "--server", "gunicorn"]],                    # ... in gunicorn's master
    "gunicorn+scheduler": [["serve", "--server", "gunicorn", "--no-scheduler"], ["scheduler"]],
    "two-servers": [["serve"], ["serve", "--server", "gunicorn"]],       # one database (MariaDB), two servers
}

class LiveShop:
    """A fresh installation served by `kamengd serve`, plus an in-process app to set up data."""

    def __init__(self, backend: str, databases, tmp_path_factory, name: str, layout: str = "waitress"):
        from kamengd.app import create_app
        from kamengd.config import load_config
        from kamengd.operations.installation import install

        assert layout in LAYOUTS, layout
        self.backend, self.name, self.layout = backend, name, layout
        self.ports = [free_port() for argv in LAYOUTS[layout] if argv[0] == "serve"]
        self.bases = [f"http://127.0.0.1:{port}" for port in self.ports]
        self.base = self.bases[0]              # where the buyer's browser goes
        self.callback_base = self.bases[-1]    # where the gateway calls (the other server, with two)
        root = tmp_path_factory.mktemp(f"browser-{name}")
        url = None if backend == "sqlite" else databases.new_url(backend)
        result = install(root / "data", admin_password=PASSWORD, database_url=url, site_name=SITE_NAME,
                         site_url=self.base)
        self.config_path = result.config_path
        # As the servers run (their environment below): the tests' webhook receivers are on 127.0.0.1.
        self.config = load_config(result.config_path, env={"KAMENGD_NOTIFICATIONS_AGENT_WEBHOOK_PRIVATE": "1"})
        self.app = create_app(self.config)
        self.logs_dir = artifacts_dir() / "logs"
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        suffix = "" if layout == "waitress" else f"-{layout.replace('+', '-')}"
        self.log_path = self.logs_dir / f"server-{name}{suffix}-{backend}.log"
        self.procs: list[tuple[subprocess.Popen, object]] = []
        self.gateway = GatewayPage()
        self.channels = [self.add_channel("alipay", "支付宝", "alipay"),
                         self.add_channel("wxpay", "微信支付", "wxpay")]

    # The server --------------------------------------------------------
    def start(self) -> "LiveShop":
        """The layout's processes, as deployed (each server with its scheduler unless the
        layout runs `kamengd scheduler` beside it)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("KAMENGD_")}
        env["KAMENGD_RATELIMIT_ENABLED"] = "0"
        env["KAMENGD_NOTIFICATIONS_AGENT_WEBHOOK_PRIVATE"] = "1"   # the test's receiver is on 127.0.0.1
        ports = iter(self.ports)
        for number, argv in enumerate(LAYOUTS[self.layout]):
            if argv[0] == "serve":
                argv = [*argv, "--bind", f"127.0.0.1:{next(ports)}"]
            path = self.log_path if number == 0 else self.log_path.with_name(f"{self.log_path.stem}-{number}.log")
            log = open(path, "wb")
            proc = subprocess.Popen([sys.executable, "-m", "kamengd", "--config", str(self.config_path), *argv],
                                    env=env, stdout=log, stderr=subprocess.STDOUT)
            self.procs.append((proc, log))
        for base in self.bases:
            self._wait_for(base)
        return self

    def _wait_for(self, base: str) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=5) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                pass
            for proc, log in self.procs:
                if proc.poll() is not None:
                    raise AssertionError(f"server exited: {Path(log.name).read_text(errors='replace')[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"server {base} did not come up in 30 s")
            time.sleep(0.2)

    def stop(self) -> None:
        self.gateway.close()
        for proc, _log in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc, log in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
        from kamengd.extensions import db

        with self.app.app_context():
            db.engine.dispose()

    def server_errors(self) -> list[str]:
        """Unhandled errors the servers (and a separate scheduler) logged (each with a traceback)."""
        text = "".join(Path(log.name).read_text(errors="replace") for _proc, log in self.procs)
        return [line for line in text.splitlines() if "Traceback" in line or "unhandled error" in line]

    # Data, set up the way staff would (through the services) ------------
    def run(self, fn):
        """fn(session, vault) inside the app, committed; returns what fn returns."""
        from kamengd.context import get_vault
        from kamengd.extensions import db

        with self.app.app_context():
            try:
                result = fn(db.session, get_vault())
                db.session.commit()
                return result
            finally:
                db.session.remove()

    def add_channel(self, code: str, name: str, pay_type: str) -> str:
        from kamengd.payments.services import add_channel

        self.run(lambda s, v: add_channel(s, v, channel_type="epay", code=code, name=name, actor="test",
                                          options={"gateway": self.gateway.url, "pid": EPAY_PID, "key": EPAY_KEY,
                                                   "pay_type": pay_type}))
        return code

    def category(self, name: str, sort_order: int = 0) -> int:
        from kamengd.catalog.services import create_category

        return self.run(lambda s, v: create_category(s, name=name, actor="test", sort_order=sort_order).id)

    def product(self, name: str, price_cents: int = 990, keys: int | list[str] = 0, **kwargs) -> tuple[int, list[str]]:
        """A product with `keys` in stock; returns (id, the plaintext keys)."""
        from kamengd.catalog.services import create_product
        from kamengd.inventory.services import import_keys

        if isinstance(keys, int):
            keys = [f"K-{secrets.token_hex(6).upper()}" for _ in range(keys)]

        def create(session, vault):
            p = create_product(session, name=name, price_cents=price_cents, actor="test", **kwargs)
            if keys:
                import_keys(session, vault, product_id=p.id, fh=io.BytesIO("\n".join(keys).encode()), actor="test")
            return p.id
        return self.run(create), keys

    def setting(self, key: str, value) -> None:
        from kamengd.settings.services import set_setting

        self.run(lambda s, v: set_setting(s, key, value, actor="test"))

    def staff(self, role: str, **kwargs):
        from panel_support import make_staff

        return make_staff(self.app, role, **kwargs)

    def order(self, product_id: int, quantity: int = 1, email: str = "buyer@example.com",
              query_password: str | None = None) -> tuple[str, str, str]:
        """An unpaid order, as the buyer API makes it: (order_no, token, amount)."""
        from kamengd.money import format_cents
        from kamengd.orders.services import create_order

        def create(session, _vault):
            created = create_order(session, product_id=product_id, quantity=quantity, email=email,
                                   channel_code=self.channels[0], query_password=query_password)
            return created.order.order_no, created.token, format_cents(created.order.amount_cents)
        return self.run(create)

    def paid_order(self, product_id: int, quantity: int = 1, **kwargs) -> tuple[str, str]:
        """An order created and paid over the wire, as a buyer and the gateway would: (order_no, token)."""
        order_no, token, money = self.order(product_id, quantity, **kwargs)
        assert self.notify(order_no, money) == "success"
        return order_no, token

    # The gateway ---------------------------------------------------------
    def notify(self, order_no: str, money: str, channel: str | None = None, trade_no: str | None = None) -> str:
        """The gateway's signed callback for a paid order; returns kamengd's answer."""
        from kamengd.payments import epay

        params = {"pid": EPAY_PID, "trade_no": trade_no or f"GW{order_no}", "out_trade_no": order_no, "type": "alipay",
                  "name": "x", "money": money, "trade_status": "TRADE_SUCCESS"}
        params["sign"], params["sign_type"] = epay.sign(params, EPAY_KEY), "MD5"
        url = f"{self.callback_base}/pay/{channel or self.channels[0]}/notify?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.read().decode()


def start_shop(backend, databases, tmp_path_factory, name: str, layout: str = "waitress"):
    require_browser()   # before installing anything
    shop = LiveShop(backend, databases, tmp_path_factory, name, layout)
    try:
        yield shop.start()
    finally:
        shop.stop()


# --- pages ---------------------------------------------------------------------

# What a screen reader or a keyboard user would miss on the page shown: a form
# control without a label, a button or link without a name, an image without
# alt text, two elements with one id (a label's `for` would hit the wrong one),
# a page without a language.
A11Y_PROBLEMS = """() => {
  const problems = [];
  const shown = el => !!(el.offsetWidth || el.offsetHeight || el.getClientRects().length);
  const named = el => !!((el.getAttribute('aria-label') || '').trim() || el.getAttribute('aria-labelledby')
                         || (el.getAttribute('title') || '').trim());
  const tag = el => el.outerHTML.slice(0, 160);
  for (const el of document.querySelectorAll('input, select, textarea')) {
    if (el.type === 'hidden' || !shown(el)) continue;
    if (['submit', 'button', 'reset'].includes(el.type) && (el.value || '').trim()) continue;
    if (!(el.labels && el.labels.length) && !named(el)) problems.push('control without a label: ' + tag(el));
  }
  for (const el of document.querySelectorAll('button, a[href], [role=button]')) {
    if (!shown(el)) continue;
    const text = (el.innerText || '').trim() || [...el.querySelectorAll('img[alt]')].map(i => i.alt).join('');
    if (!text && !named(el)) problems.push('button or link without a name: ' + tag(el));
  }
  for (const el of document.querySelectorAll('img')) {
    if (!el.hasAttribute('alt')) problems.push('image without alt: ' + tag(el));
  }
  const seen = new Set();
  for (const el of document.querySelectorAll('[id]')) {
    if (seen.has(el.id)) problems.push('duplicate id: ' + el.id);
    seen.add(el.id);
  }
  if (!document.documentElement.lang) problems.push('no lang on <html>');
  return problems;
}"""

# The contrast ratio (WCAG 2) of each shown element's text colour with the first
# background colour behind it (its own or an ancestor's): [[what, ratio], ...].
CONTRAST = """sel => {
  const rgb = s => s.match(/[\\d.]+/g).slice(0, 3).map(Number);
  const lum = c => { const [r, g, b] = c.map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
                     return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
  const bg = el => { for (; el; el = el.parentElement) { const c = getComputedStyle(el).backgroundColor;
                     if (!c.startsWith('rgba(0, 0, 0, 0)') && c !== 'transparent') return rgb(c); } return [255, 255, 255]; };
  return [...document.querySelectorAll(sel)].filter(el => el.offsetWidth).map(el => {
    const a = lum(rgb(getComputedStyle(el).color)), b = lum(bg(el));
    return [el.tagName + '.' + el.className, (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)];
  });
}"""

class Tab:
    """One browser page on the shop that records what went wrong while it was open:
    CSP violations and other console errors, uncaught script errors, 5xx answers, dialogs."""

    def __init__(self, context, shop: LiveShop, shots: Path):
        self.context, self.shop, self.shots = context, shop, shots
        self.page = context.new_page()
        self.console: list[tuple[str, str, str]] = []   # (type, text, url)
        self.script_errors: list[str] = []
        self.server_errors: list[str] = []
        self.dialogs: list[str] = []
        self.a11y: list[str] = []      # accessibility problems of the pages screenshotted
        self.accept_dialogs = False
        self.page.on("console", lambda msg: self.console.append((msg.type, msg.text, msg.location.get("url", ""))))
        self.page.on("pageerror", lambda exc: self.script_errors.append(str(exc)))
        self.page.on("response", self._response)
        self.page.on("dialog", self._dialog)

    def _response(self, response):
        if response.status >= 500:
            self.server_errors.append(f"{response.status} {response.url}")

    def _dialog(self, dialog):
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        if self.accept_dialogs:   # a staff member who answers "OK" to the panel's confirmations
            dialog.accept()
        else:
            dialog.dismiss()

    def url(self, path: str) -> str:
        return path if path.startswith("http") else self.shop.base + path

    def open(self, path: str, status: int = 200):
        response = self.page.goto(self.url(path))
        assert response is not None and response.status == status, (path, response and response.status)
        return response

    def shot(self, name: str) -> Path:
        assert re.fullmatch(r"[a-z0-9][a-z0-9.-]*", name), name
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        # Every page worth a screenshot is checked for labels and names too.
        self.a11y += [f"{name}: {problem}" for problem in self.page.evaluate(A11Y_PROBLEMS)]
        return path

    def press_until_focused(self, selector: str, key: str = "Tab", limit: int = 40) -> None:
        """Press Tab (or `key`) until `selector` has the focus, as a keyboard user would get there."""
        target = self.page.locator(selector)
        for _ in range(limit):
            if target.evaluate("el => el === document.activeElement"):
                return
            self.page.keyboard.press(key)
        raise AssertionError(f"{selector} never got the focus after {limit} presses of {key}")

    def focus_is_visible(self) -> bool:
        """The focused element shows a focus ring (an outline or a box shadow)."""
        return self.page.evaluate("""() => {
          const s = getComputedStyle(document.activeElement);
          return (s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) > 0) || s.boxShadow !== 'none';
        }""")

    def csp_violations(self) -> list[str]:
        return [f"{text} ({url})" for _type, text, url in self.console
                if "Content Security Policy" in text or "CSP violation" in text]

    def assert_clean(self, allow_status: tuple[int, ...] = ()) -> None:
        """No CSP violation, script error, server error or unexpected failed load so far."""
        allowed = tuple(f"status of {s} " for s in allow_status)
        errors = [f"{text} ({url})" for kind, text, url in self.console if kind == "error"
                  and not (text.startswith("Failed to load resource") and any(a in text for a in allowed))]
        assert not self.csp_violations(), self.csp_violations()
        assert not errors, errors
        assert not self.script_errors, self.script_errors
        assert not self.server_errors, self.server_errors
        assert not self.a11y, self.a11y

    def text(self, selector: str = "main") -> str:
        return self.page.inner_text(selector)

    def low_contrast(self, selector: str, minimum: float = 4.5) -> list[tuple[str, float]]:
        """Shown elements matching `selector` whose text has less contrast than WCAG AA asks."""
        return [(what, round(ratio, 2)) for what, ratio in self.page.evaluate(CONTRAST, selector)
                if ratio < minimum]


@pytest.fixture(scope="module")
def chromium():
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def tab(chromium, shop, backend):
    """tab(viewport=(w, h), storage_state=..., mobile=..., color_scheme="dark") -> a fresh Tab in its own
    browser context."""
    contexts = []

    def open_tab(*, viewport: tuple[int, int] = (1280, 900), storage_state=None, mobile: bool = False,
                 color_scheme: str = "light") -> Tab:
        context = chromium.new_context(viewport={"width": viewport[0], "height": viewport[1]},
                                       storage_state=storage_state, is_mobile=mobile, has_touch=mobile,
                                       device_scale_factor=2 if mobile else 1, locale="zh-CN",
                                       color_scheme=color_scheme)
        contexts.append(context)
        context.set_default_timeout(30_000)
        context.add_init_script(CSP_REPORTER)
        return Tab(context, shop, screenshot_dir(backend))

    yield open_tab
    for context in contexts:
        context.close()
    assert not shop.server_errors(), shop.server_errors()


def sign_in(tab: Tab, staff, *, next_path: str | None = None) -> None:
    """Through the real sign-in pages: password, then the TOTP code when the account has 2FA."""
    page = tab.page
    tab.open("/admin/login" + (f"?next={urllib.parse.quote(next_path)}" if next_path else ""))
    page.fill("#username", staff.username)
    page.fill("#password", staff.password)
    with page.expect_navigation():
        page.click("form button[type=submit]")
    if staff.secret:
        assert page.url.endswith("/admin/login/2fa"), page.url
        page.fill("#code", staff.code())
        with page.expect_navigation():
            page.click("form button[type=submit]")
    assert "/admin/login" not in page.url, (page.url, tab.text())

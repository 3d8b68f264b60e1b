"""Hostile text in every text field of the storefront and the panel comes back inert.

Each string is posted (or sent as a filter) over HTTP; the page that answers, and
every page that shows the value later, must show it as text: escaped markup, no
raw tag, no template evaluated, no javascript: link, and never a server error.
The forms are read from the pages themselves, so a new text field is covered
as soon as it appears.
"""
from __future__ import annotations

import io
import secrets
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa

from panel_support import csrf_of, login, make_staff

SCRIPT = "<script>alert(1)</script>"
ATTRIBUTE = '"><img src=x onerror=alert(1)>'
TEMPLATE = "zz{{7*7}}zz"
JS_URL = "javascript:alert(1)"
RTL = "\u202eexe.txt\u202c"
# All of them in one value that fits a 100-character name.
COMBINED = f"{ATTRIBUTE}{SCRIPT}{TEMPLATE} {JS_URL} {RTL}"
LONG = "卡密😀\u202e" * 1500
PAYLOADS = {"combined": COMBINED, "long": LONG, "js-url": JS_URL}

ESCAPED_SCRIPT = "&lt;script&gt;alert(1)&lt;/script&gt;"
ESCAPED_IMG = "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;"


class LiveMarkup(HTMLParser):
    """What a browser would run or load from a page: event-handler attributes, inline
    scripts, javascript: addresses, the payload's <img>. Escaped text is not markup."""

    URL_ATTRIBUTES = {"href", "src", "action", "formaction", "data", "srcset", "poster"}

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []
        self._script = False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            value = (value or "").strip().lower()
            if name.startswith("on"):
                self.found.append(f"<{tag} {name}=...>")
            if name in self.URL_ATTRIBUTES and value.replace("\x00", "").startswith(("javascript:", "vbscript:")):
                self.found.append(f"<{tag} {name}={value[:40]}>")
        if tag == "img" and dict(attrs).get("src") == "x":
            self.found.append("<img src=x>")
        if tag == "script":
            src = dict(attrs).get("src") or ""
            if not src.startswith("/static/"):
                self.found.append(f"<script src={src[:40]!r}>")
            self._script = True

    def handle_data(self, data):
        if self._script and data.strip():
            self.found.append(f"inline script: {data[:60]!r}")

    def handle_endtag(self, tag):
        if tag == "script":
            self._script = False


def assert_inert(resp, *, shown: str | None = None) -> str:
    """The page answered without a server error and holds no live hostile markup.
    With `shown`, the hostile value must be on the page, as text."""
    html = resp.get_data(as_text=True)
    assert resp.status_code < 500, (resp.status_code, html[:500])
    assert "<script>alert" not in html and '"><img' not in html
    live = LiveMarkup(html).found
    assert not live, live
    assert "zz49zz" not in html                       # {{7*7}} was not evaluated
    if shown == COMBINED:      # (its start at least: a field may keep only the first 32 characters)
        assert ESCAPED_IMG in html, html[:3000]
    elif shown is not None:
        assert shown in html
    return html


# --- forms, read from the page ----------------------------------------------

TEXT_TYPES = {"text", "search", "email", "url", "tel", ""}


class Forms(HTMLParser):
    """Every <form> of a page: its action, method and fields with their default values."""

    def __init__(self, html: str, page_url: str):
        super().__init__(convert_charrefs=True)
        self.page_url, self.forms, self._form, self._textarea, self._select = page_url, [], None, None, None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self._form = {"action": a.get("action") or urlsplit(self.page_url).path,
                          "method": (a.get("method") or "get").lower(), "fields": [], "text": []}
            self.forms.append(self._form)
        elif tag == "option" and self._select is not None:
            if self._select[1] is None or "selected" in a:
                self._select[1] = a.get("value", "")
        elif self._form is None or "name" not in a or "disabled" in a:
            return
        elif tag == "input":
            kind = a.get("type", "").lower()
            if kind in ("checkbox", "radio") and "checked" not in a:
                return
            if kind in ("submit", "button", "file", "image", "reset"):
                return
            self._form["fields"].append([a["name"], a.get("value", "")])
            if kind in TEXT_TYPES:
                self._form["text"].append(a["name"])
        elif tag == "textarea":
            self._textarea = [a["name"], ""]
            self._form["fields"].append(self._textarea)
            self._form["text"].append(a["name"])
        elif tag == "select":
            self._select = [a["name"], None]
            self._form["fields"].append(self._select)

    def handle_data(self, data):
        if self._textarea is not None:
            self._textarea[1] += data

    def handle_endtag(self, tag):
        if tag == "form":
            self._form = None
        elif tag == "textarea":
            self._textarea = None
        elif tag == "select":
            self._select = None

    def find(self, action: str) -> dict:
        for form in self.forms:
            if form["action"] == action:
                return form
        raise AssertionError(f"no form posting to {action} on {self.page_url}: "
                             f"{[f['action'] for f in self.forms]}")


def submit(client, page_url: str, action: str, payload: str, valid: dict | None = None, **kwargs):
    """Fill every text field of the form posting to `action` with `payload` (but the
    fields `valid` names), keep the other defaults, and send it."""
    page = client.get(page_url)
    assert page.status_code == 200, (page_url, page.status_code)
    form = Forms(page.get_data(as_text=True), page_url).find(action)
    data = {name: value for name, value in form["fields"] if value is not None}
    for name in form["text"]:
        data[name] = payload
    data.update(valid or {})
    assert set(form["text"]) - set(valid or {}), f"{action}: no text field left for the payload"
    if form["method"] == "get":
        return client.get(action, query_string=data, **kwargs)
    return client.post(action, data=data, **kwargs)


# --- the storefront ----------------------------------------------------------

@pytest.fixture
def shop_item(app):
    """A product in a category, with stock, and an enabled channel."""
    from kamengd.context import get_vault
    from kamengd.catalog.services import create_category, create_product
    from kamengd.extensions import db
    from kamengd.inventory.services import import_keys
    from kamengd.payments.services import add_channel

    tag = secrets.token_hex(4)
    with app.app_context():
        category = create_category(db.session, name=f"cat {tag}", actor="t")
        p = create_product(db.session, name=f"esc {tag}", price_cents=100, actor="t", category_id=category.id)
        import_keys(db.session, get_vault(), product_id=p.id, fh=io.BytesIO(f"ESC-{tag}-1\nESC-{tag}-2".encode()),
                    actor="t")
        code = f"e{tag}"
        add_channel(db.session, get_vault(), channel_type="epay", code=code, name=f"pay {tag}", actor="t",
                    options={"gateway": "https://pay.example.com", "pid": "1001", "key": "k3y-0123456789abcdef"})
        db.session.commit()
        ids = {"product": p.id, "category": category.id, "channel": code, "tag": tag}
        db.session.remove()
    return ids


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_storefront_search(client, shop_item, payload):
    resp = client.get("/", query_string={"q": payload})
    assert resp.status_code == 200
    assert_inert(resp, shown=COMBINED if payload == COMBINED else None)
    # Other parameters travel into the language link: escaped there too.
    resp = client.get("/", query_string={"q": payload, "category": payload, "x": payload, "_external": "1",
                                         "_scheme": "javascript"})
    assert resp.status_code == 200
    assert_inert(resp)


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_storefront_buy_form(client, shop_item, payload):
    url = f"/product/{shop_item['product']}"
    resp = submit(client, url, url, payload, {"quantity": "1"})
    assert resp.status_code == 400                  # the e-mail is refused, the form comes back
    assert_inert(resp, shown=COMBINED if payload == COMBINED else None)
    # The other fields are refused one by one...
    for field in ("channel", "quantity"):
        data = {"quantity": "1", "email": "buyer@example.com", "channel": shop_item["channel"], field: payload}
        resp = client.post(url, data={"csrf_token": csrf_of(client.get(url).get_data(as_text=True)), **data})
        assert resp.status_code == 400, field
        assert_inert(resp)
    # ...but any text of 4 to 128 characters is a good query password; it never comes back.
    email = f"q{shop_item['tag']}@example.com"
    data = {"quantity": "1", "email": email, "channel": shop_item["channel"], "query_password": payload}
    resp = client.post(url, data={"csrf_token": csrf_of(client.get(url).get_data(as_text=True)), **data})
    assert resp.status_code == (303 if len(payload) <= 128 else 400)
    found = client.post("/lookup", data={"csrf_token": csrf_of(client.get("/lookup").get_data(as_text=True)),
                                         "email": email, "query_password": payload})
    html = assert_inert(found)
    assert (f"esc {shop_item['tag']}" in html) == (len(payload) <= 128)


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_storefront_lookup_and_order_pages(client, shop_item, payload):
    resp = submit(client, "/lookup", "/lookup", payload)
    assert resp.status_code == 200
    assert_inert(resp, shown=COMBINED if payload == COMBINED else None)
    resp = client.get("/order/" + payload[:200].replace("/", ""), query_string={"token": payload})
    assert resp.status_code == 404
    assert_inert(resp)


def test_storefront_shows_hostile_names_and_notice_as_text(app, client, shop_item):
    from kamengd.catalog.models import Category, Product
    from kamengd.extensions import db
    from kamengd.payments.models import PaymentChannel
    from kamengd.settings.services import get_setting, set_setting

    with app.app_context():
        old_notice = get_setting(db.session, "site.notice")
        db.session.get(Product, shop_item["product"]).name = COMBINED
        db.session.get(Product, shop_item["product"]).description = COMBINED
        db.session.get(Category, shop_item["category"]).name = COMBINED[:80] + shop_item["tag"]
        db.session.scalar(sa.select(PaymentChannel).where(PaymentChannel.code == shop_item["channel"])).name = COMBINED
        set_setting(db.session, "site.notice", COMBINED, actor="t")
        db.session.commit()
    try:
        for url in ("/", f"/?category={shop_item['category']}", f"/product/{shop_item['product']}",
                    "/?q=" + "zz"):
            assert_inert(client.get(url), shown=COMBINED)
    finally:
        with app.app_context():
            set_setting(db.session, "site.notice", old_notice, actor="t")
            db.session.get(Product, shop_item["product"]).is_active = False
            db.session.scalar(sa.select(PaymentChannel).where(PaymentChannel.code == shop_item["channel"])
                              ).is_enabled = False
            db.session.commit()


# --- the panel -----------------------------------------------------------------

@pytest.fixture
def owner(app, client):
    staff = make_staff(app, "owner")
    resp = login(client, staff)
    assert resp.status_code in (302, 303), resp.get_data(as_text=True)[:500]
    return staff


@pytest.fixture
def orders(app):
    """Committed: a manual product with a paid order waiting for its keys, a held order, a delivered one."""
    from kamengd.context import get_vault
    from kamengd.catalog.services import create_product
    from kamengd.database import utcnow
    from kamengd.extensions import db
    from kamengd.inventory.services import import_keys
    from kamengd.orders.services import create_order
    from kamengd.payments import epay
    from kamengd.payments.callbacks import handle_epay_notify
    from kamengd.payments.services import add_channel

    tag = secrets.token_hex(4)
    with app.app_context():
        s, vault = db.session, get_vault()
        auto = create_product(s, name=f"auto {tag}", price_cents=100, actor="t")
        manual = create_product(s, name=f"manual {tag}", price_cents=100, actor="t", delivery_mode="manual")
        import_keys(s, vault, product_id=auto.id, fh=io.BytesIO(f"A-{tag}-1\nA-{tag}-2".encode()), actor="t")
        channel = add_channel(s, vault, channel_type="epay", code=f"o{tag}", actor="t",
                              options={"gateway": "http://127.0.0.1:9", "pid": "1001", "key": "k3y-0123456789abcdef"})
        made = {}
        for name, product, money in (("manual", manual, "1.00"), ("held", auto, "0.01"), ("delivered", auto, "1.00")):
            created = create_order(s, product_id=product.id, quantity=1, email=f"{name}.{tag}@example.com",
                                   channel_code=channel.code)
            params = {"pid": "1001", "trade_no": f"T{created.order.order_no}",
                      "out_trade_no": created.order.order_no, "type": "alipay", "name": "x", "money": money,
                      "trade_status": "TRADE_SUCCESS"}
            params["sign"] = epay.sign(params, "k3y-0123456789abcdef")
            assert handle_epay_notify(s, vault, channel.code, params).recorded
            made[name] = (created.order.order_no, created.token)
            if name == "held":
                created.order.flagged_at = utcnow()      # so staff may clear the flag, with a note
        channel.is_enabled = False        # not offered to the storefront tests
        s.commit()
    return made


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_panel_list_filters(client, owner, payload):
    for url in ("/admin/orders", "/admin/audit", "/admin/jobs", "/admin/notifications", "/admin/reconcile",
                "/admin/products", "/admin/stock"):
        forms = Forms(client.get(url).get_data(as_text=True), url).forms
        filters = [f for f in forms if f["method"] == "get" and f["text"]]
        query = {name: payload for f in filters for name, _ in f["fields"]}
        query.update({"status": payload, "job": payload, "page": payload, "from": payload, "to": payload,
                      "since": payload, "until": payload})
        resp = client.get(url, query_string=query)
        assert resp.status_code in (200, 400), (url, resp.status_code)
        assert_inert(resp)
    for url, name in (("/admin/orders", "q"), ("/admin/audit", "actor")):
        assert_inert(client.get(url, query_string={name: COMBINED}), shown=COMBINED)
    assert_inert(client.get("/admin/reconcile/" + COMBINED.replace("/", "")))
    assert_inert(client.get("/admin/orders/" + COMBINED.replace("/", "")))


def test_panel_sign_in_form(app, client):
    resp = submit(client, "/admin/login", "/admin/login", COMBINED, {"password": "x" * 20})
    assert resp.status_code in (400, 401)
    assert_inert(resp)


def test_panel_settings(app, client, owner):
    from kamengd.extensions import db
    from kamengd.settings.services import all_settings, update_settings

    import sqlalchemy as sa

    from kamengd.settings.models import SettingSecret

    with app.app_context():
        before = all_settings(db.session)
    try:
        # The fields with a format of their own (QQ number, Telegram name, e-mail) refuse the
        # payload (a test of its own below); every free-text field takes it.
        formatted = {"site.contact_qq": "", "site.contact_telegram": "", "site.contact_email": "",
                     "site.contact_wechat": "", "site.url": "",   # (WeChat IDs: at most 64 characters)
                     # Amounts and a percentage: a number or nothing.
                     "withdrawals.minimum": "10", "withdrawals.fee_percent": "0", "withdrawals.fee_fixed": "0",
                     "withdrawals.daily_limit": "0", "agents.new_buyer_reward": "0",
                     "points.topup_bonus": ""}   # (AMOUNT=POINTS tiers, or nothing)
        refused = submit(client, "/admin/settings", "/admin/settings", COMBINED, follow_redirects=True)
        assert_inert(refused)
        resp = submit(client, "/admin/settings", "/admin/settings", COMBINED, formatted, follow_redirects=True)
        assert_inert(resp, shown=COMBINED)
        for url in ("/admin/settings", "/", "/admin/audit", "/admin/dashboard"):
            assert_inert(client.get(url))
        assert ESCAPED_SCRIPT in client.get("/").get_data(as_text=True)       # the notice, as text
        assert_inert(submit(client, "/admin/settings", "/admin/settings", LONG, formatted, follow_redirects=True))
        # The mail server and notification forms: refused or stored, shown as text either way.
        for action in ("/admin/settings/mail", "/admin/settings/notifications"):
            for payload in (COMBINED, LONG):
                assert_inert(submit(client, "/admin/settings", action, payload, follow_redirects=True))
        assert_inert(submit(client, "/admin/settings", "/admin/settings/mail", COMBINED,
                            {"smtp.host": "mail.example.com", "smtp.password": "", "smtp.from_address": "",
                             "smtp.port": "25"}, follow_redirects=True), shown=COMBINED)   # the username, stored
        assert_inert(client.get("/admin/settings"))
    finally:
        with app.app_context():
            update_settings(db.session, before, actor="t")
            db.session.execute(sa.delete(SettingSecret))
            db.session.commit()


def test_panel_channel_name(app, client, owner):
    from kamengd.extensions import db
    from kamengd.payments.models import PaymentChannel

    code = f"x{secrets.token_hex(4)}"
    valid = {"code": code, "gateway": "https://pay.example.com", "pid": "1001", "key": "merchant-key-0123456789",
             "other_pay_types": ""}
    resp = submit(client, "/admin/channels/new", "/admin/channels/new", COMBINED, valid, follow_redirects=True)
    assert_inert(resp)
    with app.app_context():
        channel = db.session.scalar(sa.select(PaymentChannel).where(PaymentChannel.code == code))
        assert channel is not None and channel.name == COMBINED
        channel_id = channel.id
        channel.is_enabled = False
        db.session.commit()
    for url in ("/admin/channels", f"/admin/channels/{channel_id}", "/admin/audit"):
        assert_inert(client.get(url), shown=COMBINED)
    # Every text field hostile: refused, the form comes back inert.
    for payload in PAYLOADS.values():
        assert_inert(submit(client, "/admin/channels/new", "/admin/channels/new", payload))
        assert_inert(submit(client, f"/admin/channels/{channel_id}", f"/admin/channels/{channel_id}", payload))


def test_panel_staff_username(client, owner):
    for payload in PAYLOADS.values():
        resp = submit(client, "/admin/staff/new", "/admin/staff/new", payload,
                      {"password": "a long enough password", "password_repeat": "a long enough password"})
        assert resp.status_code == 400
        assert_inert(resp, shown=COMBINED if payload == COMBINED else None)
    assert_inert(client.get("/admin/staff"))


def test_panel_order_actions_and_delivered_keys(app, client, owner, orders):
    manual_no, manual_token = orders["manual"]
    held_no, _ = orders["held"]
    detail = f"/admin/orders/{manual_no}"
    # Keys typed by staff for a manual order reach the buyer's page: as text.
    resp = submit(client, detail, f"/admin/orders/{manual_no}/deliver", COMBINED, follow_redirects=True)
    assert_inert(resp)
    buyer = app.test_client()
    assert_inert(buyer.get(f"/order/{manual_no}", query_string={"token": manual_token}), shown=COMBINED)
    # Reasons and notes: a good one changes the order (and its form goes), so the
    # refused long one comes first.
    posted = set()
    for action, order_no in (("acknowledge", held_no), ("release", held_no), ("refund", orders["delivered"][0])):
        url = f"/admin/orders/{order_no}"
        for payload in (LONG, COMBINED, JS_URL):
            if f'action="{url}/{action}"' not in client.get(url).get_data(as_text=True):
                break
            assert_inert(submit(client, url, f"{url}/{action}", payload, follow_redirects=True))
            posted.add(action)
    assert posted == {"acknowledge", "release", "refund"}
    for url in (detail, f"/admin/orders/{held_no}", "/admin/audit", "/admin/dashboard",
                "/admin/orders?flagged=1"):
        assert_inert(client.get(url))
    assert_inert(client.get("/admin/audit", query_string={"target": f"order:{held_no}"}), shown=COMBINED)


def test_panel_catalog(app, client, owner):
    from kamengd.catalog.models import Category, Product
    from kamengd.extensions import db

    tag = secrets.token_hex(4)
    name = COMBINED[:80] + tag
    resp = submit(client, "/admin/categories", "/admin/categories/new", name, follow_redirects=True)
    assert_inert(resp)
    with app.app_context():
        category_id = db.session.scalar(sa.select(Category.id).where(Category.name == name))
    assert category_id is not None, resp.get_data(as_text=True)[:3000]
    resp = submit(client, "/admin/products/new", "/admin/products/new", name,
                  {"price": "9.90", "cost_price": "", "category_id": str(category_id), "is_active": "1",
                   "input_fields": "",   # (its own format: a test of its own, test_buyer_input.py)
                   "price_tiers": "", "sale_price": "", "sale_starts_at": "", "sale_ends_at": "",   # (test_pricing.py)
                   "variant_of": "", "variant_name": COMBINED[:60],   # (a product of its own: test_variants.py)
                   "member_price": ""},
                  follow_redirects=True)
    assert_inert(resp)
    with app.app_context():
        product_id = db.session.scalar(sa.select(Product.id).where(Product.name == name))
    assert product_id is not None, resp.get_data(as_text=True)[:3000]
    # (the lists by a search for this product: other tests' products may fill their first page)
    for url in (f"/admin/products?q={tag}", "/admin/categories", f"/admin/products/{product_id}",
                f"/admin/stock?q={tag}",
                f"/admin/stock/{product_id}/import", f"/admin/stock/{product_id}/export", "/admin/audit",
                f"/?category={category_id}", f"/product/{product_id}"):
        resp = client.get(url)
        assert resp.status_code == 200, (url, resp.status_code)
        assert_inert(resp, shown=COMBINED if "/export" not in url else None)
    for payload in PAYLOADS.values():
        for page, action in (("/admin/products/new", "/admin/products/new"),
                             (f"/admin/products/{product_id}", f"/admin/products/{product_id}"),
                             ("/admin/categories", "/admin/categories/new"),
                             ("/admin/categories", f"/admin/categories/{category_id}")):
            assert_inert(submit(client, page, action, payload, follow_redirects=True))
    with app.app_context():        # off the shop again: other tests list the storefront
        db.session.get(Product, product_id).is_active = False
        db.session.commit()


def test_panel_stock_import_and_export(app, client, owner):
    from kamengd.catalog.services import create_product
    from kamengd.extensions import db

    with app.app_context():
        product_id = create_product(db.session, name=f"exp {secrets.token_hex(4)}", price_cents=100, actor="t").id
        db.session.commit()
    url = f"/admin/stock/{product_id}/import"
    for payload in PAYLOADS.values():          # keys pasted into the form
        assert_inert(submit(client, url, url, payload, follow_redirects=True))
    url = f"/admin/stock/{product_id}/export"
    for payload in PAYLOADS.values():          # the reason for an export
        resp = submit(client, url, url, payload)
        assert resp.status_code < 500
        if resp.mimetype == "text/html":
            assert_inert(resp)
    for url in ("/admin/audit", "/admin/stock", f"/admin/stock/{product_id}/import"):
        assert_inert(client.get(url))

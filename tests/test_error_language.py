"""W10 §5: what staff read in the panel is in their language — service errors with their
values, flag reasons, event and job names — and the English the CLI and the API print
stays as it was."""
import html
import re
import secrets

import pytest

from kamengd.errors import InvalidRequest
from kamengd.orders import reasons
from panel_support import login, make_staff, post


def flashes(resp) -> list[str]:
    return [html.unescape(re.sub(r"<[^>]+>", "", m)) for m in
            re.findall(r'<p class="flash error">(.*?)</p>', resp.get_data(as_text=True), re.S)]


def english_runs(text: str) -> list[str]:
    """Runs of two or more English words: what an untranslated message leaves behind.
    Values staff typed or codes (quoted, numbers, order numbers) are not words here."""
    text = re.sub(r"'[^']*'|\"[^\"]*\"|“[^”]*”", " ", text)
    return re.findall(r"\b[A-Za-z]{2,}(?:[ ,;:]+[A-Za-z]{2,})+\b", text)


@pytest.fixture
def zh_client(app):
    client = app.test_client()
    client.set_cookie("lang", "zh")
    assert login(client, make_staff(app, "admin")).status_code == 302
    return client


def test_errors_keep_their_english_words_and_their_values():
    exc = InvalidRequest("%(field)s: %(raw)r is not a decimal amount", field="price", raw="九块九")
    assert exc.message == "price: '九块九' is not a decimal amount" == str(exc)     # the CLI and the API
    catalogue = {"%(field)s: %(raw)r is not a decimal amount": "%(field)s：%(raw)r 不是有效的金额", "price": "价格"}

    def gettext(text, **values):
        return catalogue.get(text, text) % values if values else catalogue.get(text, text)
    assert exc.localized(gettext) == "价格：'九块九' 不是有效的金额"     # the field's name translated too
    assert InvalidRequest("100% sure").message == "100% sure"   # no values: the text as it is


def test_flag_reasons_are_stored_in_english_and_shown_translated():
    stored = reasons.reason(reasons.WRONG_AMOUNT, paid="1.00", amount="12.80", currency="CNY")
    assert stored == "paid 1.00, the order is for 12.80 CNY"
    assert reasons.parse(stored) == (reasons.WRONG_AMOUNT, {"paid": "1.00", "amount": "12.80", "currency": "CNY"})
    assert reasons.localized(stored, lambda t, **v: "«" + t % v + "»") == "«paid 1.00, the order is for 12.80 CNY»"
    assert reasons.localized("written by an older version", lambda t, **v: "x") == "written by an older version"


@pytest.mark.parametrize("path, data, page_url, expected", [
    ("/admin/products/new", {"name": "月卡", "price": "九块九", "delivery_mode": "auto", "min_quantity": "1",
                             "max_quantity": "100", "low_stock_threshold": "0", "sort_order": "0"},
     "/admin/products/new", "价格：'九块九' 不是有效的金额"),
    ("/admin/products/new", {"name": "月卡", "price": "9.90", "delivery_mode": "auto", "min_quantity": "5",
                             "max_quantity": "2", "low_stock_threshold": "0", "sort_order": "0"},
     "/admin/products/new", "数量限制"),
    ("/admin/products/new", {"name": "月卡", "price": "9.90", "delivery_mode": "auto", "min_quantity": "1",
                             "max_quantity": "100", "low_stock_threshold": "x", "sort_order": "0"},
     "/admin/products/new", "低库存阈值：'x' 不是整数"),
    ("/admin/products/new", {"name": "", "price": "9.90", "delivery_mode": "auto", "min_quantity": "1",
                             "max_quantity": "100", "low_stock_threshold": "0", "sort_order": "0"},
     "/admin/products/new", "名称：不能为空"),
])
def test_panel_form_errors_are_in_chinese(backend, app, zh_client, path, data, page_url, expected):
    resp = post(zh_client, path, data, page_url=page_url)
    assert resp.status_code == 400
    [message] = flashes(resp)
    assert expected in message and not english_runs(message), message


def test_order_actions_and_flag_reasons_are_in_chinese(backend, app, zh_client):
    from kamengd.catalog.services import create_product
    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.orders.attention import flag_order
    from kamengd.orders.checkout import place_order
    from kamengd.payments.services import add_channel

    with app.app_context():
        product = create_product(db.session, name=f"代充 {secrets.token_hex(3)}", price_cents=1280, actor="t",
                                 delivery_mode="manual")
        code = f"el{secrets.token_hex(3)}"
        add_channel(db.session, get_vault(), channel_type="epay", code=code, actor="t",
                    options={"gateway": "https://pay.example.com", "pid": "1", "key": "error-language-key-0123"})
        db.session.commit()
        placed = place_order(db.session, None, product_id=product.id, quantity=1, email="e@example.com",
                             channel_code=code)
        db.session.commit()
        from kamengd.orders.models import Order
        order = db.session.query(Order).filter_by(order_no=placed.order_no).one()
        flag_order(db.session, order, reasons.reason(reasons.WRONG_AMOUNT, paid="1.00", amount="12.80",
                                                     currency="CNY"), event=None)
        db.session.commit()
    url = f"/admin/orders/{placed.order_no}"
    detail = zh_client.get(url).get_data(as_text=True)
    assert "实付 1.00，订单金额为 12.80 CNY" in detail and "the order is for" not in detail
    # delivering an unpaid order: refused, in Chinese, with the order's number and status
    resp = post(zh_client, f"{url}/deliver", {"keys": "KEY-1"}, page_url=url, follow_redirects=True)
    messages = flashes(resp)
    assert messages and "只有已付款订单才能发货" in messages[0] and placed.order_no in messages[0], messages
    assert not english_runs(messages[0].replace("pending", "")), messages


def test_event_and_job_names_are_said_in_chinese(backend, app, zh_client):
    jobs = zh_client.get("/admin/jobs").get_data(as_text=True)
    assert "取消未付款订单" in jobs and "expire_reservations" in jobs   # the name, and the code beside it
    settings = zh_client.get("/admin/settings").get_data(as_text=True)
    assert "订单重复付款" in settings and "payment.extra" in settings


# --- every form's mistakes at once, and every error path of the panel in Chinese -------------

def assert_chinese(messages: list[str], *expected: str) -> None:
    """Each message in Chinese (values and codes aside), and the expected words among them."""
    assert messages, "no error was shown"
    for message in messages:
        assert re.search(r"[\u4e00-\u9fff]", message) and not english_runs(message), message
    for words in expected:
        assert any(words in m for m in messages), (words, messages)


@pytest.fixture
def owner_zh(app):
    client = app.test_client()
    client.set_cookie("lang", "zh")
    assert login(client, make_staff(app, "owner")).status_code == 302
    return client


PRODUCT = {"name": "月卡", "price": "9.90", "delivery_mode": "auto", "min_quantity": "1", "max_quantity": "100",
           "low_stock_threshold": "0", "sort_order": "0"}


def test_a_form_names_every_wrong_field_and_the_cli_reads_them_on_one_line(backend, session):
    from kamengd.catalog import services as catalog
    from kamengd.errors import FormErrors

    form = {**PRODUCT, "name": " ", "price": "九块九", "max_quantity": "0", "sort_order": "x"}
    with pytest.raises(FormErrors) as caught:
        catalog.parse_product_form(form, session)
    words = [e.message for e in caught.value.errors]
    assert words == ["price: '九块九' is not a decimal amount", "sort order: 'x' is not a whole number",
                     "name: must not be empty", "maximum quantity: a whole number from 1 to 100000"], words
    assert caught.value.message == "; ".join(words) and caught.value.http_status == 400
    # one mistake: raised as itself, as before
    with pytest.raises(InvalidRequest, match=r"^price: '九块九' is not a decimal amount$") as single:
        catalog.parse_product_form({**PRODUCT, "price": "九块九"}, session)
    assert type(single.value) is InvalidRequest
    with pytest.raises(FormErrors, match="name: must not be empty; price: must be more than zero"):
        catalog.create_product(session, name="", price_cents=0, actor="t")


def test_the_product_form_shows_every_mistake_in_chinese(backend, app, owner_zh):
    form = {**PRODUCT, "name": "", "price": "九块九", "min_quantity": "5", "max_quantity": "2",
            "low_stock_threshold": "-1", "cost_price": "1.234"}
    resp = post(owner_zh, "/admin/products/new", form, page_url="/admin/products/new")
    assert resp.status_code == 400
    messages = flashes(resp)
    assert len(messages) == 5, messages
    assert_chinese(messages, "价格：'九块九' 不是有效的金额", "名称：不能为空", "数量限制", "低库存阈值")
    assert 'value="九块九"' in resp.get_data(as_text=True)   # the form comes back as typed


def test_categories_staff_and_settings_say_every_mistake_in_chinese(backend, app, owner_zh):
    resp = post(owner_zh, "/admin/categories/new", {"name": "", "sort_order": "99999"},
                page_url="/admin/categories")
    assert resp.status_code == 400 and len(flashes(resp)) == 2
    assert_chinese(flashes(resp), "名称：不能为空")

    resp = post(owner_zh, "/admin/staff/new", {"username": "-x", "role": "boss", "password": "short",
                                               "password_repeat": "other"}, page_url="/admin/staff/new")
    assert resp.status_code == 400 and len(flashes(resp)) == 4, flashes(resp)
    assert_chinese(flashes(resp), "用户名", "角色", "密码至少需要", "两次输入的密码不一致")

    resp = post(owner_zh, "/admin/settings", {"site.name": "n" * 101, "orders.timeout_minutes": "0",
                                              "site.contact_qq": "abc", "site.contact_email": "nobody"},
                page_url="/admin/settings")
    assert resp.status_code == 400 and len(flashes(resp)) == 4, flashes(resp)
    assert_chinese(flashes(resp), "site.name：最多 100 个字符", "orders.timeout_minutes：不能小于 1",
                   "'abc' 不是 QQ 号", "'nobody' 不是邮箱地址")

    resp = post(owner_zh, "/admin/settings/mail", {"smtp.source": "panel", "smtp.host": "", "smtp.port": "70000",
                                                   "smtp.username": "me"},
                page_url="/admin/settings")
    assert resp.status_code == 400
    assert_chinese(flashes(resp), "smtp.port：不能大于 65535", "smtp.host", "smtp.password")

    resp = post(owner_zh, "/admin/settings/notifications",
                {"notifications.source": "panel", "notifications.webhook_urls": "ftp://example.com/hook",
                 "notifications.email_to": "a@b"}, page_url="/admin/settings")
    assert resp.status_code == 400
    assert_chinese(flashes(resp), "不是 http(s) 网址")

    resp = post(owner_zh, "/admin/settings/test-mail", {"to": "nobody"}, page_url="/admin/settings",
                follow_redirects=True)
    assert_chinese(flashes(resp))


def flashes_of(resp, category: str) -> list[str]:
    return [html.unescape(re.sub(r"<[^>]+>", "", m)) for m in
            re.findall(rf'<p class="flash {category}">(.*?)</p>', resp.get_data(as_text=True), re.S)]


def test_the_channel_form_says_every_mistake_in_chinese(backend, app, owner_zh):
    page = "/admin/channels/new"
    resp = post(owner_zh, page, {"code": "Bad Code!", "name": "n" * 101, "gateway": "ftp://pay.example.com",
                                 "pid": "1", "key": "short-key", "sort_order": "x"}, page_url=page)
    assert resp.status_code == 400 and len(flashes(resp)) == 5, flashes(resp)
    assert_chinese(flashes(resp), "代码：", "名称：最多 100 个字符", "排序：", "选项 gateway：",
                   "选项 key：至少需要 16 个字符（网关发放的密钥为 32 位）；这个只有 9 个")


def test_a_weak_key_and_the_channel_test_are_said_in_chinese(backend, app, owner_zh):
    """The reason a stored key is too weak (the channel list, the dashboard) and what the
    gateway answered the "test" button, in the staff member's language."""
    from fake_epay import FakeEpay
    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.payments import services as payments
    from kamengd.payments.models import PaymentChannel

    weak, tested = f"wk{secrets.token_hex(3)}", f"ts{secrets.token_hex(3)}"
    with FakeEpay("1001", f"gw-key-{secrets.token_hex(8)}") as gateway:
        with app.app_context():
            ids = {}
            for code, url in ((weak, "https://pay.example.com"), (tested, gateway.url)):
                channel = payments.add_channel(db.session, get_vault(), channel_type="epay", code=code, actor="t",
                                               sort_order=9999, options={"gateway": url, "pid": "1001",
                                                                         "key": gateway.key})
                db.session.flush()
                ids[code] = channel.id
            # a key an older version took (written past today's rule)
            payments._store_secrets(get_vault(), db.session.get(PaymentChannel, ids[weak]), {"key": "x\u200b"})
            db.session.commit()
        try:
            for url in ("/admin/channels", "/admin/dashboard"):
                text = html.unescape(owner_zh.get(url).get_data(as_text=True))
                [reason] = re.findall(rf"<code>{weak}</code>: ([^<]*)</li>", text)
                assert_chinese([reason], "选项 key：包含空格、控制字符或不可见字符（U+200B）")

            def run_test():
                resp = post(owner_zh, f"/admin/channels/{ids[tested]}/test", page_url="/admin/channels",
                            follow_redirects=True)
                return flashes_of(resp, "success") + flashes(resp)
            assert_chinese(run_test(), f"通道 {tested} 可用", "网关接受该商户 ID 和密钥")
            gateway.active = 0
            assert_chinese(run_test(), "网关接受该密钥，但报告商户账户已被停用")
            gateway.mode = "garbage"
            assert_chinese(run_test(), "网关返回的内容不是 JSON")
            gateway.mode = "error"
            assert_chinese(run_test(), "网关返回了 HTTP 500")
        finally:
            for code in (weak, tested):   # unused: removed, as staff would
                url = f"/admin/channels/{ids[code]}"
                assert "删除此通道" in owner_zh.get(url).get_data(as_text=True)
                resp = post(owner_zh, f"{url}/remove", page_url=url, follow_redirects=True)
                assert_chinese(flashes_of(resp, "success"), f"支付通道 {code} 已删除")


def _product_with_a_batch(app):
    import io

    import sqlalchemy as sa

    from kamengd.catalog.services import create_product
    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.inventory.models import KeyImport
    from kamengd.inventory.services import import_keys

    with app.app_context():
        # last in every list (sort order 9999), hidden from the shop: other tests' pages stay as they were
        product = create_product(db.session, name=f"点卡 {secrets.token_hex(3)}", price_cents=100, actor="t",
                                 sort_order=9999, is_active=False)
        import_keys(db.session, get_vault(), product_id=product.id,
                    fh=io.BytesIO(f"K-{secrets.token_hex(4)}\n".encode()), actor="t")
        batch = db.session.scalar(sa.select(sa.func.max(KeyImport.id)).where(KeyImport.product_id == product.id))
        db.session.commit()
        return product.id, batch


def test_stock_errors_are_in_chinese(backend, app, owner_zh):
    product_id, batch = _product_with_a_batch(app)
    page = f"/admin/stock/{product_id}/import"
    for data, expected in (({"keys": "good-1\n" + "x" * 600}, "第 2 行：卡密长 600 个字符"),
                           ({"keys": "good-1\nbad\x01key"}, "第 2 行：卡密包含控制字符"),
                           ({"keys": "  "}, ""),
                           ({"keys": "k", "encoding": "latin-9"}, "")):
        resp = post(owner_zh, page, data, page_url=page)
        assert resp.status_code == 400, data
        assert_chinese(flashes(resp), expected)
    import io
    resp = post(owner_zh, page, {"file": (io.BytesIO(b"ok\n\xff\xfe\x00bad\n"), "keys.txt"), "encoding": "utf-8"},
                page_url=page, content_type="multipart/form-data")
    assert resp.status_code == 400
    assert_chinese(flashes(resp), "第 2 行：文件无法按 utf-8")

    page = f"/admin/stock/{product_id}/export"
    resp = post(owner_zh, page, {"status": "available", "reason": "x"}, page_url=page)
    assert resp.status_code == 400
    assert_chinese(flashes(resp))

    keys_page = f"/admin/stock/{product_id}/keys"
    for reason in ("", "r" * 501):
        resp = post(owner_zh, f"/admin/stock/{product_id}/batches/{batch}/void", {"reason": reason},
                    page_url=keys_page, follow_redirects=True)
        assert_chinese(flashes(resp))


def test_order_actions_refused_are_said_in_chinese(backend, app, owner_zh):
    from test_order_staff import quiet
    from test_panel_orders import make_shop

    from kamengd.catalog.models import Product
    from kamengd.extensions import db

    shop = make_shop(app)
    with app.app_context():   # last in every list, as above
        for product_id in (shop.auto_id, shop.manual_id):
            db.session.get(Product, product_id).sort_order = 9999
        db.session.commit()
    try:
        def act(order_no, action, data):
            url = f"/admin/orders/{order_no}"
            resp = post(owner_zh, f"{url}/{action}", data, page_url=url)
            assert resp.status_code in (400, 409), (action, resp.status_code)
            return flashes(resp)

        assert_chinese(act(shop.manual, "deliver", {"keys": "A\n" + "B" * 600}), "第 2 行")
        assert_chinese(act(shop.manual, "deliver", {"keys": "A\nB"}), "需要 1 个卡密")
        assert_chinese(act(shop.manual, "deliver", {"keys": ""}))
        assert_chinese(act(shop.delivered, "deliver", {"keys": "A"}), "已发货", "只有已付款订单才能发货")
        assert_chinese(act(shop.delivered, "release", {"release_reason": "ok now"}), "已发货")
        assert_chinese(act(shop.pending, "refund", {"refund_reason": "buyer asked"}), "未支付")
        assert_chinese(act(shop.held, "refund", {"refund_reason": ""}))
        assert_chinese(act(shop.pending, "resend", {}))
        assert_chinese(act(shop.delivered, "acknowledge", {"note": "seen"}))
        assert_chinese(act(shop.pending, "keys", {}))
    finally:
        quiet(app, shop.auto_id, shop.manual_id)


def test_account_errors_are_in_chinese(backend, app):
    from conftest import PASSWORD

    client = app.test_client()
    client.set_cookie("lang", "zh")
    assert login(client, make_staff(app, "support")).status_code == 302
    for new in (PASSWORD, "short"):
        resp = post(client, "/admin/account/password", {"current_password": PASSWORD, "new_password": new,
                                                        "new_password_repeat": new}, follow_redirects=True)
        assert_chinese(flashes(resp))


# --- the catalogue: every message a service can raise has its Chinese -----------------------

def _extracted() -> set[str]:
    """What scripts/translations extracts (its babel.cfg and its keywords)."""
    from pathlib import Path

    from babel.messages.extract import extract_from_dir
    from babel.messages.frontend import parse_mapping_cfg

    root = Path(__file__).resolve().parent.parent
    script = (root / "scripts" / "translations").read_text()
    keywords = {"_": None, "gettext": None, "ngettext": (1, 2), "pgettext": ((1, "c"), 2)}
    keywords.update({k: None for k in re.findall(r"-k (\w+)(?=\s)", script) if k not in keywords})
    assert {"InvalidRequest", "NotFound", "Conflict", "ImportFileError"} <= set(keywords)
    with (root / "kamengd" / "translations" / "babel.cfg").open() as fh:
        method_map, options = parse_mapping_cfg(fh)
    found = set()
    for _f, _l, message, _c, context in extract_from_dir(str(root), method_map=method_map, keywords=keywords,
                                                         options_map=options):
        found.add((context, message if isinstance(message, str) else message[0]))
    return found


def test_every_extracted_message_has_chinese_with_the_same_values():
    from babel.messages.pofile import read_po
    from test_translations import PO

    with PO.open("rb") as fh:
        catalog = read_po(fh)
    found = _extracted()
    assert len(found) > 400
    placeholders = re.compile(r"%\(\w+\)[sdr]")
    missing, broken = [], []
    for context, message in sorted(found, key=str):
        entry = catalog.get(message, context=context)
        if not (entry and entry.string):
            missing.append(message)
        elif any(sorted(placeholders.findall(message[-1] if isinstance(message, tuple) else message))
                 != sorted(placeholders.findall(form))
                 for form in (entry.string if isinstance(entry.string, tuple) else (entry.string,))):
            broken.append(message)   # (a plural's every form keeps the plural's values)
    assert not missing, f"untranslated (run scripts/translations, then translate): {missing[:10]}"
    assert not broken, f"a translation lost or gained a value: {broken[:10]}"


def test_every_service_module_the_panel_shows_is_extracted():
    """A raise site in a module the panel reaches is found by the extraction (babel.cfg lists it)."""
    text = (__import__("pathlib").Path(__file__).resolve().parent.parent / "kamengd" / "translations"
            / "babel.cfg").read_text()
    for module in ("catalog/services.py", "catalog/inputs.py", "inventory/services.py", "inventory/importer.py",
                   "orders/staff.py", "orders/services.py", "orders/reasons.py", "settings/services.py",
                   "settings/messaging.py", "accounts/services.py", "accounts/passwords.py", "accounts/auth.py",
                   "notifications/email.py", "money.py", "payments/services.py", "payments/strength.py"):
        assert f"[python: kamengd/{module}]" in text, module


def test_every_event_and_job_has_words(app):
    from kamengd.config import EVENT_TYPES
    from kamengd.panel.helpers import event_name, job_name
    from kamengd.scheduler.jobs import JOBS

    with app.test_request_context("/admin/jobs", headers={"Cookie": "lang=zh"}):
        assert all(event_name(e) != e for e in ("*",) + tuple(EVENT_TYPES)), EVENT_TYPES
        assert all(job_name(j) != j for j in JOBS), list(JOBS)


def test_the_panels_error_page_says_the_services_error_in_chinese_and_the_api_in_english(backend, app, zh_client):
    page = zh_client.get("/admin/products/99999999")
    assert page.status_code == 404 and "商品 99999999 不存在" in page.get_data(as_text=True)
    api = app.test_client().get("/api/v1/orders/NO-SUCH-ORDER?token=x", headers={"Accept-Language": "zh"})
    assert api.status_code == 404 and api.get_json()["error"]["message"] == "order not found"

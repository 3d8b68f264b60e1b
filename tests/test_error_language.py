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

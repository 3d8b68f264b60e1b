"""Payment channels in the panel: add, edit, enable/disable, test against a local Epay gateway.

The merchant key must never appear in a page or an audit entry.
"""
import json
import secrets

import pytest
import sqlalchemy as sa

from conftest import free_port
from fake_epay import FakeEpay
from kamengd.audit.models import AuditEntry
from kamengd.errors import Conflict, FormErrors, InvalidRequest, NotFound
from kamengd.payments import services as payments
from kamengd.payments.models import PaymentChannel
from panel_support import login, make_staff, post

PID = "1001"


@pytest.fixture
def admin_client(app, client):
    staff = make_staff(app, "admin")
    client.set_cookie("lang", "en")
    assert login(client, staff).status_code == 302
    return client


@pytest.fixture
def gateway():
    with FakeEpay(PID, f"gw-key-{secrets.token_hex(8)}") as gw:
        yield gw


def new_key() -> str:
    return f"mk-{secrets.token_hex(12)}"


def channel_by_code(app, code):
    from kamengd.extensions import db

    with app.app_context():
        channel = db.session.scalars(sa.select(PaymentChannel).where(PaymentChannel.code == code)).first()
        db.session.expunge_all()
        return channel


def stored_key(app, code):
    from kamengd.context import get_vault
    from kamengd.extensions import db

    with app.app_context():
        channel = db.session.scalars(sa.select(PaymentChannel).where(PaymentChannel.code == code)).one()
        return payments.channel_secrets(get_vault(), channel).get("key")


def audit_of(app, code):
    from kamengd.extensions import db

    with app.app_context():
        rows = db.session.scalars(sa.select(AuditEntry).where(AuditEntry.target == f"channel:{code}")
                                  .order_by(AuditEntry.seq)).all()
        return [(r.action, r.actor, json.loads(r.details)) for r in rows]


def channel_count(app):
    from kamengd.extensions import db

    with app.app_context():
        return db.session.scalar(sa.select(sa.func.count()).select_from(PaymentChannel))


def add(client, code, key, gateway="https://pay.example.com", **extra):
    data = {"code": code, "name": f"Pay {code}", "gateway": gateway, "pid": PID, "key": key, "sort_order": "5"}
    data.update(extra)
    return post(client, "/admin/channels/new", data, page_url="/admin/channels/new")


def page(client, url="/admin/channels"):
    resp = client.get(url)
    assert resp.status_code == 200
    return resp.get_data(as_text=True)


def test_add_a_channel_the_key_is_never_shown(backend, app, admin_client):
    code, key = f"ep{secrets.token_hex(3)}", new_key()
    assert "Add a payment channel" in page(admin_client, "/admin/channels/new")
    resp = add(admin_client, code, key, pay_types=["qqpay", "wxpay"], other_pay_types="tenpay")
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/admin/channels")
    listing = page(admin_client)
    assert f"Payment channel {code} added." in listing
    assert code in listing and "https://pay.example.com" in listing
    assert key not in listing
    channel = channel_by_code(app, code)
    assert channel.type == "epay" and channel.is_enabled and channel.sort_order == 5
    # ticked in the panel's order, then the ones typed in
    assert json.loads(channel.options) == {"gateway": "https://pay.example.com", "pid": PID,
                                           "pay_types": "wxpay,qqpay,tenpay"}
    assert key.encode() not in channel.secret_ciphertext and stored_key(app, code) == key
    assert key not in page(admin_client, f"/admin/channels/{channel.id}")
    [(action, actor, details)] = audit_of(app, code)
    assert action == "channel.add" and actor.startswith("staff:admin-")
    assert details["secret_options"] == ["key"] and key not in json.dumps(details)


@pytest.mark.parametrize("field, value, message, status", [
    ("gateway", "ftp://pay.example.com", "option gateway: an http(s) base URL", 400),
    ("gateway", "not a url", "option gateway: an http(s) base URL", 400),
    ("gateway", "https://pay.example.com/a b", "option gateway: an http(s) base URL", 400),
    ("code", "Bad Code!", "code: 1-32 lower-case letters", 400),
    ("key", "", "option key: required", 400),
    # Keys anyone could guess (W9): refused with the reason, never echoed.
    ("key", "a", "option key: at least 16 characters", 400),
    ("key", "\u200b", "invisible characters (U+200B)", 400),
    ("key", "aaaaaaaaaaaaaaaaaaaaaaaa", "too simple", 400),
    ("pid", "", "option pid: required", 400),
    ("sort_order", "first", "sort order: a whole number", 400),
    ("sort_order", "99999999999999999999999", "sort order: a whole number", 400),
    ("name", "n" * 101, "name: at most 100 characters", 400),
])
def test_bad_input_gives_a_message_and_adds_nothing(backend, app, admin_client, field, value, message, status):
    code, key = f"ep{secrets.token_hex(3)}", new_key()
    before = channel_count(app)
    resp = add(admin_client, **{"code": code, "key": key, field: value})
    assert resp.status_code == status
    html = resp.get_data(as_text=True)
    assert message in html
    assert key not in html   # a typed key is never sent back
    assert channel_count(app) == before


def test_the_form_names_every_wrong_field_at_once(backend, app, admin_client):
    before = channel_count(app)
    resp = add(admin_client, "Bad Code!", "short-key", gateway="ftp://pay.example.com", sort_order="first",
               name="n" * 101, other_pay_types="bad type!")
    assert resp.status_code == 400
    html = resp.get_data(as_text=True)
    shown = ["code: 1-32 lower-case letters", "name: at most 100 characters", "sort order: a whole number",
             "option key: at least 16 characters", "option gateway: an http(s) base URL", "option pay_types:"]
    assert all(words in html for words in shown), html
    assert html.count('class="flash error"') == len(shown) and "short-key" not in html
    assert channel_count(app) == before


def test_the_command_line_reads_every_mistake_on_one_line(backend, session, vault):
    with pytest.raises(FormErrors) as caught:
        payments.add_channel(session, vault, channel_type="epay", code="ok", name="n" * 101, sort_order="x",
                             actor="t", options={"gateway": "https://g.example.com", "pid": PID, "key": "x"})
    assert caught.value.message == ("name: at most 100 characters; sort order: a whole number from 0 to 9999; "
                                    "option key: at least 16 characters (gateways issue keys of 32); this one has "
                                    "1: anyone could guess it and forge payments")
    # one mistake is raised as itself, as before
    with pytest.raises(InvalidRequest, match="^option pid: required") as single:
        payments.add_channel(session, vault, channel_type="epay", code="ok", actor="t",
                             options={"gateway": "https://g.example.com", "key": new_key()})
    assert type(single.value) is InvalidRequest


def test_duplicate_code_is_refused(backend, app, admin_client):
    code = f"ep{secrets.token_hex(3)}"
    assert add(admin_client, code, new_key()).status_code == 303
    resp = add(admin_client, code, new_key(), gateway="https://other.example.com")
    assert resp.status_code == 409 and f"channel &#39;{code}&#39; already exists" in resp.get_data(as_text=True)
    assert json.loads(channel_by_code(app, code).options)["gateway"] == "https://pay.example.com"


def test_edit_keeps_an_empty_key_and_encrypts_a_new_one(backend, app, admin_client):
    code, key = f"ep{secrets.token_hex(3)}", new_key()
    add(admin_client, code, key)
    channel = channel_by_code(app, code)
    url = f"/admin/channels/{channel.id}"
    form = {"name": "Alipay", "gateway": "https://pay2.example.com/", "pid": "2002", "key": "", "pay_type": "",
            "sort_order": "1"}
    resp = post(admin_client, url, form, page_url=url)
    assert resp.status_code == 303
    assert "Payment channel" in page(admin_client) and stored_key(app, code) == key
    edited = channel_by_code(app, code)
    assert (edited.name, edited.sort_order) == ("Alipay", 1)
    assert json.loads(edited.options) == {"gateway": "https://pay2.example.com/", "pid": "2002"}
    action, _, details = audit_of(app, code)[-1]
    assert action == "channel.update" and details["secret_options_changed"] == []
    assert details["changed"]["pid"] == {"old": PID, "new": "2002"}

    # the same form again: nothing changed, nothing audited
    assert post(admin_client, url, form, page_url=url).status_code == 303
    assert "Nothing changed." in page(admin_client) and len(audit_of(app, code)) == 2

    newer = new_key()
    assert post(admin_client, url, {**form, "key": newer}, page_url=url).status_code == 303
    assert stored_key(app, code) == newer
    action, _, details = audit_of(app, code)[-1]
    assert action == "channel.update" and details == {"changed": {}, "secret_options_changed": ["key"]}
    assert not any(k in json.dumps(audit_of(app, code)) for k in (key, newer))
    assert newer not in page(admin_client, url) and newer not in page(admin_client)


def test_bad_edit_changes_nothing(backend, app, admin_client):
    code, key = f"ep{secrets.token_hex(3)}", new_key()
    add(admin_client, code, key)
    channel = channel_by_code(app, code)
    url = f"/admin/channels/{channel.id}"
    newer = new_key()
    resp = post(admin_client, url, {"name": "x", "gateway": "javascript:alert(1)", "pid": PID, "key": newer,
                                    "sort_order": "0"}, page_url=url)
    html = resp.get_data(as_text=True)
    assert resp.status_code == 400 and "option gateway" in html and newer not in html
    assert stored_key(app, code) == key
    assert json.loads(channel_by_code(app, code).options)["gateway"] == "https://pay.example.com"
    assert [a for a, _, _ in audit_of(app, code)] == ["channel.add"]
    assert admin_client.get("/admin/channels/999999999").status_code == 404


def test_enable_and_disable(backend, app, admin_client):
    code = f"ep{secrets.token_hex(3)}"
    add(admin_client, code, new_key())
    channel = channel_by_code(app, code)
    url = f"/admin/channels/{channel.id}/toggle"
    assert post(admin_client, url, {"enabled": "0"}, page_url="/admin/channels").status_code == 303
    assert "is disabled" in page(admin_client) and not channel_by_code(app, code).is_enabled
    post(admin_client, url, {"enabled": "0"}, page_url="/admin/channels")
    assert "already" in page(admin_client)
    post(admin_client, url, {"enabled": "banana"}, page_url="/admin/channels")
    assert "Choose whether" in page(admin_client) and not channel_by_code(app, code).is_enabled
    post(admin_client, url, {"enabled": "1"}, page_url="/admin/channels")
    assert channel_by_code(app, code).is_enabled
    assert [a for a, _, _ in audit_of(app, code)] == ["channel.add", "channel.disable", "channel.enable"]


def place_an_order(app, code):
    from kamengd.catalog.services import create_product
    from kamengd.extensions import db
    from kamengd.orders.checkout import place_order

    with app.app_context():
        product = create_product(db.session, name=f"rm {secrets.token_hex(3)}", price_cents=100, actor="t",
                                 delivery_mode="manual", sort_order=9999)
        db.session.commit()
        place_order(db.session, None, product_id=product.id, quantity=1, email="rm@example.com", channel_code=code)
        product.is_active = False   # out of the shop again: other tests' pages stay as they were
        db.session.commit()


def test_remove_a_channel_no_order_used(backend, app, admin_client):
    code, key = f"ep{secrets.token_hex(3)}", new_key()
    add(admin_client, code, key)
    url = f"/admin/channels/{channel_by_code(app, code).id}"
    edit = page(admin_client, url)
    assert "Remove this channel" in edit and f"{url}/remove" in edit and "data-confirm" in edit
    resp = post(admin_client, f"{url}/remove", page_url=url)
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/admin/channels")
    assert f"Payment channel {code} removed" in page(admin_client)
    assert channel_by_code(app, code) is None
    action, actor, details = audit_of(app, code)[-1]
    assert action == "channel.remove" and actor.startswith("staff:admin-")
    assert details["secret_deleted"] is True and details["gateway"] == "https://pay.example.com"
    assert key not in json.dumps(details)
    assert post(admin_client, f"{url}/remove", page_url="/admin/channels").status_code == 404


def test_a_channel_an_order_used_is_kept(backend, app, admin_client):
    code = f"ep{secrets.token_hex(3)}"
    add(admin_client, code, new_key())
    place_an_order(app, code)
    url = f"/admin/channels/{channel_by_code(app, code).id}"
    edit = page(admin_client, url)
    assert "1 order(s) used this channel" in edit and f"{url}/remove" not in edit
    resp = post(admin_client, f"{url}/remove", page_url=url)   # a form left open, or a script
    assert resp.status_code == 303 and resp.headers["Location"].endswith(url)
    assert f"channel {code} cannot be removed: 1 order(s) used it" in page(admin_client, url)
    assert channel_by_code(app, code).is_enabled
    assert [a for a, _, _ in audit_of(app, code)] == ["channel.add"]


def test_remove_channel_service(backend, session, vault, make_product, monkeypatch):
    """A channel only a payment used (a callback through it, for another channel's order) is
    kept too; an order placed between the count and the delete is caught by the foreign key."""
    from kamengd.orders.services import create_order

    options = {"gateway": "https://g.example.com", "pid": PID}
    first, second, third = (payments.add_channel(session, vault, channel_type="epay", code=f"rm{secrets.token_hex(3)}",
                                                 actor="t", options={**options, "key": new_key()}) for _ in range(3))
    product = make_product(delivery_mode="manual")
    order = create_order(session, product_id=product.id, quantity=1, email="b@example.com",
                         channel_code=first.code).order
    payments.record_payment(session, second, order, trade_no=f"T{secrets.token_hex(4)}",
                            amount_cents=order.amount_cents, raw={})
    for channel in (first, second):
        with pytest.raises(Conflict, match=f"channel {channel.code} cannot be removed: 1 order"):
            payments.remove_channel(session, channel, actor="t")
    # the race: the count said none, the order came before the delete
    real, calls = payments.channel_use_count, []

    def late_count(session_, channel):   # the first count misses the order
        calls.append(channel)
        return 0 if len(calls) == 1 else real(session_, channel)
    monkeypatch.setattr(payments, "channel_use_count", late_count)
    with pytest.raises(Conflict, match="cannot be removed: 1 order"):
        payments.remove_channel(session, first, actor="t")
    assert len(calls) == 2 and session.get(PaymentChannel, first.id) is not None
    payments.remove_channel(session, third, actor="t")
    assert session.get(PaymentChannel, third.id) is None
    assert session.scalar(sa.select(AuditEntry.action).where(AuditEntry.target == f"channel:{third.code}")
                          .order_by(AuditEntry.seq.desc())) == "channel.remove"


def run_test(app, client, code):
    channel = channel_by_code(app, code)
    resp = post(client, f"/admin/channels/{channel.id}/test", page_url="/admin/channels")
    assert resp.status_code == 303
    html = page(client)
    action, _, details = audit_of(app, code)[-1]
    assert action == "channel.test"
    return html, details


def test_channel_test_against_a_local_gateway(backend, app, admin_client, gateway):
    code = f"ep{secrets.token_hex(3)}"
    add(admin_client, code, gateway.key, gateway=gateway.url)
    html, details = run_test(app, admin_client, code)
    assert f"Channel {code} works" in html and details["ok"] is True
    assert gateway.merchant_queries == 1
    # the gateway echoes the key in its answer: it never reaches a page or the audit log
    assert gateway.key not in html and gateway.key not in json.dumps(audit_of(app, code))

    gateway.active = 0
    html, details = run_test(app, admin_client, code)
    assert "disabled" in html and details["ok"] is False

    gateway.mode = "garbage"
    html, details = run_test(app, admin_client, code)
    assert "not JSON" in html and details == {"ok": False, "stage": "gateway", "message": details["message"]}

    gateway.mode = "error"
    html, _ = run_test(app, admin_client, code)
    assert "HTTP 500" in html


def test_channel_test_reports_a_wrong_key_and_an_unreachable_gateway(backend, app, admin_client, gateway):
    wrong, key = f"ep{secrets.token_hex(3)}", new_key()
    add(admin_client, wrong, key, gateway=gateway.url)
    html, details = run_test(app, admin_client, wrong)
    assert "the gateway refused: KEY校验失败" in html and details["stage"] == "gateway" and not details["ok"]
    assert key not in html and key not in json.dumps(details)

    down = f"ep{secrets.token_hex(3)}"
    add(admin_client, down, key, gateway=f"http://127.0.0.1:{free_port()}")
    html, details = run_test(app, admin_client, down)
    assert "gateway unreachable" in html and not details["ok"]


def test_channel_test_catches_a_broken_stored_key(backend, app, admin_client, gateway):
    from kamengd.extensions import db

    code = f"ep{secrets.token_hex(3)}"
    add(admin_client, code, gateway.key, gateway=gateway.url)
    with app.app_context():
        channel = db.session.scalars(sa.select(PaymentChannel).where(PaymentChannel.code == code)).one()
        channel.secret_ciphertext = bytes(b ^ 1 for b in channel.secret_ciphertext)   # damaged at rest
        db.session.commit()
    html, details = run_test(app, admin_client, code)
    assert "signature check failed" in html and "cannot be decrypted" in html
    assert details["stage"] == "signature" and gateway.merchant_queries == 0   # the gateway is not asked
    # editing without a key is refused until the key is entered again
    url = f"/admin/channels/{channel_by_code(app, code).id}"
    form = {"name": "x", "gateway": gateway.url, "pid": PID, "key": "", "sort_order": "0"}
    resp = post(admin_client, url, form, page_url="/admin/channels")
    assert resp.status_code == 400 and "enter it again" in resp.get_data(as_text=True)
    assert post(admin_client, url, {**form, "key": gateway.key}, page_url="/admin/channels").status_code == 303
    html, details = run_test(app, admin_client, code)
    assert details["ok"] is True


def test_only_owners_and_admins_manage_channels(backend, app, client):
    support = make_staff(app, "support")
    login(client, support)
    assert client.get("/admin/channels").status_code == 403
    assert client.get("/admin/channels/new").status_code == 403
    assert post(client, "/admin/channels/new", {"code": "x", "key": "k"}).status_code == 403


# --- services -------------------------------------------------------------------

def test_update_channel_service(backend, session, vault):
    key = new_key()
    channel = payments.add_channel(session, vault, channel_type="epay", code=f"sv{secrets.token_hex(3)}",
                                   actor="t", options={"gateway": "https://g.example.com", "pid": PID, "key": key})
    with pytest.raises(InvalidRequest, match="option pid: required"):
        payments.update_channel(session, vault, channel, name="", sort_order="0", actor="t",
                                options={"gateway": "https://g.example.com", "pid": " "})
    with pytest.raises(InvalidRequest, match="at most 500"):
        payments.update_channel(session, vault, channel, name="", sort_order="0", actor="t",
                                options={"gateway": "https://g.example.com/" + "x" * 500, "pid": PID})
    changes = payments.update_channel(session, vault, channel, name="", sort_order=3, actor="t",
                                      options={"gateway": "https://g.example.com", "pid": PID, "key": ""})
    assert changes == {"changed": {"sort_order": {"old": 0, "new": 3}}, "secret_options_changed": []}
    assert channel.name == channel.code and payments.channel_secrets(vault, channel) == {"key": key}
    gateway, pid, checked_key = payments.check_signing(vault, channel)
    assert (gateway, pid, checked_key) == ("https://g.example.com", PID, key)
    with pytest.raises(NotFound):
        payments.get_channel(session, 2**30)


def test_query_merchant_service(gateway):
    ok = payments.query_epay_merchant(gateway.url, PID, gateway.key, timeout=2)
    assert ok.ok and gateway.key not in ok.message
    refused = payments.query_epay_merchant(gateway.url, PID, "wrong", timeout=2)
    assert not refused.ok and "KEY校验失败" in refused.message
    gateway.mode = "slow"
    slow = payments.query_epay_merchant(gateway.url, PID, gateway.key, timeout=0.5)
    assert not slow.ok and "unreachable" in slow.message


def test_a_gateway_that_speaks_no_http_is_reported_without_the_key():
    """A garbled answer (http.client errors are not OSErrors) is a message, never a 500 or a leaked key."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)

    def answer():
        try:
            conn, _ = server.accept()
        except OSError:   # closed by the test
            return
        conn.recv(65536)
        conn.sendall(b"HELLO THERE\r\n\r\n")
        conn.close()
    threading.Thread(target=answer, daemon=True).start()
    key = "k+y/with=odd&chars" + secrets.token_hex(8)
    try:
        result = payments.query_epay_merchant(f"http://127.0.0.1:{server.getsockname()[1]}", PID, key, timeout=2)
    finally:
        server.close()
    assert not result.ok and "unreachable" in result.message and "BadStatusLine" in result.message
    from urllib.parse import quote_plus

    assert key not in result.message and quote_plus(key) not in result.message


def test_out_of_range_channel_ids_are_not_found(backend, app, admin_client):
    for path in ("/admin/channels/99999999999999999999", "/admin/channels/0"):
        assert admin_client.get(path).status_code == 404


def test_a_gateways_own_check_is_said_in_the_readers_language(backend, app, admin_client):
    """What a gateway protocol finds wrong in its options (a Stripe key that is no key) is shown
    in Chinese to a Chinese reader, under the option's name; nothing is added."""
    admin_client.set_cookie("lang", "zh")
    code = f"st{secrets.token_hex(3)}"
    page = post(admin_client, "/admin/channels/new", {"type": "stripe", "code": code, "name": "Card",
                                                       "sort_order": "0", "secret_key": "pk_live_" + secrets.token_urlsafe(24),
                                                       "webhook_secret": "whsec_" + secrets.token_urlsafe(24)})
    html = page.get_data(as_text=True)
    assert page.status_code == 400 and "Stripe 密钥以 sk_live_ 或 sk_test_ 开头" in html, html[:2000]
    assert "starts with sk_live_" not in html and channel_by_code(app, code) is None

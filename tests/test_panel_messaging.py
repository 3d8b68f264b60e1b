"""Mail server and notifications set in the panel: used by the test mail, the delivery
mails and the webhooks at once; secrets stored encrypted and never shown; bad input
changes nothing. A real local SMTP server and a real local webhook receiver."""
import dataclasses
import html as htmllib
import json

import pytest
import sqlalchemy as sa

from kamengd.errors import InvalidRequest
from panel_support import login, make_staff, post
from test_notifications import Receiver, verify
from test_panel_settings import audit_since, last_seq, page, smtp_server  # noqa: F401 (fixture)

PASSWORD = "panel-smtp-pw-never-shown"
SECRET = "panel-webhook-secret-0123456789"
MAIL = {"smtp.source": "panel", "smtp.host": "127.0.0.1", "smtp.security": "none", "smtp.username": "",
        "smtp.from_address": "shop@panel.example"}
NOTIFY = {"notifications.source": "panel", "notifications.webhook_urls": "",
          "notifications.webhook_events": ["", "*"], "notifications.email_to": "",
          "notifications.email_events": [""]}


@pytest.fixture(scope="module")
def shop(backend, databases, tmp_path_factory):
    """An installation of its own: its jobs send only this module's events."""
    from kamengd.app import create_app
    from kamengd.config import load_config
    from kamengd.operations.installation import install

    data_dir = tmp_path_factory.mktemp(f"messaging-{backend}") / "data"
    url = None if backend == "sqlite" else databases.new_url(backend)
    config = load_config(install(data_dir, admin_password="correct horse battery", database_url=url).config_path,
                         env={})
    config = dataclasses.replace(config, ratelimit=dataclasses.replace(config.ratelimit, enabled=False))
    application = create_app(config)
    application.config["TESTING"] = True
    return application


@pytest.fixture
def clean(shop):
    """Every test starts from the config file's mail and notifications."""
    from kamengd.extensions import db
    from kamengd.settings.models import Setting, SettingSecret

    def wipe():
        with shop.app_context():
            db.session.execute(sa.delete(Setting))
            db.session.execute(sa.delete(SettingSecret))
            db.session.commit()
    wipe()
    yield
    wipe()


def signed_in(application, role="owner"):
    client = application.test_client()
    client.set_cookie("lang", "en")
    assert login(client, make_staff(application, role)).status_code == 302
    return client


def save(client, url, form):
    return post(client, url, form, page_url="/admin/settings")


def database_dump(application) -> str:
    """Every settings, secrets and audit row as text: where a leaked secret would show."""
    from kamengd.extensions import db

    with application.app_context():
        rows = []
        for table in ("settings", "setting_secrets", "audit_log"):
            for row in db.session.execute(sa.text(f"SELECT * FROM {table}")):
                rows.append(" ".join(v.hex() + " " + v.decode("latin-1") if isinstance(v, bytes) else str(v)
                                     for v in row))
        return "\n".join(rows)


def sending(application):
    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.settings.messaging import effective_config

    with application.app_context():
        return effective_config(db.session, get_vault(), application.extensions["kamengd.config"])


def test_a_mail_server_set_here_sends_the_test_mail(backend, shop, clean, smtp_server):
    port, inbox = smtp_server
    client = signed_in(shop)
    html = page(client)
    assert "No SMTP server is configured" in html and 'name="to"' not in html
    seq = last_seq(shop)
    resp = save(client, "/admin/settings/mail", {**MAIL, "smtp.port": str(port)})
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/admin/settings#mail")
    html = page(client)
    assert "Saved: smtp.source, smtp.host, smtp.port, smtp.security, smtp.from_address." in html
    assert f"Sent through 127.0.0.1:{port}" in html
    assert [(a, t) for a, t, _ in audit_since(shop, seq)] == [
        ("setting.change", f"setting:{key}") for key in
        ("smtp.source", "smtp.host", "smtp.port", "smtp.security", "smtp.from_address")]

    save(client, "/admin/settings/test-mail", {"to": "owner@example.com"})
    assert "Test mail to owner@example.com accepted by 127.0.0.1." in page(client)
    rcpts, msg = inbox.messages[-1]
    assert rcpts == ["owner@example.com"] and msg["From"] == "shop@panel.example"

    # Back to the config file (which has no server): the test mail is gone again.
    save(client, "/admin/settings/mail", {**MAIL, "smtp.source": "file", "smtp.port": str(port)})
    assert sending(shop).smtp.host == ""
    assert "No SMTP server is configured" in page(client)


def test_delivery_mails_use_the_panel_server(backend, shop, clean, smtp_server):
    """A paid order's mail goes out through the server set here, by the scheduler's job."""
    import io
    import secrets

    from kamengd.scheduler import jobs
    from kamengd.context import get_vault
    from kamengd.catalog.services import create_product
    from kamengd.extensions import db
    from kamengd.inventory.services import import_keys
    from kamengd.orders.services import create_order
    from kamengd.payments.callbacks import handle_epay_notify
    from kamengd.payments.services import add_channel
    from test_orders import KEY, callback

    port, inbox = smtp_server
    save(signed_in(shop), "/admin/settings/mail", {**MAIL, "smtp.port": str(port)})
    key = f"PANEL-MAIL-{secrets.token_hex(4)}"
    with shop.app_context():
        s, vault = db.session, get_vault()
        product = create_product(s, name="mailed", price_cents=100, actor="t")
        import_keys(s, vault, product_id=product.id, fh=io.BytesIO(key.encode()), actor="t")
        channel = add_channel(s, vault, channel_type="epay", code=f"m{secrets.token_hex(3)}", actor="t",
                              options={"gateway": "http://127.0.0.1:9", "pid": "1001", "key": KEY})
        order = create_order(s, product_id=product.id, quantity=1, email="buyer@example.com",
                             channel_code=channel.code).order
        assert handle_epay_notify(s, vault, channel.code, callback(order)).recorded
        s.commit()
        assert jobs.send_emails(db.session)["sent"] == 1
    rcpts, msg = inbox.messages[-1]
    assert rcpts == ["buyer@example.com"] and msg["From"] == "shop@panel.example"
    assert key in msg.get_payload(decode=True).decode("utf-8")


def test_the_smtp_password_is_encrypted_and_never_shown(backend, shop, clean, smtp_server):
    port, _inbox = smtp_server
    client = signed_in(shop)
    seq = last_seq(shop)
    form = {**MAIL, "smtp.port": str(port), "smtp.username": "shop"}
    assert save(client, "/admin/settings/mail", {**form, "smtp.password": PASSWORD}).status_code == 303
    html = page(client)
    assert PASSWORD not in html and "A value is stored (encrypted; never shown)." in html
    assert sending(shop).smtp_password() == PASSWORD
    assert ("setting.secret_set", "setting:smtp.password", {"key": "smtp.password"}) in audit_since(shop, seq)
    assert PASSWORD not in database_dump(shop)

    # The local server offers no AUTH: the login is tried (with the password) and fails, on one line.
    save(client, "/admin/settings/test-mail", {"to": "owner@example.com"})
    html = page(client)
    assert "Test mail to owner@example.com failed: SMTPNotSupportedError" in html and PASSWORD not in html
    assert PASSWORD not in database_dump(shop)

    # Left empty, the password is kept; removed only on request, and not while a login needs it.
    assert save(client, "/admin/settings/mail", form).status_code == 303
    assert sending(shop).smtp_password() == PASSWORD
    resp = save(client, "/admin/settings/mail", {**form, "smtp.password-clear": "1"})
    assert resp.status_code == 400 and "smtp.password: required with a login" in resp.get_data(as_text=True)
    assert sending(shop).smtp_password() == PASSWORD
    seq = last_seq(shop)
    save(client, "/admin/settings/mail", {**form, "smtp.username": "", "smtp.password-clear": "1"})
    assert sending(shop).smtp_password() == ""
    assert [a for a, _, _ in audit_since(shop, seq)] == ["setting.change", "setting.secret_clear"]


@pytest.mark.parametrize("bad, message", [
    ({"smtp.host": ""}, "smtp.host: required when the mail server is set here"),
    ({"smtp.port": "0"}, "smtp.port: must be at least 1"),
    ({"smtp.port": "smtp"}, "smtp.port: expected a whole number"),
    ({"smtp.security": "ssl"}, "smtp.security: one of starttls, tls, none"),
    ({"smtp.source": "elsewhere"}, "smtp.source: one of file, panel"),
    ({"smtp.from_address": "not an address"}, "smtp.from_address: 'not an address' is not an e-mail address"),
    ({"smtp.host": "mail\nexample.com"}, "smtp.host: one line of text"),
    ({"smtp.username": "shop"}, "smtp.password: required with a login"),
    ({"smtp.password": "pw\nx"}, "smtp.password: no line breaks"),
    ({"smtp.password": "x" * 1025}, "smtp.password: 1 to 1024 characters"),
])
def test_bad_mail_settings_change_nothing(backend, shop, clean, bad, message):
    from kamengd.settings.services import all_settings, secrets_set

    from kamengd.extensions import db

    client = signed_in(shop)
    seq = last_seq(shop)
    with shop.app_context():
        before = all_settings(db.session)
    resp = save(client, "/admin/settings/mail", {**MAIL, "smtp.port": "2525", **bad})
    html = resp.get_data(as_text=True)
    assert resp.status_code == 400 and message in htmllib.unescape(html)
    assert f'value="{htmllib.escape(bad.get("smtp.port", "2525"))}"' in html   # what was typed stays
    with shop.app_context():
        assert all_settings(db.session) == before
        assert not any(secrets_set(db.session).values())
    assert audit_since(shop, seq) == []


def test_webhooks_set_here_are_signed_with_the_panel_secret(backend, shop, clean):
    from kamengd.scheduler import jobs
    from kamengd.extensions import db
    from kamengd.notifications.events import emit

    receiver = Receiver()
    try:
        client = signed_in(shop)
        resp = save(client, "/admin/settings/notifications", {
            **NOTIFY, "notifications.webhook_urls": f"{receiver.url}\r\n\r\n{receiver.url}\r\n",
            "notifications.webhook_secret": SECRET, "notifications.webhook_events": ["", "stock.low"]})
        assert resp.status_code == 303
        html = page(client)
        assert SECRET not in html and receiver.url in html
        assert SECRET not in database_dump(shop)
        # The audit log names the receiver's site, never the rest of the URL (often its token).
        [(_action, _target, details)] = [e for e in audit_since(shop, 0) if e[1] == "setting:notifications.webhook_urls"]
        assert details["new"][0].startswith("http://127.0.0.1:") and "/hook" not in json.dumps(details)
        with shop.app_context():
            emit(db.session, "stock.low", {"product_name": "panel hook", "available": 1, "threshold": 5})
            emit(db.session, "order.paid", {"order_no": "not subscribed"})
            db.session.commit()
            counts = jobs.send_notifications(db.session)
        assert counts["sent"] == 1, counts   # the URL once (repeats dropped), only the subscribed event
        [(path, headers, body)] = receiver.requests
        assert json.loads(body)["event"] == "stock.low" and json.loads(body)["data"]["product_name"] == "panel hook"
        assert verify(headers, body, SECRET)
    finally:
        receiver.close()


@pytest.mark.parametrize("bad, message", [
    ({"notifications.webhook_urls": "ftp://hooks.example.com/x"}, "is not an http(s) URL"),
    ({"notifications.webhook_urls": "http://hooks.example.com:abc/x"}, "has a port that is not a number"),
    ({"notifications.webhook_urls": "http://hooks.example.com/\x7f"}, "is not an http(s) URL"),
    ({"notifications.webhook_urls": "https://hooks.example.com/x"},
     "notifications.webhook_secret: required with webhook URLs"),
    ({"notifications.webhook_urls": "https://h.example.com/x", "notifications.webhook_secret": "short"},
     "notifications.webhook_secret: 16 to 1024 characters"),
    ({"notifications.webhook_events": ["", "order.eaten"]}, "notifications.webhook_events: unknown entry 'order.eaten'"),
    ({"notifications.email_to": "boss@example.com\nnot-an-address"},
     "notifications.email_to: 'not-an-address' is not an e-mail address"),
    ({"notifications.email_to": "\n".join(f"s{i}@example.com" for i in range(21))},
     "notifications.email_to: at most 20 entries"),
])
def test_bad_notification_settings_change_nothing(backend, shop, clean, bad, message):
    from kamengd.extensions import db
    from kamengd.settings.services import all_settings, secrets_set

    client = signed_in(shop)
    seq = last_seq(shop)
    with shop.app_context():
        before = all_settings(db.session)
    resp = save(client, "/admin/settings/notifications",
                {**NOTIFY, "notifications.email_events": ["", "order.held"], **bad})
    html = resp.get_data(as_text=True)
    assert resp.status_code == 400 and message in htmllib.unescape(html)
    assert 'value="order.held" checked' in html   # the ticks stay as they were sent
    with shop.app_context():
        assert all_settings(db.session) == before
        assert not any(secrets_set(db.session).values())
    assert audit_since(shop, seq) == []


def test_only_owners_and_admins_change_them(backend, shop, clean):
    for role in ("support", "finance", "operator", "auditor"):
        client = signed_in(shop, role)
        assert save(client, "/admin/settings/mail", {**MAIL, "smtp.port": "25"}).status_code == 403
        assert save(client, "/admin/settings/notifications", NOTIFY).status_code == 403
    assert sending(shop).smtp.host == ""


# --- services ---------------------------------------------------------------------

def test_list_settings_from_the_command_line_and_forms(backend, session):
    from kamengd.settings import services

    assert services.parse_value("notifications.email_to", "a@example.com, b@example.com\nA@example.com\n\n") == \
        ["a@example.com", "b@example.com", "A@example.com"]
    assert services.parse_value("notifications.webhook_events", ["*", "", "*"]) == ["*"]
    # A URL may hold commas: URLs are split by line breaks and spaces only.
    assert services.parse_value("notifications.webhook_urls", "https://h.example.com/x?tags=a,b\r\n"
                                                              "https://i.example.com/y https://h.example.com/x?tags=a,b") == [
        "https://h.example.com/x?tags=a,b", "https://i.example.com/y"]
    assert services.get_setting(session, "notifications.email_events") == \
        ["stock.low", "order.held", "order.stuck", "payment.extra", "reconcile.mismatch", "scheduler.failover",
         "withdrawal.requested", "supplier.low_balance", "supplier.cost_changed", "channel.down", "ticket.opened",
         "ticket.overdue"]
    services.get_setting(session, "notifications.email_events").append("x")   # a copy, never the default
    assert "x" not in services.get_setting(session, "notifications.email_events")
    with pytest.raises(InvalidRequest, match="expected a list of text"):
        services.parse_value("notifications.email_to", 5)
    with pytest.raises(InvalidRequest, match="unknown secret setting"):
        services.check_secret("smtp.host", "x")


def test_panel_settings_leave_the_rest_of_the_config_alone(backend, session, vault, installed):
    from kamengd.settings import services
    from kamengd.settings.messaging import effective_config, save_group

    save_group(session, vault, "smtp", {"smtp.source": "panel", "smtp.host": "mail.example.com", "smtp.port": "465",
                                        "smtp.security": "tls"}, actor="t")
    config = effective_config(session, vault, installed)
    assert (config.smtp.host, config.smtp.port, config.smtp.security) == ("mail.example.com", 465, "tls")
    assert config.smtp.timeout_seconds == installed.smtp.timeout_seconds
    assert config.notifications == installed.notifications and config.site == installed.site
    assert config.smtp_password() == ""
    with pytest.raises(InvalidRequest, match="not a smtp setting"):
        save_group(session, vault, "smtp", {"site.name": "x"}, actor="t")
    save_group(session, vault, "notifications", {"notifications.source": "panel"}, actor="t")
    from kamengd.errors import ConfigError

    with pytest.raises(ConfigError, match="notifications.webhook_secret"):
        effective_config(session, vault, installed).webhook_secret()
    assert services.secrets_set(session) == {"smtp.password": False, "notifications.webhook_secret": False}

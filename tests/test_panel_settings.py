"""Settings in the panel: the run-time settings form, mail and webhooks of the config file
shown without their secrets, a test mail through a real local SMTP server. (Mail and
webhooks set in the panel: tests/test_panel_messaging.py.)"""
import dataclasses
import email
import json

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller

from conftest import free_port
from kamengd.audit.models import AuditEntry
from kamengd.errors import InvalidRequest
from kamengd.notifications.email import send_test_mail
from kamengd.settings import services as settings
from kamengd.settings.models import Setting
from panel_support import login, make_staff, post

SMTP_PASSWORD = "smtp-pw-never-shown"
WEBHOOK_SECRET = "whsec-never-shown"
HOOK_PASSWORD = "hook-pw-never-shown"


class Inbox:
    def __init__(self):
        self.messages = []
        self.refuse = set()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse:
            return "550 5.1.1 no such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.rcpt_tos, email.message_from_bytes(envelope.content)))
        return "250 OK"


@pytest.fixture(scope="module")
def smtp_server():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller.port, inbox
    controller.stop()


def app_with(installed, tmp_path_factory, **smtp):
    """An app on the shared database whose config has mail and webhooks set up."""
    from kamengd.app import create_app

    secrets_dir = tmp_path_factory.mktemp("secrets")
    (secrets_dir / "smtp").write_text(SMTP_PASSWORD)
    (secrets_dir / "webhook").write_text(WEBHOOK_SECRET)
    config = dataclasses.replace(
        installed,
        ratelimit=dataclasses.replace(installed.ratelimit, enabled=False),
        smtp=dataclasses.replace(installed.smtp, security="none", from_address="shop@example.com",
                                 password_file=secrets_dir / "smtp", timeout_seconds=5, **smtp),
        notifications=dataclasses.replace(
            installed.notifications, webhook_secret_file=secrets_dir / "webhook", webhook_events=("order.paid",),
            webhook_urls=("https://hooks.example.com/k5", f"https://bot:{HOOK_PASSWORD}@hooks.example.net/x")))
    application = create_app(config)
    application.config["TESTING"] = True
    return application


@pytest.fixture(scope="module")
def mail_app(installed, tmp_path_factory, smtp_server):
    return app_with(installed, tmp_path_factory, host="127.0.0.1", port=smtp_server[0])


def signed_in(application, role="admin"):
    client = application.test_client()
    client.set_cookie("lang", "en")
    assert login(client, make_staff(application, role)).status_code == 302
    return client


@pytest.fixture
def restore_settings(app):
    """Settings are shared by every test of this database: put them back."""
    from kamengd.extensions import db

    yield
    with app.app_context():
        db.session.execute(sa.delete(Setting))
        db.session.commit()


def audit_since(application, seq):
    from kamengd.extensions import db

    with application.app_context():
        rows = db.session.scalars(sa.select(AuditEntry).where(AuditEntry.seq > seq).order_by(AuditEntry.seq)).all()
        return [(r.action, r.target, json.loads(r.details)) for r in rows]


def last_seq(application):
    from kamengd.extensions import db

    with application.app_context():
        return db.session.scalar(sa.select(sa.func.max(AuditEntry.seq)))


def stored(application):
    from kamengd.extensions import db

    with application.app_context():
        return settings.all_settings(db.session)


def page(client):
    resp = client.get("/admin/settings")
    assert resp.status_code == 200
    return resp.get_data(as_text=True)


FORM = {"site.name": "", "site.notice": "", "orders.timeout_minutes": "10",
        "orders.stock_wait_alert_minutes": "30", "orders.manual_sla_minutes": "60"}


def test_the_page_shows_settings_and_no_secret(backend, mail_app, smtp_server):
    client = signed_in(mail_app)
    html = page(client)
    for key in FORM:
        assert f'name="{key}"' in html
    assert "Unpaid order timeout" in html
    assert "127.0.0.1" in html and str(smtp_server[0]) in html and "shop@example.com" in html
    assert "in a file (not shown)" in html and "The config file ([smtp] in" in html
    assert "https://hooks.example.com/k5" in html and "https://bot:***@hooks.example.net/x" in html
    assert "order.paid" in html
    for secret in (SMTP_PASSWORD, WEBHOOK_SECRET, HOOK_PASSWORD):
        assert secret not in html


def test_save_settings_audits_each_change(backend, app, restore_settings):
    client = signed_in(app)
    seq = last_seq(app)
    form = {**FORM, "site.name": "  Key Shop  ", "site.notice": "今日 <b>促销</b>\r\nline 2",
            "orders.timeout_minutes": "15"}
    resp = post(client, "/admin/settings", form, page_url="/admin/settings")
    assert resp.status_code == 303
    assert "Saved: site.name, site.notice, orders.timeout_minutes." in page(client)
    values = stored(app)
    assert values["site.name"] == "Key Shop" and values["orders.timeout_minutes"] == 15
    assert values["site.notice"] == "今日 <b>促销</b>\nline 2"
    changes = audit_since(app, seq)
    assert [(a, t) for a, t, _ in changes] == [("setting.change", "setting:site.name"),
                                               ("setting.change", "setting:site.notice"),
                                               ("setting.change", "setting:orders.timeout_minutes")]
    assert changes[2][2] == {"key": "orders.timeout_minutes", "old": 10, "new": 15}
    # the notice is shown escaped, and saving the same form again changes nothing
    html = page(client)
    assert "今日 &lt;b&gt;促销&lt;/b&gt;" in html and "<b>促销" not in html
    seq = last_seq(app)
    post(client, "/admin/settings", form, page_url="/admin/settings")
    assert "Nothing changed." in page(client) and audit_since(app, seq) == []


def test_the_contact_text_is_set_here_and_shown_in_the_shop(backend, app, restore_settings):
    """site.contact: a textarea of the shop's form; its lines kept, shown escaped on the storefront."""
    client = signed_in(app)
    html = page(client)
    assert '<textarea id="setting-site-contact" name="site.contact" maxlength="1000"' in html
    assert "Customer service: text" in html
    seq = last_seq(app)
    resp = post(client, "/admin/settings", {**FORM, "site.contact": "客服 <b>9:00–22:00</b>\r\nQQ 10001"},
                page_url="/admin/settings")
    assert resp.status_code == 303 and stored(app)["site.contact"] == "客服 <b>9:00–22:00</b>\nQQ 10001"
    assert audit_since(app, seq) == [("setting.change", "setting:site.contact",
                                      {"key": "site.contact", "old": "", "new": "客服 <b>9:00–22:00</b>\nQQ 10001"})]
    shop = app.test_client().get("/").get_data(as_text=True)
    assert '<span class="contact-text">客服 &lt;b&gt;9:00–22:00&lt;/b&gt;\nQQ 10001</span>' in shop
    resp = post(client, "/admin/settings", {**FORM, "site.contact": "x" * 1001}, page_url="/admin/settings")
    assert resp.status_code == 400 and "site.contact: at most 1000 characters" in resp.get_data(as_text=True)


@pytest.mark.parametrize("bad, message", [
    ({"site.notice": "x" * 2001}, "site.notice: at most 2000 characters"),
    ({"site.notice": "x" * 50000}, "site.notice: at most 2000 characters"),
    ({"orders.timeout_minutes": "ten"}, "orders.timeout_minutes: expected a whole number"),
    ({"orders.timeout_minutes": "0"}, "orders.timeout_minutes: must be at least 1"),
    ({"orders.manual_sla_minutes": "9" * 5000}, "orders.manual_sla_minutes: must be at most 10080"),
    ({"site.name": "a\nb"}, "site.name: one line of text"),
    ({"site.name": "n" * 101}, "site.name: at most 100 characters"),
])
def test_bad_input_changes_nothing(backend, app, restore_settings, bad, message):
    client = signed_in(app)
    seq = last_seq(app)
    before = stored(app)
    # a valid change beside the bad one is not saved either: all or nothing
    resp = post(client, "/admin/settings", {**FORM, "orders.stock_wait_alert_minutes": "45", **bad},
                page_url="/admin/settings")
    html = resp.get_data(as_text=True)
    assert resp.status_code == 400 and message in html
    assert 'value="45"' in html   # the form keeps what was typed
    assert stored(app) == before and audit_since(app, seq) == []


def test_a_test_mail_arrives(backend, mail_app, smtp_server):
    port, inbox = smtp_server
    client = signed_in(mail_app)
    seq = last_seq(mail_app)
    resp = post(client, "/admin/settings/test-mail", {"to": "owner@example.com"}, page_url="/admin/settings")
    assert resp.status_code == 303
    assert "Test mail to owner@example.com accepted by 127.0.0.1." in page(client)
    rcpts, msg = inbox.messages[-1]
    assert rcpts == ["owner@example.com"] and "test mail" in msg["Subject"] and msg["From"] == "shop@example.com"
    assert audit_since(mail_app, seq) == [("settings.test_mail", "mail:owner@example.com",
                                           {"to": "owner@example.com", "server": "127.0.0.1", "result": "sent"})]


def test_a_refused_test_mail_reports_the_smtp_error(backend, mail_app, smtp_server):
    port, inbox = smtp_server
    inbox.refuse.add("nobody@example.com")
    client = signed_in(mail_app)
    seq = last_seq(mail_app)
    post(client, "/admin/settings/test-mail", {"to": "nobody@example.com"}, page_url="/admin/settings")
    html = page(client)
    assert "Test mail to nobody@example.com failed: SMTPRecipientsRefused" in html and "no such mailbox" in html
    [(action, _, details)] = audit_since(mail_app, seq)
    assert action == "settings.test_mail" and details["result"].startswith("SMTPRecipientsRefused")
    assert "\n" not in details["result"]


def test_a_failed_login_never_shows_the_password(backend, installed, tmp_path_factory, smtp_server):
    # the local server offers no AUTH: the login fails, and the message holds no password
    application = app_with(installed, tmp_path_factory, host="127.0.0.1", port=smtp_server[0], username="shop")
    client = signed_in(application)
    seq = last_seq(application)
    post(client, "/admin/settings/test-mail", {"to": "owner@example.com"}, page_url="/admin/settings")
    html = page(client)
    assert "Test mail to owner@example.com failed: SMTPNotSupportedError" in html
    assert SMTP_PASSWORD not in html and SMTP_PASSWORD not in json.dumps(audit_since(application, seq))


def test_an_unreachable_server(backend, installed, tmp_path_factory):
    application = app_with(installed, tmp_path_factory, host="127.0.0.1", port=free_port())
    client = signed_in(application)
    post(client, "/admin/settings/test-mail", {"to": "owner@example.com"}, page_url="/admin/settings")
    assert "failed: ConnectionRefusedError" in page(client)


def test_test_mail_needs_smtp_and_an_address(backend, app, mail_app):
    seq = last_seq(app)
    client = signed_in(app)   # the shared app has no [smtp] host
    html = page(client)
    assert "No SMTP server is configured" in html and 'name="to"' not in html
    post(client, "/admin/settings/test-mail", {"to": "owner@example.com"}, page_url="/admin/settings")
    assert "No SMTP server is configured: set one below" in page(client)
    client = signed_in(mail_app)
    for bad in ("", "not an address", "a@b.c\r\nBcc: x@y.z"):
        post(client, "/admin/settings/test-mail", {"to": bad}, page_url="/admin/settings")
        assert "recipient: a valid e-mail address is required" in page(client)
    assert [a for a, _, _ in audit_since(app, seq) if a.startswith("settings.")] == []


def test_recent_notification_attempts_are_listed(backend, app):
    from kamengd.database import utcnow
    from kamengd.extensions import db
    from kamengd.notifications.models import Event, Notification, NotificationAttempt

    with app.app_context():
        event = Event(type="order.held", payload="{}", dispatched=True, created_at=utcnow())
        db.session.add(event)
        db.session.flush()
        note = Notification(event_id=event.id, channel="webhook", status="failed", attempts=1,
                            target=f"https://bot:{HOOK_PASSWORD}@hooks.example.org/attempts")
        db.session.add(note)
        db.session.flush()
        db.session.add(NotificationAttempt(notification_id=note.id, attempt=1, started_at=utcnow(), duration_ms=12,
                                           outcome="error", status_code=502, error="HTTP 502"))
        db.session.commit()
        ids = event.id, note.id
    try:
        html = page(signed_in(app))
        assert "https://bot:***@hooks.example.org/attempts" in html and "HTTP 502" in html
        assert HOOK_PASSWORD not in html
    finally:
        with app.app_context():
            db.session.execute(sa.delete(NotificationAttempt).where(NotificationAttempt.notification_id == ids[1]))
            db.session.execute(sa.delete(Notification).where(Notification.id == ids[1]))
            db.session.execute(sa.delete(Event).where(Event.id == ids[0]))
            db.session.commit()


def test_settings_are_for_owners_and_admins(backend, app):
    client = signed_in(app, "support")
    assert client.get("/admin/settings").status_code == 403
    assert post(client, "/admin/settings/test-mail", {"to": "a@example.com"}).status_code == 403
    assert post(client, "/admin/settings", FORM).status_code == 403


# --- services ---------------------------------------------------------------------

def test_update_settings_is_all_or_nothing(backend, session):
    with pytest.raises(InvalidRequest) as caught:
        settings.update_settings(session, {"orders.timeout_minutes": "ten", "site.notice": "x" * 2001,
                                           "orders.manual_sla_minutes": "5"}, actor="t")
    assert "expected a whole number" in caught.value.message and "at most 2000" in caught.value.message
    assert settings.get_setting(session, "orders.manual_sla_minutes") == 60
    assert settings.update_settings(session, {"orders.manual_sla_minutes": "5", "site.notice": ""},
                                    actor="t") == ["orders.manual_sla_minutes"]
    with pytest.raises(InvalidRequest, match="unknown setting"):
        settings.update_settings(session, {"no.such": "1"}, actor="t")


def test_site_name_setting(backend, session):
    assert settings.site_name(session, "From config") == "From config"
    settings.set_setting(session, "site.name", "  小店  ", actor="t")
    assert settings.get_setting(session, "site.name") == "小店"
    assert settings.site_name(session, "From config") == "小店"
    with pytest.raises(InvalidRequest, match="one line"):
        settings.set_setting(session, "site.name", "a\tb", actor="t")


def test_send_test_mail_service(installed):
    with pytest.raises(InvalidRequest, match="no SMTP server"):
        send_test_mail(installed, "a@example.com")
    config = dataclasses.replace(installed, smtp=dataclasses.replace(installed.smtp, host="mail.example.com"))
    sent = []
    assert send_test_mail(config, "a@example.com", site_name="Shop", send=lambda c, m: sent.append(m)) is None
    assert sent[0]["To"] == "a@example.com" and "[Shop]" in sent[0]["Subject"]

    def fail(c, m):
        raise OSError("line one\nline two")
    assert send_test_mail(config, "a@example.com", send=fail) == "OSError: line one line two"

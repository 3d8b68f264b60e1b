"""Settings: the run-time settings in one form; mail and webhooks shown read-only, a test mail."""
from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import sqlalchemy as sa
from flask import flash, redirect, render_template, request, url_for
from flask_babel import gettext as _

from ..api import read_only
from ..app import get_config
from ..audit.services import record
from ..errors import KamengdError
from ..extensions import db
from ..notifications.email import check_mail_address, send_test_mail
from ..notifications.models import Event, Notification, NotificationAttempt
from ..settings import services as settings_services
from ..settings.services import SETTINGS
from . import bp
from .session import actor, client_ip

RECENT_ATTEMPTS = 20


def setting_texts() -> dict[str, tuple[str, str]]:
    """key -> (label, help) for the form; a key missing here shows its name and doc."""
    return {
        "site.name": (_("Shop name"), _("Shown to buyers and staff. Empty: the name from the config file (%(name)s).",
                                        name=get_config().site.name)),
        "site.notice": (_("Storefront notice"), _("Shown at the top of the storefront; empty: no notice.")),
        "orders.timeout_minutes": (_("Unpaid order timeout (minutes)"),
                                   _("How long an unpaid order keeps its keys reserved.")),
        "orders.stock_wait_alert_minutes": (_("Stock wait alert (minutes)"),
                                            _("A paid order waiting this long for stock is flagged for staff.")),
        "orders.manual_sla_minutes": (_("Manual delivery deadline (minutes)"),
                                      _("A paid manual-delivery order not delivered within this is flagged.")),
    }


def form_fields() -> list[dict]:
    """One entry per setting: how the form shows it."""
    texts = setting_texts()
    fields = []
    for key, spec in SETTINGS.items():
        label, help_text = texts.get(key, (key, spec.doc))
        kind = "number" if spec.type is int else "line" if spec.single_line else "text"
        fields.append({"key": key, "id": "setting-" + key.replace(".", "-"), "kind": kind, "label": label,
                       "help": help_text, "spec": spec})
    return fields


def _field_limit(key: str) -> int:
    spec = SETTINGS[key]
    return (spec.max_length or 32) + 1   # one more than allowed: the service says what the limit is


def masked_url(url: str) -> str:
    """A URL with a password in it (https://user:secret@host/) shown without the password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, f"{parts.username}:***@{host}", parts.path, parts.query, parts.fragment))


def recent_attempts():
    return db.session.execute(
        sa.select(NotificationAttempt, Notification.channel, Notification.target, Event.type)
        .join(Notification, Notification.id == NotificationAttempt.notification_id)
        .join(Event, Event.id == Notification.event_id)
        .order_by(NotificationAttempt.id.desc()).limit(RECENT_ATTEMPTS)).all()


def _render(values: dict, status: int = 200):
    config = get_config()
    return render_template("panel/settings_page.html", fields=form_fields(), values=values,
                           smtp=config.smtp, smtp_password_set=config.smtp.password_file is not None,
                           notifications=config.notifications, config_path=config.path,
                           webhook_urls=[masked_url(u) for u in config.notifications.webhook_urls],
                           attempts=recent_attempts(), masked_url=masked_url), status


@bp.route("/settings", methods=["GET", "POST"])
def settings():
    if request.method == "GET":
        read_only()
        return _render(settings_services.all_settings(db.session))
    # Browsers send a textarea's line breaks as CRLF: stored as plain newlines.
    submitted = {key: request.form[key][:_field_limit(key)].replace("\r\n", "\n")
                 for key in SETTINGS if key in request.form}
    try:
        changed = settings_services.update_settings(db.session, submitted, actor=actor(), source_ip=client_ip())
    except KamengdError as exc:
        db.session.rollback()
        flash(exc.message, "error")
        return _render({**settings_services.all_settings(db.session), **submitted}, exc.http_status)
    db.session.commit()
    if changed:
        flash(_("Saved: %(keys)s.", keys=", ".join(changed)), "success")
    else:
        flash(_("Nothing changed."), "info")
    return redirect(url_for("panel.settings"), code=303)


@bp.post("/settings/test-mail")
def settings_test_mail():
    config = get_config()
    if not config.smtp.host:
        flash(_("No SMTP server is configured: set [smtp] host in the config file, then restart."), "error")
        return redirect(url_for("panel.settings"), code=303)
    try:
        to = check_mail_address(request.form.get("to", "")[:300])
    except KamengdError as exc:
        flash(exc.message, "error")
        return redirect(url_for("panel.settings"), code=303)
    site = settings_services.site_name(db.session, config.site.name)
    db.session.commit()   # no transaction (SQLite's write lock) is held while the mail server answers
    error = send_test_mail(config, to, site_name=site)
    record(db.session, "settings.test_mail", actor=actor(), target=f"mail:{to}", source_ip=client_ip(),
           details={"to": to, "result": "sent" if error is None else error})
    db.session.commit()
    if error is None:
        flash(_("Test mail to %(to)s accepted by %(host)s.", to=to, host=config.smtp.host), "success")
    else:
        flash(_("Test mail to %(to)s failed: %(error)s", to=to, error=error), "error")
    return redirect(url_for("panel.settings"), code=303)

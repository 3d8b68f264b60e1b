"""Settings: the shop's run-time settings, the mail server and the notifications
(each from the config file or set here), and a test mail."""
from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import sqlalchemy as sa
from flask import flash, redirect, render_template, request, url_for
from flask_babel import gettext as _

from ..config import callback_url_kind
from ..context import get_config, get_vault
from ..audit.services import record
from ..errors import KamengdError
from ..extensions import db
from ..notifications.email import check_mail_address, send_test_mail
from ..notifications.models import Event, Notification, NotificationAttempt
from ..settings import services as settings_services
from ..settings.messaging import mail_server, save_group, sending_config
from ..settings.services import EVENT_CHOICES, SETTINGS, secrets_set, shop_url
from ..transaction import read_only
from .blueprint import bp
from .helpers import flash_errors
from .session import actor, client_ip

RECENT_ATTEMPTS = 20


def setting_texts() -> dict[str, tuple[str, str]]:
    """key -> (label, help) for the form; a key missing here shows its name and doc."""
    return {
        "site.name": (_("Shop name"), _("Shown to buyers and staff. Empty: the name from the config file (%(name)s).",
                                        name=get_config().site.name)),
        "site.url": (_("Shop address (site.url)"),
                     _("The public https address of the shop: payment gateways call it back and send buyers there. "
                       "Empty: the address from the config file (%(url)s).", url=get_config().site.url)),
        "site.notice": (_("Storefront notice"), _("Shown at the top of the storefront; empty: no notice.")),
        "site.footer": (_("Storefront footer"), _("At the foot of every storefront page: opening hours, terms.")),
        "site.contact": (_("Customer service: text"),
                         _("Free text on every storefront page and on the order page: hours, how to reach you. "
                           "Empty: not shown.")),
        "site.contact_qq": (_("Customer service: QQ"), _("A QQ number buyers can write to; empty: not shown.")),
        "site.contact_wechat": (_("Customer service: WeChat ID"), _("Shown on every storefront page; empty: not shown.")),
        "site.contact_telegram": (_("Customer service: Telegram"), _("A username, without @; empty: not shown.")),
        "site.contact_email": (_("Customer service: e-mail"), _("Shown on every storefront page; empty: not shown.")),
        "orders.timeout_minutes": (_("Unpaid order timeout (minutes)"),
                                   _("How long an unpaid order keeps its keys reserved.")),
        "orders.stock_wait_alert_minutes": (_("Stock wait alert (minutes)"),
                                            _("A paid order waiting this long for stock is flagged for staff.")),
        "orders.manual_sla_minutes": (_("Manual delivery deadline (minutes)"),
                                      _("A paid manual-delivery order not delivered within this is flagged.")),
        "agents.max_depth": (_("Agent levels below the shop"),
                             _("How deep the tree of agents and sub-agents may grow (1: no sub-agents).")),
        "agents.commission_hold_days": (_("Commission hold (days)"),
                                        _("Agents' commission becomes spendable this many days after delivery; "
                                          "a refund before then takes it back from pending.")),
        "agents.ref_days": (_("Invite link lasts (days)"),
                            _("A buyer who came through an agent's invite link is that agent's for this long.")),
        "agents.new_buyer_reward": (_("New buyer reward"),
                                    _("An agent earns this, besides its margin, for a new buyer's first order sold "
                                      "through it (invite link or sub-station): once per buyer e-mail, held and "
                                      "reversed like commission. 0: nothing.")),
        "points.discount_share": (_("Points off an order (%)"),
                                  _("积分抵扣: a member signed in may pay up to this share of an order with points "
                                    "(at the points worth 1.00 below), the rest at the gateway; the points go back "
                                    "if the order expires unpaid or is refunded. 0: off.")),
        "points.earn_rate": (_("Points earned per 1.00"),
                             _("A member signed in when it orders (or paying from its balance) earns this many "
                               "points for each 1.00 paid, on delivery; a refund takes them back. 0: none.")),
        "points.topup_bonus": (_("Top-up bonus points (充值满额赠送积分)"),
                               _("AMOUNT=POINTS, e.g. 100=50, 500=300: a balance top-up of at least the amount "
                                 "gives the points of the highest tier it reaches. Empty: none.")),
        "points.value": (_("Points worth 1.00"),
                         _("What a points channel charges: an order of 1.00 costs this many points.")),
        "tickets.sla_hours": (_("After-sales answer time (hours)"),
                              _("A ticket whose buyer has waited this long for an answer is marked overdue and "
                                "staff are told (ticket.overdue).")),
        "vouchers.undo_minutes": (_("Voucher undo window (minutes)"),
                                  _("A store manager (or an owner or admin) may undo a redemption this long after "
                                    "it, giving its use or value back.")),
        "withdrawals.minimum": (_("Smallest withdrawal"), _("Agents cannot request less than this.")),
        "withdrawals.fee_percent": (_("Withdrawal fee (%)"), _("Kept by the shop when a withdrawal is paid.")),
        "withdrawals.fee_fixed": (_("Withdrawal fee (fixed)"), _("Added to the percentage.")),
        "withdrawals.daily_limit": (_("Daily withdrawal limit per agent"),
                                    _("Most an agent may request in a day; 0: no limit.")),
    }


def form_fields() -> list[dict]:
    """One entry per shop setting: how the form shows it (mail and notifications have forms of their own)."""
    texts = setting_texts()
    fields = []
    for key, spec in SETTINGS.items():
        if spec.group != "shop":
            continue
        label, help_text = texts.get(key, (key, spec.doc))
        kind = "number" if spec.type is int else "line" if spec.single_line else "text"
        fields.append({"key": key, "id": "setting-" + key.replace(".", "-"), "kind": kind, "label": label,
                       "help": help_text, "spec": spec})
    return fields


def _field_limit(key: str) -> int:
    spec = SETTINGS[key]
    if spec.type is list:
        return spec.max_items * 2100   # a form's list: one entry per line, each checked by the service
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
                           file_smtp=config.smtp, file_smtp_password=config.smtp.password_file is not None,
                           file_notifications=config.notifications, config_path=config.path,
                           file_webhook_urls=[masked_url(u) for u in config.notifications.webhook_urls],
                           sending=mail_server(db.session, config), secrets=secrets_set(db.session),
                           event_types=EVENT_CHOICES, attempts=recent_attempts(),
                           masked_url=masked_url, site_url_problem=site_url_problem()), status


def site_url_problem() -> str | None:
    """Why gateways could not call this shop back at the address pay URLs name."""
    url = shop_url()
    kind = callback_url_kind(url)
    if kind == "plain_http":
        return _("%(url)s is plain http on a public host: buyers' keys and the gateway's callbacks travel "
                 "unencrypted. Serve the shop over https and enter its https address.", url=url)
    if kind is not None:
        return _("%(url)s is on this machine or a private network: a payment gateway cannot reach it, so no "
                 "payment would ever be confirmed. Enter the shop's public https address.", url=url)
    return None


def _submitted(group: str) -> dict:
    """The group's settings as the form sent them: lists as several values or one per line."""
    out = {}
    for key, spec in SETTINGS.items():
        if spec.group != group:
            continue
        if spec.type is list:
            # Check boxes: the form also sends an empty value, so "none ticked" is told from "not sent".
            if spec.choices and key in request.form:
                out[key] = [v[:64] for v in request.form.getlist(key)[:spec.max_items + 2]]
            elif key in request.form:
                out[key] = request.form[key][:_field_limit(key)]
        elif key in request.form:   # browsers send a textarea's line breaks as CRLF
            out[key] = request.form[key][:_field_limit(key)].replace("\r\n", "\n")
    return out


@bp.route("/settings", methods=["GET", "POST"])
def settings():
    if request.method == "GET":
        read_only()
        return _render(settings_services.all_settings(db.session))
    return _save("shop", lambda submitted: settings_services.update_settings(
        db.session, submitted, actor=actor(), source_ip=client_ip()))


def _save(group: str, save, anchor: str | None = None):
    """Save one form of the page, all or nothing; on a mistake the page comes back as it was typed."""
    submitted = _submitted(group)
    try:
        changed = save(submitted)
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        return _render({**settings_services.all_settings(db.session), **submitted}, exc.http_status)
    if changed:
        flash(_("Saved: %(keys)s.", keys=", ".join(changed)), "success")
    else:
        flash(_("Nothing changed."), "info")
    return redirect(url_for("panel.settings", _anchor=anchor), code=303)


def _save_group(group: str, secret_field: str, anchor: str):
    return _save(group, lambda submitted: save_group(
        db.session, get_vault(), group, submitted, secret=request.form.get(secret_field, "")[:2000],
        clear_secret=request.form.get(secret_field + "-clear") == "1", actor=actor(), source_ip=client_ip()),
        anchor)


@bp.post("/settings/mail")
def settings_mail():
    return _save_group("smtp", "smtp.password", "mail")


@bp.post("/settings/notifications")
def settings_notifications():
    return _save_group("notifications", "notifications.webhook_secret", "notifications")


@bp.post("/settings/test-mail")
def settings_test_mail():
    config = sending_config()
    if not config.smtp.host:
        flash(_("No SMTP server is configured: set one below (or [smtp] host in the config file)."), "error")
        return redirect(url_for("panel.settings", _anchor="mail"), code=303)
    try:
        to = check_mail_address(request.form.get("to", "")[:300])
    except KamengdError as exc:
        flash_errors(exc)
        return redirect(url_for("panel.settings", _anchor="mail"), code=303)
    site = settings_services.site_name(db.session, config.site.name)
    db.session.commit()   # ends the read: no transaction (SQLite's write lock) is held while the mail server answers
    error = send_test_mail(config, to, site_name=site)
    record(db.session, "settings.test_mail", actor=actor(), target=f"mail:{to}", source_ip=client_ip(),
           details={"to": to, "server": config.smtp.host, "result": "sent" if error is None else error})
    if error is None:
        flash(_("Test mail to %(to)s accepted by %(host)s.", to=to, host=config.smtp.host), "success")
    else:
        flash(_("Test mail to %(to)s failed: %(error)s", to=to, error=error), "error")
    return redirect(url_for("panel.settings", _anchor="mail"), code=303)

"""Settings staff change while the shop runs (the config file holds the rest).

Each setting is declared once below with its type, default and limits; an
unknown key or a bad value is refused with the key's name, and every change
is audited with the old and the new value. Secret settings (the SMTP
password, the webhook signing secret) are stored apart, encrypted with the
data key, and audited without their value.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from ..audit.services import record
from ..config import AGENT_ONLY_EVENTS, EVENT_TYPES, STAFF_EVENTS
from ..context import get_config
from ..errors import Collector, InvalidRequest
from ..extensions import db
from ..money import format_cents, parse_plain_money
from ..validation import has_control_characters, is_email_address
from ..vault import Vault
from .models import Setting, SettingSecret


# A spec's check raises InvalidRequest with the reason; parse_value puts the key before it.

def _mail_address(text: str) -> str:
    if not is_email_address(text):
        raise InvalidRequest("%(value)r is not an e-mail address", value=text)
    return text


def _qq_number(text: str) -> str:
    if not (text.isascii() and text.isdigit() and 5 <= len(text) <= 12):
        raise InvalidRequest("%(value)r is not a QQ number (5 to 12 digits)", value=text)
    return text


def _telegram(text: str) -> str:
    name = text.removeprefix("@")
    if not (5 <= len(name) <= 32 and name.isascii() and all(c.isalnum() or c == "_" for c in name)):
        raise InvalidRequest("%(value)r is not a Telegram username (5 to 32 letters, digits or _)", value=text)
    return name


def shop_look() -> dict:
    """What every storefront page shows around its content (footer, customer service),
    in one query; nothing (the defaults) when the database cannot answer."""
    keys = ("site.footer", "site.contact", "site.contact_qq", "site.contact_wechat", "site.contact_telegram",
            "site.contact_email")
    try:
        stored = dict(db.session.execute(sa.select(Setting.key, Setting.value).where(Setting.key.in_(keys))).all())
    except SQLAlchemyError:
        db.session.rollback()
        stored = {}
    return {key.removeprefix("site."): decode_setting(key, stored.get(key)) for key in keys}


def _amount(text: str) -> str:
    """An amount of money, kept as written plainly ('10', '10.5' -> '10.50')."""
    return format_cents(parse_plain_money(text, field="amount", allow_zero=True))


def _percent(text: str) -> str:
    """A percentage of 0 to 100 with at most two places ('1.5' -> '1.50')."""
    cents = parse_plain_money(text, field="percentage", allow_zero=True)
    if cents > 10000:
        raise InvalidRequest("%(value)r is more than 100", value=text[:40])
    return format_cents(cents)


def _bonus_tiers(text: str) -> str:
    """Top-up bonus tiers, "AMOUNT=POINTS" separated by commas ('100=50, 500=300'), kept tidy
    and in order; each a whole number of points above zero."""
    tiers = {}
    text = text.replace("，", ",").replace("＝", "=").replace("；", ";")   # (typed with a Chinese keyboard)
    for item in (part.strip() for part in re.split(r"[,;\s]+(?=[0-9.]+\s*=)", text.strip()) if part.strip()):
        found = re.fullmatch(r"([0-9]{1,9}(?:\.[0-9]{1,2})?)\s*=\s*([0-9]{1,9})", item)
        if found is None or int(found.group(2)) == 0:
            raise InvalidRequest("%(item)r is not AMOUNT=POINTS such as 100=50", item=item[:40])
        least = parse_plain_money(found.group(1), field="amount")
        if least in tiers:
            raise InvalidRequest("%(amount)s twice", amount=format_cents(least))
        tiers[least] = int(found.group(2))
    return ", ".join(f"{format_cents(least)}={points}" for least, points in sorted(tiers.items()))


def _site_url(text: str) -> str:
    """The shop's public base address: scheme and host (a path prefix allowed), nothing else."""
    parts = urlsplit(text)
    try:
        parts.port
    except ValueError:
        raise InvalidRequest("%(value)r has a port that is not a number", value=text[:200]) from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment or \
            parts.username or any(c.isspace() for c in text):
        raise InvalidRequest("%(value)r is not the shop's address such as https://shop.example.com", value=text[:200])
    return text.rstrip("/")


def _webhook_url(text: str) -> str:
    parts = urlsplit(text)
    try:
        parts.port   # a port that is not a number raises here, not at the first send
    except ValueError:
        raise InvalidRequest("%(value)r has a port that is not a number", value=text[:200]) from None
    if len(text) > 2000 or parts.scheme not in ("http", "https") or not parts.hostname or \
            any(c.isspace() for c in text) or has_control_characters(text):
        raise InvalidRequest("%(value)r is not an http(s) URL", value=text[:200])
    return text


def mask_url(url: str) -> str:
    """A webhook URL for the audit log: its site, and a fingerprint instead of the rest,
    which often is the receiver's token (user:password@, /hook/<token>, ?access_token=)."""
    parts = urlsplit(url)
    site = parts.hostname or ""
    try:
        if parts.port:
            site += f":{parts.port}"
    except ValueError:
        pass
    return f"{parts.scheme}://{site}/… (sha256 {hashlib.sha256(url.encode()).hexdigest()[:12]})"


@dataclass(frozen=True)
class SettingSpec:
    type: type
    default: object
    doc: str
    minimum: int | None = None
    maximum: int | None = None
    max_length: int | None = None
    single_line: bool = False   # text: surrounding spaces dropped, no line breaks or control characters
    choices: tuple[str, ...] = ()   # text: the value; lists: each item
    # Text: checks a non-empty value; lists: each item. Raises InvalidRequest with the reason.
    check: Callable[[str], str] | None = None
    max_items: int = 20
    group: str = "shop"         # which form of the panel's settings page shows it
    separators: str = r"[\s,]+"  # lists given as one text: what separates the items
    audit_as: Callable | None = None   # how a value is written in the audit log (None: as it is)


SOURCES = ("file", "panel")
EVENT_CHOICES = ("*",) + tuple(e for e in EVENT_TYPES if e not in AGENT_ONLY_EVENTS)   # staff's

SETTINGS: dict[str, SettingSpec] = {
    "site.name": SettingSpec(str, "", "Shop name shown to buyers and staff; empty: site.name of the config file.",
                             max_length=100, single_line=True),
    "site.url": SettingSpec(str, "", "The shop's public address: pay URLs send gateways' callbacks and buyers "
                            "there; empty: site.url of the config file.", max_length=200, single_line=True,
                            check=_site_url),
    "site.notice": SettingSpec(str, "", "Notice shown at the top of the storefront.", max_length=2000),
    "site.footer": SettingSpec(str, "", "Text at the foot of every storefront page (hours, terms).", max_length=500),
    # Customer service, on every storefront page and the order page; empty: not shown.
    "site.contact": SettingSpec(str, "", "Customer-service text (hours, how to reach staff), several lines.",
                                max_length=1000),
    "site.contact_qq": SettingSpec(str, "", "Customer-service QQ number.", max_length=20, single_line=True,
                                   check=_qq_number),
    "site.contact_wechat": SettingSpec(str, "", "Customer-service WeChat ID.", max_length=64, single_line=True),
    "site.contact_telegram": SettingSpec(str, "", "Customer-service Telegram username (without @).",
                                         max_length=64, single_line=True,
                                         check=_telegram),
    "site.contact_email": SettingSpec(str, "", "Customer-service e-mail address.", max_length=254,
                                      single_line=True, check=_mail_address),
    "orders.timeout_minutes": SettingSpec(int, 10, "Minutes an unpaid order keeps its keys reserved.",
                                          minimum=1, maximum=1440),
    "orders.stock_wait_alert_minutes": SettingSpec(
        int, 30, "Minutes a paid order may wait for stock before it is flagged for staff (order.stuck).",
        minimum=1, maximum=10080),
    "orders.manual_sla_minutes": SettingSpec(
        int, 60, "Minutes staff have to deliver a paid manual-delivery order before it is flagged (order.stuck).",
        minimum=1, maximum=10080),
    # Agents: the tree, commission and withdrawals (amounts in the shop's currency).
    "agents.max_depth": SettingSpec(int, 3, "How many levels of agents may sit below the shop (1: agents directly "
                                    "under it only). Lowering it keeps the agents already deeper.",
                                    minimum=1, maximum=10),
    "agents.commission_hold_days": SettingSpec(
        int, 7, "Days an agent's commission stays pending (reversed, not taken back, if the order is refunded "
        "meanwhile) before it can be spent or withdrawn.", minimum=0, maximum=365),
    "agents.ref_days": SettingSpec(int, 30, "Days an agent's invite link (?ref=) keeps attributing a buyer's "
                                   "orders to it.", minimum=1, maximum=365),
    "agents.new_buyer_reward": SettingSpec(
        str, "0.00", "What an agent earns, besides its margin, for a new buyer's first order sold through it (its "
        "invite link or its sub-station): once per buyer e-mail, held and reversed like commission. 0: nothing.",
        max_length=16, single_line=True, check=_amount),
    # Points (积分): members and agents earn them on delivery and pay with them (a points channel).
    "points.discount_share": SettingSpec(
        int, 0, "积分抵扣: the most of an order's amount, in percent, a member signed in on the storefront may pay "
        "with points (points.value per 1.00), the rest through the gateway; the points go back if the order "
        "expires unpaid or is refunded. 0: points are not taken off orders.", minimum=0, maximum=99),
    "points.earn_rate": SettingSpec(
        int, 0, "Points a member (or agent) earns for each 1.00 it pays, on delivery of an order placed signed in "
        "or paid from its balance; taken back when the order is refunded. 0: none.", minimum=0, maximum=10000),
    "points.topup_bonus": SettingSpec(
        str, "", "充值满额赠送积分: points a member or an agent gets with a balance top-up of at least an amount, e.g. "
        "'100=50, 500=300' (a top-up of 500.00 or more: 300 points; the highest tier reached). Empty: none.",
        max_length=400, single_line=True, check=_bonus_tiers),
    "points.value": SettingSpec(
        int, 100, "Points worth 1.00 when paying through a points channel (积分兑换) or taking points off an "
        "order (points.discount_share): an order of 9.90 costs 990 points at 100.", minimum=1, maximum=1000000),
    "tickets.sla_hours": SettingSpec(
        int, 24, "Hours a buyer's after-sales ticket may wait for staff's answer before the scheduler marks it "
        "overdue (ticket.overdue).", minimum=1, maximum=720),
    "vouchers.undo_minutes": SettingSpec(
        int, 15, "Minutes after a voucher's redemption during which a manager of its store (or an owner or admin) "
        "may undo it, giving back its use or value.", minimum=1, maximum=1440),
    "withdrawals.minimum": SettingSpec(str, "10.00", "Smallest withdrawal an agent may request.", max_length=16,
                                       single_line=True, check=_amount),
    "withdrawals.fee_percent": SettingSpec(str, "0.00", "Fee the shop keeps of each withdrawal, in percent.",
                                           max_length=8, single_line=True, check=_percent),
    "withdrawals.fee_fixed": SettingSpec(str, "0.00", "Fixed fee the shop keeps of each withdrawal (added to "
                                         "the percentage).", max_length=16, single_line=True, check=_amount),
    "withdrawals.daily_limit": SettingSpec(str, "0.00", "Most an agent may request in withdrawals a day (the "
                                           "shop's time zone); 0: no limit.", max_length=16, single_line=True,
                                           check=_amount),
    # The mail server: [smtp] of the config file, or these (and the secret smtp.password).
    "smtp.source": SettingSpec(str, "file", "file: the mail server of the config file ([smtp]); panel: the "
                               "smtp.* settings here.", choices=SOURCES, group="smtp"),
    "smtp.host": SettingSpec(str, "", "SMTP server (with smtp.source = panel); empty: no mail.", max_length=253,
                             single_line=True, group="smtp"),
    "smtp.port": SettingSpec(int, 587, "SMTP port (587 STARTTLS, 465 TLS, 25 plain).", minimum=1, maximum=65535,
                             group="smtp"),
    "smtp.security": SettingSpec(str, "starttls", "starttls, tls or none.", choices=("starttls", "tls", "none"),
                                 group="smtp"),
    "smtp.username": SettingSpec(str, "", "SMTP login (empty: no login).", max_length=254, single_line=True,
                                 group="smtp"),
    "smtp.from_address": SettingSpec(str, "", "Sender address, e.g. shop@example.com.", max_length=254,
                                     single_line=True, check=_mail_address, group="smtp"),
    # Webhooks and staff mail: [notifications] of the config file, or these.
    "notifications.source": SettingSpec(str, "file", "file: webhooks and staff mail of the config file "
                                        "([notifications]); panel: the notifications.* settings here.",
                                        choices=SOURCES, group="notifications"),
    "notifications.webhook_urls": SettingSpec(list, [], "URLs that receive events as signed JSON POSTs "
                                              "(one per line, or separated by spaces).",
                                              check=_webhook_url, max_items=10, group="notifications",
                                              separators=r"\s+",   # a URL may hold commas, never spaces
                                              audit_as=lambda urls: [mask_url(u) for u in urls]),
    "notifications.webhook_events": SettingSpec(list, ["*"], "Events sent to the webhooks; * for all.",
                                                choices=EVENT_CHOICES, max_items=len(EVENT_CHOICES),
                                                group="notifications"),
    "notifications.email_to": SettingSpec(list, [], "Staff addresses that receive events by mail.",
                                          check=_mail_address, max_items=20, group="notifications"),
    "notifications.email_events": SettingSpec(list, list(STAFF_EVENTS), "Events mailed to email_to; * for all.",
                                              choices=EVENT_CHOICES, max_items=len(EVENT_CHOICES),
                                              group="notifications"),
}

# Secret settings: key -> (doc, shortest, longest). Never shown back, never in the audit log.
SECRETS: dict[str, tuple[str, int, int]] = {
    "smtp.password": ("SMTP password (with smtp.source = panel).", 1, 1024),
    "notifications.webhook_secret": ("Webhook signing secret (HMAC-SHA256), at least 16 characters.", 16, 1024),
}


def _spec(key: str) -> SettingSpec:
    try:
        return SETTINGS[key]
    except KeyError:
        raise InvalidRequest("unknown setting %(key)r (known: %(known)s)", key=key,
                             known=", ".join(sorted(SETTINGS))) from None


def parse_value(key: str, raw) -> object:
    """Validate a value (a string from the CLI or a form, or already typed)."""
    spec = _spec(key)
    if spec.type is int:
        try:
            value = int(raw) if isinstance(raw, str) else raw
        except ValueError:
            raise InvalidRequest("%(key)s: expected a whole number, got %(raw)r", key=key, raw=raw) from None
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidRequest("%(key)s: expected a whole number, got %(raw)r", key=key, raw=raw)
        if spec.minimum is not None and value < spec.minimum:
            raise InvalidRequest("%(key)s: must be at least %(minimum)s", key=key, minimum=spec.minimum)
        if spec.maximum is not None and value > spec.maximum:
            raise InvalidRequest("%(key)s: must be at most %(maximum)s", key=key, maximum=spec.maximum)
        return value
    if spec.type is list:
        return _parse_list(key, spec, raw)
    if not isinstance(raw, str):
        raise InvalidRequest("%(key)s: expected text", key=key)
    if spec.single_line:
        raw = raw.strip()
        if has_control_characters(raw):
            raise InvalidRequest("%(key)s: one line of text, without control characters", key=key)
    if spec.max_length is not None and len(raw) > spec.max_length:
        raise InvalidRequest("%(key)s: at most %(max_length)s characters", key=key, max_length=spec.max_length)
    if spec.choices and raw not in spec.choices:
        raise InvalidRequest("%(key)s: one of %(choices)s, got %(raw)r", key=key, choices=", ".join(spec.choices),
                             raw=raw[:50])
    if spec.check is not None and raw:
        try:
            raw = spec.check(raw)
        except InvalidRequest as exc:
            raise InvalidRequest("%(key)s: %(error)s", key=key, error=exc) from None
    return raw


def _parse_list(key: str, spec: SettingSpec, raw) -> list[str]:
    """A list from a form or the CLI: items split by the spec's separators; blanks and repeats dropped."""
    if isinstance(raw, str):
        raw = re.split(spec.separators, raw)
    if not isinstance(raw, (list, tuple)) or not all(isinstance(item, str) for item in raw):
        raise InvalidRequest("%(key)s: expected a list of text", key=key)
    items = list(dict.fromkeys(item.strip() for item in raw if item.strip()))
    if len(items) > spec.max_items:
        raise InvalidRequest("%(key)s: at most %(max_items)s entries", key=key, max_items=spec.max_items)
    checked = []
    for item in items:
        if spec.choices and item not in spec.choices:
            raise InvalidRequest("%(key)s: unknown entry %(item)r (known: %(known)s)", key=key, item=item[:64],
                                 known=", ".join(spec.choices))
        try:
            checked.append(spec.check(item) if spec.check else item)
        except InvalidRequest as exc:
            raise InvalidRequest("%(key)s: %(error)s", key=key, error=exc) from None
    return checked


def get_setting(session: Session, key: str):
    return decode_setting(key, session.scalar(sa.select(Setting.value).where(Setting.key == key)))


def decode_setting(key: str, stored: str | None):
    """A setting's value from its stored JSON (None: not set, the default)."""
    return _default(_spec(key)) if stored is None else json.loads(stored)


def setting_value_query(key: str):
    """The stored JSON of one setting as a scalar subquery, for a statement that reads it
    along with other rows (decode_setting turns it into the value)."""
    _spec(key)
    return sa.select(Setting.value).where(Setting.key == key).scalar_subquery()


def all_settings(session: Session) -> dict:
    stored = {row.key: json.loads(row.value) for row in session.scalars(sa.select(Setting))}
    return {key: stored[key] if key in stored else _default(spec) for key, spec in SETTINGS.items()}


def _default(spec: SettingSpec):
    return list(spec.default) if isinstance(spec.default, list) else spec.default   # never the shared list


def set_setting(session: Session, key: str, raw, *, actor: str, source_ip: str | None = None):
    value = parse_value(key, raw)
    old = get_setting(session, key)
    row = session.get(Setting, key)
    if row is None:
        row = Setting(key=key, value=json.dumps(value, ensure_ascii=False), updated_by=actor)
        session.add(row)
    else:
        row.value, row.updated_by = json.dumps(value, ensure_ascii=False), actor
    session.flush()
    shown = SETTINGS[key].audit_as or (lambda v: v)
    record(session, "setting.change", actor=actor, target=f"setting:{key}", source_ip=source_ip,
           details={"key": key, "old": shown(old), "new": shown(value)})
    return value


def update_settings(session: Session, raw: dict, *, actor: str, source_ip: str | None = None) -> list[str]:
    """Change several settings at once, all or nothing: every value is checked
    before any is written. Returns the keys that changed (each audited)."""
    found, parsed = Collector(), {}
    for key, value in raw.items():
        with found:
            parsed[key] = parse_value(key, value)
    found.check()
    current = all_settings(session)
    changed = [key for key, value in parsed.items() if current[key] != value]
    for key in changed:
        set_setting(session, key, parsed[key], actor=actor, source_ip=source_ip)
    return changed


def site_name(session: Session, default: str) -> str:
    """The shop's name: the run-time setting, or `default` (the config file's) when it is empty."""
    return get_setting(session, "site.name") or default


def site_url(session: Session, default: str) -> str:
    """The shop's public address: the run-time setting, or `default` (the config file's)."""
    return get_setting(session, "site.url") or default


def shop_url() -> str:
    """site.url as staff set it in the panel, else the config file's (in an app context)."""
    try:
        return site_url(db.session, get_config().site.url)
    except SQLAlchemyError:
        db.session.rollback()
        return get_config().site.url


def shop_name() -> str:
    """The name staff set in the panel, else the config file's (in an app context: pages, mail)."""
    try:
        return site_name(db.session, get_config().site.name)
    except SQLAlchemyError:   # an error page (database down) still renders
        db.session.rollback()
        return get_config().site.name


# --- secret settings ---------------------------------------------------------

def _secret_spec(key: str) -> tuple[str, int, int]:
    try:
        return SECRETS[key]
    except KeyError:
        raise InvalidRequest("unknown secret setting %(key)r (known: %(known)s)", key=key,
                             known=", ".join(sorted(SECRETS))) from None


def _secret_context(key: str) -> str:
    return f"setting:{key}"


def check_secret(key: str, value) -> None:
    _doc, shortest, longest = _secret_spec(key)
    if not isinstance(value, str) or not shortest <= len(value) <= longest:
        raise InvalidRequest("%(key)s: %(shortest)s to %(longest)s characters", key=key, shortest=shortest,
                             longest=longest)
    if has_control_characters(value):
        raise InvalidRequest("%(key)s: no line breaks or control characters", key=key)


def set_secret(session: Session, vault: Vault, key: str, value: str, *, actor: str,
               source_ip: str | None = None) -> None:
    """Store a secret setting, encrypted; the audit entry says that it changed, never the value."""
    check_secret(key, value)
    nonce, ciphertext, version = vault.encrypt_secret(_secret_context(key), value.encode("utf-8"))
    row = session.get(SettingSecret, key)
    if row is None:
        session.add(SettingSecret(key=key, nonce=nonce, ciphertext=ciphertext, key_version=version,
                                  updated_by=actor))
    else:
        row.nonce, row.ciphertext, row.key_version, row.updated_by = nonce, ciphertext, version, actor
    session.flush()
    record(session, "setting.secret_set", actor=actor, target=f"setting:{key}", source_ip=source_ip,
           details={"key": key})


def clear_secret(session: Session, key: str, *, actor: str, source_ip: str | None = None) -> bool:
    _secret_spec(key)
    row = session.get(SettingSecret, key)
    if row is None:
        return False
    session.delete(row)
    session.flush()
    record(session, "setting.secret_clear", actor=actor, target=f"setting:{key}", source_ip=source_ip,
           details={"key": key})
    return True


def get_secret(session: Session, vault: Vault, key: str) -> str | None:
    _secret_spec(key)
    row = session.get(SettingSecret, key)
    if row is None:
        return None
    return vault.decrypt_secret(_secret_context(key), row.nonce, row.ciphertext, row.key_version).decode("utf-8")


def secrets_set(session: Session) -> dict[str, bool]:
    """Which secret settings hold a value (without decrypting any)."""
    stored = set(session.scalars(sa.select(SettingSecret.key)))
    return {key: key in stored for key in SECRETS}


def reencrypt_secrets(session: Session, vault: Vault) -> int:
    """Key rotation: secret settings follow the data key like channel secrets."""
    done = 0
    for row in session.scalars(sa.select(SettingSecret).where(SettingSecret.key_version != vault.current_version)).all():
        context = _secret_context(row.key)
        plaintext = vault.decrypt_secret(context, row.nonce, row.ciphertext, row.key_version)
        row.nonce, row.ciphertext, row.key_version = vault.encrypt_secret(context, plaintext)
        done += 1
    session.flush()
    return done

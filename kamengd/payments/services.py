from __future__ import annotations

import datetime as dt
from decimal import Decimal
import http.client
import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import quote, quote_plus, urlencode, urlsplit

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..audit.services import record
from ..database import utcnow
from ..errors import Collector, Conflict, InvalidRequest, KamengdError, N_, NotFound
from ..catalog.models import Product
from ..money import format_cents, parse_plain_money
from ..notifications.events import emit, order_payload
from ..orders.attention import flag_order
from ..orders import reasons
from ..orders.models import Order
from ..orders.services import deliver_paid_order, lock_order_status
from ..catalog import limits
from ..context import get_config
from ..marketing import coupons, points
from ..risk import engine as risk
from ..validation import has_control_characters
from ..vault import Vault, VaultError
from ..settings.services import shop_url
from . import epay, methods, routing, sandbox
from .gateways import SPECS, gateway as protocol_of
from .gateways.base import Channel, GatewayError
from .paths import balance_url, start_url
from .models import EXTRA_PAYMENT_FLAG, ChannelDay, Payment, PaymentChannel, ProductChannel, placeholder_trade_no
from .strength import secret_problem, secrets_problem

CODE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")

# Per channel type: the options it takes, which are required, which are secret.
CHANNEL_TYPES = {
    "epay": {"options": ("gateway", "pid", "key", "pay_type", "pay_types"),
             "required": ("gateway", "pid", "key"),
             "secret": ("key",)},
    # A pretend gateway for trying the shop (kamengd.payments.sandbox): its secret is made here.
    "sandbox": {"options": ("secret", "force"),
                "required": ("secret",),
                "secret": ("secret",)},
    # Pays from a member's or an agent's balance on this shop (kamengd.payments.balance): nothing to set.
    "balance": {"options": (), "required": (), "secret": ()},
    # Pays with a member's or an agent's points (kamengd.payments.points): nothing to set.
    "points": {"options": (), "required": (), "secret": ()},
    # The gateway protocols (kamengd.payments.gateways): what each one's channel is made of.
    **{name: {"options": spec.options, "required": spec.required, "secret": spec.secret}
       for name, spec in SPECS.items()},
}


MAX_OPTION_LENGTH = 500
# RSA keys and certificates in PEM: a 4096-bit private key is some 3,300 characters.
KEY_OPTIONS = ("private_key", "alipay_public_key", "merchant_private_key", "platform_public_key")
MAX_KEY_OPTION_LENGTH = 8000


def option_limit(name: str) -> int:
    return MAX_KEY_OPTION_LENGTH if name in KEY_OPTIONS else MAX_OPTION_LENGTH
MAX_NAME_LENGTH = 100
SORT_ORDER_RANGE = (0, 9999)
UNDECRYPTABLE = N_("the stored key cannot be decrypted with the data key; enter it again")


def _check_options(channel_type: str, options: dict[str, str], found: Collector, unchecked=()) -> None:
    """Every mistake among a channel's options, into `found` (a form names them all at once;
    one mistake per option). Options named in `unchecked` are left to the caller."""
    spec = CHANNEL_TYPES[channel_type]
    wrong = set(unchecked)

    def add(name, error):
        wrong.add(name)
        found.add(error)

    for name, value in options.items():
        if name not in spec["options"]:
            add(name, InvalidRequest("option %(name)s: not an option of %(channel_type)s (takes %(options)s)",
                                     name=name, channel_type=channel_type, options=", ".join(spec["options"])))
        elif len(value) > option_limit(name):
            add(name, InvalidRequest("option %(name)s: at most %(limit)s characters",
                                     name=name, limit=option_limit(name)))
    for name in spec["required"]:
        if name not in wrong and not options.get(name, "").strip():
            # An empty Epay key would make every callback forgeable.
            add(name, InvalidRequest("option %(name)s: required (channel type %(channel_type)s)",
                                     name=name, channel_type=channel_type))
    for name in spec["secret"]:
        problem = None if name in wrong else secret_problem(channel_type, name, options.get(name, ""))
        if problem:
            add(name, problem)
    protocol = protocol_of(channel_type)
    for name, problem in protocol.check_options(options) if protocol is not None else ():
        if name not in wrong:
            # The problem as its own error: the panel says it in the reader's language.
            add(name, InvalidRequest("option %(name)s: %(problem)s", name=name, problem=InvalidRequest(problem)))
    if channel_type == "sandbox" and "force" not in wrong and options.get("force", "") not in sandbox.FORCE_VALUES:
        add("force", InvalidRequest("option force: yes, or leave it out"))
    if channel_type == "epay":
        gateway = options.get("gateway", "")
        parts = urlsplit(gateway)
        if "gateway" not in wrong and (parts.scheme not in ("http", "https") or not parts.netloc or parts.query
                                       or any(c.isspace() for c in gateway) or has_control_characters(gateway)):
            add("gateway", InvalidRequest("option gateway: an http(s) base URL such as https://pay.example.com"))
    if channel_type in methods.WITH_PAY_TYPES:
        for name in ("pay_type", "pay_types"):
            if name in wrong or name not in spec["options"]:
                continue
            try:
                types = methods.parse_pay_types(options.get(name, ""))
            except InvalidRequest as exc:   # the value's own words, under the option's name
                add(name, InvalidRequest("option %(name)s: %(error)s", name=name, error=exc))
                continue
            if name == "pay_type" and len(types) > 1:
                add(name, InvalidRequest("option pay_type: one pay type; several go in pay_types"))


def channel_secrets(vault: Vault, channel: PaymentChannel) -> dict[str, str]:
    if channel.secret_ciphertext is None:
        return {}
    plaintext = vault.decrypt_secret(f"channel:{channel.code}", channel.secret_nonce,
                                     channel.secret_ciphertext, channel.secret_key_version)
    return json.loads(plaintext)


def _clean_name(name: str | None, code: str) -> str:
    name = (name or "").strip() or code
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidRequest("name: at most %(limit)s characters", limit=MAX_NAME_LENGTH)
    return name


def parse_sort_order(raw) -> int:
    """A form's or the CLI's sort order: a whole number, lower first."""
    low, high = SORT_ORDER_RANGE
    try:
        value = int(raw.strip() or "0") if isinstance(raw, str) else raw
    except ValueError:
        value = None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidRequest("sort order: a whole number from %(low)s to %(high)s", low=low, high=high)
    return value


def _store_secrets(vault: Vault, channel: PaymentChannel, secrets: dict[str, str]) -> None:
    channel.secret_nonce, channel.secret_ciphertext, channel.secret_key_version = vault.encrypt_secret(
        f"channel:{channel.code}", json.dumps(secrets, sort_keys=True).encode())


def _sandbox_site_problem(channel_type: str, options: dict[str, str], site_url: str | None):
    if channel_type != "sandbox" or sandbox.takes_orders(options, site_url if site_url is not None else shop_url()):
        return None
    return InvalidRequest("a sandbox channel lets anyone pay for nothing, and site.url is not a loopback address: "
                          "use it on a shop only this machine reaches, or add the option force=yes for a test "
                          "shop nobody else uses (the panel then shows a red banner)")


def add_channel(session: Session, vault: Vault, *, channel_type: str, code: str, actor: str,
                name: str | None = None, options: dict[str, str] | None = None, sort_order=0,
                source_ip: str | None = None, site_url: str | None = None) -> PaymentChannel:
    """Add a channel; every wrong field is named at once (FormErrors when there are several).
    `site_url`: the shop's address (default: site.url as set) for the sandbox's rule."""
    options = {k: v.strip() for k, v in (options or {}).items()}
    if channel_type not in CHANNEL_TYPES:
        raise InvalidRequest("type: must be one of %(types)s", types=", ".join(CHANNEL_TYPES))
    if channel_type == "sandbox" and not options.get("secret"):
        options["secret"] = sandbox.new_secret()
    found = Collector()
    code_ok = bool(CODE_RE.match(code))
    if not code_ok:
        found.add(InvalidRequest("code: 1-32 lower-case letters, digits, '_' or '-'"))
    with found:
        name = _clean_name(name, code if code_ok else "")   # a blank name is the code: said once, as the code
    with found:
        sort_order = parse_sort_order(sort_order)
    _check_options(channel_type, options, found)
    with found:
        if problem := _sandbox_site_problem(channel_type, options, site_url):
            raise problem
    if code_ok and session.scalar(sa.select(PaymentChannel.id).where(PaymentChannel.code == code)) is not None:
        found.add(Conflict("channel %(code)r already exists", code=code))
    found.check()
    secret_names = CHANNEL_TYPES[channel_type]["secret"]
    public = {k: v for k, v in options.items() if k not in secret_names}
    secrets = {k: v for k, v in options.items() if k in secret_names}
    channel = PaymentChannel(code=code, type=channel_type, name=name, sort_order=sort_order,
                             options=json.dumps(public, sort_keys=True))
    if secrets:
        _store_secrets(vault, channel, secrets)
    try:
        with session.begin_nested():
            session.add(channel)
    except IntegrityError:   # the same code, added by a concurrent request
        raise Conflict("channel %(code)r already exists", code=code) from None
    record(session, "channel.add", actor=actor, target=f"channel:{code}", source_ip=source_ip,
           details={"type": channel_type, "name": channel.name, "sort_order": sort_order, **public,
                    "secret_options": sorted(secrets)})
    return channel


def get_channel(session: Session, channel_id: int) -> PaymentChannel:
    if not 0 < channel_id < 2 ** 31:   # an id from the address bar: bigger than any row, and than SQLite's
        raise NotFound("channel %(channel_id)s not found", channel_id=channel_id)
    channel = session.get(PaymentChannel, channel_id)
    if channel is None:
        raise NotFound("channel %(channel_id)s not found", channel_id=channel_id)
    return channel


def update_channel(session: Session, vault: Vault, channel: PaymentChannel, *, name: str | None,
                   options: dict[str, str], sort_order, actor: str, source_ip: str | None = None,
                   site_url: str | None = None) -> dict:
    """Edit a channel's name, sort order and options; returns what changed (audited, secrets by name only).

    `options` holds every public option (an empty one is unset); an empty or
    missing secret option keeps the stored one. The code and the type never
    change: callbacks, orders and the secret's encryption are tied to them.
    """
    spec = CHANNEL_TYPES[channel.type]
    options = {k: v.strip() for k, v in options.items()}
    found = Collector()
    with found:
        name = _clean_name(name, channel.code)
    with found:
        sort_order = parse_sort_order(sort_order)
    public = {k: v for k, v in options.items() if k not in spec["secret"] and v}
    given = {k: v for k, v in options.items() if k in spec["secret"] and v}
    try:
        stored = channel_secrets(vault, channel)
    except VaultError:
        stored = None   # a key that no longer decrypts: it must be entered again
    lost = stored is None and not given
    if lost:
        found.add(InvalidRequest("option key: the stored key cannot be decrypted with the data key; "
                                 "enter it again"))
    secrets = {**(stored or {}), **given}
    _check_options(channel.type, {**public, **secrets}, found, unchecked=spec["secret"] if lost else ())
    with found:
        if problem := _sandbox_site_problem(channel.type, public, site_url):
            raise problem
    old_options = json.loads(channel.options)
    moved = [name for name in ("api_base", "gateway") if channel.type in SPECS
             and old_options.get(name, "") != public.get(name, "")]
    if moved and set(given) != set(spec["secret"]):
        # The stored secrets are never sent to a new address they were not typed in for.
        found.add(InvalidRequest("option %(name)s: changing the gateway's address needs its secrets entered "
                                 "again (%(secrets)s)", name=moved[0], secrets=", ".join(spec["secret"])))
    found.check()

    old_public = json.loads(channel.options)
    changes = {field: {"old": old, "new": new} for field, old, new in
               [("name", channel.name, name), ("sort_order", channel.sort_order, sort_order)] if old != new}
    for option in sorted(set(old_public) | set(public)):
        if old_public.get(option, "") != public.get(option, ""):
            changes[option] = {"old": old_public.get(option, ""), "new": public.get(option, "")}
    changed_secrets = sorted(k for k in secrets if stored is None or stored.get(k) != secrets[k])
    if not changes and not changed_secrets:
        return {}
    channel.name, channel.sort_order = name, sort_order
    channel.options = json.dumps(public, sort_keys=True)
    # Sealed again on any change of a gateway's channel: the new nonce tells every process's
    # callback cache that the keys, the merchant or the seller it checks against moved.
    if changed_secrets or channel.type in SPECS:
        _store_secrets(vault, channel, secrets)
    session.flush()
    details = {"changed": changes, "secret_options_changed": changed_secrets}
    record(session, "channel.update", actor=actor, target=f"channel:{channel.code}", source_ip=source_ip,
           details=details)
    return details


def set_channel_enabled(session: Session, channel: PaymentChannel, enabled: bool, *, vault: Vault, actor: str,
                        source_ip: str | None = None) -> bool:
    """Enable or disable; False (and no audit entry) when it already was. A channel whose
    key is too weak (or no longer decrypts) is not enabled until a new key is entered."""
    if enabled:
        problem = channel_key_problem(vault, channel)
        if problem:
            raise InvalidRequest("channel %(code)s stays disabled: %(problem)s", code=channel.code, problem=problem)
    t = PaymentChannel.__table__
    changed = session.execute(t.update().where(t.c.id == channel.id, t.c.is_enabled.is_(not enabled))
                              .values(is_enabled=enabled, updated_at=utcnow())).rowcount
    session.refresh(channel)
    if changed:
        record(session, "channel.enable" if enabled else "channel.disable", actor=actor,
               target=f"channel:{channel.code}", source_ip=source_ip, details={"name": channel.name})
    return bool(changed)


MAX_WEIGHT = 1000
_FEE_RE = re.compile(r"\d{1,3}(\.\d{1,2})?")


def parse_fee_percent(raw: str) -> int:
    """'0.6' (percent, at most two places) -> 60 basis points."""
    text = raw.strip() if isinstance(raw, str) else ""
    if not _FEE_RE.fullmatch(text) or Decimal(text) > 100:
        raise InvalidRequest("fee percent: a percentage from 0 to 100 with at most two places, such as 0.6")
    return int(Decimal(text) * 100)


def _optional_amount(raw: str | None, field: str) -> int | None:
    """An amount limit: empty or `none` for no limit."""
    if raw is None or raw.strip().lower() in ("", "none"):
        return None
    return parse_plain_money(raw, field=field)


def product_channels(session: Session, product_id: int) -> list[str]:
    """The codes of the channels a product is paid through only; [] for any channel."""
    return list(session.scalars(sa.select(PaymentChannel.code).join(
        ProductChannel, ProductChannel.channel_id == PaymentChannel.id)
        .where(ProductChannel.product_id == product_id).order_by(PaymentChannel.sort_order, PaymentChannel.id)))


def set_product_channels(session: Session, product_id: int, codes: str, *, actor: str,
                         source_ip: str | None = None) -> list[str]:
    """'alipay, stripe': the product is paid through these channels only; empty or `all`: through
    any. Every code must name a channel; audited."""
    if session.get(Product, product_id) is None:
        raise NotFound("product %(product_id)s not found", product_id=product_id)
    wanted = [c.strip() for c in codes.replace("，", ",").split(",") if c.strip()]
    if [c.lower() for c in wanted] == ["all"]:
        wanted = []
    if len(set(wanted)) != len(wanted):
        raise InvalidRequest("channels: a channel is named twice")
    ids = dict(session.execute(sa.select(PaymentChannel.code, PaymentChannel.id)
                               .where(PaymentChannel.code.in_(wanted))).all())
    missing = [c for c in wanted if c not in ids]
    if missing:
        raise NotFound("channel %(code)r not found", code=missing[0][:32])
    before = product_channels(session, product_id)
    session.execute(sa.delete(ProductChannel).where(ProductChannel.product_id == product_id))
    session.add_all(ProductChannel(product_id=product_id, channel_id=ids[c]) for c in wanted)
    session.flush()
    after = product_channels(session, product_id)
    record(session, "product.channels", actor=actor, target=f"product:{product_id}", source_ip=source_ip,
           details={"from": before or "all", "to": after or "all"})
    return after


def routing_of(session: Session, channel: PaymentChannel) -> dict:
    """A channel's routing rules as the CLI and the panel show them."""
    def amount(cents):
        return None if cents is None else format_cents(cents)
    return {"priority": channel.sort_order, "weight": channel.weight, "min_amount": amount(channel.min_amount_cents),
            "max_amount": amount(channel.max_amount_cents), "daily_cap": amount(channel.daily_cap_cents),
            "fee_percent": str(Decimal(channel.fee_bp) / 100), "fee_fixed": format_cents(channel.fee_fixed_cents),
            "health": channel.health,
            "health_error": channel.health_error,
            "health_checked_at": channel.health_checked_at.isoformat(timespec="seconds") + "Z"
            if channel.health_checked_at else None}


def taken_today(session: Session, channel: PaymentChannel, timezone: str) -> str:
    """What the channel's daily cap counts today (site.timezone): orders placed, less expired."""
    taken = session.scalar(sa.select(ChannelDay.amount_cents).where(
        ChannelDay.channel_id == channel.id, ChannelDay.day == routing.shop_day(utcnow(), timezone)))
    return format_cents(taken or 0)


def set_routing(session: Session, channel: PaymentChannel, *, actor: str, source_ip: str | None = None,
                priority: str | None = None, weight: str | None = None, min_amount: str | None = None,
                max_amount: str | None = None, daily_cap: str | None = None, fee_percent: str | None = None,
                fee_fixed: str | None = None) -> dict:
    """Change what is given of a channel's routing rules (None: unchanged), all checked before
    any is written; audited with the rules before and after."""
    found = Collector()
    values: dict = {}

    def take(name, parse):
        try:
            values[name] = parse()
        except KamengdError as exc:
            found.add(exc)

    if priority is not None:
        take("sort_order", lambda: parse_sort_order(priority))
    if weight is not None:
        def parse_weight():
            text = weight.strip()
            if not (text.isascii() and text.isdigit() and len(text) <= 4 and int(text) <= MAX_WEIGHT):
                raise InvalidRequest("weight: a whole number from 0 to %(high)s", high=MAX_WEIGHT)
            return int(text)
        take("weight", parse_weight)
    if min_amount is not None:
        take("min_amount_cents", lambda: _optional_amount(min_amount, "minimum amount"))
    if max_amount is not None:
        take("max_amount_cents", lambda: _optional_amount(max_amount, "maximum amount"))
    if daily_cap is not None:
        take("daily_cap_cents", lambda: _optional_amount(daily_cap, "daily cap"))
    if fee_percent is not None:
        take("fee_bp", lambda: parse_fee_percent(fee_percent))
    if fee_fixed is not None:
        take("fee_fixed_cents", lambda: parse_plain_money(fee_fixed, field="fixed fee", allow_zero=True))
    low = values.get("min_amount_cents", channel.min_amount_cents)
    high = values.get("max_amount_cents", channel.max_amount_cents)
    if not found.errors and low is not None and high is not None and low > high:
        found.add(InvalidRequest("minimum amount: more than the maximum"))
    found.check()
    before = routing_of(session, channel)
    for name, value in values.items():
        setattr(channel, name, value)
    session.flush()
    after = routing_of(session, channel)
    record(session, "channel.routing", actor=actor, target=f"channel:{channel.code}", source_ip=source_ip,
           details={k: {"from": before[k], "to": after[k]} for k in after if before[k] != after[k]})
    return after


def channel_use_count(session: Session, channel: PaymentChannel) -> int:
    """How many orders used the channel: placed with it, or paid through it."""
    return session.scalar(sa.select(sa.func.count()).select_from(Order).where(sa.or_(
        Order.channel_id == channel.id,
        Order.id.in_(sa.select(Payment.order_id).where(Payment.channel_id == channel.id)))))


def _used(channel: PaymentChannel, count: int) -> Conflict:
    return Conflict("channel %(code)s cannot be removed: %(count)s order(s) used it. Disable it instead: "
                    "it is kept so their callbacks and reconciliation still work", code=channel.code, count=count)


def remove_channel(session: Session, channel: PaymentChannel, *, actor: str, source_ip: str | None = None) -> None:
    """Delete a channel no order or payment ever used, with its stored (encrypted) secrets; audited.

    A channel that was used is refused (Conflict), never deleted: its orders'
    callbacks, reconciliation and settlement find their channel by it. An
    order placed with it meanwhile is caught by the foreign key, and refused
    the same way; an order placed after the removal finds no channel.
    """
    count = channel_use_count(session, channel)
    if count:
        raise _used(channel, count)
    details = {"type": channel.type, "name": channel.name, "enabled": channel.is_enabled,
               **json.loads(channel.options), "secret_deleted": channel.secret_ciphertext is not None}
    try:
        with session.begin_nested():
            session.delete(channel)
    except IntegrityError:   # an order placed with it since the count
        raise _used(channel, max(1, channel_use_count(session, channel))) from None
    record(session, "channel.remove", actor=actor, target=f"channel:{channel.code}", source_ip=source_ip,
           details=details)


def channel_key_problem(vault: Vault, channel: PaymentChannel) -> InvalidRequest | None:
    """Why the channel's stored secret cannot be trusted to sign, or None. An error
    to raise or show: its message is English, the panel says it translated."""
    try:
        secrets = channel_secrets(vault, channel)
    except VaultError:
        return InvalidRequest(UNDECRYPTABLE)
    return secrets_problem(channel.type, secrets)


def weak_channels(session: Session, vault: Vault) -> list[tuple[PaymentChannel, InvalidRequest]]:
    """Every channel whose key would let anyone forge its callbacks (kept from before the
    rule, or typed into the database by hand) or no longer decrypts, with the reason."""
    found = []
    for channel in session.scalars(sa.select(PaymentChannel).order_by(PaymentChannel.id)):
        problem = channel_key_problem(vault, channel)
        if problem:
            found.append((channel, problem))
    return found


def disable_weak_channels(session: Session, vault: Vault, *, actor: str = "system") -> list[str]:
    """Disable the enabled channels with a weak key, each audited with its reason; their
    codes. Until a new key is entered they take no orders, and their callbacks are refused
    (reconciliation still asks the gateway about orders already placed). A key that does
    not decrypt is the data key's problem (doctor's "data key" check), not the channel's:
    it is reported, not acted on."""
    t = PaymentChannel.__table__
    disabled = []
    for channel, problem in weak_channels(session, vault):
        if problem.template == UNDECRYPTABLE:
            continue
        if session.execute(t.update().where(t.c.id == channel.id, t.c.is_enabled.is_(True))
                           .values(is_enabled=False, updated_at=utcnow())).rowcount:
            record(session, "channel.disable", actor=actor, target=f"channel:{channel.code}",
                   details={"name": channel.name, "reason": problem.message})
            disabled.append(channel.code)
    return disabled


# --- checking a channel's set-up -------------------------------------------------

@dataclass
class ChannelCheck:
    ok: bool
    stage: str      # "signature" (our side) or "gateway" (the merchant API)
    template: str   # English with %(name)s values (marked N_): the panel says it translated
    params: dict = field(default_factory=dict)

    @property
    def message(self) -> str:
        """The English words: the audit log's, the command line's."""
        return self.template % self.params if self.params else self.template

    def localized(self, gettext) -> str:
        return gettext(self.template, **self.params) if self.params else gettext(self.template)


def check_signing(vault: Vault, channel: PaymentChannel) -> tuple[str, str, str]:
    """Sign a sample request with the stored key and verify it with our own verifier.

    Returns (gateway, pid, key) for the gateway check; raises InvalidRequest
    when the stored key is missing, does not decrypt or does not verify.
    """
    if channel.type not in ("epay", "sandbox", "balance", "points", *SPECS):
        raise InvalidRequest("channel type %(type)r cannot be tested", type=channel.type)
    if channel.type in ("balance", "points"):   # no key, no gateway: the ledger is this shop's own
        return "", channel.code, ""
    if channel.type == "sandbox":
        return _check_sandbox_signing(vault, channel)
    if channel.type in SPECS:   # the gateway itself is asked (probe_gateway)
        try:
            stored = channel_secrets(vault, channel)
        except VaultError:
            raise InvalidRequest(UNDECRYPTABLE) from None
        problem = secrets_problem(channel.type, stored)
        if problem:
            raise problem
        return "", channel.code, ""
    try:
        key = channel_secrets(vault, channel).get("key", "")
    except VaultError:
        raise InvalidRequest(UNDECRYPTABLE) from None
    if not key:
        raise InvalidRequest("no key is stored; enter the merchant key")
    pid = channel_option(channel, "pid")
    pay_type = methods.pay_types(channel.type, json.loads(channel.options))[0]
    sample = {"pid": pid, "type": pay_type, "out_trade_no": "TEST0001",
              "notify_url": "https://example.com/notify", "return_url": "https://example.com/return",
              "name": "测试 test", "money": "0.01"}
    signed = {**sample, "sign": epay.sign(sample, key), "sign_type": "MD5"}
    tampered = {**signed, "money": "100.00"}
    if not epay.verify(signed, key) or epay.verify(tampered, key):
        raise InvalidRequest("a request signed with the stored key does not verify; enter the key again")
    return channel_option(channel, "gateway"), pid, key


def _check_sandbox_signing(vault: Vault, channel: PaymentChannel) -> tuple[str, str, str]:
    try:
        secret = channel_secrets(vault, channel).get("secret", "")
    except VaultError:
        raise InvalidRequest(UNDECRYPTABLE) from None
    signed = sandbox.callback(code=channel.code, secret=secret, order_no="TEST0001", amount_cents=1,
                              trade_no="TEST-TRADE")
    if not sandbox.verify(signed, secret) or sandbox.verify({**signed, "money": "100.00"}, secret):
        raise InvalidRequest("a callback signed with the stored secret does not verify")
    return "", channel.code, secret


def sandbox_check(channel: PaymentChannel, site_url: str) -> ChannelCheck:
    """The sandbox's "gateway" is this shop: it works while the channel may take orders here."""
    if sandbox.takes_orders(json.loads(channel.options), site_url):
        return ChannelCheck(True, "gateway", N_("the sandbox completes payments on this shop (no money moves)"))
    return ChannelCheck(False, "gateway", N_("site.url is not a loopback address: the sandbox takes no orders "
                                             "unless forced"))


def gateway_channel(vault: Vault, channel: PaymentChannel) -> Channel:
    """What a gateway protocol is given of the channel (its secrets in memory only)."""
    return Channel(channel.code, json.loads(channel.options), channel_secrets(vault, channel))


def probe_gateway(channel_type: str, conf: Channel) -> ChannelCheck:
    """Ask a gateway protocol's provider whether it takes the channel's credentials."""
    try:
        said = protocol_of(channel_type).probe(conf)
    except GatewayError as exc:
        return ChannelCheck(False, "gateway", N_("the gateway refused: %(answer)s"), {"answer": str(exc)[:200]})
    return ChannelCheck(True, "gateway", N_("the gateway answers: %(answer)s"), {"answer": said})


def test_channel(session: Session, vault: Vault, channel: PaymentChannel, site_url: str) -> ChannelCheck:
    """The whole check of a channel: its stored secrets sign and verify, then its gateway takes
    them. Ends the caller's read first: no transaction is held while a gateway answers."""
    try:
        gateway_url, pid, key = check_signing(vault, channel)
    except KamengdError as exc:
        session.rollback()
        return ChannelCheck(False, "signature", exc.template, exc.params)
    if channel.type == "sandbox":
        result = sandbox_check(channel, site_url)
        session.rollback()
        return result
    if channel.type == "balance":
        session.rollback()
        return ChannelCheck(True, "gateway", N_("buyers signed in as members or agents pay from their balance on "
                                                "this shop"))
    if channel.type == "points":
        session.rollback()
        return ChannelCheck(True, "gateway", N_("buyers signed in as members or agents pay with their points on "
                                                "this shop"))
    if channel.type in SPECS:
        channel_type, conf = channel.type, gateway_channel(vault, channel)
        session.rollback()
        return probe_gateway(channel_type, conf)
    session.rollback()
    return query_epay_merchant(gateway_url, pid, key)


def working(channel_type: str, result: ChannelCheck) -> bool:
    """Whether a check's result keeps a channel in routing. An Epay channel whose gateway did not
    answer the merchant query still works: not every Epay site answers it, and the buyer's
    redirect is its only create call; its own key failing to sign is what takes it out."""
    return result.ok or (channel_type == "epay" and result.stage == "gateway")


# A healthy gateway channel is asked this often; a channel that is down, at every run of the job.
HEALTHY_CHECK_EVERY = dt.timedelta(minutes=5)


def check_channels(session: Session, vault: Vault, site_url: str, *, now: dt.datetime | None = None) -> dict:
    """The health job: channels that are down are tested again (up on success); healthy channels
    of a gateway protocol are asked every few minutes (down on failure). A healthy Epay channel is
    not: not every Epay site answers the merchant query, and a false alarm would stop its sales
    (its create call is the buyer's redirect: staff's Test button checks it)."""
    now = now or utcnow()
    due = session.scalars(sa.select(PaymentChannel.id).where(
        PaymentChannel.is_enabled.is_(True),
        sa.or_(PaymentChannel.health == "down",
               sa.and_(PaymentChannel.type.in_(tuple(SPECS)),
                       sa.or_(PaymentChannel.health_checked_at.is_(None),
                              PaymentChannel.health_checked_at < now - HEALTHY_CHECK_EVERY))))
        .order_by(PaymentChannel.id)).all()
    results = {}
    for channel_id in due:   # every gateway asked first, outside any transaction
        channel = session.get(PaymentChannel, channel_id)
        results[channel_id] = test_channel(session, vault, channel, site_url)
    changed = 0
    for channel_id, result in results.items():
        channel = session.get(PaymentChannel, channel_id)
        if channel is None:
            continue
        was = channel.health
        routing.mark_health(session, channel, working(channel.type, result), result.message, now=now)
        changed += was != channel.health
    return {"checked": len(results), "changed": changed}


def forced_sandboxes(session: Session, site_url: str) -> list[str]:
    """Enabled sandbox channels that take orders on a shop others can reach (forced): the
    codes the panel's red banner names."""
    if sandbox.is_loopback_url(site_url):
        return []
    rows = session.execute(sa.select(PaymentChannel.code, PaymentChannel.options).where(
        PaymentChannel.type == "sandbox", PaymentChannel.is_enabled.is_(True))).all()
    return [code for code, options in rows if sandbox.forced(json.loads(options))]


def query_epay_merchant(gateway: str, pid: str, key: str, timeout: float = 5) -> ChannelCheck:
    """Ask the gateway's merchant API (api.php?act=query) whether it accepts pid and key.

    The answer echoes the key on some gateways: only `code`, `msg` and
    `active` are looked at, and the key never appears in the message. The
    URL holds the key too: it is never logged or shown.
    """
    url = f"{gateway.rstrip('/')}/api.php?" + urlencode({"act": "query", "pid": pid, "key": key})

    def plain(text) -> str:
        text = " ".join(str(text).split())
        for form in {key, quote_plus(key), quote(key, safe="")} - {""}:   # as typed and as in the URL
            text = text.replace(form, "***")
        return text[:200]

    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read(64 * 1024)
    except urllib.error.HTTPError as exc:
        return ChannelCheck(False, "gateway", N_("the gateway answered HTTP %(status)s"), {"status": exc.code})
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        # Some of these name the URL, which holds the key: never shown unmasked.
        reason = getattr(exc, "reason", None) or exc
        return ChannelCheck(False, "gateway", N_("gateway unreachable: %(error)s"),
                            {"error": f"{exc.__class__.__name__}: {plain(reason)}"})
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        return ChannelCheck(False, "gateway", N_("the gateway answered something that is not JSON; "
                                                 "is the gateway URL right?"))
    if str(data.get("code")) != "1":
        if not data.get("msg"):
            return ChannelCheck(False, "gateway", N_("the gateway refused: no message"))
        return ChannelCheck(False, "gateway", N_("the gateway refused: %(answer)s"), {"answer": plain(data["msg"])})
    if str(data.get("active", "1")) == "0":
        return ChannelCheck(False, "gateway", N_("the gateway accepts the key but reports the merchant account "
                                                 "as disabled"))
    return ChannelCheck(True, "gateway", N_("the gateway accepts the merchant ID and key"))


@dataclass(frozen=True)
class PaymentMethod:
    """One choice a buyer sees: a channel, and for Epay the pay type it is asked for."""
    channel: str            # the channel's code
    channel_name: str
    pay_type: str | None    # None: the channel is the method (W4's types)
    method: str = ""        # what the buyer pays by (alipay, wxpay, card …): channels of one method stand in

    @property
    def value(self) -> str:
        """The form's value: `code` or `code:pay_type`."""
        return f"{self.channel}:{self.pay_type}" if self.pay_type else self.channel


def payment_methods(session: Session, site_url: str | None = None, *, product_id: int | None = None,
                    amount_cents: int | None = None, currency: str | None = None,
                    timezone: str | None = None) -> list[PaymentMethod]:
    """Every enabled, healthy channel's methods, in the channels' order (a sandbox only where it
    takes orders: on a loopback `site_url`, default site.url as set, or forced). For a product,
    only the channels it may be paid through; for an amount, only those whose limits and daily
    cap take it; in a currency, only those that take it."""
    c = PaymentChannel.__table__
    query = (sa.select(c.c.id, c.c.code, c.c.name, c.c.type, c.c.options, c.c.daily_cap_cents)
             .where(c.c.is_enabled.is_(True), c.c.health == "ok").order_by(c.c.sort_order, c.c.id))
    if product_id is not None:
        query = query.where(routing.allowed_for_product(product_id))
    if amount_cents is not None:
        query = query.where(routing.within_amounts(amount_cents))
        day = routing.shop_day(utcnow(), timezone or "UTC")
        query = query.add_columns(sa.select(ChannelDay.amount_cents).where(ChannelDay.channel_id == c.c.id,
                                                                           ChannelDay.day == day)
                                  .scalar_subquery().label("taken"))
    found = []
    for row in session.execute(query):
        options = json.loads(row.options)
        if row.type == "sandbox" and not sandbox.takes_orders(
                options, site_url if site_url is not None else shop_url()):
            continue
        if currency is not None and not routing.takes_currency(row.type, options, currency):
            continue
        if amount_cents is not None and row.daily_cap_cents is not None and \
                (row.taken or 0) + amount_cents > row.daily_cap_cents:
            continue
        types = methods.pay_types(row.type, options) or [None]
        found.extend(PaymentMethod(row.code, row.name, pay_type, methods.offered(row.type, options)[0]
                                   if pay_type is None else pay_type) for pay_type in types)
    return found


def split_method(value: str) -> tuple[str, str | None]:
    """A form's `code:pay_type` (or plain `code`) -> (channel code, pay type or None)."""
    code, _, pay_type = value.partition(":")
    return code, (pay_type or None)


def channel_option(channel: PaymentChannel, name: str, default: str = "") -> str:
    return json.loads(channel.options).get(name, default)


def build_pay_url(vault: Vault, channel: PaymentChannel, order, *, site_url: str, product_name: str,
                  token: str, return_site: str | None = None) -> str:
    site = site_url.rstrip("/")
    back = (return_site or site_url).rstrip("/")   # an agent's sub-station, or the shop
    if channel.type == "sandbox":
        return sandbox.pay_url(site_url=back, code=channel.code, order_no=order.order_no, token=token)
    if channel.type in ("balance", "points"):   # the shop's own address: the portal's sign-in is there
        return balance_url(site, channel.code, order.order_no, token, channel.type)
    if channel.type in SPECS:
        return start_url(back, channel.code, order.order_no, token)
    return epay.pay_url(
        gateway=channel_option(channel, "gateway"), pid=channel_option(channel, "pid"),
        key=channel_secrets(vault, channel)["key"],
        pay_type=order.pay_type or methods.pay_types(channel.type, json.loads(channel.options))[0],
        order_no=order.order_no, name=product_name[:100], money=format_cents(order.amount_cents),
        notify_url=f"{site}/pay/{channel.code}/notify",
        # The buyer comes back to their keys: the token rides in the return URL.
        return_url=f"{back}/pay/{channel.code}/return?{urlencode({'order_no': order.order_no, 'token': token})}")


@dataclass
class PaymentOutcome:
    recorded: bool          # answer the gateway "success"
    reason: str = ""
    forged: bool = False    # not from the gateway (signature, pid, channel): counted per address
    ignored: bool = False   # a genuine notice that is no payment (acknowledged where the protocol wants it)


def _already_recorded(session: Session, order, existing: Payment, now) -> PaymentOutcome:
    """A callback for a trade already recorded: "success" again for its own order. For
    another order the gateway reports one trade twice (its error, or a replay): nothing
    more can be recorded, so the order is flagged for a person once (order.held) and the
    gateway answered "success" — a "fail" would bring it back forever, and nobody would hear."""
    if existing.order_id == order.id:
        return PaymentOutcome(True, "already recorded")
    other = session.scalar(sa.select(Order.order_no).where(Order.id == existing.order_id))
    reason = reasons.reason(reasons.TRADE_TWICE, trade_no=existing.trade_no, other=other)
    flag_order(session, order, reason, now, event="order.held")
    return PaymentOutcome(True, "trade recorded for another order: flagged")


def record_payment(session: Session, channel: PaymentChannel, order, *, trade_no: str, amount_cents: int,
                   raw: dict, now=None, source: str = "callback", currency: str | None = None) -> PaymentOutcome:
    """Record a verified payment once per (channel, trade_no); pay and deliver the order.

    Used by the callback and by reconciliation (a payment the gateway reports
    but whose callback never arrived), so both complete an order the same way.
    A callback for the payment reconciliation found without a trade number
    fills that number in: one payment, one row.
    """
    now = now or utcnow()
    amount = amount_cents
    # Lock the order before anything else: the expiry sweep takes order rows
    # first too, so the two queue instead of deadlocking (MySQL).
    lock_order_status(session, order.id)
    session.refresh(order)

    existing = session.scalar(sa.select(Payment).where(Payment.channel_id == channel.id,
                                                        Payment.trade_no == trade_no))
    if existing is not None:
        return _already_recorded(session, order, existing, now)
    if source == "callback" and _fill_in_reconciled(session, channel, order, trade_no, amount, raw):
        return PaymentOutcome(True, "the payment reconciliation found: its trade number filled in")
    # A gateway that names the currency: another one than the order's is the wrong amount too.
    other_currency = currency is not None and currency != order.currency
    right_amount = amount == order.amount_cents and not other_currency
    payment = Payment(order_id=order.id, channel_id=channel.id, trade_no=trade_no, amount_cents=amount,
                      status="received" if right_amount else "held", created_at=now, source=source,
                      fee_cents=routing.fee_cents(amount, channel.fee_bp, channel.fee_fixed_cents),
                      raw=json.dumps(raw, ensure_ascii=False, sort_keys=True, default=str))
    try:
        with session.begin_nested():
            session.add(payment)
    except IntegrityError:  # the same callback, recorded by a concurrent request
        existing = session.scalar(sa.select(Payment).where(Payment.channel_id == channel.id,
                                                            Payment.trade_no == trade_no))
        if existing is None:
            return PaymentOutcome(False, "trade recorded concurrently")
        return _already_recorded(session, order, existing, now)

    # A risk rule asked for review when it was placed: paid, it waits for a person (the review queue).
    review = right_amount and order.risk_review
    # Paid after it expired: the coupon use, daily-limit units and points it gave back are taken again;
    # when they are gone meanwhile, a person decides (deliver anyway, or refund).
    over_limit = right_amount and order.status == "expired" and not _take_again(session, order)
    new_status = "paid" if right_amount and not review and not over_limit else "held"
    claimed = session.execute(sa.update(Order).where(Order.id == order.id,
                                                     Order.status.in_(("pending", "expired")))
                              .values(status=new_status, paid_at=now, updated_at=now)
                              .execution_options(synchronize_session=False)).rowcount
    session.refresh(order)
    if not claimed:
        return _extra_payment(session, channel, order, payment, now)
    if over_limit:
        reason = reasons.reason(reasons.LATE_OVER_LIMIT)
        flag_order(session, order, reason, now, event=None)
        emit(session, "order.held", order_payload(session, order, trade_no=trade_no, reason=reason,
                                                  paid_amount=format_cents(amount)), now)
    elif review:
        reason = reasons.reason(reasons.RISK_REVIEW, rule=risk.review_rule(session, order.id))
        flag_order(session, order, reason, now, event=None)
        emit(session, "order.held", order_payload(session, order, trade_no=trade_no, reason=reason,
                                                  paid_amount=format_cents(amount)), now)
    elif right_amount:
        emit(session, "order.paid", order_payload(session, order, trade_no=trade_no), now)
        deliver_paid_order(session, order, now)
    else:
        paid = format_cents(amount) + (f" {currency}" if other_currency else "")
        reason = reasons.reason(reasons.WRONG_AMOUNT, paid=paid, amount=format_cents(order.amount_cents),
                                currency=order.currency)
        flag_order(session, order, reason, now, event=None)
        emit(session, "order.held", order_payload(session, order, trade_no=trade_no, reason=reason,
                                                  paid_amount=format_cents(amount),
                                                  **({"paid_currency": currency} if other_currency else {})), now)
    return PaymentOutcome(True, new_status)


def _take_again(session: Session, order) -> bool:
    """An expired order paid after all: its coupon use, daily-limit units and its member's
    points again (False: one of them is gone meanwhile, and none is taken)."""
    product = session.get(Product, order.product_id)
    day = routing.shop_day(order.created_at, get_config().site.timezone)
    attempt = session.begin_nested()
    taken = (coupons.take_again(session, order) and limits.take_again(session, order, product.buyer_daily_limit, day)
             and points.take_again(session, order))
    if taken:
        attempt.commit()
    else:
        attempt.rollback()
    return taken


def _fill_in_reconciled(session: Session, channel: PaymentChannel, order, trade_no: str, amount: int,
                        raw: dict) -> bool:
    """The callback of a payment reconciliation recorded under a stand-in trade number
    (the gateway's query answer named none): the same order, channel and amount. The
    order's row is locked: two callbacks cannot both claim it."""
    found = session.scalar(sa.select(Payment).where(
        Payment.order_id == order.id, Payment.channel_id == channel.id, Payment.source == "reconciliation",
        Payment.trade_no == placeholder_trade_no(order.order_no), Payment.amount_cents == amount))
    if found is None:
        return False
    kept = json.loads(found.raw or "{}")
    found.trade_no = trade_no
    found.raw = json.dumps({**kept, "callback": raw}, ensure_ascii=False, sort_keys=True, default=str)
    session.flush()
    return True


def _extra_payment(session: Session, channel: PaymentChannel, order, payment: Payment, now) -> PaymentOutcome:
    """A second, different payment for an order already paid: the buyer was charged
    twice. Kept as `extra`, the order flagged, and `payment.extra` sent to staff, each
    time: every such payment is money to give back (refund_extra_payment)."""
    payment.status = "extra"
    session.flush()
    reason = reasons.reason(reasons.EXTRA_PAYMENT, amount=format_cents(payment.amount_cents),
                            currency=order.currency, trade_no=payment.trade_no)
    assert reason.startswith(EXTRA_PAYMENT_FLAG)   # the refund finds the flag by it
    flag_order(session, order, reason, now, event=None)
    payments = session.scalar(sa.select(sa.func.count()).select_from(Payment).where(Payment.order_id == order.id))
    verdict = risk.judge_repeat_payment(session, order_no=order.order_no, payments=payments)
    risk.record_matches(session, verdict, stage="payment", order_id=order.id, outcome=verdict.action, now=now)
    emit(session, "payment.extra", order_payload(session, order, trade_no=payment.trade_no, channel=channel.code,
                                                 paid_amount=format_cents(payment.amount_cents), reason=reason),
         now)
    return PaymentOutcome(True, f"extra payment for a {order.status} order")

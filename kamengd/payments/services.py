from __future__ import annotations

import hmac
import json
import re
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..audit.services import record
from ..errors import Conflict, InvalidRequest, KamengdError
from ..vault import Vault
from .models import Payment, PaymentChannel

CODE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")

# Per channel type: the options it takes, which are required, which are secret.
CHANNEL_TYPES = {
    "epay": {"options": ("gateway", "pid", "key", "pay_type"), "required": ("gateway", "pid", "key"),
             "secret": ("key",)},
}


def _validate_options(channel_type: str, options: dict[str, str]) -> None:
    spec = CHANNEL_TYPES[channel_type]
    for name in options:
        if name not in spec["options"]:
            raise InvalidRequest(f"option {name}: not an option of {channel_type} "
                                 f"(takes {', '.join(spec['options'])})")
    for name in spec["required"]:
        if not options.get(name, "").strip():
            # An empty Epay key would make every callback forgeable.
            raise InvalidRequest(f"option {name}: required for a {channel_type} channel")
    if channel_type == "epay":
        gateway = urlsplit(options["gateway"])
        if gateway.scheme not in ("http", "https") or not gateway.netloc or gateway.query:
            raise InvalidRequest("option gateway: an http(s) base URL such as https://pay.example.com")


def channel_secrets(vault: Vault, channel: PaymentChannel) -> dict[str, str]:
    if channel.secret_ciphertext is None:
        return {}
    plaintext = vault.decrypt_secret(f"channel:{channel.code}", channel.secret_nonce,
                                     channel.secret_ciphertext, channel.secret_key_version)
    return json.loads(plaintext)


def add_channel(session: Session, vault: Vault, *, channel_type: str, code: str, actor: str,
                name: str | None = None, options: dict[str, str] | None = None,
                source_ip: str | None = None) -> PaymentChannel:
    options = {k: v.strip() for k, v in (options or {}).items()}
    if channel_type not in CHANNEL_TYPES:
        raise InvalidRequest(f"type: must be one of {', '.join(CHANNEL_TYPES)}")
    if not CODE_RE.match(code):
        raise InvalidRequest("code: 1-32 lower-case letters, digits, '_' or '-'")
    _validate_options(channel_type, options)
    if session.scalar(sa.select(PaymentChannel.id).where(PaymentChannel.code == code)) is not None:
        raise Conflict(f"channel {code!r} already exists")
    secret_names = CHANNEL_TYPES[channel_type]["secret"]
    public = {k: v for k, v in options.items() if k not in secret_names}
    secrets = {k: v for k, v in options.items() if k in secret_names}
    channel = PaymentChannel(code=code, type=channel_type, name=(name or code).strip()[:100],
                             options=json.dumps(public, sort_keys=True))
    if secrets:
        channel.secret_nonce, channel.secret_ciphertext, channel.secret_key_version = vault.encrypt_secret(
            f"channel:{code}", json.dumps(secrets, sort_keys=True).encode())
    session.add(channel)
    session.flush()
    record(session, "channel.add", actor=actor, target=f"channel:{code}", source_ip=source_ip,
           details={"type": channel_type, "name": channel.name, **public,
                    "secret_options": sorted(secrets)})
    return channel


def channel_option(channel: PaymentChannel, name: str, default: str = "") -> str:
    return json.loads(channel.options).get(name, default)


def build_pay_url(vault: Vault, channel: PaymentChannel, order, *, site_url: str, product_name: str,
                  token: str) -> str:
    from ..money import format_cents
    from . import epay

    site = site_url.rstrip("/")
    return epay.pay_url(
        gateway=channel_option(channel, "gateway"), pid=channel_option(channel, "pid"),
        key=channel_secrets(vault, channel)["key"], pay_type=channel_option(channel, "pay_type", "alipay"),
        order_no=order.order_no, name=product_name[:100], money=format_cents(order.amount_cents),
        notify_url=f"{site}/pay/{channel.code}/notify",
        # The buyer comes back to their keys: the token rides in the return URL.
        return_url=f"{site}/pay/{channel.code}/return?{urlencode({'order_no': order.order_no, 'token': token})}")


@dataclass
class PaymentOutcome:
    recorded: bool          # answer the gateway "success"
    reason: str = ""


def handle_epay_notify(session: Session, vault: Vault, code: str, params: dict[str, str],
                       now=None) -> PaymentOutcome:
    """A gateway callback: verify it, record the payment once, pay and deliver the order.

    Nothing changes unless the signature, the pid, the channel and the order all
    check out. A repeated callback for a recorded trade is answered "success"
    again and changes nothing.
    """
    from decimal import Decimal, DecimalException

    from ..money import parse_money
    from ..orders.models import Order
    from . import epay

    channel = session.scalar(sa.select(PaymentChannel).where(PaymentChannel.code == code))
    if channel is None or channel.type != "epay":
        return PaymentOutcome(False, "unknown channel")
    key = channel_secrets(vault, channel).get("key", "")
    if not epay.verify(params, key):
        return PaymentOutcome(False, "bad signature")
    if not hmac.compare_digest(str(params.get("pid", "")).encode("utf-8", "replace"),
                               channel_option(channel, "pid").encode()):
        return PaymentOutcome(False, "foreign pid")
    if params.get("trade_status") != "TRADE_SUCCESS":
        return PaymentOutcome(False, f"trade_status {params.get('trade_status')!r} is not a payment")
    trade_no, order_no = str(params.get("trade_no", "")), str(params.get("out_trade_no", ""))
    if not trade_no or len(trade_no) > 64:
        return PaymentOutcome(False, "bad trade_no")
    try:
        money = Decimal(str(params.get("money", "")))
        amount = parse_money(money, field="money") if money.is_finite() else None
    except (DecimalException, KamengdError):
        amount = None
    if amount is None:
        return PaymentOutcome(False, "bad money")
    order = session.scalar(sa.select(Order).where(Order.order_no == order_no[:32]))
    if order is None or order.channel_id != channel.id:
        return PaymentOutcome(False, "unknown order for this channel")
    raw = {k: v for k, v in params.items() if k not in ("sign",)}
    return record_payment(session, channel, order, trade_no=trade_no, amount_cents=amount, raw=raw, now=now)


def record_payment(session: Session, channel: PaymentChannel, order, *, trade_no: str, amount_cents: int,
                   raw: dict, now=None) -> PaymentOutcome:
    """Record a verified payment once per (channel, trade_no); pay and deliver the order.

    Used by the callback and by reconciliation (a payment the gateway reports
    but whose callback never arrived), so both complete an order the same way.
    """
    from ..database import utcnow
    from ..money import format_cents
    from ..notifications.events import emit, order_payload
    from ..orders.attention import flag_order
    from ..orders.models import Order
    from ..orders.services import deliver_paid_order, lock_order_status

    now = now or utcnow()
    amount = amount_cents
    # Lock the order before anything else: the expiry sweep takes order rows
    # first too, so the two queue instead of deadlocking (MySQL).
    lock_order_status(session, order.id)
    session.refresh(order)

    existing = session.scalar(sa.select(Payment).where(Payment.channel_id == channel.id,
                                                        Payment.trade_no == trade_no))
    if existing is not None:
        return PaymentOutcome(existing.order_id == order.id, "already recorded")
    right_amount = amount == order.amount_cents
    payment = Payment(order_id=order.id, channel_id=channel.id, trade_no=trade_no, amount_cents=amount,
                      status="received" if right_amount else "held", created_at=now,
                      raw=json.dumps(raw, ensure_ascii=False, sort_keys=True, default=str))
    try:
        with session.begin_nested():
            session.add(payment)
    except IntegrityError:  # the same callback, recorded by a concurrent request
        existing = session.scalar(sa.select(Payment).where(Payment.channel_id == channel.id,
                                                            Payment.trade_no == trade_no))
        return PaymentOutcome(existing is not None and existing.order_id == order.id, "already recorded")

    new_status = "paid" if right_amount else "held"
    claimed = session.execute(sa.update(Order).where(Order.id == order.id,
                                                     Order.status.in_(("pending", "expired")))
                              .values(status=new_status, paid_at=now, updated_at=now)
                              .execution_options(synchronize_session=False)).rowcount
    session.refresh(order)
    if not claimed:
        # A second, different payment for an order already paid: keep it for a person.
        payment.status = "extra"
        session.flush()
        return PaymentOutcome(True, f"extra payment for a {order.status} order")
    if right_amount:
        emit(session, "order.paid", order_payload(session, order, trade_no=trade_no), now)
        deliver_paid_order(session, order, now)
    else:
        reason = (f"paid {format_cents(amount)}, the order is for {format_cents(order.amount_cents)} "
                  f"{order.currency}")
        flag_order(session, order, reason, now, event=None)
        emit(session, "order.held", order_payload(session, order, trade_no=trade_no, reason=reason,
                                                  paid_amount=format_cents(amount)), now)
    return PaymentOutcome(True, new_status)

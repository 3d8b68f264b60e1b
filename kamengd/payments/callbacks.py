"""A payment callback, checked before it may write and recorded in one short transaction.

Everything that can turn a callback away happens before the write
transaction: the channel comes from a per-process cache (its merchant key
decrypted once), then the signature, the pid, the trade status and the
amount are checked. A forged callback never queues for the write lock.

The common case — a pending order paid the right amount, its keys reserved —
then reads the order with its channel's secret nonce, its product and any
payment of this trade in one SELECT: on SQLite in a snapshot, before the
write lock, so the lock is held for the writes alone (sell the keys while
the order is still pending, mark it delivered, insert the payment, both
events and the mail); on MySQL the SELECT locks the order's row (FOR UPDATE)
in the write transaction, as the expiry sweep does first too. Any other
case (a wrong amount, an order already paid, an expired order whose keys
went back on sale, a manual product, an order that changed since the
snapshot) goes through record_payment in kamengd.payments.services, which
reconciliation uses too.

The cached channel is checked against the row read: if its secret changed
since (a new key, a rotation), the cache entry is dropped and the callback
is checked again with the new key.
"""
from __future__ import annotations

import datetime as dt
import hmac
import json
import logging
import threading
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, scoped_session
from sqlalchemy.orm.util import identity_key

from ..catalog.models import Product
from ..database import utcnow
from ..errors import InvalidRequest
from ..agents import commission
from ..marketing import points
from ..money import parse_gateway_money
from ..notifications.events import emit_many, payload_of
from ..notifications.outbox import queue_delivery_email_for
from ..orders.models import Order
from ..inventory.models import CardKey
from ..settings.services import decode_setting, setting_value_query
from ..validation import has_control_characters
from ..vault import Vault
from ..vouchers import services as vouchers
from ..vouchers.models import VoucherTerms
from . import epay, routing, sandbox
from .gateways import gateway
from .gateways.base import Channel, Inbound, Refused
from .keycache import channel_secrets_cached
from .models import MAX_TRADE_NO, Payment, PaymentChannel
from .services import PaymentOutcome, record_payment
from .strength import secrets_problem

log = logging.getLogger("kamengd.callbacks")
_o, _c, _p, _pay, _k = (Order.__table__, PaymentChannel.__table__, Product.__table__, Payment.__table__,
                        CardKey.__table__)
_ORDER_COLUMNS = (_o.c.id, _o.c.order_no, _o.c.status, _o.c.channel_id, _o.c.product_id, _o.c.quantity,
                  _o.c.amount_cents, _o.c.currency, _o.c.email, _o.c.created_at, _o.c.unit_price_cents,
                  _o.c.seller_agent_id, _o.c.risk_review, _o.c.email_folded, _o.c.member_id)
_EXISTING = (sa.select(_pay.c.order_id).where(_pay.c.channel_id == sa.bindparam("cid"),
                                              _pay.c.trade_no == sa.bindparam("trade_no"))
             .scalar_subquery())
# A voucher product's codes are made redeemable when the order is delivered.
_VOUCHER = sa.exists().where(VoucherTerms.__table__.c.product_id == _p.c.id)
_CONTEXT = (_c.c.id.label("current_channel_id"), _c.c.secret_nonce, _p.c.name.label("product_name"),
            _p.c.delivery_mode, _p.c.price_cents.label("product_price_cents"), _EXISTING.label("existing_order_id"),
            _c.c.fee_bp, _c.c.fee_fixed_cents, _VOUCHER.label("is_voucher"))
# SQLite: one SELECT reads it all, in a snapshot before the write lock.
_LOAD_SQLITE = (sa.select(*_ORDER_COLUMNS, *_CONTEXT)
                .join_from(_o, _p, _p.c.id == _o.c.product_id).outerjoin(_c, _c.c.code == sa.bindparam("code"))
                .where(_o.c.order_no == sa.bindparam("order_no")))
# MySQL: lock the order's row only (a FOR UPDATE over a join would lock the
# channel's and the product's rows too, and queue every callback on them).
_LOCK_MYSQL = sa.select(*_ORDER_COLUMNS).where(_o.c.order_no == sa.bindparam("order_no")).with_for_update()
_CONTEXT_MYSQL = (sa.select(*_CONTEXT).select_from(_p).outerjoin(_c, _c.c.code == sa.bindparam("code"))
                  .where(_p.c.id == sa.bindparam("pid")))
# The snapshot may be old by the time the write lock is ours: the keys are
# sold only while their order is still pending.
_SELL = (_k.update().where(_k.c.order_id == sa.bindparam("oid"), _k.c.status == "reserved",
                           sa.exists().where(_o.c.id == sa.bindparam("oid"), _o.c.status == "pending"))
         .values(status="sold", sold_at=sa.bindparam("now"), reserved_until=None))
_INSERT_PAYMENT = _pay.insert()
_DELIVER = (_o.update().where(_o.c.id == sa.bindparam("oid"), _o.c.status == "pending")
            .values(status="delivered", paid_at=sa.bindparam("now"), delivered_at=sa.bindparam("now"),
                    updated_at=sa.bindparam("now"), flagged_at=None, flag_reason=None, next_delivery_at=None))


@dataclass(frozen=True)
class CachedChannel:
    id: int
    code: str
    type: str
    pid: str
    key: str
    nonce: bytes | None
    weak: InvalidRequest | None = None   # why the key is too weak to trust a signature made with it
    options: dict | None = None          # a gateway type's options and secrets (kamengd.payments.gateways)
    secrets: dict | None = None

    def verify(self, params: dict[str, str]) -> bool:
        return (sandbox.verify if self.type == "sandbox" else epay.verify)(params, self.key)


_channels: dict[str, CachedChannel] = {}
_lock = threading.Lock()


def _in_transaction(session) -> bool:
    real = session() if isinstance(session, scoped_session) else session   # Flask-SQLAlchemy's db.session
    return real.in_transaction()


class _StaleChannel(Exception):
    """The channel's secret changed after this process cached it."""


def _channel(session: Session, vault: Vault, code: str) -> CachedChannel | None:
    found = _channels.get(code)
    if found is not None:
        return found
    query = sa.select(_c.c.id, _c.c.type, _c.c.options, _c.c.secret_nonce, _c.c.secret_ciphertext,
                      _c.c.secret_key_version).where(_c.c.code == code)
    if _in_transaction(session):   # a caller's transaction (a test, a job): read in it
        row = session.execute(query).first()
    else:
        # A read that takes no write lock, ended before the callback may write.
        row = session.connection(execution_options={"kamengd_readonly": True}).execute(query).first()
        session.rollback()
    if row is None:
        return None
    secrets = channel_secrets_cached(vault, row.id, code, row.secret_nonce, row.secret_ciphertext,
                                     row.secret_key_version)
    options = json.loads(row.options)
    # A sandbox's callbacks name the channel itself as the merchant.
    pid, key = (code, secrets.get("secret", "")) if row.type == "sandbox" else (str(options.get("pid", "")),
                                                                               secrets.get("key", ""))
    found = CachedChannel(row.id, code, row.type, pid, key, bytes(row.secret_nonce) if row.secret_nonce else None,
                          secrets_problem(row.type, secrets), options, secrets)
    with _lock:
        if len(_channels) > 256:
            _channels.clear()
        _channels[code] = found
    return found


def forget_channel(code: str) -> None:
    _channels.pop(code, None)


def _sandbox_open(session: Session, code: str, default_site: str) -> bool:
    """Whether the sandbox channel takes payments now: its options and site.url as they are
    (never cached: either may have changed in another process), read like the channel."""
    query = sa.select(_c.c.options, setting_value_query("site.url").label("site_url")).where(_c.c.code == code)
    if _in_transaction(session):
        row = session.execute(query).first()
    else:
        row = session.connection(execution_options={"kamengd_readonly": True}).execute(query).first()
        session.rollback()
    return row is not None and sandbox.takes_orders(json.loads(row.options),
                                                    decode_setting("site.url", row.site_url) or default_site)


def handle_epay_notify(session: Session, vault: Vault, code: str, params: dict[str, str],
                       now: dt.datetime | None = None, site_url: str = "") -> PaymentOutcome:
    """A gateway callback (Epay's, or the sandbox's in the same form): verify it, record the
    payment once, pay and deliver the order.

    Nothing changes unless the signature, the pid, the channel and the order all
    check out. A repeated callback for a recorded trade is answered "success"
    again and changes nothing. `site_url`: the config file's, when site.url is not set.
    """
    own_transaction = not _in_transaction(session)
    for _ in range(2):
        channel = _channel(session, vault, code)
        if channel is None or channel.type not in ("epay", "sandbox"):
            return PaymentOutcome(False, "unknown channel", forged=True)
        if channel.type == "sandbox" and not _sandbox_open(session, code, site_url):
            return PaymentOutcome(False, "a sandbox takes no payments on a public site", forged=True)
        if channel.weak:
            # Anyone could have made this signature. A real payment still arrives
            # through reconciliation, which asks the gateway itself.
            return PaymentOutcome(False, "the channel's key is too weak to trust; enter a new one")
        checked = _check(channel, params)
        if isinstance(checked, PaymentOutcome):
            return checked
        order_no, trade_no, amount = checked
        raw = {k: v for k, v in params.items() if k != "sign"}
        try:
            return settle(session, channel, order_no=order_no, trade_no=trade_no, amount_cents=amount, raw=raw,
                          now=now)
        except _StaleChannel:   # nothing was written: read the channel again, check again
            if own_transaction:
                session.rollback()
            forget_channel(code)
        except IntegrityError:   # the same trade, recorded meanwhile for another order
            if not own_transaction:
                raise
            session.rollback()
            return PaymentOutcome(False, "trade recorded concurrently")
    return PaymentOutcome(False, "the channel's key keeps changing")


def protocol_for(session: Session, vault: Vault, code: str):
    """The gateway protocol of the channel `code` (None: Epay, the sandbox, or no such channel)."""
    channel = _channel(session, vault, code) if len(code) <= 32 else None
    return gateway(channel.type) if channel is not None else None


def handle_gateway_notify(session: Session, vault: Vault, code: str, inbound: Inbound,
                          now: dt.datetime | None = None) -> PaymentOutcome:
    """A callback of a gateway protocol (kamengd.payments.gateways): the same rules as Epay's.
    The protocol checks the signature and the merchant before anything is read or written;
    then the payment is recorded once, like every other (settle)."""
    now = now or utcnow()
    own_transaction = not _in_transaction(session)
    for attempt in range(2):
        channel = _channel(session, vault, code)
        protocol = gateway(channel.type) if channel is not None else None
        if protocol is None:
            return PaymentOutcome(False, "unknown channel", forged=True)
        if channel.weak:
            return PaymentOutcome(False, "the channel's secret is too weak to trust; enter a new one")
        try:
            notice = protocol.verify(Channel(code, channel.options, channel.secrets), inbound, now)
        except Exception as exc:   # noqa: BLE001 — a body no protocol foresaw is refused, never a 500
            if not isinstance(exc, Refused):
                log.warning("callback for %s: unreadable (%s)", code, exc.__class__.__name__)
                return PaymentOutcome(False, "unreadable callback")
            if exc.reread and attempt == 0:
                # This process may know the channel as it was: a secret entered since in another
                # process must not turn the gateway's genuine callbacks away. Read it again.
                forget_channel(code)
                continue
            return PaymentOutcome(False, exc.reason, forged=exc.forged, ignored=not (exc.forged or exc.retry))
        if not notice.paid:
            return PaymentOutcome(False, "not paid", ignored=True)
        if not notice.trade_no or len(notice.trade_no) > MAX_TRADE_NO or has_control_characters(notice.trade_no):
            return PaymentOutcome(False, "bad trade number")
        raw = {**notice.raw, "channel_type": channel.type}
        try:
            # An amount that cannot be read is no amount: the order is held for a person.
            return settle(session, channel, order_no=notice.order_no, trade_no=notice.trade_no,
                          amount_cents=notice.amount_cents or 0, raw=raw, now=now,
                          currency=notice.currency or None)
        except _StaleChannel:
            if own_transaction:
                session.rollback()
            forget_channel(code)
        except IntegrityError:
            if not own_transaction:
                raise
            session.rollback()
            return PaymentOutcome(False, "trade recorded concurrently")
    return PaymentOutcome(False, "the channel's secret keeps changing")


def _check(channel: CachedChannel, params: dict[str, str]):
    """(order_no, trade_no, amount in cents) of a genuine payment callback, else the refusal."""
    if not channel.verify(params):
        return PaymentOutcome(False, "bad signature", forged=True)
    if not hmac.compare_digest(str(params.get("pid", "")).encode("utf-8", "replace"), channel.pid.encode()):
        return PaymentOutcome(False, "foreign pid", forged=True)
    if params.get("trade_status") != "TRADE_SUCCESS":
        return PaymentOutcome(False, f"trade_status {params.get('trade_status')!r} is not a payment")
    trade_no, order_no = str(params.get("trade_no", "")), str(params.get("out_trade_no", ""))
    if not trade_no or len(trade_no) > MAX_TRADE_NO or has_control_characters(trade_no):
        return PaymentOutcome(False, "bad trade_no")
    amount = parse_gateway_money(params.get("money"))
    if amount is None:
        return PaymentOutcome(False, f"money {str(params.get('money'))[:20]!r} is not a gateway amount")
    return order_no[:32], trade_no, amount


def settle(session: Session, channel: CachedChannel, *, order_no: str, trade_no: str, amount_cents: int,
           raw: dict, now: dt.datetime | None = None, currency: str | None = None) -> PaymentOutcome:
    """Record a verified payment (see the module's docstring); the write transaction is left
    open for the caller to commit."""
    now = now or utcnow()
    params = {"order_no": order_no, "cid": channel.id, "code": channel.code, "trade_no": trade_no}
    ours = not _in_transaction(session)
    if session.get_bind().dialect.name == "sqlite":
        if ours:
            row = session.connection(execution_options={"kamengd_readonly": True}).execute(
                _LOAD_SQLITE, params).first()
            session.rollback()   # the snapshot ends; the write lock is taken below, for the writes
        else:   # a caller's transaction (a job, a test): read in it
            row = session.connection().execute(_LOAD_SQLITE, params).first()
        context = row
    else:
        conn = session.connection()   # Core, not the ORM: see kamengd.orders.checkout
        row = conn.execute(_LOCK_MYSQL, params).first()
        context = row and conn.execute(_CONTEXT_MYSQL, {**params, "pid": row.product_id}).first()
    if row is None:
        return PaymentOutcome(False, "unknown order for this channel")
    nonce = bytes(context.secret_nonce) if context.secret_nonce is not None else None
    if context.current_channel_id != channel.id or nonce != channel.nonce:
        raise _StaleChannel()
    if row.channel_id != channel.id:
        return PaymentOutcome(False, "unknown order for this channel")
    if context.existing_order_id == row.id:
        return PaymentOutcome(True, "already recorded")
    if (context.existing_order_id is None and row.status == "pending" and amount_cents == row.amount_cents
            and currency in (None, row.currency) and context.delivery_mode == "auto"
            and not row.risk_review):   # (held for a person: record_payment)
        delivery = _Delivery(row, context.product_name, trade_no, amount_cents, raw, now,   # built unlocked
                             context.product_price_cents,
                             routing.fee_cents(amount_cents, context.fee_bp, context.fee_fixed_cents),
                             bool(context.is_voucher))
        conn = session.connection()   # SQLite: BEGIN IMMEDIATE
        sold = conn.execute(_SELL, {"oid": row.id, "now": now}).rowcount
        if sold == row.quantity:
            return delivery.write(session)
        if sold:
            raise RuntimeError(f"order {row.order_no}: {sold} of {row.quantity} reserved keys")
    # Anything else (a trade recorded for another order too), the careful way, in
    # the write transaction (nothing was written above).
    order = session.get(Order, row.id, populate_existing=True)
    return record_payment(session, session.get(PaymentChannel, channel.id), order, trade_no=trade_no,
                          amount_cents=amount_cents, raw=raw, now=now, currency=currency)


class _Delivery:
    """The writes of a delivered callback, their values built before the write lock."""

    def __init__(self, row, product_name: str, trade_no: str, amount_cents: int, raw: dict, now: dt.datetime,
                 product_price_cents: int, fee_cents: int, is_voucher: bool = False):
        self.row, self.now, self.product_price_cents = row, now, product_price_cents
        self.is_voucher = is_voucher
        self.payment = {
            "order_id": row.id, "channel_id": row.channel_id, "trade_no": trade_no, "amount_cents": amount_cents,
            "status": "received", "created_at": now, "fee_cents": fee_cents,
            "raw": json.dumps(raw, ensure_ascii=False, sort_keys=True, default=str)}
        fields = dict(row._mapping)
        paid = payload_of(_Fields({**fields, "status": "paid", "paid_at": now, "delivered_at": None}),
                          product_name, trade_no=trade_no)
        done = payload_of(_Fields({**fields, "status": "delivered", "paid_at": now, "delivered_at": now}),
                          product_name)
        self.events = [("order.paid", paid), ("order.delivered", done)]

    def write(self, session: Session) -> PaymentOutcome:
        """In the write transaction, once the order's keys are sold."""
        row, now = self.row, self.now
        conn = session.connection()
        # Pending when its keys were sold, in the same transaction: cannot fail.
        if conn.execute(_DELIVER, {"oid": row.id, "now": now}).rowcount != 1:
            raise RuntimeError(f"order {row.order_no} changed under its lock")
        conn.execute(_INSERT_PAYMENT, self.payment)
        if self.is_voucher:   # its codes redeemable from now
            vouchers.activate_for_order(session, row.id, row.product_id, now)
        # Its member's points first, then the agents' accounts: every path locks them in this order.
        if row.member_id:   # placed signed in: its member earns its points
            points.earn(session, order_no=row.order_no, member_id=row.member_id, amount_cents=row.amount_cents,
                        currency=row.currency)
        if row.seller_agent_id:   # sold through an agent: it and those above it earn, in this transaction
            commission.book_commission(session, order_id=row.id, order_no=row.order_no, agent_id=row.seller_agent_id,
                                       paid_unit_cents=row.unit_price_cents, price_cents=self.product_price_cents,
                                       quantity=row.quantity, currency=row.currency, product_id=row.product_id,
                                       now=now, sold_through=True,
                                       new_buyer=commission.new_buyer_reward(session, row))
        emit_many(session, self.events, now)
        queue_delivery_email_for(session, row.id, row.email, now)
        # A caller holding the Order (a job, a test) sees what the statements did.
        real = session() if isinstance(session, scoped_session) else session
        loaded = real.identity_map.get(identity_key(Order, row.id))
        if loaded is not None:
            real.expire(loaded)
        return PaymentOutcome(True, "delivered")


class _Fields(dict):
    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:   # getattr(fields, name, default) works as on an object
            raise AttributeError(name) from None


def pay_in_sandbox(session: Session, vault: Vault, code: str, order, *, site_url: str = "") -> PaymentOutcome:
    """The sandbox's "pay" button: its pretend gateway signs the order's callback, which then
    takes the path of every gateway's (handle_epay_notify). One trade per order: pressing
    twice records one payment. `order`: the buyer's own (found by its token)."""
    channel = session.execute(sa.select(_c.c.id, _c.c.type, _c.c.secret_nonce, _c.c.secret_ciphertext,
                                        _c.c.secret_key_version).where(_c.c.code == code)).first()
    if channel is None or channel.type != "sandbox" or order.channel_id != channel.id:
        raise InvalidRequest("this order is not paid through the sandbox channel %(code)s", code=code)
    secret = channel_secrets_cached(vault, channel.id, code, channel.secret_nonce, channel.secret_ciphertext,
                                    channel.secret_key_version).get("secret", "")
    params = sandbox.callback(code=code, secret=secret, order_no=order.order_no, amount_cents=order.amount_cents,
                              trade_no=f"SANDBOX-{order.order_no}")
    session.rollback()   # the callback reads and writes in its own transaction, as a gateway's does
    return handle_epay_notify(session, vault, code, params, site_url=site_url)

"""Stripe Checkout: a Checkout Session per order, the `Stripe-Signature` webhook, refunds.

Stripe's own SDK (`stripe`, maintained by Stripe) makes the API calls and
checks the webhook signature (HMAC-SHA256 of "<t>.<body>" under the
endpoint's secret, within a tolerance of 300 s): a client per call, never its
global settings, pointed at `api_base` (Stripe's, or a test double's). The
order number rides as the session's `client_reference_id`; the payment is
recorded under its PaymentIntent (what a refund names).

A live key takes only live events and a test key only test events: that is
the webhook's "merchant" check, besides its endpoint secret.
"""
from __future__ import annotations

import datetime as dt
import json
from urllib.parse import urlsplit

import stripe

from ...errors import N_
from ...money import from_minor_units, to_minor_units
from .base import (Channel, Gateway, GatewayError, Inbound, NotForThisOrder, Notice, OrderToPay, Refused, Reply,
                   Started, Urls)

API_BASE = "https://api.stripe.com"
TOLERANCE_SECONDS = 300
TIMEOUT_SECONDS = 15
PAID_EVENTS = ("checkout.session.completed", "checkout.session.async_payment_succeeded")


def _client(channel: Channel) -> stripe.StripeClient:
    return stripe.StripeClient(channel.secrets["secret_key"],
                               base_addresses={"api": channel.options.get("api_base") or API_BASE},
                               http_client=stripe.RequestsClient(timeout=TIMEOUT_SECONDS),
                               max_network_retries=0)


def _failure(channel: Channel, exc: Exception) -> GatewayError:
    """Stripe's words, without a key in them (it masks them; this makes sure)."""
    text = getattr(exc, "user_message", None) or str(exc) or exc.__class__.__name__
    for secret in channel.secrets.values():
        if secret:
            text = text.replace(secret, "***")
    return GatewayError(f"Stripe: {exc.__class__.__name__}: {' '.join(text.split())[:200]}")


def _live(channel: Channel) -> bool:
    return channel.secrets.get("secret_key", "").startswith(("sk_live_", "rk_live_"))


class StripeCheckout(Gateway):
    type = "stripe"
    options = ("secret_key", "webhook_secret", "api_base")
    required = ("secret_key", "webhook_secret")
    secret = ("secret_key", "webhook_secret")
    json_callbacks = True

    def check_options(self, options: dict) -> list[tuple[str, str]]:
        problems = []
        key = options.get("secret_key", "")
        if key and not key.startswith(("sk_live_", "sk_test_", "rk_live_", "rk_test_")):
            problems.append(("secret_key", N_("a Stripe secret key starts with sk_live_ or sk_test_")))
        hook = options.get("webhook_secret", "")
        if hook and not hook.startswith("whsec_"):
            problems.append(("webhook_secret", N_("a Stripe webhook signing secret starts with whsec_")))
        base = options.get("api_base", "")
        if base and (urlsplit(base).scheme not in ("http", "https") or not urlsplit(base).netloc):
            problems.append(("api_base", N_("an http(s) base URL such as https://api.stripe.com")))
        return problems

    def start(self, channel: Channel, order: OrderToPay, urls: Urls, now: dt.datetime) -> Started:
        minor = to_minor_units(order.amount_cents, order.currency)
        if minor is None:
            raise NotForThisOrder(f"Stripe cannot charge {order.amount_cents / 100:.2f} {order.currency}")
        params = {
            "mode": "payment", "client_reference_id": order.order_no,
            "metadata": {"order_no": order.order_no},
            "line_items": [{"quantity": 1, "price_data": {
                "currency": order.currency.lower(), "unit_amount": minor,
                "product_data": {"name": order.product_name[:250] or order.order_no}}}],
            "success_url": urls.back, "cancel_url": urls.back,
            "payment_intent_data": {"metadata": {"order_no": order.order_no}},
            # Not payable long after the order expired (Stripe's floor is 30 minutes from now).
            "expires_at": int(max(order.expires_at, now + dt.timedelta(minutes=31))
                              .replace(tzinfo=dt.timezone.utc).timestamp()),
        }
        try:
            # One session per order and channel, however often the buyer opens the page.
            session = _client(channel).v1.checkout.sessions.create(
                params=params, options={"idempotency_key": f"kamengd-{channel.code}-{order.order_no}"}).to_dict()
        except stripe.StripeError as exc:
            raise _failure(channel, exc) from None
        if not session.get("id") or not session.get("url"):
            raise GatewayError("Stripe: the session has no id or no url")
        expires = session.get("expires_at")
        return Started(ref=session["id"], pay_url=session["url"],
                       expires_at=dt.datetime.fromtimestamp(expires, dt.timezone.utc).replace(tzinfo=None)
                       if isinstance(expires, int) else None)

    def verify(self, channel: Channel, inbound: Inbound, now: dt.datetime) -> Notice:
        header = inbound.headers.get("stripe-signature", "")
        try:
            stripe.WebhookSignature.verify_header(inbound.body, header, channel.secrets["webhook_secret"],
                                                  tolerance=TOLERANCE_SECONDS)
        except (stripe.SignatureVerificationError, ValueError):   # (a body that is not UTF-8, too)
            raise Refused("bad Stripe-Signature", forged=True) from None
        try:
            event = json.loads(inbound.body)
            kind, obj = event["type"], event["data"]["object"]
        except (ValueError, KeyError, TypeError):
            raise Refused("not a Stripe event") from None
        if bool(event.get("livemode")) != _live(channel):
            raise Refused("an event of the other mode (live/test) than the channel's key", forged=True)
        if kind not in PAID_EVENTS or not isinstance(obj, dict):
            raise Refused(f"event {str(kind)[:60]!r} is not a payment")
        return self._notice(obj, event)

    def _notice(self, session: dict, raw: dict) -> Notice:
        order_no = str(session.get("client_reference_id") or "")[:32]
        currency = str(session.get("currency") or "").upper()[:8]
        intent = session.get("payment_intent")
        trade_no = intent if isinstance(intent, str) and intent else str(session.get("id") or "")
        return Notice(order_no=order_no, trade_no=trade_no[:128],
                      amount_cents=from_minor_units(session.get("amount_total"), currency) if currency else None,
                      currency=currency, paid=session.get("payment_status") == "paid",
                      raw={"event": raw.get("id"), "type": raw.get("type"), "session": session.get("id"),
                           "payment_intent": intent, "amount_total": session.get("amount_total"),
                           "currency": session.get("currency")})

    def reply(self, recorded: bool) -> Reply:
        # A 2xx stops Stripe's retries: only for what is recorded (or refused for good, see the view).
        return Reply(json.dumps({"received": recorded}), 200 if recorded else 400, "application/json")

    def query(self, channel: Channel, order_no: str, ref: str, now: dt.datetime) -> Notice | None:
        try:
            session = _client(channel).v1.checkout.sessions.retrieve(ref).to_dict()
        except stripe.StripeError as exc:
            raise _failure(channel, exc) from None
        notice = self._notice(session, {"id": None, "type": "query"})
        if notice.order_no != order_no:
            raise GatewayError("Stripe: the session belongs to another order")
        return notice if notice.paid else None

    def refund(self, channel: Channel, *, trade_no: str, amount_cents: int, currency: str,
               refund_no: str) -> str:
        minor = to_minor_units(amount_cents, currency)
        if minor is None or not trade_no.startswith("pi_"):
            raise GatewayError("Stripe: this payment cannot be refunded through the API")
        try:
            refund = _client(channel).v1.refunds.create(params={"payment_intent": trade_no, "amount": minor},
                                                        options={"idempotency_key": f"kamengd-{refund_no}"}).to_dict()
        except stripe.StripeError as exc:
            raise _failure(channel, exc) from None
        if refund.get("status") not in ("succeeded", "pending"):
            raise GatewayError(f"Stripe: the refund is {str(refund.get('status'))[:20]}")
        return str(refund["id"])

    def probe(self, channel: Channel) -> str:
        try:
            _client(channel).v1.balance.retrieve()
        except stripe.StripeError as exc:
            raise _failure(channel, exc) from None
        return "Stripe accepts the secret key"

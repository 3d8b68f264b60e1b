"""What every payment gateway protocol provides, and the shapes it is given and gives back.

A gateway module knows one provider's protocol and nothing of kamengd's
database: it creates a payment for an order (a page to send the buyer to, or
a QR payload), checks a callback (signature and merchant before anything
else), answers the provider the way it expects, asks about a payment
(reconciliation) and gives money back (refunds). The services around it
(kamengd.payments.flow, kamengd.payments.callbacks) do the rest, the same way
for every channel.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field


class GatewayError(Exception):
    """The provider could not be asked or refused the request (a create, a query, a refund).
    Its message is safe to log and show to staff: never a secret."""


class NotForThisOrder(GatewayError):
    """The channel cannot take this order (its currency, its amount): nothing is wrong with the
    channel, which stays in routing; the order may go to another."""


class Refused(Exception):
    """A callback that changes nothing: `forged` when it is not the provider's (signature,
    merchant), else a genuine notice that is not a payment we can record. `retry`: not known
    to be forged, yet not recordable now (this shop's key cannot read it, or the provider's
    verification could not be reached): not acknowledged, so the provider sends it again, and
    not counted against its address."""

    def __init__(self, reason: str, *, forged: bool = False, retry: bool = False, reread: bool = False):
        super().__init__(reason)
        # `reread`: the channel's settings as this process knows them may be old (a key entered
        # since in another process): read them again before refusing.
        self.reason, self.forged, self.retry, self.reread = reason, forged, retry or reread, forged or reread


@dataclass(frozen=True)
class Channel:
    code: str
    options: dict
    secrets: dict


@dataclass(frozen=True)
class OrderToPay:
    order_no: str
    amount_cents: int
    currency: str
    product_name: str
    expires_at: dt.datetime
    pay_type: str | None = None    # the method the buyer chose (an Epay type: alipay, wxpay ...)
    client_ip: str | None = None   # the buyer's address, for gateways that ask for it


@dataclass(frozen=True)
class Urls:
    notify: str      # where the provider calls back (/pay/<code>/notify on site.url)
    back: str        # where the buyer comes back to (the order's page)


@dataclass
class Started:
    """A payment created at the provider: `ref` names it there (queries, the attempt's row);
    the buyer goes to `pay_url`, or scans `qr` (with `pay_url` as the fallback link, if any)."""
    ref: str
    pay_url: str | None = None
    qr: str | None = None
    expires_at: dt.datetime | None = None
    details: dict = field(default_factory=dict)   # what the page shows besides (e.g. an exchange rate)


@dataclass(frozen=True)
class Inbound:
    """A callback as it arrived: query and form fields, the raw body, the headers (lower-case names)."""
    params: dict
    body: bytes
    headers: dict


@dataclass
class Notice:
    """A genuine callback or query answer about a payment."""
    order_no: str
    trade_no: str
    amount_cents: int | None    # None: the amount was not one we can read (held, never delivered)
    currency: str
    paid: bool
    raw: dict


@dataclass(frozen=True)
class Reply:
    body: str
    status: int = 200
    content_type: str = "text/plain; charset=utf-8"


class Gateway:
    """One provider's protocol. Subclasses set the class attributes and the methods."""
    type: str = ""
    options: tuple[str, ...] = ()       # every option it takes
    required: tuple[str, ...] = ()
    secret: tuple[str, ...] = ()        # sealed with the data key, never shown again
    json_callbacks = False              # the callback's body is JSON (read whole, up to MAX_JSON_CALLBACK)
    asks_on_return = False              # ask query() when the buyer comes back (the money moves on our call)
    refunds = True                      # refund() gives money back (the panel offers it)

    def check_options(self, options: dict) -> list[tuple[str, str]]:
        """[(option, English problem)] beyond the required/secret rules."""
        return []

    def currencies(self, options: dict) -> frozenset[str] | None:
        """The currencies a channel of these options takes payments in; None: any (a start may
        still refuse one with NotForThisOrder). Routing sends no other order to it."""
        return None

    def start(self, channel: Channel, order: OrderToPay, urls: Urls, now: dt.datetime) -> Started:
        raise NotImplementedError

    def verify(self, channel: Channel, inbound: Inbound, now: dt.datetime) -> Notice:
        """The callback's notice, or Refused. The signature and the merchant come first."""
        raise NotImplementedError

    def reply(self, recorded: bool) -> Reply:
        return Reply("success" if recorded else "fail")

    def query(self, channel: Channel, order_no: str, ref: str, now: dt.datetime) -> Notice | None:
        """What the provider says about the payment `ref` of the order: a Notice, or None
        when it knows of no payment yet. GatewayError when it cannot say."""
        raise NotImplementedError

    def look(self, channel: Channel, order_no: str, ref: str, now: dt.datetime) -> Notice | None:
        """As query(), moving no money (the daily settlement only compares): a protocol whose
        query completes a payment (PayPal's capture) says what is there without doing so."""
        return self.query(channel, order_no, ref, now)

    def refund(self, channel: Channel, *, trade_no: str, amount_cents: int, currency: str,
               refund_no: str) -> str:
        """Give `amount_cents` of the payment `trade_no` back, once per `refund_no` (the
        provider's idempotency): the provider's refund id. GatewayError when refused."""
        raise NotImplementedError

    def probe(self, channel: Channel) -> str:
        """Ask the provider whether it takes the credentials: the English words of a success;
        GatewayError (its words) otherwise."""
        raise NotImplementedError

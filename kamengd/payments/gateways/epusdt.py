"""Epusdt and BEpusdt: a USDT (TRC20) gateway the merchant runs, priced in a fiat currency.

The protocol by hand, as Epusdt (github assimon/epusdt) documents it and
BEpusdt (github v03413/bepusdt) copies it; it is one MD5 and two JSON calls,
and neither project publishes a Python SDK:

- Signature: every parameter but `signature` whose value is not empty, sorted
  by name, joined `k=v&k=v`, the API token appended directly, MD5, lower-case
  hex. Both gateways read the JSON body into a Go map, so a number is signed
  as Go writes a float64 back (`28.8`, `42`, `2`): the same rule is used here
  to check what they sign. The float serves the signing text only; the money
  is read from that text, exactly.
- Create: POST `{api_base}/api/v1/order/create-transaction` with `order_id`
  (the order number), `amount` (the fiat amount, a JSON number with at most two
  places), `notify_url`, `redirect_url`, `timeout` (BEpusdt: seconds), and
  `trade_type` (BEpusdt, when set). The answer `{status_code: 200, data:
  {trade_id, order_id, amount, actual_amount, token, expiration_time,
  payment_url}}` names the exact crypto amount to send and the wallet address
  (`token`): the pay page shows both, the rate, and the address as a QR code.
- Callback: a JSON POST `{trade_id, order_id, amount, actual_amount, token,
  block_transaction_id, signature, status}`, status 2 = paid (1 waiting, 3
  expired). The gateway wants the text `ok`, else it calls again.
- Status: GET `{api_base}/pay/check-status/{trade_id}` (both; unsigned, with
  no amount) for missed callbacks: the attempt's ref carries the fiat amount
  the trade was created for, so a trade the gateway reports paid is recorded
  with it. The answer is as trustworthy as the address it comes from (as an
  Epay query is): give `api_base` as https.
- There is no merchant id: a callback signed with another gateway's token is a
  forged one. There are no refunds (a crypto transfer): given back by hand.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import http.client
import ipaddress
import json
import re
import urllib.error
import urllib.request
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from urllib.parse import quote, urlsplit

from ...errors import N_
from ...money import THREE_DECIMAL, format_cents, parse_gateway_money
from .base import (Channel, Gateway, GatewayError, Inbound, NotForThisOrder, Notice, OrderToPay, Refused, Reply,
                   Started, Urls)

TIMEOUT_SECONDS = 15
MAX_ANSWER = 64 * 1024
DEFAULT_CURRENCY = "CNY"
PAID, STATUSES = 2, {1: "waiting", 2: "paid", 3: "expired", 4: "cancelled"}
MIN_GATEWAY_TIMEOUT = 60          # BEpusdt's floor for `timeout`
MAX_REF_TRADE_ID = 100            # the attempt's ref is "<trade_id>/<amount><currency>" (128 at most)
_CRYPTO_AMOUNT = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,8})?")
_TRADE_TYPE = re.compile(r"[a-z0-9]{1,16}(?:\.[a-z0-9]{1,16}){0,2}")
_CURRENCY = re.compile(r"[A-Z]{3}")
_PRINTABLE = re.compile(r"[\x21-\x7e]+")   # a trade id, a wallet address: visible ASCII, no spaces
RATE_PLACES = Decimal("0.0001")


# --- signing -----------------------------------------------------------------

def go_number(value: int | float) -> str:
    """A JSON number as Go's encoding/json reads it (a float64) and strconv writes it back
    ('f', shortest): 28.80 -> '28.8', 42 -> '42', 1e-05 -> '0.00001'."""
    text = format(Decimal(repr(float(value))), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def signed_text(value) -> str | None:
    """A field's value as the gateway signs it; None for a value it would not sign (an
    object, a list, a boolean: no field of the protocol is one)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return go_number(value)
    except (OverflowError, ValueError, InvalidOperation):
        return None


def signing_string(fields: dict[str, str], *, keep_empty: bool = False) -> str:
    return "&".join(f"{k}={v}" for k, v in sorted(fields.items()) if k != "signature" and (v != "" or keep_empty))


def sign(fields: dict[str, str], token: str, *, keep_empty: bool = False) -> str:
    """As documented: empty values left out. `keep_empty`: as Epusdt's own code signs its
    callbacks (it leaves out only nulls), which differs when a field is empty."""
    return hashlib.md5((signing_string(fields, keep_empty=keep_empty) + token).encode("utf-8")).hexdigest()


def signed_by(fields: dict[str, str], token: str) -> bool:
    """Whether `fields` carry the signature of the gateway that holds `token` (either rule)."""
    given = fields.get("signature", "").encode("utf-8", "replace")
    good = hmac.compare_digest(sign(fields, token).encode(), given)
    if "" in fields.values():
        good |= hmac.compare_digest(sign(fields, token, keep_empty=True).encode(), given)
    return good and bool(given)


def amount_number(cents: int) -> str:
    """The fiat amount as the JSON number sent and signed, as Go writes it back: '28.88', '28.8', '42'."""
    return format_cents(cents).rstrip("0").rstrip(".")


def _json_body(fields: dict[str, str], numbers: dict[str, str]) -> bytes:
    """The request's JSON: `numbers` written as the exact number texts that were signed."""
    parts = [f"{json.dumps(k)}:{json.dumps(v, ensure_ascii=False)}" for k, v in fields.items()]
    parts += [f"{json.dumps(k)}:{v}" for k, v in numbers.items()]
    return ("{" + ",".join(parts) + "}").encode("utf-8")


def _no_constants(name: str):
    raise ValueError(f"{name} is not a JSON number")


def read_json(raw: bytes):
    """JSON as the gateways write it; NaN and Infinity refused (Python would take them)."""
    return json.loads(raw.decode("utf-8"), parse_constant=_no_constants)


# --- the amounts ---------------------------------------------------------------

def crypto_amount(value) -> Decimal | None:
    """The crypto amount (actual_amount: a number or, from BEpusdt, a string), exactly as written."""
    text = signed_text(value)
    if text is None or not _CRYPTO_AMOUNT.fullmatch(text):
        return None
    amount = Decimal(text)
    return amount if amount > 0 else None


def rate_of(fiat_cents: int, crypto: Decimal) -> Decimal:
    """Fiat per unit of crypto, as the trade was priced (amount / actual_amount)."""
    return (Decimal(fiat_cents) / 100 / crypto).quantize(RATE_PLACES, rounding=ROUND_HALF_EVEN)


def unit_of(trade_type: str) -> str:
    """What the buyer sends: 'USDT (TRC20)' for usdt.trc20 (Epusdt's only kind), 'TRX' for tron.trx."""
    if trade_type in ("", "usdt.trc20"):
        return "USDT (TRC20)"
    if trade_type == "tron.trx":
        return "TRX"
    coin, _, network = trade_type.partition(".")
    return f"{coin.upper()} ({network.upper()})" if network else coin.upper()


def _ref(trade_id: str, cents: int, currency: str) -> str:
    return f"{trade_id}/{format_cents(cents)}{currency}"


def _parse_ref(ref: str) -> tuple[str, int | None, str]:
    trade_id, _, priced = (ref or "").rpartition("/")
    found = re.fullmatch(r"([0-9]{1,13}\.[0-9]{2})([A-Z]{3})", priced)
    if not trade_id or not found:
        return ref or "", None, ""
    return trade_id, parse_gateway_money(found.group(1)), found.group(2)


# --- the protocol --------------------------------------------------------------

def _local_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private


class Epusdt(Gateway):
    type = "epusdt"
    refunds = False   # a crypto transfer: given back from the wallet by hand
    options = ("api_base", "token", "trade_type", "currency")
    required = ("api_base", "token")
    secret = ("token",)
    json_callbacks = True

    def currencies(self, options: dict) -> frozenset[str]:
        return frozenset({options.get("currency") or DEFAULT_CURRENCY})

    def check_options(self, options: dict) -> list[tuple[str, str]]:
        problems = []
        base = options.get("api_base", "")
        parts = urlsplit(base) if base else None
        if parts is not None and (parts.scheme not in ("http", "https") or not parts.netloc or parts.query
                                  or parts.fragment):
            problems.append(("api_base", N_("the gateway's http(s) address, such as https://epusdt.example.com")))
        elif parts is not None and parts.scheme == "http" and not _local_host(parts.hostname or ""):
            # Its answers are not signed: over plain http anyone on the way could report an order
            # paid or show the buyer another wallet.
            problems.append(("api_base", N_("https:// (plain http only to this machine or its private network)")))
        trade_type = options.get("trade_type", "")
        if trade_type and not _TRADE_TYPE.fullmatch(trade_type):
            problems.append(("trade_type", N_("BEpusdt's trade type, such as usdt.trc20 (empty for Epusdt)")))
        currency = options.get("currency", "")
        if currency and (not _CURRENCY.fullmatch(currency) or currency in THREE_DECIMAL):
            problems.append(("currency", N_("the fiat currency the gateway prices in: three capitals such as CNY "
                                         "(two decimal places at most)")))
        return problems

    @staticmethod
    def currency(channel: Channel) -> str:
        return channel.options.get("currency") or DEFAULT_CURRENCY

    # --- calls ---------------------------------------------------------------

    def _call(self, channel: Channel, path: str, data: bytes | None = None) -> dict:
        url = channel.options["api_base"].rstrip("/") + path
        headers = {"Content-Type": "application/json", "Accept": "application/json"} if data is not None else {}
        request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as resp:
                body = resp.read(MAX_ANSWER)
        except urllib.error.HTTPError as exc:
            try:   # BEpusdt refuses a signature with HTTP 400 {"error": "签名错误"}
                answer = read_json(exc.read(MAX_ANSWER))
            except (ValueError, UnicodeDecodeError, OSError):
                answer = None
            if isinstance(answer, dict) and answer.get("error"):
                raise GatewayError(f"Epusdt answered HTTP {exc.code}: {str(answer['error'])[:100]}") from None
            raise GatewayError(f"Epusdt answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
            raise GatewayError(f"Epusdt unreachable: {exc.__class__.__name__}") from None
        try:
            answer = read_json(body)
        except (ValueError, UnicodeDecodeError):
            raise GatewayError("Epusdt answered something that is not JSON") from None
        if not isinstance(answer, dict):
            raise GatewayError("Epusdt answered something that is not a JSON object")
        return answer

    def _signed_post(self, channel: Channel, path: str, fields: dict[str, str], numbers: dict[str, str]) -> dict:
        signature = sign({**fields, **numbers}, channel.secrets["token"])
        return self._call(channel, path, _json_body({**fields, "signature": signature}, numbers))

    @staticmethod
    def _refusal(answer: dict) -> GatewayError:
        words = f"{answer.get('status_code', '')} {answer.get('message', '')}".strip()
        return GatewayError(f"Epusdt refused: {' '.join(words.split())[:200]}")

    def start(self, channel: Channel, order: OrderToPay, urls: Urls, now: dt.datetime) -> Started:
        fiat = self.currency(channel)
        if order.currency != fiat:
            raise NotForThisOrder(f"this Epusdt channel prices in {fiat}; the order is in {order.currency}")
        seconds = max(MIN_GATEWAY_TIMEOUT, int((order.expires_at - now).total_seconds()))
        fields = {"order_id": order.order_no, "notify_url": urls.notify, "redirect_url": urls.back}
        if channel.options.get("trade_type"):
            fields["trade_type"] = channel.options["trade_type"]
        answer = self._signed_post(channel, "/api/v1/order/create-transaction", fields,
                                   {"amount": amount_number(order.amount_cents), "timeout": str(seconds)})
        data = answer.get("data")
        if answer.get("status_code") != 200 or not isinstance(data, dict):
            raise self._refusal(answer)
        return self._started(channel, order, data, now)

    def _started(self, channel: Channel, order: OrderToPay, data: dict, now: dt.datetime) -> Started:
        if data.get("order_id") != order.order_no:
            raise GatewayError("Epusdt answered about another order")
        if parse_gateway_money(signed_text(data.get("amount"))) != order.amount_cents:
            raise GatewayError("Epusdt answered another fiat amount than the order's")
        crypto = crypto_amount(data.get("actual_amount"))
        trade_id, address = data.get("trade_id"), data.get("token")
        if crypto is None:
            raise GatewayError("Epusdt's answer has no amount to send")
        if not isinstance(trade_id, str) or not _PRINTABLE.fullmatch(trade_id) or len(trade_id) > MAX_REF_TRADE_ID:
            raise GatewayError("Epusdt's answer has no trade id")
        if not isinstance(address, str) or not _PRINTABLE.fullmatch(address) or len(address) > 128:
            raise GatewayError("Epusdt's answer has no wallet address")
        page = data.get("payment_url")
        if not (isinstance(page, str) and urlsplit(page).scheme in ("http", "https") and len(page) <= 1000):
            page = None
        expires = order.expires_at
        until = data.get("expiration_time")
        if isinstance(until, int) and not isinstance(until, bool) and until > 0:
            # Epusdt: a Unix time; BEpusdt: seconds from now.
            gateway_end = (dt.datetime.fromtimestamp(until, dt.timezone.utc).replace(tzinfo=None)
                           if until > 10 ** 9 else now + dt.timedelta(seconds=until))
            expires = min(expires, gateway_end)
        fiat, unit = self.currency(channel), unit_of(channel.options.get("trade_type", ""))
        rate = rate_of(order.amount_cents, crypto)
        shown = [[["应付数额（请精确转账此数额）", "Send exactly"], f"{crypto} {unit}"],
                 [["收款地址", "To the wallet address"], address],
                 [["汇率", "Exchange rate"], f"1 {unit.split(' ')[0]} = {rate} {fiat}"]]
        return Started(ref=_ref(trade_id, order.amount_cents, fiat), qr=address, pay_url=page, expires_at=expires,
                       details={"shown": shown, "trade_id": trade_id, "actual_amount": str(crypto),
                                "address": address, "rate": str(rate), "unit": unit})

    def verify(self, channel: Channel, inbound: Inbound, now: dt.datetime) -> Notice:
        try:
            body = read_json(inbound.body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise Refused("not an Epusdt callback (JSON)", forged=True) from None
        if not isinstance(body, dict):
            raise Refused("not an Epusdt callback (a JSON object)", forged=True)
        fields = {}
        for name, value in body.items():
            if value is None:
                continue
            text = signed_text(value)
            if text is None:
                raise Refused(f"field {str(name)[:30]!r} is no value the gateway signs", forged=True)
            fields[name] = text
        if not signed_by(fields, channel.secrets["token"]):
            raise Refused("bad signature", forged=True)
        status = body.get("status")
        if signed_text(status) != str(PAID):
            raise Refused(f"status {str(fields.get('status'))[:10]!r} is not a payment")
        trade_id = fields.get("trade_id", "")
        if not _PRINTABLE.fullmatch(trade_id) or len(trade_id) > MAX_REF_TRADE_ID:
            raise Refused("no trade id")
        cents = parse_gateway_money(fields.get("amount"))
        crypto = crypto_amount(body.get("actual_amount"))
        raw = {k: fields[k] for k in ("trade_id", "order_id", "amount", "actual_amount", "token",
                                      "block_transaction_id", "status") if k in fields}
        if cents is not None and crypto is not None:
            raw["rate"] = str(rate_of(cents, crypto))
        return Notice(order_no=fields.get("order_id", "")[:32], trade_no=trade_id, amount_cents=cents,
                      currency=self.currency(channel), paid=True, raw=raw)

    def reply(self, recorded: bool) -> Reply:
        # Epusdt calls again unless the answer is exactly "ok".
        return Reply("ok" if recorded else "fail")

    def query(self, channel: Channel, order_no: str, ref: str, now: dt.datetime) -> Notice | None:
        trade_id, cents, currency = _parse_ref(ref)
        if cents is None:
            raise GatewayError("this payment's reference does not say what it was created for")
        answer = self._call(channel, "/pay/check-status/" + quote(trade_id, safe=""))
        if "status_code" in answer:   # Epusdt: {status_code, message, data: {trade_id, status}}
            if answer.get("status_code") != 200 or not isinstance(answer.get("data"), dict):
                raise self._refusal(answer)
            answer = answer["data"]
        if answer.get("trade_id") != trade_id:   # BEpusdt: {trade_id, trade_hash, status, return_url}
            raise GatewayError("Epusdt answered about another trade")
        status = answer.get("status")
        if isinstance(status, bool) or not isinstance(status, int) or status not in STATUSES:
            raise GatewayError(f"Epusdt answered the status {str(status)[:10]!r}")
        if status != PAID:
            return None
        raw = {"trade_id": trade_id, "status": status, "amount": format_cents(cents)}
        if isinstance(answer.get("trade_hash"), str):
            raw["block_transaction_id"] = answer["trade_hash"][:128]
        return Notice(order_no=order_no, trade_no=trade_id, amount_cents=cents, currency=currency, paid=True,
                      raw=raw)

    def refund(self, channel: Channel, *, trade_no: str, amount_cents: int, currency: str,
               refund_no: str) -> str:
        raise GatewayError("Epusdt cannot give money back (a crypto transfer): send it back from the wallet by "
                           "hand, or to the buyer's balance, then refund the order without the channel")

    def probe(self, channel: Channel) -> str:
        # An order without an amount: the gateway checks the signature first (a wrong token is
        # refused as such), then refuses the order itself. Nothing is created.
        answer = self._signed_post(channel, "/api/v1/order/create-transaction",
                                   {"order_id": "KAMENGD-PROBE-0"}, {})
        code = answer.get("status_code")
        if code == 401 or answer.get("error"):
            raise GatewayError("Epusdt refused the signature: the API token is not the gateway's")
        if isinstance(code, int) and not isinstance(code, bool):
            return "Epusdt accepts the API token's signature"
        raise GatewayError("Epusdt answered something that is not its JSON")

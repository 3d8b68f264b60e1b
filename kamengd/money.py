"""Exact money: integer cents inside, two-place decimal strings outside."""
from __future__ import annotations

import re
from decimal import Decimal, DecimalException

from .errors import InvalidRequest

MAX_CENTS = 10**13  # 100 billion: far beyond any card, well inside BIGINT
# What a gateway sends: ASCII digits, an optional point and one or two places.
# Not Decimal's grammar: it takes '٩.٩٠', '９.９０', '0.99e1', '+9.90' and spaces.
_GATEWAY_MONEY = re.compile(r"[0-9]{1,13}(?:\.[0-9]{1,2})?")


def parse_money(text: str | Decimal, *, field: str = "price", allow_zero: bool = False) -> int:
    """'9.9' -> 990. More than two decimal places, a sign, or junk is refused."""
    if isinstance(text, float):
        raise TypeError("money is never a float")
    raw = str(text).strip()
    try:
        value = Decimal(raw)
    except DecimalException:
        raise InvalidRequest("%(field)s: %(raw)r is not a decimal amount", field=field, raw=raw[:40]) from None
    if not value.is_finite():
        raise InvalidRequest("%(field)s: %(raw)r is not a decimal amount", field=field, raw=raw[:40])
    if value.adjusted() >= 13:  # before any arithmetic: 1e1000000 must not overflow
        raise InvalidRequest("%(field)s: %(raw)r is too large", field=field, raw=raw[:40])
    if value.as_tuple().exponent < -2 and value != value.quantize(Decimal("0.01")):
        raise InvalidRequest("%(field)s: %(raw)r has more than two decimal places", field=field, raw=raw[:40])
    cents = int(value * 100)
    if cents < 0 and allow_zero:
        raise InvalidRequest("%(field)s: must be zero or more", field=field)
    if cents <= 0 and not allow_zero:
        raise InvalidRequest("%(field)s: must be more than zero", field=field)
    if cents >= MAX_CENTS:
        raise InvalidRequest("%(field)s: %(raw)r is too large", field=field, raw=raw[:40])
    return cents


def format_cents(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    cents = abs(cents)
    return f"{sign}{cents // 100}.{cents % 100:02d}"


def parse_gateway_money(text) -> int | None:
    """A gateway's amount ('9.9', '9.90', '10') in cents; None for anything else,
    which a callback or a query answer is then refused for."""
    if not isinstance(text, str) or not _GATEWAY_MONEY.fullmatch(text):
        return None
    whole, _, fraction = text.partition(".")
    cents = int(whole) * 100 + int(fraction.ljust(2, "0") or 0)
    return cents if 0 < cents < MAX_CENTS else None


def parse_plain_money(text, *, field: str = "amount", allow_zero: bool = False) -> int:
    """An amount a person typed ('12', '12.3', '12.34'): cents. Only ASCII digits and one
    point with at most two places: no sign, exponent, spaces inside or other digits."""
    raw = text.strip() if isinstance(text, str) else text
    if not isinstance(raw, str) or not _GATEWAY_MONEY.fullmatch(raw):
        shown = raw[:40] if isinstance(raw, str) else raw
        raise InvalidRequest("%(field)s: %(raw)r is not an amount such as 12.34", field=field, raw=shown)
    whole, _, fraction = raw.partition(".")
    cents = int(whole) * 100 + int(fraction.ljust(2, "0") or 0)
    if cents == 0 and not allow_zero:
        raise InvalidRequest("%(field)s: must be more than zero", field=field)
    if cents >= MAX_CENTS:
        raise InvalidRequest("%(field)s: %(raw)r is too large", field=field, raw=raw[:40])
    return cents


# ISO 4217 currencies whose smallest unit is the whole unit as gateways count it (a gateway's
# "minor units" are then our cents / 100). ISK is not among them: Stripe counts it in hundredths.
ZERO_DECIMAL = frozenset({"JPY", "KRW", "VND", "CLP", "UGX", "XAF", "XOF", "PYG", "RWF", "KMF", "GNF",
                          "DJF", "BIF", "MGA", "VUV", "XPF"})
# Three places: our cents cannot say what a gateway means; such orders are not sent to one.
THREE_DECIMAL = frozenset({"BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"})


def to_minor_units(cents: int, currency: str) -> int | None:
    """Our cents as a gateway's minor units of `currency`; None when a gateway cannot be sent the
    amount (cents a zero-decimal currency cannot hold, a three-decimal currency)."""
    currency = currency.upper()
    if currency in THREE_DECIMAL:
        return None
    if currency in ZERO_DECIMAL:
        return cents // 100 if cents % 100 == 0 else None
    return cents


def from_minor_units(minor, currency: str) -> int | None:
    """A gateway's integer minor units as our cents; None for anything but a positive integer
    (or a currency whose minor units are not hundredths or whole units)."""
    currency = currency.upper()
    if isinstance(minor, bool) or not isinstance(minor, int) or not 0 < minor < MAX_CENTS or currency in THREE_DECIMAL:
        return None
    cents = minor * 100 if currency in ZERO_DECIMAL else minor
    return cents if cents < MAX_CENTS else None

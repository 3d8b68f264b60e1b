"""What a channel's secret must be before kamengd signs and checks with it.

An Epay signature is MD5(parameters + key): whoever knows the key can forge a
payment callback. The key also signs every pay URL a buyer sees, so a short
key falls to an offline search in hours; a key of one (invisible) character
falls to the first guess. Gateways hand out random keys of 32 characters;
the floor here refuses typos and test values, never a real gateway's key.

Invisible characters (format, control, spaces) are refused outright rather
than discounted: they are pasting accidents, and a key that looks like "a"
but holds a zero-width space cannot be checked by eye.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from ..errors import InvalidRequest

_INVISIBLE = ("Cc", "Cf", "Cn", "Co", "Cs", "Zl", "Zp", "Zs")


@dataclass(frozen=True)
class SecretRule:
    min_length: int
    min_classes: int          # of: lower-case letters, capitals, digits, symbols
    min_distinct: int         # different characters
    ascii_only: bool = True


# (channel type, option) -> its rule. The channels of W4 add theirs here.
RULES = {
    ("epay", "key"): SecretRule(min_length=16, min_classes=2, min_distinct=8),
    # Made by kamengd (43 URL-safe characters); only one typed in by hand could be weaker.
    ("sandbox", "secret"): SecretRule(min_length=32, min_classes=2, min_distinct=12),
    # Stripe's keys and signing secrets: a prefix and 24 or more random characters.
    ("stripe", "secret_key"): SecretRule(min_length=24, min_classes=2, min_distinct=12),
    ("stripe", "webhook_secret"): SecretRule(min_length=24, min_classes=2, min_distinct=12),
    # Epusdt's API token signs like an Epay key (MD5 of the parameters and the token).
    ("epusdt", "token"): SecretRule(min_length=16, min_classes=2, min_distinct=8),
    # WeChat Pay's APIv3 key: 32 characters the merchant sets (it decrypts every notification).
    ("wechatpay", "apiv3_key"): SecretRule(min_length=32, min_classes=2, min_distinct=12),
    # A PayPal REST app's secret: some 80 random letters, digits, - and _.
    ("paypal", "client_secret"): SecretRule(min_length=24, min_classes=2, min_distinct=12),
}


def _classes(value: str) -> int:
    return sum((any(c.islower() for c in value), any(c.isupper() for c in value),
                any(c.isdigit() for c in value), any(not c.isalnum() for c in value)))


def secret_problem(channel_type: str, option: str, value: str) -> InvalidRequest | None:
    """Why `value` cannot be this option's secret, or None. Never quotes the value.
    The reason is an error to raise or show (the panel translates it; its message is English)."""
    rule = RULES.get((channel_type, option))
    if rule is None:
        return None
    if not value:
        return InvalidRequest("option %(name)s: required (channel type %(channel_type)s)",
                              name=option, channel_type=channel_type)
    hidden = sorted({c for c in value if c.isspace() or unicodedata.category(c) in _INVISIBLE})
    if hidden:
        return InvalidRequest("option %(name)s: contains spaces, control or invisible characters (%(characters)s); "
                              "copy the key again from the gateway's merchant page",
                              name=option, characters=", ".join(f"U+{ord(c):04X}" for c in hidden[:3]))
    if rule.ascii_only and not value.isascii():
        return InvalidRequest("option %(name)s: only letters, digits and ASCII symbols "
                              "(the gateway's key is plain ASCII)", name=option)
    if len(value) < rule.min_length:
        return InvalidRequest("option %(name)s: at least %(min_length)s characters (gateways issue keys of 32); "
                              "this one has %(length)s: anyone could guess it and forge payments",
                              name=option, min_length=rule.min_length, length=len(value))
    if _classes(value) < rule.min_classes or len(set(value)) < rule.min_distinct:
        return InvalidRequest("option %(name)s: too simple to be a gateway's key: mix at least %(min_classes)s of "
                              "lower-case letters, capitals, digits and symbols, with at least %(min_distinct)s "
                              "different characters",
                              name=option, min_classes=rule.min_classes, min_distinct=rule.min_distinct)
    return None


def secrets_problem(channel_type: str, secrets: dict[str, str]) -> InvalidRequest | None:
    """The first problem among a channel's stored secrets (a missing one counts)."""
    for (kind, option) in RULES:
        if kind == channel_type:
            problem = secret_problem(kind, option, secrets.get(option, ""))
            if problem:
                return problem
    return None

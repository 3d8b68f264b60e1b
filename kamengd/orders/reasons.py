"""Why an order was flagged for a person: one English template per reason.

The reason is stored as English text (the CLI, the CSV, webhooks and mails
show it as it is); the panel shows it in the staff member's language by
matching the stored text against these templates and translating the
template with the values it held. A leaf: payments, mail and the sweep write
reasons, the panel reads them.
"""
from __future__ import annotations

import re
from collections.abc import Callable

from ..errors import N_


WAITING_FOR_STOCK = N_("paid and waiting for stock for over %(minutes)s minutes")
MANUAL_PAST_SLA = N_("manual delivery not done within %(minutes)s minutes")
SUPPLIER_NOT_BOUGHT = N_("paid and not bought from the supplier for over %(minutes)s minutes")
MAIL_FAILED = N_("delivery mail failed %(attempts)s times: %(error)s")
TRADE_TWICE = N_("the gateway reported trade %(trade_no)s, already recorded for order %(other)s")
WRONG_AMOUNT = N_("paid %(paid)s, the order is for %(amount)s %(currency)s")
# Starts with payments.models.EXTRA_PAYMENT_FLAG ("paid twice"): the refund clears it by that prefix.
EXTRA_PAYMENT = N_("paid twice: an extra payment of %(amount)s %(currency)s (trade %(trade_no)s) to refund")
RISK_REVIEW = N_("held for review by the risk rule %(rule)s")
LATE_OVER_LIMIT = N_("paid after it expired, when its coupon, the buyer's daily limit or the member's points "
                     "had nothing left for it")
# The same reason as stored before points could be taken off orders (still read and translated).
LATE_OVER_LIMIT_BEFORE_POINTS = N_("paid after it expired, when its coupon or the buyer's daily limit had nothing "
                                   "left for it")
TEMPLATES = (WAITING_FOR_STOCK, MANUAL_PAST_SLA, SUPPLIER_NOT_BOUGHT, MAIL_FAILED, TRADE_TWICE, WRONG_AMOUNT, EXTRA_PAYMENT,
             RISK_REVIEW, LATE_OVER_LIMIT, LATE_OVER_LIMIT_BEFORE_POINTS)
MAX_REASON = 200


def reason(template: str, **params) -> str:
    """The stored text of a reason (the flag_reason column holds 200 characters)."""
    return (template % params)[:MAX_REASON]


def _pattern(template: str) -> re.Pattern:
    parts = re.split(r"%\((\w+)\)s", template)
    regex = "".join(re.escape(part) if i % 2 == 0 else f"(?P<{part}>.*?)" for i, part in enumerate(parts))
    return re.compile(regex + r"\Z", re.S)


_PATTERNS = [(template, _pattern(template)) for template in TEMPLATES]


def parse(text: str) -> tuple[str, dict[str, str]] | None:
    """(template, values) of a stored reason; None for text no template made (older rows, cut ones)."""
    for template, pattern in _PATTERNS:
        found = pattern.match(text)
        if found:
            return template, found.groupdict()
    return None


def localized(text: str | None, gettext: Callable[..., str]) -> str:
    """A stored reason in the reader's language (flask_babel.gettext), or as stored."""
    if not text:
        return ""
    parsed = parse(text)
    if parsed is None:
        return text
    template, values = parsed
    return gettext(template, **values)

"""What a unit of a product costs the buyer: the lowest of its price, its time-window price
while the window is open, its wholesale tier for the quantity, and for a buyer signed in (a
member or an agent) its member price.

Tiers are text as staff type them ("10=8.50, 50=8.00": from 10 units 8.50 each, from 50
8.00) and JSON as stored ([[10, 850], [50, 800]], least quantity first). The one rule of the
unit price is `unit_price`: checkout, the product list and the product page all ask it.
"""
from __future__ import annotations

import datetime as dt
import json
import re

from ..errors import InvalidRequest
from ..money import format_cents, parse_money

MAX_TIERS = 20


def parse_tiers(text: str | None) -> str | None:
    """Staff's tiers -> the stored JSON (None for none); InvalidRequest naming the mistake."""
    items = [item.strip() for item in re.split(r"[,;\n]+", text or "") if item.strip()]
    if not items:
        return None
    tiers: dict[int, int] = {}
    for item in items:
        found = re.fullmatch(r"([0-9]{1,6})\s*[=:]\s*(\S+)", item)
        if found is None:
            raise InvalidRequest("tiers: %(item)r is not QUANTITY=PRICE such as 10=8.50", item=item[:40])
        least = int(found.group(1))
        if least < 2:
            raise InvalidRequest("tiers: a tier starts at 2 units or more")
        if least in tiers:
            raise InvalidRequest("tiers: %(least)s units twice", least=least)
        tiers[least] = parse_money(found.group(2), field="tiers")
    if len(tiers) > MAX_TIERS:
        raise InvalidRequest("tiers: at most %(most)s", most=MAX_TIERS)
    ordered = sorted(tiers.items())
    if any(later[1] >= earlier[1] for earlier, later in zip(ordered, ordered[1:])):
        raise InvalidRequest("tiers: a larger quantity must have a lower unit price")
    return json.dumps(ordered)


def tiers_text(stored: str | None) -> str:
    """The stored tiers as staff type them."""
    return ", ".join(f"{least}={format_cents(cents)}" for least, cents in json.loads(stored or "[]"))


def tiers_of(stored: str | None) -> list[tuple[int, int]]:
    return [(least, cents) for least, cents in json.loads(stored or "[]")]


def on_sale(row, now: dt.datetime) -> bool:
    """Is the product's time-window price on now?"""
    return (row.sale_price_cents is not None
            and (row.sale_starts_at is None or row.sale_starts_at <= now)
            and (row.sale_ends_at is None or now < row.sale_ends_at))


def unit_price(row, quantity: int, now: dt.datetime, member: bool = False) -> int:
    """What one unit costs when buying `quantity` now (row: a Product or the checkout's offer);
    `member`: for a buyer signed in as a member (or an agent), whose member price applies too."""
    unit = row.price_cents
    if member and row.member_price_cents is not None:
        unit = min(unit, row.member_price_cents)
    if on_sale(row, now):
        unit = min(unit, row.sale_price_cents)
    for least, cents in tiers_of(row.price_tiers):
        if quantity >= least:
            unit = min(unit, cents)
    return unit

"""Times as staff type and read them: in the shop's time zone outside, naive UTC inside.

A leaf: coupons' and products' windows, and every page that shows one, say times the same way.
"""
from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from .errors import InvalidRequest


def parse_when(text: str, field: str, timezone: str) -> dt.datetime | None:
    """'2026-12-24 20:00' (or a date alone) in the shop's time zone -> naive UTC; '' -> None."""
    raw = (text or "").strip().replace("T", " ")
    if not raw:
        return None
    for shape in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            local = dt.datetime.strptime(raw, shape)
            break
        except ValueError:
            continue
    else:
        local = None
    # (a year the database or the time zone's arithmetic cannot hold is no window of ours)
    if local is None or not 1970 <= local.year <= 9998:
        raise InvalidRequest("%(field)s: a date and time such as 2026-12-24 20:00", field=field)
    return local.replace(tzinfo=ZoneInfo(timezone)).astimezone(dt.timezone.utc).replace(tzinfo=None)


def shop_time(value: dt.datetime | None, timezone: str) -> str:
    """A stored UTC time as parse_when reads it back ('' for none)."""
    if value is None:
        return ""
    return value.replace(tzinfo=dt.timezone.utc).astimezone(ZoneInfo(timezone)).strftime("%Y-%m-%d %H:%M")

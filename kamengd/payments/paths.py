"""This shop's own payment pages, by the address an order's pay URL names (a leaf: checkout
builds them before any gateway is asked)."""
from __future__ import annotations

from urllib.parse import urlencode


def start_url(site_url: str, code: str, order_no: str, token: str) -> str:
    """The pay URL of an order of a gateway channel: the page that starts its payment."""
    return f"{site_url.rstrip('/')}/pay/{code}/start?{urlencode({'order_no': order_no, 'token': token})}"


def balance_url(site_url: str, code: str, order_no: str, token: str, kind: str = "balance") -> str:
    """The pay URL of an order of a balance channel (or a points channel, `kind` "points"): the
    page where a signed-in member or agent pays it from its balance (or with its points)."""
    return f"{site_url.rstrip('/')}/pay/{code}/{kind}?{urlencode({'order_no': order_no, 'token': token})}"

"""Input rules more than one feature checks: e-mail addresses, control characters.

A leaf (it imports nothing of kamengd), so orders, settings and the mail
code check an address the same way without importing each other.
"""
from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import urlsplit

EMAIL_RE = re.compile(r"^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
                      r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)+$")
MAX_EMAIL = 254


def is_email_address(text: str) -> bool:
    """One plain mailbox, as a buyer or staff member would type it (already stripped)."""
    return len(text) <= MAX_EMAIL and EMAIL_RE.match(text) is not None


def has_control_characters(text: str) -> bool:
    """Line breaks, tabs, DEL and the like: never in a one-line value."""
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


_PLAIN_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


def spreadsheet_cell(text: str) -> str:
    """A CSV cell no spreadsheet runs as a formula: text starting =, +, -, @, a tab or a
    carriage return is quoted with ' (a plain number such as -5.00 stays a number)."""
    if text[:1] in ("=", "+", "@", "\t", "\r") or (text[:1] == "-" and not _PLAIN_NUMBER.fullmatch(text)):
        return "'" + text
    return text


def private_target(url: str) -> str | None:
    """Why a URL must not be requested on an outsider's behalf (an agent's webhook): its host
    resolves to this machine, the shop's network, a link-local or cloud metadata address, or
    not at all. None: every address it resolves to is public. Asked when the URL is stored
    and again before each request (a name may resolve elsewhere later)."""

    try:
        host = urlsplit(url).hostname or ""
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError, ValueError):
        return "the host name does not resolve"
    for *_rest, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])
        mapped = getattr(address, "ipv4_mapped", None)
        if not (mapped or address).is_global:
            return f"the host resolves to a private or local address ({address})"
    return None

"""A self-hosted proof-of-work captcha (ALTCHA), asked for when a risk rule says so.

The `altcha` library makes the challenge: a salt (with its expiry) and the SHA-256 of the
salt and a secret number below MAX_NUMBER, signed with HMAC under a key derived from the
shop's secret key (every server of the shop signs and checks alike). The buyer's browser
finds the number (the vendored ALTCHA widget, a second or so on a phone) and sends it
back; an API client may solve it the same way. No third party is involved, nothing about
the buyer leaves the shop.

A solution is good for one attempt: its signature is kept (captcha_uses) until the
challenge would have expired, and a second use is refused. Signatures and hashes are
compared in constant time (here, not by the library).
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import re
import time

import altcha
import sqlalchemy as sa
from flask import current_app
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..database import utcnow
from .models import CaptchaUse

MAX_NUMBER = 150_000      # a browser tries ~half of them on average: well under a second or two
TTL = dt.timedelta(minutes=10)
MAX_PAYLOAD = 2000
FIELD = "captcha"         # the form field and the JSON field of a solution

_u = CaptchaUse.__table__


def _key() -> str:
    return hmac.new(current_app.secret_key if isinstance(current_app.secret_key, bytes)
                    else str(current_app.secret_key).encode(), b"kamengd/captcha/altcha", hashlib.sha256).hexdigest()


def challenge() -> dict:
    """A new challenge, as the ALTCHA widget and clients read it."""
    made = altcha.create_challenge_v1(hmac_key=_key(), max_number=MAX_NUMBER,
                                      expires=dt.datetime.now(dt.timezone.utc) + TTL)
    return made.to_dict()


def _check(payload: str) -> tuple[str, int] | None:
    """(the solution's signature, when it expires as epoch seconds) for a valid solution."""
    if not isinstance(payload, str) or not 0 < len(payload) <= MAX_PAYLOAD:
        return None
    try:
        data = json.loads(base64.b64decode(payload, validate=True).decode())
        algorithm, salt, number, given, signature = (data["algorithm"], data["salt"], data["number"],
                                                     data["challenge"], data["signature"])
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        return None
    if algorithm != "SHA-256" or not all(isinstance(v, str) and v.isascii() for v in (salt, given, signature)) \
            or not isinstance(number, int) or isinstance(number, bool) or not 0 <= number <= MAX_NUMBER:
        return None
    expires = altcha.extract_params_v1({"salt": salt}).get("expires", [""])
    # (ASCII digits only: str.isdigit() takes '²', which int() refuses)
    if len(expires) != 1 or not re.fullmatch(r"[0-9]{1,12}", expires[0]) or int(expires[0]) < time.time():
        return None
    spliced = salt if salt.endswith("&") else salt + "&"
    expected = altcha.hash_hex(algorithm, (spliced + str(number)).encode())
    expected_signature = altcha.hmac_hex(algorithm, expected.encode(), _key())
    if not (hmac.compare_digest(expected, given) and hmac.compare_digest(expected_signature, signature)):
        return None
    return signature, int(expires[0])


def solved(session: Session, payload) -> bool:
    """Is this a valid solution never used before? It is used up by asking (in a short
    transaction of its own: two attempts with one solution, one passes)."""
    checked = _check(payload)
    if checked is None:
        return False
    signature, expires = checked
    row = {"signature": signature[:128],
           "expires_at": dt.datetime.fromtimestamp(expires, dt.timezone.utc).replace(tzinfo=None)}
    bind = session.get_bind()
    try:
        if isinstance(bind, sa.engine.Engine):
            with bind.begin() as own:
                own.execute(_u.insert(), row)
        else:   # a caller's connection (tests)
            with bind.begin_nested():
                bind.execute(_u.insert(), row)
    except IntegrityError:
        return False
    return True


def prune(session: Session, now: dt.datetime | None = None) -> int:
    """Forget the solutions whose challenges have expired (a job)."""
    return session.execute(_u.delete().where(_u.c.expires_at < (now or utcnow()))).rowcount

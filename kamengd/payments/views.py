"""Payment gateway callbacks (CONTRACT.md §3); the buyer's return page is the storefront's order page."""
from __future__ import annotations

import functools
import ipaddress

from flask import Blueprint, current_app, g, request
from sqlalchemy.exc import SQLAlchemyError

from ..context import get_config, get_vault
from ..database import busy_reports, is_busy
from ..extensions import db, limiter
from .callbacks import handle_epay_notify, handle_gateway_notify, protocol_for
from .gateways.base import Inbound

bp = Blueprint("pay", __name__, url_prefix="/pay")


TEXT = {"Content-Type": "text/plain; charset=utf-8"}
# A genuine callback is a few hundred bytes; nothing larger is even parsed.
MAX_CALLBACK_BYTES = 8192
# A JSON webhook (Stripe's event, WeChat Pay's notice) carries the whole object: a few kB.
MAX_JSON_CALLBACK_BYTES = 65536


def _callbacks_limit() -> str:
    return get_config().ratelimit.callbacks


@functools.lru_cache(maxsize=8)
def _networks(configured: tuple[str, ...]) -> tuple:
    """Parsed once per process (the config checked them when it loaded)."""
    return tuple(ipaddress.ip_network(n, strict=False) for n in configured)


def _from_a_gateway() -> bool:
    """A caller in ratelimit.gateway_addresses: its retries are never limited."""
    networks = _networks(tuple(get_config().ratelimit.gateway_addresses))
    if not networks:
        return False
    try:
        address = ipaddress.ip_address(request.remote_addr or "")
    except ValueError:
        return False
    return any(address in network for network in networks)


def _bad_callbacks_limit() -> str:
    return get_config().ratelimit.bad_callbacks


def _was_forged(_response) -> bool:
    return g.get("forged_callback", False)


@bp.route("/<code>/notify", methods=["GET", "POST"])
@limiter.limit(_callbacks_limit, exempt_when=_from_a_gateway)
# Checked on every callback, counted only for refused ones: guessing a key costs
# an address its callbacks, a genuine gateway never hits it.
@limiter.limit(_bad_callbacks_limit, exempt_when=_from_a_gateway, deduct_when=_was_forged,
               scope="pay-notify-refused")
def notify(code: str):
    size = len(request.query_string) + (request.content_length or 0)
    if size > MAX_JSON_CALLBACK_BYTES:   # more than any protocol's, before the database is asked
        return _too_large(code, size)
    try:
        protocol = protocol_for(db.session, get_vault(), code)
    except SQLAlchemyError as exc:
        db.session.rollback()
        if not is_busy(exc):
            raise
        busy_reports.warning(current_app.logger, "payment callback on %r not recorded, the database is busy "
                             "(the gateway calls again): %s", code[:32], getattr(exc, "orig", exc))
        return "fail", 200, TEXT
    limit = MAX_JSON_CALLBACK_BYTES if protocol is not None and protocol.json_callbacks else MAX_CALLBACK_BYTES
    request.max_content_length = limit   # a chunked body too: 413 once it grows past it
    if size > limit:
        return _too_large(code, size)
    params = {**request.args.to_dict(), **request.form.to_dict()}
    if protocol is None:   # Epay, the sandbox, or no such channel
        outcome = _recorded(code, lambda: handle_epay_notify(db.session, get_vault(), code, params,
                                                             site_url=get_config().site.url),
                            str(params.get("out_trade_no", "")))
        return ("success" if outcome is not None and outcome.recorded else "fail"), 200, TEXT
    inbound = Inbound(params=params, body=request.get_data(), headers={k.lower(): v for k, v in request.headers.items()})
    outcome = _recorded(code, lambda: handle_gateway_notify(db.session, get_vault(), code, inbound), "")
    # A genuine notice that is no payment is acknowledged (else the gateway sends it for days).
    reply = protocol.reply(outcome is not None and (outcome.recorded or outcome.ignored))
    return reply.body, reply.status, {"Content-Type": reply.content_type}


def _too_large(code: str, size: int):
    current_app.logger.warning("payment callback on %r refused: %d bytes", code[:32], size)
    g.forged_callback = True   # no gateway sends this much
    return "fail: too large", 413, TEXT


def _recorded(code: str, handle, order_no: str):
    """The outcome of handling a callback, committed when recorded (only a stored payment is
    answered as one); None when the database stayed busy."""
    for _ in range(2):
        try:
            outcome = handle()
            if outcome.recorded:
                # Committed here, inside the retry: only a stored payment is "success".
                db.session.commit()
                return outcome
            g.forged_callback = outcome.forged
            break
        except SQLAlchemyError as exc:  # deadlock or lock wait timeout: try once more
            db.session.rollback()
            if not is_busy(exc):
                raise
            outcome = None
            last_error = getattr(exc, "orig", exc)
    db.session.rollback()
    if outcome is None:
        busy_reports.warning(current_app.logger, "payment callback on %r not recorded, the database is busy "
                             "(the gateway calls again): %s", code[:32], last_error)
    elif not outcome.ignored:
        current_app.logger.warning("payment callback on %r not recorded: %s (out_trade_no=%r)", code[:32],
                                   outcome.reason, order_no[:40])
    return outcome

"""Payment gateway callbacks (CONTRACT.md §3); the buyer's return page is the storefront's order page."""
from __future__ import annotations

import functools
import ipaddress

from flask import Blueprint, current_app, g, request
from sqlalchemy.exc import SQLAlchemyError

from ..context import get_config, get_vault
from ..database import busy_reports, is_busy
from ..extensions import db, limiter
from .callbacks import handle_epay_notify

bp = Blueprint("pay", __name__, url_prefix="/pay")


TEXT = {"Content-Type": "text/plain; charset=utf-8"}
# A genuine callback is a few hundred bytes; nothing larger is even parsed.
MAX_CALLBACK_BYTES = 8192


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
    request.max_content_length = MAX_CALLBACK_BYTES   # a chunked body too: 413 once it grows past it
    size = len(request.query_string) + (request.content_length or 0)
    if size > MAX_CALLBACK_BYTES:
        current_app.logger.warning("payment callback on %r refused: %d bytes", code[:32], size)
        g.forged_callback = True   # no gateway sends this much
        return "fail: too large", 413, TEXT
    params = {**request.args.to_dict(), **request.form.to_dict()}
    for _ in range(2):
        try:
            outcome = handle_epay_notify(db.session, get_vault(), code, params, site_url=get_config().site.url)
            if outcome.recorded:
                # Committed here, inside the retry: only a stored payment is "success".
                db.session.commit()
                return "success", 200, TEXT
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
    else:
        current_app.logger.warning("payment callback on %r not recorded: %s (out_trade_no=%r)", code[:32],
                                   outcome.reason, str(params.get("out_trade_no", ""))[:40])
    return "fail", 200, TEXT  # anything but "success": the gateway will call again

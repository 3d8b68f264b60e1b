"""The portal's blueprint: one guard for every route, the headers of every page.

An agent sees its own rows only: every page reads them by the signed-in agent's
id, never by an id from the address (another agent's order is "not found").
"""
from __future__ import annotations

import re

from flask import Blueprint, abort, flash, g, redirect, request, url_for
from flask_babel import gettext

from ..errors import KamengdError
from ..storefront.i18n import t
from ..transaction import read_only
from ..websession import AGENT_DOOR

bp = Blueprint("portal", __name__, url_prefix="/agent", template_folder="templates")
DOOR = AGENT_DOOR

BALANCE_PAGE = re.compile(r"/pay/[a-z0-9][a-z0-9_-]{0,31}/(?:balance|points)")
PRODUCT_PAGE = re.compile(r"/product/[0-9]{1,10}")   # (a member price: back to the product)
# Pages open before sign-in; every other route needs a signed-in, active agent.
PUBLIC = frozenset({"portal.login", "portal.login_2fa"})
# What a plain member (no level, nothing to sell) may open: its balance, orders, books, account.
MEMBER_PAGES = frozenset({"portal.dashboard", "portal.orders", "portal.order_detail", "portal.ledger",
                          "portal.logout", "portal.account", "portal.password", "portal.logout_everywhere",
                          "portal.totp_enrol", "portal.totp_qr", "portal.totp_disable", "portal.recovery_codes",
                          "portal.webhooks_page", "portal.webhook_add", "portal.webhook_remove"})
# GET pages that write (the first visit to 2FA set-up stores the new secret).
WRITING_GETS = frozenset({"portal.totp_enrol"})


@bp.before_request
def _guard():
    if request.endpoint is None or not request.endpoint.startswith("portal."):
        abort(404)
    if request.method == "GET" and request.endpoint not in WRITING_GETS:
        read_only()
    if request.endpoint in PUBLIC:
        return None
    agent = DOOR.current()
    if agent is None:
        if request.method == "GET":
            return redirect(url_for("portal.login", next=request.full_path.rstrip("?")))
        return redirect(url_for("portal.login"))
    if agent.is_member and request.endpoint not in MEMBER_PAGES:
        abort(404)   # an agent's page: a member has nothing there
    return None


@bp.after_request
def _private(response):
    # An agent's pages hold its keys, balances and payout accounts: never cached.
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.teardown_request
def _forget(_exc):
    g.pop(DOOR.key, None)


def current_agent():
    return DOOR.current()


def actor() -> str:
    agent = DOOR.current()
    return f"agent:{agent.username}" if agent else "anonymous"


def client_ip() -> str | None:
    return request.remote_addr


def safe_next(url: str | None) -> str | None:
    """Only a path inside the portal, the storefront's page that pays an order from a balance or
    with points (/pay/<code>/balance, /pay/<code>/points), or a product's page (its member
    price): never an open redirect."""
    if not url or url.startswith("//") or "\\" in url:
        return None
    if url.startswith("/agent") or BALANCE_PAGE.fullmatch(url.partition("?")[0]) or PRODUCT_PAGE.fullmatch(url):
        return url
    return None


def flash_errors(exc: KamengdError) -> None:
    """A service's error(s), one message per mistake, in the agent's language where the
    message catalogue has it."""
    for error in exc.errors:
        flash(error.localized(gettext), "error")


def locked_message(seconds: int) -> str:
    return t(f"登录失败次数过多，请 {seconds} 秒后再试。", f"Too many failed sign-ins. Try again in {seconds} seconds.")

"""An agent's (or a member's) webhooks in the portal: add one (its secret shown once), remove
one, and read the recent deliveries with every attempt. The rules are
kamengd.agents.webhooks'; these views only read the form and show the answer."""
from __future__ import annotations

from flask import abort, redirect, render_template, request, url_for

from ..agents import webhooks
from ..context import get_config, get_vault
from ..errors import KamengdError, NotFound
from ..extensions import db, limiter
from ..storefront.i18n import t
from .blueprint import actor, bp, client_ip, current_agent, flash_errors
from .pages import _act, _int_arg

DELIVERIES_SHOWN = 50


@bp.get("/webhooks")
def webhooks_page():
    agent = current_agent()
    chosen = _int_arg("webhook")
    try:
        rows = webhooks.deliveries(db.session, agent.id, chosen, limit=DELIVERIES_SHOWN)
    except NotFound:
        abort(404)
    hooks = webhooks.list_webhooks(db.session, agent.id)
    return render_template("portal/webhooks.html", hooks=hooks, rows=rows, chosen=chosen,
                           urls={h.id: h.url for h in hooks}, events=webhooks.AGENT_EVENTS,
                           events_of=webhooks.events_of, most=webhooks.MAX_WEBHOOKS)


@bp.post("/webhooks")
@limiter.limit("10/minute")
def webhook_add():
    url = request.form.get("url", "")[:webhooks.URL_MAX + 100]
    allow_private = get_config().notifications.agent_webhook_private
    try:
        db.session.commit()   # ends the sign-in check's transaction: no lock is held while DNS answers
        webhooks.check_target(url, allow_private)
        row, secret = webhooks.add_webhook(db.session, get_vault(), current_agent(), url=url,
                                           events=request.form.getlist("event")[:10], actor=actor(),
                                           source_ip=client_ip(), allow_private=allow_private,
                                           target_checked=True)
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        return redirect(url_for("portal.webhooks_page"), code=303)
    # Shown this once, on the answer to the POST: never in a page one can load again.
    return render_template("portal/webhook_added.html", hook=row, events=webhooks.events_of(row), secret=secret)


@bp.post("/webhooks/<int:webhook_id>/remove")
def webhook_remove(webhook_id: int):
    return _act(lambda: webhooks.remove_webhook(db.session, current_agent(), webhook_id, actor=actor(),
                                                source_ip=client_ip()),
                t("Webhook 已删除，不会再向它发送。", "Webhook removed: nothing more is sent to it."),
                "portal.webhooks_page")

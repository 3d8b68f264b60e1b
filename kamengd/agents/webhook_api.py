"""The agent API's webhooks (kamengd/docs/agent-api.md, "Webhooks"): the caller's own, thin views.

Reading needs the key's "read" scope; adding and removing, "account". A webhook's
secret is in the answer that made it, and never again.
"""
from __future__ import annotations

from flask import jsonify, request

from ..context import get_config, get_vault
from ..errors import InvalidRequest
from ..extensions import db
from . import webhooks
from .models import Agent
from .views import _actor, _json_body, _spent, bp, signed_caller


@bp.get("/webhooks")
def list_webhooks():
    caller = _spent(signed_caller(scope="read"))
    return jsonify({"webhooks": [webhooks.webhook_view(w) for w in webhooks.list_webhooks(db.session, caller.agent_id)]})


@bp.post("/webhooks")
def add_webhook():
    caller = signed_caller(scope="account")
    body = _json_body()
    allow_private = get_config().notifications.agent_webhook_private
    webhooks.check_target(body.get("url"), allow_private)   # DNS, before the write transaction
    _spent(caller)
    row, secret = webhooks.add_webhook(db.session, get_vault(), db.session.get(Agent, caller.agent_id),
                                       url=body.get("url"), events=body.get("events"), actor=_actor(caller),
                                       source_ip=request.remote_addr, allow_private=allow_private,
                                       target_checked=True)
    response = jsonify({**webhooks.webhook_view(row), "secret": secret})
    response.status_code = 201
    return response


@bp.delete("/webhooks/<int:webhook_id>")
def remove_webhook(webhook_id: int):
    caller = _spent(signed_caller(scope="account"))
    row = webhooks.remove_webhook(db.session, db.session.get(Agent, caller.agent_id), webhook_id,
                                  actor=_actor(caller), source_ip=request.remote_addr)
    return jsonify({"id": row.id, "removed": True})


@bp.get("/webhooks/<int:webhook_id>/deliveries")
def webhook_deliveries(webhook_id: int):
    caller = _spent(signed_caller(scope="read"))
    try:
        limit = int(request.args.get("limit", "50"))
    except ValueError:
        raise InvalidRequest("limit: a whole number") from None
    return jsonify({"deliveries": webhooks.deliveries(db.session, caller.agent_id, webhook_id, limit=limit)})

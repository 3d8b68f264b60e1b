"""The agent API (kamengd/docs/agent-api.md): signed JSON under /api/v1/agent, thin views."""
from __future__ import annotations

from flask import Blueprint, jsonify, request

from ..context import get_vault
from ..errors import InvalidRequest
from ..extensions import db
from ..ledger import services as ledger
from ..money import format_cents
from .auth import authenticate
from .checkout import agent_order_view, agent_products, find_agent_order, place_agent_order
from .models import Agent

bp = Blueprint("agent_api", __name__, url_prefix="/api/v1/agent")
MAX_BODY = 64 * 1024


def signed_agent() -> Agent:
    """The agent whose key signed this request (401 otherwise). The path and query are the
    ones sent; the body is read as sent, before any parsing."""
    if (request.content_length or 0) > MAX_BODY:
        raise InvalidRequest("the body is too large")
    body = request.get_data(cache=True)
    if len(body) > MAX_BODY:
        raise InvalidRequest("the body is too large")
    query = request.query_string.decode("latin-1")
    return authenticate(db.session, get_vault(), headers=request.headers, method=request.method,
                        path_with_query=request.path + (f"?{query}" if query else ""), body=body)


@bp.get("/products")
def products():
    agent = signed_agent()
    return jsonify({"products": agent_products(db.session, agent)})


@bp.get("/balance")
def balance():
    agent = signed_agent()
    money = ledger.balances(db.session, agent.id)
    return jsonify({"balance": format_cents(money["available"]), "pending": format_cents(money["pending"]),
                    "held": format_cents(money["held"]), "currency": ledger.DEFAULT_CURRENCY})


@bp.post("/orders")
def new_order():
    agent = signed_agent()
    try:
        body = request.get_json(silent=True)
    except RecursionError:
        body = None
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    order, placed = place_agent_order(db.session, agent, product_id=body.get("product_id"),
                                      quantity=body.get("quantity"),
                                      idempotency_key=request.headers.get("Idempotency-Key"))
    response = jsonify(agent_order_view(db.session, get_vault(), order))
    response.status_code = 201
    if not placed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@bp.get("/orders/<order_no>")
def get_order(order_no: str):
    agent = signed_agent()
    return jsonify(agent_order_view(db.session, get_vault(), find_agent_order(db.session, agent, order_no)))

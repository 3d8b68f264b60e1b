"""The agent API (kamengd/docs/agent-api.md): signed JSON under /api/v1/agent, thin views."""
from __future__ import annotations

from flask import Blueprint, jsonify, request

from ..context import get_vault
from ..errors import InvalidRequest
from ..extensions import db
from ..ledger import services as ledger
from ..money import format_cents
from .auth import Caller, spend_nonce, verify_request
from .checkout import agent_order, agent_products, place_agent_order

bp = Blueprint("agent_api", __name__, url_prefix="/api/v1/agent")
MAX_BODY = 64 * 1024


def signed_caller(*, end_read: bool = True) -> Caller:
    """The agent whose key signed this request (401 otherwise), checked outside the write
    lock (a snapshot the caller may go on reading in: `end_read=False`). The path and
    query are the ones sent; the body is read as sent, before parsing."""
    if (request.content_length or 0) > MAX_BODY:
        raise InvalidRequest("the body is too large")
    body = request.get_data(cache=True)
    if len(body) > MAX_BODY:
        raise InvalidRequest("the body is too large")
    query = request.query_string.decode("latin-1")
    db.session.connection(execution_options={"kamengd_readonly": True})
    caller = verify_request(db.session, get_vault(), headers=request.headers, method=request.method,
                            path_with_query=request.path + (f"?{query}" if query else ""), body=body)
    if end_read:
        db.session.rollback()
    return caller


def _spent(caller: Caller) -> Caller:
    spend_nonce(db.session, caller)
    return caller


@bp.get("/products")
def products():
    caller = _spent(signed_caller())
    return jsonify({"products": agent_products(db.session, caller)})


@bp.get("/balance")
def balance():
    caller = _spent(signed_caller())
    money = ledger.balances(db.session, caller.agent_id)
    return jsonify({"balance": format_cents(money["available"]), "pending": format_cents(money["pending"]),
                    "held": format_cents(money["held"]), "currency": ledger.DEFAULT_CURRENCY})


@bp.post("/orders")
def new_order():
    caller = signed_caller(end_read=False)   # the order reads on, then spends the nonce as it writes
    try:
        body = request.get_json(silent=True)
    except RecursionError:
        body = None
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    order, placed = place_agent_order(db.session, get_vault(), caller, product_id=body.get("product_id"),
                                      quantity=body.get("quantity"),
                                      idempotency_key=request.headers.get("Idempotency-Key"))
    response = jsonify(order)
    response.status_code = 201
    if not placed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@bp.get("/orders/<order_no>")
def get_order(order_no: str):
    caller = _spent(signed_caller())
    return jsonify(agent_order(db.session, get_vault(), caller, order_no))

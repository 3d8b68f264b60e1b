"""The agent API (kamengd/docs/agent-api.md): signed JSON under /api/v1/agent, thin views."""
from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, Response, g, jsonify, request

from ..context import get_config, get_vault
from ..errors import InvalidRequest
from ..extensions import db, limiter
from ..ledger import services as ledger
from ..money import format_cents
from ..orders.models import Order
from .auth import Caller, spend_nonce, verify_request
from . import services as agents
from . import batches
from . import statements
from . import withdrawals
from .checkout import agent_order, agent_products, find_orders, place_agent_order
from .models import Agent, Commission

bp = Blueprint("agent_api", __name__, url_prefix="/api/v1/agent")
MAX_BODY = 128 * 1024   # a batch of 500 lines with references fits


def _key_of_request() -> str:
    return "agent-key:" + request.headers.get("X-Kamengd-Key", "")[:32]


# Per key, counted only for requests that proved the key (a stranger sending an agent's key
# id uses up nothing of its allowance); per address, counted only for refused signatures.
limiter.limit(lambda: get_config().ratelimit.agent_api, key_func=_key_of_request, scope="agent-api",
              deduct_when=lambda _response: g.get("agent_key_verified", False))(bp)
limiter.limit(lambda: get_config().ratelimit.bad_agent_requests, scope="agent-api-refused",
              deduct_when=lambda response: response.status_code == 401)(bp)


def signed_caller(*, scope: str, end_read: bool = True) -> Caller:
    """The agent whose key signed this request (401 otherwise) and may do `scope` (403
    otherwise), checked outside the write lock (a snapshot the caller may go on reading in:
    `end_read=False`). The path and query are the ones sent; the body is read as sent,
    before parsing."""
    if (request.content_length or 0) > MAX_BODY:
        raise InvalidRequest("the body is too large")
    body = request.get_data(cache=True)
    if len(body) > MAX_BODY:
        raise InvalidRequest("the body is too large")
    query = request.query_string.decode("latin-1")
    db.session.connection(execution_options={"kamengd_readonly": True})
    caller = verify_request(db.session, get_vault(), headers=request.headers, method=request.method,
                            path_with_query=request.path + (f"?{query}" if query else ""), body=body)
    g.agent_key_verified = True
    if end_read:
        db.session.rollback()
    return caller.require(scope)


def _spent(caller: Caller) -> Caller:
    spend_nonce(db.session, caller)
    return caller


@bp.get("/products")
def products():
    caller = _spent(signed_caller(scope="read"))
    return jsonify({"products": agent_products(db.session, caller)})


@bp.get("/balance")
def balance():
    caller = _spent(signed_caller(scope="read"))
    money = ledger.balances(db.session, caller.agent_id)
    return jsonify({"balance": format_cents(money["available"]), "pending": format_cents(money["pending"]),
                    "held": format_cents(money["held"]), "debt": format_cents(-money["debt"]),
                    "currency": ledger.DEFAULT_CURRENCY})


def _json_body() -> dict:
    try:
        body = request.get_json(silent=True)
    except RecursionError:
        body = None
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    return body


def _actor(caller: Caller) -> str:
    return f"agent:{caller.username}"


@bp.get("/payout-accounts")
def list_payout_accounts():
    caller = _spent(signed_caller(scope="read"))
    return jsonify({"accounts": [{"id": a.id, "kind": a.kind, "account": a.account, "holder": a.holder,
                                  "bank": a.bank} for a in withdrawals.payout_accounts(db.session, caller.agent_id)]})


@bp.post("/payout-accounts")
def add_payout_account():
    caller = _spent(signed_caller(scope="account"))
    body = _json_body()
    row = withdrawals.add_payout_account(db.session, db.session.get(Agent, caller.agent_id), kind=body.get("kind"),
                                         account=body.get("account"), holder=body.get("holder"),
                                         bank=body.get("bank", ""), actor=_actor(caller),
                                         source_ip=request.remote_addr)
    response = jsonify({"id": row.id, "kind": row.kind, "account": row.account, "holder": row.holder,
                        "bank": row.bank})
    response.status_code = 201
    return response


@bp.get("/withdrawals")
def list_withdrawals():
    caller = _spent(signed_caller(scope="read"))
    rows = withdrawals.list_withdrawals(db.session, agent_id=caller.agent_id, limit=100)
    return jsonify({"withdrawals": [withdrawals.withdrawal_view(r) for r in rows]})


@bp.post("/withdrawals")
def request_withdrawal():
    caller = _spent(signed_caller(scope="account"))
    body = _json_body()
    row = withdrawals.request_withdrawal(db.session, db.session.get(Agent, caller.agent_id),
                                         payout_account_id=body.get("payout_account_id"), amount=body.get("amount"),
                                         actor=_actor(caller), source_ip=request.remote_addr,
                                         idempotency_key=request.headers.get("Idempotency-Key"))
    response = jsonify(withdrawals.withdrawal_view(row))
    response.status_code = 201
    if getattr(row, "replayed", False):
        response.headers["Idempotent-Replayed"] = "true"
    return response


@bp.get("/prices")
def list_prices():
    caller = _spent(signed_caller(scope="read"))
    return jsonify({"prices": agents.selling_prices(db.session, db.session.get(Agent, caller.agent_id))})


@bp.post("/prices")
def set_price():
    caller = _spent(signed_caller(scope="account"))
    body = _json_body()
    price = body.get("price")
    if price is not None and not isinstance(price, str):
        raise InvalidRequest("price: a string such as \"12.00\", or null for the shop's price")
    agents.set_selling_price(db.session, db.session.get(Agent, caller.agent_id), product_id=body.get("product_id"),
                             price=price, actor=_actor(caller), source_ip=request.remote_addr)
    mine = [p for p in agents.selling_prices(db.session, db.session.get(Agent, caller.agent_id))
            if p["product_id"] == body.get("product_id")]
    return jsonify(mine[0])


@bp.get("/ledger")
def ledger_statement():
    caller = _spent(signed_caller(scope="read"))
    try:
        limit = int(request.args.get("limit", "500"))
    except ValueError:
        raise InvalidRequest("limit: a whole number") from None
    rows = statements.statement(db.session, caller.agent_id, account=request.args.get("account"),
                                since=request.args.get("from"), until=request.args.get("to"), limit=limit)
    if request.args.get("format") == "csv":
        return Response(statements.as_csv(rows), mimetype="text/csv", headers={
            "Content-Disposition": f'attachment; filename="ledger-{caller.username}.csv"',
            "Cache-Control": "no-store"})
    return jsonify({"entries": rows})


@bp.get("/commissions")
def list_commissions():
    caller = _spent(signed_caller(scope="read"))
    rows = db.session.execute(sa.select(Commission, Order.order_no).join(Order, Order.id == Commission.order_id)
                              .where(Commission.agent_id == caller.agent_id)
                              .order_by(Commission.id.desc()).limit(100)).all()
    return jsonify({"commissions": [commission_view(c, order_no) for c, order_no in rows]})


def commission_view(row: Commission, order_no: str) -> dict:
    return {"id": row.id, "order_no": order_no, "amount": format_cents(row.amount_cents), "currency": row.currency,
            "status": row.status, "booked_at": row.booked_at.isoformat(timespec="seconds") + "Z",
            "release_at": row.release_at.isoformat(timespec="seconds") + "Z",
            "debt": format_cents(row.debt_cents)}


@bp.post("/orders")
def new_order():
    caller = signed_caller(scope="order", end_read=False)   # the order reads on, then spends the nonce as it writes
    body = _json_body()
    order, placed = place_agent_order(db.session, get_vault(), caller, product_id=body.get("product_id"),
                                      quantity=body.get("quantity"), backorder=body.get("backorder"),
                                      ref=body.get("ref"), idempotency_key=request.headers.get("Idempotency-Key"))
    response = jsonify(order)
    response.status_code = 201
    if not placed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@bp.get("/orders")
def list_orders():
    caller = _spent(signed_caller(scope="read"))
    try:
        limit = int(request.args.get("limit", "50"))
    except ValueError:
        raise InvalidRequest("limit: a whole number") from None
    return jsonify({"orders": find_orders(db.session, get_vault(), caller.agent_id, limit=limit,
                                          idempotency_key=request.args.get("idempotency_key"),
                                          ref=request.args.get("ref"))})


@bp.get("/orders/<order_no>")
def get_order(order_no: str):
    caller = _spent(signed_caller(scope="read"))
    return jsonify(agent_order(db.session, get_vault(), caller, order_no))


@bp.post("/orders/batch")
def new_batch():
    caller = signed_caller(scope="order")
    body = _json_body()
    if set(body) - {"lines", "backorder"}:
        raise InvalidRequest("the body holds lines and an optional backorder, nothing else")
    lines = batches.parse_lines(body.get("lines"))
    batch_id, new = batches.start_batch(db.session, caller, idempotency_key=request.headers.get("Idempotency-Key"),
                                        lines=lines, backorder=body.get("backorder"))
    batches.run_batch(db.session, get_vault(), caller, batch_id, backorder=body.get("backorder"))
    response = jsonify(batches.batch_view(db.session, get_vault(), caller.agent_id, batch_id))
    response.status_code = 201
    if not new:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@bp.get("/batches/<int:batch_id>")
def get_batch(batch_id: int):
    caller = _spent(signed_caller(scope="read"))
    return jsonify(batches.batch_view(db.session, get_vault(), caller.agent_id, batch_id))

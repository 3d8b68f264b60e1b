"""The OpenAPI 3.1 description of the buyer API and the agent API, served at
GET /api/v1/openapi.json (kamengd.api).

Plain dicts, built once per process. Each operation is one function below,
registered with `@operation(METHOD, PATH)`: a new route gets a new function
(tests/test_openapi.py fails on a route the document lacks, on a documented
one that is gone, and on an answer the document does not allow). Answers are
described field by field (`additionalProperties: false`): a field added to an
answer is added here too, as in kamengd/docs/.

Error answers share one shape (CONTRACT.md §2); each status names the codes
it can carry, taken from kamengd.errors so the two cannot drift apart.
"""
from __future__ import annotations

import functools
import hashlib
import json
from typing import Callable

from . import errors
from .agents.batches import MAX_LINES
from .agents.services import SCOPES
from .agents.signing import WINDOW_SECONDS
from .agents.webhooks import AGENT_EVENTS, URL_MAX
from .agents.withdrawals import PAYOUT_KINDS, STATUSES as WITHDRAWAL_STATUSES
from .catalog.inputs import KINDS as INPUT_KINDS
from .ledger.models import AGENT_KINDS
from .orders.models import ORDER_STATUSES
from .validation import EMAIL_RE, MAX_EMAIL
from .version import __version__

OPENAPI_PATH = "/api/v1/openapi.json"
MAX_ID = 2**31 - 1

# --- schemas -----------------------------------------------------------------------------------


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(required: dict, optional: dict | None = None, *, closed: bool = True, **extra) -> dict:
    """An object with these required and optional properties; `closed`: nothing else."""
    schema = {"type": "object", "required": list(required), "properties": {**required, **(optional or {})},
              **extra}
    if closed:
        schema["additionalProperties"] = False
    return schema


def one_of(values) -> dict:
    return {"type": "string", "enum": list(values)}


STRING, BOOLEAN = {"type": "string"}, {"type": "boolean"}
DELIVERY = {**one_of(("auto", "manual", "loop", "supplier")),
            "description": "auto: keys from stock; manual: staff deliver; loop: every buyer gets the same key "
                           "(any `stock` above 0 sells without end); supplier: bought from another shop."}
ID = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
COUNT = {"type": "integer", "minimum": 0}
NULLABLE_STRING = {"type": ["string", "null"]}
# Python's and ECMA-262's regular expressions agree on these; anchored, as JSON Schema's are not.
PRINTABLE_1_64 = "^[\\x21-\\x7e]{1,64}$"
REF = {"type": "string", "pattern": "^[\\x20-\\x7e]{0,64}$", "description": "The agent's own reference (its "
                                                                         "order number): printable, at most 64."}

SCHEMAS: dict[str, dict] = {
    "Money": {"type": "string", "pattern": "^-?[0-9]+\\.[0-9]{2}$", "examples": ["9.90"],
              "description": "A decimal string with two places, never a number."},
    "Time": {"type": "string", "format": "date-time", "pattern": "Z$", "examples": ["2026-12-05T08:30:00Z"],
             "description": "ISO-8601 in UTC, with a Z."},
    "Currency": {"type": "string", "examples": ["CNY"]},
    "OrderStatus": one_of(ORDER_STATUSES),
    "Error": obj({"error": obj({"code": {"type": "string"}, "message": {
        "type": "string", "description": "English, for a person; programs test `code`."}},
        {"challenge": obj({"algorithm": STRING, "challenge": STRING, "maxNumber": COUNT, "salt": STRING,
                           "signature": STRING},
                          description="With `captcha_required`: the ALTCHA proof-of-work challenge to solve.")})},
        description="Every error answer (CONTRACT.md §2)."),
    # The buyer API
    "InputField": obj({"key": STRING, "label": STRING, "kind": one_of(INPUT_KINDS), "required": BOOLEAN}),
    "Product": obj({"id": ID, "name": STRING, "price": ref("Money"), "currency": ref("Currency"), "stock": COUNT,
                    "delivery": DELIVERY, "min_quantity": ID, "max_quantity": ID},
                   {"input_fields": {"type": "array", "items": ref("InputField")},
                    "tiers": {"type": "array", "description": "Wholesale prices: from `min_quantity` units, each "
                                                              "at `price` (the lowest price that applies is paid).",
                              "items": obj({"min_quantity": ID, "price": ref("Money")})},
                    "list_price": {**ref("Money"), "description": "The usual price while a sale's `price` is on."},
                    "sale_ends_at": ref("Time"),
                    "member_price": {**ref("Money"), "description": "The member price (会员价): a buyer signed in "
                                                                      "to the storefront as a member pays it."},
                    "category_id": ID,
                    "category": {"type": "string", "description": "The category's path, the top one first "
                                                                  "(游戏 › 点卡)."},
                    "variant_of": {**ID, "description": "A variant (SKU, 规格): the product it is an option of. "
                                                         "Order it by its own `id`."},
                    "variant": {"type": "string", "description": "The option's name buyers choose it by "
                                                                 "(3 个月)."}}),
    "PaymentMethod": obj({"channel": STRING, "pay_type": NULLABLE_STRING, "name": STRING, "channel_name": STRING,
                          "method": {"type": "string", "description": "What the buyer pays by (alipay, wxpay, "
                                                                      "card …): `pay_type` alone routes to one."}}),
    "NewOrder": obj({"product_id": ID, "quantity": ID,
                     "email": {"type": "string", "format": "email", "maxLength": MAX_EMAIL,
                               "pattern": EMAIL_RE.pattern}},
                    {"channel": {"type": "string", "minLength": 1, "maxLength": 32,
                                 "description": "A channel's code. Left out, `pay_type` names the method and the "
                                                "shop picks the channel (priority, weight, limits, health)."},
                     "query_password": {"type": "string", "minLength": 4, "maxLength": 128},
                     "coupon": {"type": "string", "maxLength": 32,
                                "description": "A coupon code (any case); the empty string is no coupon. One that "
                                               "does not apply is refused (400) and nothing is written."},
                     "pay_type": {"type": "string", "pattern": "^[a-z0-9_]{1,16}$"},
                     "input": {"type": "object", "additionalProperties": {"type": "string"},
                               "description": "The product's `input_fields`, by key."},
                     "captcha": {"type": "string", "maxLength": 2000,
                                 "description": "A captcha's solution, when the order was answered "
                                                "`captcha_required`."}},
                    closed=False, description="Fields not named here are ignored."),
    "PlacedOrder": obj({"order_no": STRING, "token": STRING, "status": {"const": "pending"},
                        "amount": ref("Money"), "currency": ref("Currency"), "pay_url": STRING,
                        "expires_at": ref("Time"), "quantity": ID, "product_id": ID},
                       {"pay_type": STRING, "coupon": STRING, "discount": ref("Money"), "points_used": ID,
                        "points_discount": ref("Money")}),
    "Order": obj({"order_no": STRING, "status": ref("OrderStatus"), "amount": ref("Money"),
                  "currency": ref("Currency"), "quantity": ID, "product_id": ID, "created_at": ref("Time"),
                  "expires_at": ref("Time")},
                 {"pay_type": STRING, "discount": ref("Money"), "points_used": ID, "points_discount": ref("Money"),
                  "keys": {"type": "array", "items": STRING,
                                               "description": "Only when `status` is `delivered`."}}),
    "Health": obj({"status": one_of(("ok", "error")), "database": STRING, "version": STRING},
                  {"schema": NULLABLE_STRING, "scheduler": obj({
                      "leader": NULLABLE_STRING, "heartbeat_at": {"type": ["string", "null"]},
                      "heartbeat_age_seconds": {"type": ["number", "null"]}})}),
    # The agent API
    "AgentProduct": obj({"id": ID, "name": STRING, "price": ref("Money"), "shop_price": ref("Money"),
                         "currency": ref("Currency"), "stock": COUNT, "delivery": DELIVERY,
                         "min_quantity": ID, "max_quantity": ID},
                        {"variant_of": ID, "variant": STRING},
                        description="`price`: the caller's own price; a variant (SKU) names its main product "
                                    "(`variant_of`) and its option (`variant`)."),
    "Balance": obj({"balance": ref("Money"), "pending": ref("Money"), "held": ref("Money"), "debt": ref("Money"),
                    "currency": ref("Currency")}),
    "NewAgentOrder": obj({"product_id": ID, "quantity": ID},
                         {"backorder": {"type": "boolean", "description": "Too few keys: placed all the same, "
                                                                          "paid and waiting (`paid`)."},
                          "ref": REF}, closed=False, description="Fields not named here are ignored."),
    "AgentOrder": obj({"order_no": STRING, "status": ref("OrderStatus"), "amount": ref("Money"),
                       "currency": ref("Currency"), "quantity": ID, "product_id": ID, "created_at": ref("Time")},
                      {"ref": STRING, "keys": {"type": "array", "items": STRING,
                                               "description": "Only when `status` is `delivered`."}}),
    "NewBatch": obj({"lines": {"type": "array", "minItems": 1, "maxItems": MAX_LINES, "items": obj(
        {"product_id": ID, "quantity": ID}, {"ref": REF})}},
        {"backorder": {"type": "boolean", "description": "For every line, as for one order."}}),
    "Batch": obj({"batch_id": ID, "source": STRING, "created_at": ref("Time"), "finished": BOOLEAN,
                  "lines": {"type": "array", "items": ref("BatchLine")}, "placed": COUNT, "failed": COUNT}),
    "BatchLine": obj({"line": ID, "product_id": ID, "quantity": ID, "ref": STRING,
                      "result": one_of(("ok", "error", "pending"))},
                     {"order": ref("AgentOrder"), "error": obj({"code": STRING, "message": STRING})},
                     description="`order` when `result` is `ok`; `error` (as an error answer's) when `error`."),
    "Events": {"type": "array", "items": one_of(("*", *AGENT_EVENTS)),
               "description": "`[\"*\"]`: every event, those added later too."},
    "NewWebhook": obj({"url": {"type": "string", "maxLength": URL_MAX, "pattern": "^https?://[\\x21-\\x7e]+$"}},
                      {"events": {"anyOf": [{"const": "*"}, {**ref("Events"), "minItems": 1}],
                                  "description": "The events to send (default `*`: all)."}}, closed=False),
    "Webhook": obj({"id": ID, "url": STRING, "events": ref("Events"), "created_at": ref("Time")},
                   {"secret": {"type": "string", "description": "In the answer that made it, never again."}}),
    "RemovedWebhook": obj({"id": ID, "removed": {"const": True}}),
    "Delivery": obj({"id": ID, "webhook_id": ID, "event": STRING, "event_id": ID, "order_no": NULLABLE_STRING,
                     "status": one_of(("pending", "sent", "failed")),
                     "created_at": ref("Time"), "sent_at": NULLABLE_STRING, "next_attempt_at": NULLABLE_STRING,
                     "last_error": NULLABLE_STRING, "attempts": {"type": "array", "items": obj({
                         "attempt": ID, "at": NULLABLE_STRING, "outcome": STRING,
                         "status_code": {"type": ["integer", "null"]}, "error": NULLABLE_STRING,
                         "duration_ms": {"type": ["integer", "null"]}})}}),
    "PayoutAccount": obj({"id": ID, "kind": one_of(PAYOUT_KINDS), "account": STRING, "holder": STRING,
                          "bank": STRING}),
    "NewPayoutAccount": obj({"kind": one_of(PAYOUT_KINDS),
                             "account": {"type": "string", "minLength": 1, "maxLength": 128},
                             "holder": {"type": "string", "minLength": 1, "maxLength": 64}},
                            {"bank": {"type": "string", "maxLength": 64,
                                      "description": "Required for `bank`."}}, closed=False),
    "Withdrawal": obj({"id": ID, "amount": ref("Money"), "fee": ref("Money"), "payout": ref("Money"),
                       "currency": ref("Currency"),
                       "status": one_of(WITHDRAWAL_STATUSES),
                       "requested_at": ref("Time"), "reviewed_at": {"type": ["string", "null"]},
                       "reference": NULLABLE_STRING, "reason": NULLABLE_STRING, "payout_account_id": ID}),
    "NewWithdrawal": obj({"payout_account_id": ID,
                          "amount": {"type": "string", "pattern": "^[0-9]{1,11}(\\.[0-9]{1,2})?$",
                                     "description": "Written plainly: 12, 12.3, 12.34."}}, closed=False),
    "Price": obj({"product_id": ID, "name": STRING, "shop_price": ref("Money"), "cost": ref("Money"),
                  "price": ref("Money"), "own": BOOLEAN, "margin": ref("Money")}),
    "NewPrice": obj({"product_id": ID, "price": {
        "type": ["string", "null"], "pattern": "^[0-9]{1,11}(\\.[0-9]{1,2})?$",
        "description": "At least the caller's cost; null: the shop's price again."}}, closed=False),
    "LedgerEntry": obj({"time": ref("Time"), "account": one_of(AGENT_KINDS),
                        "amount": ref("Money"), "balance_after": {"anyOf": [ref("Money"), {"type": "null"}]},
                        "kind": STRING, "cause": STRING, "memo": NULLABLE_STRING}),
    "Commission": obj({"id": ID, "order_no": STRING, "amount": ref("Money"), "currency": ref("Currency"),
                       "status": one_of(("pending", "available", "reversed")),
                       "booked_at": ref("Time"), "release_at": ref("Time"), "debt": ref("Money")}),
}


def list_of(key: str, item: str) -> dict:
    return obj({key: {"type": "array", "items": ref(item)}})


# --- answers -----------------------------------------------------------------------------------

# The error answers by name: (status, the codes it can carry, when). The codes come from the
# errors that give them (kamengd.errors; werkzeug's statuses through kamengd.http_errors).
ERRORS: dict[str, tuple[int, tuple[str, ...], str]] = {
    "InvalidRequest": (400, (errors.InvalidRequest.code,),
                       "A missing or bad field, a body that is not a JSON object or is too large."),
    "Unauthorized": (401, (errors.Unauthorized.code,),
                     "No valid signature: a missing header, a timestamp more than "
                     f"{WINDOW_SECONDS} s away, a nonce used before, an unknown or revoked key, a wrong "
                     "signature. Nothing changed."),
    "InsufficientBalance": (402, (errors.InsufficientBalance.code,),
                            "The balance does not cover it; nothing was reserved, held or charged."),
    "Forbidden": (403, (errors.Forbidden.code,),
                  f"The key was issued without the scope this needs (one of {', '.join(SCOPES)}); nothing "
                  "changed."),
    "Refused": (403, (errors.Forbidden.code,), "The shop's risk rules refuse this order; nothing changed."),
    "InvalidOrCaptcha": (400, (errors.InvalidRequest.code, errors.CaptchaRequired.code),
                         "`invalid_request`: a missing or bad field; `captcha_required`: the shop's risk rules ask "
                         "for a captcha first (`error.challenge`), send the request again with its solution. "
                         "Nothing changed."),
    "CaptchaRequired": (400, (errors.CaptchaRequired.code,),
                        "Too many lookups found nothing from this address: solve `error.challenge` and send the "
                        "lookup again with `captcha`."),
    "NotFound": (404, (errors.NotFound.code,),
                 "No such thing, or one the caller may not see: the two are never told apart."),
    "OutOfStock": (409, (errors.OutOfStock.code,), "Not enough keys for the quantity; nothing was reserved."),
    "Conflict": (409, (errors.Conflict.code,), "The request clashes with the state of a thing."),
    "OutOfStockOrConflict": (409, (errors.OutOfStock.code, errors.Conflict.code),
                             "`out_of_stock`: not enough keys, nothing reserved or charged; `conflict`: this "
                             "Idempotency-Key was used for another request."),
    "TooLarge": (413, (errors.InvalidRequest.code,), "The body is far too large."),
    "RateLimited": (429, ("rate_limited",), "Too many requests; try again after `Retry-After` seconds."),
    "Busy": (503, (errors.Busy.code,), "The database was busy for a moment; nothing was changed, try again "
                                       "after `Retry-After` seconds."),
}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again.",
                               "schema": {"type": "integer", "minimum": 0}}}


def _error_response(status: int, codes: tuple[str, ...], when: str) -> dict:
    schema = {"allOf": [ref("Error"), {"properties": {"error": {"properties": {"code": {"enum": list(codes)}}}}}]}
    response = {"description": when, "content": {"application/json": {"schema": schema}}}
    if status in (429, 503):
        response["headers"] = RETRY_AFTER
    return response


def json_answer(description: str, schema: dict, headers: dict | None = None) -> dict:
    answer = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        answer["headers"] = headers
    return answer


def answers(ok: dict[str, dict], *failures: str) -> dict:
    """An operation's `responses`: its successes and the named error answers, by status."""
    found = dict(ok)
    for name in failures:
        found[str(ERRORS[name][0])] = {"$ref": f"#/components/responses/{name}"}
    return dict(sorted(found.items()))


def query(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def path_id(name: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": ID}


def json_body(schema_name: str, description: str = "") -> dict:
    return {"required": True, "description": description or "A JSON object.",
            "content": {"application/json": {"schema": ref(schema_name)}}}


# --- parameters and security -------------------------------------------------------------------

PARAMETERS = {
    "IdempotencyKey": {"name": "Idempotency-Key", "in": "header", "required": True,
                       "description": "1-64 printable characters. The same key again returns the first answer "
                                      "and changes nothing more; with another body: 409 `conflict`.",
                       "schema": {"type": "string", "pattern": PRINTABLE_1_64}},
    "OrderNo": {"name": "order_no", "in": "path", "required": True, "schema": {"type": "string"}},
}
SIGNATURE_HEADERS = {
    "KamengdKey": ("X-Kamengd-Key", "The key id (`kamengd agent apikey`)."),
    "KamengdTimestamp": ("X-Kamengd-Timestamp", f"Unix seconds, within {WINDOW_SECONDS} s of the server's clock."),
    "KamengdNonce": ("X-Kamengd-Nonce", "16-64 printable characters, never used again within the window."),
    "KamengdSignature": ("X-Kamengd-Signature",
                         "Lower-case hex HMAC-SHA256, keyed with the secret, of METHOD \\n PATH_WITH_QUERY \\n "
                         "TIMESTAMP \\n NONCE \\n hex(SHA-256(body)) (the body as sent; none: the empty string's)."),
}
SIGNED = [{name: [] for name in SIGNATURE_HEADERS}]   # all four headers, on every agent request
REPLAYED = {"Idempotent-Replayed": {"description": "`true` when this is the answer of an earlier request with "
                                                   "the same Idempotency-Key.",
                                    "schema": {"type": "string", "const": "true"}}}

# --- operations: one function each -------------------------------------------------------------

OPERATIONS: dict[tuple[str, str], Callable[[], dict]] = {}


def operation(method: str, path: str):
    """Registers the function building one operation's description (its name: the operationId)."""
    def register(build: Callable[[], dict]) -> Callable[[], dict]:
        OPERATIONS[(method.upper(), path)] = build
        return build
    return register


# The buyer API (kamengd/docs/buyer-api.md): no authentication.

@operation("GET", "/api/v1/products")
def list_products() -> dict:
    return {"tags": ["buyer"], "summary": "The products for sale, in the shop's order",
            "responses": answers({"200": json_answer("The products.", list_of("products", "Product"))}, "Busy")}


@operation("GET", "/api/v1/payment-methods")
def list_payment_methods() -> dict:
    return {"tags": ["buyer"], "summary": "How buyers can pay: each pay type of each enabled channel",
            "parameters": [query("lang", one_of(("zh", "en")), "`en`: English names; anything else: Chinese."),
                           query("product_id", ID, "Only the channels that take this product's orders."),
                           query("quantity", ID, "With `product_id`: only those that take an order of this "
                                                 "many (amount limits, daily cap).")],
            "responses": answers({"200": json_answer("The methods.", list_of("methods", "PaymentMethod"))},
                                 "InvalidRequest", "NotFound", "Busy")}


@operation("POST", "/api/v1/orders")
def place_order() -> dict:
    return {"tags": ["buyer"], "summary": "Place an order and reserve its keys until `expires_at`",
            "requestBody": json_body("NewOrder"),
            "responses": answers({"201": json_answer("Placed; pay at `pay_url`.", ref("PlacedOrder"))},
                                 "InvalidOrCaptcha", "Refused", "NotFound", "OutOfStock", "TooLarge", "RateLimited",
                                 "Busy")}


@operation("GET", "/api/v1/orders/{order_no}")
def get_order() -> dict:
    return {"tags": ["buyer"], "summary": "An order, with its keys once delivered",
            "parameters": [{"$ref": "#/components/parameters/OrderNo"}, query("token", STRING, "The order's `token`."),
                           query("query_password", STRING, "Instead of the token, for an order placed with one."),
                           query("captcha", STRING, "A captcha's solution, when a lookup was answered "
                                                    "`captcha_required`.")],
            "responses": answers({"200": json_answer("The order.", ref("Order"))},
                                 "CaptchaRequired", "NotFound", "RateLimited", "Busy")}


@operation("GET", OPENAPI_PATH)
def get_openapi() -> dict:
    return {"tags": ["buyer"], "summary": "This document",
            "responses": {"200": json_answer("The OpenAPI description of the buyer and agent APIs.",
                                             {"type": "object", "required": ["openapi", "paths"]},
                                             {"ETag": {"schema": STRING}, "Cache-Control": {"schema": STRING}}),
                          "304": {"description": "Not modified (`If-None-Match`)."}}}


@operation("GET", "/healthz")
def health() -> dict:
    return {"tags": ["health"], "summary": "Whether the shop's database answers (load balancers, monitoring)",
            "responses": {"200": json_answer("The database answers.", ref("Health")),
                          "503": json_answer("The database does not answer.", ref("Health"))}}


# The agent API (kamengd/docs/agent-api.md): every request signed (SIGNED).

def signed(summary: str, ok: dict, *failures: str, **more) -> dict:
    """An agent API operation: signed; refused 401 unsigned, 403 to a key without the scope,
    400 with a body too large, 429 over the key's (or the address's) limit, 503 when busy."""
    return {"tags": ["agent"], "summary": summary, "security": SIGNED, **more,
            "responses": answers(ok, "InvalidRequest", "Unauthorized", "Forbidden", *failures, "RateLimited",
                                 "Busy")}


@operation("GET", "/api/v1/agent/products")
def agent_products() -> dict:
    return signed("The products at the caller's own price",
                  {"200": json_answer("The products.", list_of("products", "AgentProduct"))})


@operation("GET", "/api/v1/agent/balance")
def agent_balance() -> dict:
    return signed("The caller's balances", {"200": json_answer("The balances.", ref("Balance"))})


@operation("POST", "/api/v1/agent/orders")
def agent_place_order() -> dict:
    return signed("Buy, paid from the balance in the same transaction as the reservation",
                  {"201": json_answer("Placed (or, with `Idempotent-Replayed`, placed before); `delivered` with "
                                      "its keys, or `paid` for goods delivered by hand.", ref("AgentOrder"),
                                      REPLAYED)},
                  "InsufficientBalance", "NotFound", "OutOfStockOrConflict", "TooLarge",
                  parameters=[{"$ref": "#/components/parameters/IdempotencyKey"}],
                  requestBody=json_body("NewAgentOrder"))


@operation("GET", "/api/v1/agent/orders")
def agent_list_orders() -> dict:
    return signed("The caller's orders, newest first: all, the one an Idempotency-Key placed, or those with a "
                  "reference", {"200": json_answer("The orders.", list_of("orders", "AgentOrder"))},
                  parameters=[query("limit", {"type": "integer", "minimum": 1, "maximum": 100, "default": 50},
                                    "At most this many (1-100)."),
                              query("idempotency_key", STRING, "The order placed with this Idempotency-Key (a "
                                                               "client that lost the answer finds what it bought)."),
                              query("ref", STRING, "The orders with this reference.")])


@operation("GET", "/api/v1/agent/orders/{order_no}")
def agent_get_order() -> dict:
    return signed("One of the caller's orders (another's: 404)",
                  {"200": json_answer("The order.", ref("AgentOrder"))}, "NotFound",
                  parameters=[{"$ref": "#/components/parameters/OrderNo"}])


@operation("GET", "/api/v1/agent/commissions")
def agent_commissions() -> dict:
    return signed("The newest 100 commissions the caller earned",
                  {"200": json_answer("The commissions.", list_of("commissions", "Commission"))})


@operation("GET", "/api/v1/agent/ledger")
def agent_ledger() -> dict:
    day = {"type": "string", "format": "date"}
    return signed("The caller's ledger entries, newest first",
                  {"200": {"description": "The entries (`format=csv`: a CSV file with a header row).",
                           "content": {"application/json": {"schema": list_of("entries", "LedgerEntry")},
                                       "text/csv": {"schema": STRING}}}},
                  parameters=[query("account", one_of(AGENT_KINDS), "One account."),
                              query("from", day, "The first day (UTC), inclusive."),
                              query("to", day, "The last day (UTC), inclusive."),
                              query("limit", {"type": "integer", "minimum": 1, "maximum": 10000, "default": 500},
                                    "At most this many (up to 10000)."),
                              query("format", one_of(("json", "csv")), "`csv`: a CSV file.")])


@operation("GET", "/api/v1/agent/prices")
def agent_prices() -> dict:
    return signed("The caller's cost and its sub-station's price for each product",
                  {"200": json_answer("The prices.", list_of("prices", "Price"))})


@operation("POST", "/api/v1/agent/prices")
def agent_set_price() -> dict:
    return signed("Set (or, with null, clear) the sub-station's price of one product",
                  {"200": json_answer("The product's row.", ref("Price"))}, "NotFound", "TooLarge",
                  requestBody=json_body("NewPrice"))


@operation("GET", "/api/v1/agent/payout-accounts")
def agent_payout_accounts() -> dict:
    return signed("The caller's payout accounts",
                  {"200": json_answer("The accounts.", list_of("accounts", "PayoutAccount"))})


@operation("POST", "/api/v1/agent/payout-accounts")
def agent_add_payout_account() -> dict:
    return signed("Register a payout account (at most five; a sixth: 409)",
                  {"201": json_answer("The account.", ref("PayoutAccount"))}, "Conflict", "TooLarge",
                  requestBody=json_body("NewPayoutAccount", "Every mistake at once, as one 400."))


@operation("GET", "/api/v1/agent/withdrawals")
def agent_withdrawals() -> dict:
    return signed("The caller's newest 100 withdrawals",
                  {"200": json_answer("The withdrawals.", list_of("withdrawals", "Withdrawal"))})


@operation("POST", "/api/v1/agent/withdrawals")
def agent_request_withdrawal() -> dict:
    optional_key = {**PARAMETERS["IdempotencyKey"], "required": False}
    return signed("Request a withdrawal: the amount is held at once",
                  {"201": json_answer("Requested (or, with `Idempotent-Replayed`, requested before).",
                                      ref("Withdrawal"), REPLAYED)},
                  "InsufficientBalance", "NotFound", "Conflict", "TooLarge",
                  parameters=[optional_key], requestBody=json_body("NewWithdrawal"))


@operation("POST", "/api/v1/agent/orders/batch")
def agent_place_batch() -> dict:
    return signed(f"Up to {MAX_LINES} orders at once, each line placed (or refused) on its own",
                  {"201": json_answer("Each line with its order or its error (or, with `Idempotent-Replayed`, "
                                      "the batch sent before, its lines not done yet placed now).", ref("Batch"),
                                      REPLAYED)},
                  "Conflict", "TooLarge", parameters=[{"$ref": "#/components/parameters/IdempotencyKey"}],
                  requestBody=json_body("NewBatch", "A line that cannot be read refuses the whole batch (400)."))


@operation("GET", "/api/v1/agent/batches/{batch_id}")
def agent_get_batch() -> dict:
    return signed("One of the caller's batches (another's: 404)", {"200": json_answer("The batch.", ref("Batch"))},
                  "NotFound", parameters=[path_id("batch_id")])


@operation("GET", "/api/v1/agent/webhooks")
def agent_webhooks() -> dict:
    return signed("The caller's webhooks", {"200": json_answer("The webhooks.", list_of("webhooks", "Webhook"))})


@operation("POST", "/api/v1/agent/webhooks")
def agent_add_webhook() -> dict:
    return signed("Add a webhook (at most five; another: 409)",
                  {"201": json_answer("The webhook, with its signing secret, shown this once.", ref("Webhook"))},
                  "Conflict", "TooLarge", requestBody=json_body("NewWebhook", "Every mistake at once, as one 400."))


@operation("DELETE", "/api/v1/agent/webhooks/{webhook_id}")
def agent_remove_webhook() -> dict:
    return signed("Remove a webhook: nothing more is sent to it", {
        "200": json_answer("Removed.", ref("RemovedWebhook"))}, "NotFound", parameters=[path_id("webhook_id")])


@operation("GET", "/api/v1/agent/webhooks/{webhook_id}/deliveries")
def agent_webhook_deliveries() -> dict:
    return signed("The newest deliveries to one of the caller's webhooks, each with every attempt",
                  {"200": json_answer("The deliveries.", list_of("deliveries", "Delivery"))}, "NotFound",
                  parameters=[path_id("webhook_id"), query(
                      "limit", {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}, "At most 200.")])


# --- the document ------------------------------------------------------------------------------


def document() -> dict:
    """The whole description, as a new dict (callers may change it)."""
    paths: dict[str, dict] = {}
    for (method, path), build in OPERATIONS.items():
        paths.setdefault(path, {})[method.lower()] = {"operationId": build.__name__, **build()}
    return {
        "openapi": "3.1.0",
        "info": {"title": "kamengd", "version": __version__,
                 "description": "The buyer API (kamengd/docs/buyer-api.md) and the signed agent API "
                                "(kamengd/docs/agent-api.md). JSON in and out; money is a decimal string with "
                                "two places; later versions add endpoints and fields, never rename or remove "
                                "the stable ones."},
        "servers": [{"url": "/", "description": "the shop that served this document"}],
        "tags": [{"name": "buyer", "description": "No account needed."},
                 {"name": "agent", "description": "Signed with an agent's API key."},
                 {"name": "health", "description": "For load balancers and monitoring."}],
        "paths": paths,
        "components": {
            "schemas": json.loads(json.dumps(SCHEMAS)),   # a copy: the module's own stay as they are
            "responses": {name: _error_response(*spec) for name, spec in ERRORS.items()},
            "parameters": json.loads(json.dumps(PARAMETERS)),
            "securitySchemes": {name: {"type": "apiKey", "in": "header", "name": header, "description": text}
                                for name, (header, text) in SIGNATURE_HEADERS.items()},
        },
    }


@functools.cache
def served() -> tuple[bytes, str]:
    """(the document as JSON, its ETag): the same for every request of this version."""
    body = json.dumps(document(), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return body, hashlib.sha256(body).hexdigest()[:32]

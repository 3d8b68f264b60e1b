"""GET /api/v1/openapi.json describes the API that is served, and the server keeps to it.

The document names every route under /api/v1 with each of its methods and
nothing that is gone; it is valid OpenAPI 3.1. Then, against a real `kamengd
serve` process on each backend, each documented operation gets requests
generated from its own description (hypothesis + hypothesis-jsonschema): valid
ones, ones made with the shop's real products, orders and accounts, broken
ones (wrong types, bodies that are not JSON objects) and, for the agent API,
unsigned or wrongly signed ones; agent requests are signed as an agent's
script signs them. Every answer's status must be one the operation documents
(never a 500) and its JSON body must match the documented schema for that
status (JSON Schema 2020-12).
"""
from __future__ import annotations

import http.client
import io
import json
import re
import secrets
import string
import time
from urllib.parse import quote, urlencode, urlsplit

import jsonschema
import pytest
import referencing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from openapi_spec_validator import validate as validate_spec
from referencing.jsonschema import DRAFT202012

from conftest import PASSWORD, Servers
from kamengd import openapi
from kamengd.agents import signing

DOC_URI = "urn:kamengd:openapi"
EXAMPLES = 20           # per operation and backend: bounded, the whole file well under a minute
PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7f))


def flask_to_openapi(rule: str) -> str:
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule)


def served_operations(app) -> set[tuple[str, str]]:
    return {(method, flask_to_openapi(rule.rule)) for rule in app.url_map.iter_rules()
            if rule.rule.startswith("/api/v1/") for method in rule.methods - {"HEAD", "OPTIONS"}}


def documented(doc: dict) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item}


def test_every_api_route_is_documented_and_nothing_more(app):
    doc = openapi.document()
    served, described = served_operations(app), documented(doc)
    assert served - described == set(), "routes under /api/v1 that kamengd/openapi.py does not describe"
    assert {op for op in described if op[1].startswith("/api/v1/")} - served == set(), \
        "kamengd/openapi.py describes routes that are not served"
    assert described - served <= {("GET", "/healthz")}


def test_the_document_is_valid_openapi_3_1():
    doc = openapi.document()
    validate_spec(doc)
    assert doc["openapi"].startswith("3.1")
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
    signed = [op for path, item in doc["paths"].items() for op in item.values() if path.startswith("/api/v1/agent")]
    assert signed and all(op["security"] == openapi.SIGNED and "401" in op["responses"] for op in signed)


# --- the real server --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def world(backend, databases, tmp_path_factory):
    """A shop of its own, served by a real `kamengd serve` (waitress): products (in stock, sold out,
    delivered by hand, asking the buyer something), an Epay channel, agents with keys (one rich, one
    with nothing, one whose key may only read), a payout account, orders to look up."""
    from kamengd.config import load_config
    from kamengd.operations.installation import install

    data_dir = tmp_path_factory.mktemp(f"openapi-{backend}") / "data"
    url = None if backend == "sqlite" else databases.new_url(backend)
    config_path = install(data_dir, admin_password=PASSWORD, database_url=url).config_path
    made = _stock_the_shop(load_config(config_path, env={}))
    servers = Servers()
    try:
        # As deployed, the scheduler in the process. The webhooks the run registers go to a
        # closed port on this machine (the shop allows such addresses here): nothing leaves it.
        made["base"] = servers(config_path, env={"KAMENGD_NOTIFICATIONS_AGENT_WEBHOOK_PRIVATE": "1"})
        made["host"] = urlsplit(made["base"]).netloc
        _place_orders(made)
        yield made
    finally:
        logs = servers.stop_all()
    tracebacks = [log for log in logs.values() if "Traceback" in log]
    assert not tracebacks, tracebacks[0][-3000:]


def _stock_the_shop(config) -> dict:
    from kamengd.agents import services as agents
    from kamengd.agents.models import Agent
    from kamengd.agents.webhooks import add_webhook
    from kamengd.agents.withdrawals import add_payout_account
    from kamengd.app import create_app
    from kamengd.catalog.models import Product
    from kamengd.catalog.services import create_product
    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.inventory.services import import_keys
    from kamengd.payments.services import add_channel

    app = create_app(config)
    with app.app_context():
        def product(name, keys, **kwargs):
            p = create_product(db.session, name=name, price_cents=990, actor="t", max_quantity=5, **kwargs)
            if keys:
                import_keys(db.session, get_vault(), product_id=p.id, actor="t",
                            fh=io.BytesIO("\n".join(f"OA-{secrets.token_hex(8)}" for _ in range(keys)).encode()))
            return p
        stocked, sold_out = product("月卡 in stock", 400), product("sold out", 0)
        manual = product("代充 by hand", 0, delivery_mode="manual")
        asking = product("asks a QQ", 50, input_fields="QQ | qq | required")
        add_channel(db.session, get_vault(), channel_type="epay", code="epay", actor="t",
                    options={"gateway": "https://pay.example.com", "pid": "1001", "key": "openapi-merchant-key-0123",
                             "pay_types": "alipay,wxpay"})
        level, _ = agents.set_level(db.session, name="silver", discount="10", actor="t")
        made = {"products": [stocked.id, sold_out.id, manual.id, asking.id], "channel": "epay", "agents": {}}
        for name, cents, scopes in (("rich", 10_000_000, None), ("poor", 0, None), ("reader", 1000, "read")):
            agent = agents.create_agent(db.session, username=name, level=level.name, actor="t",
                                        parent="rich" if name == "poor" else None)
            key_id, secret = agents.issue_api_key(db.session, get_vault(), agent, actor="t", scopes=scopes)
            if cents:
                agents.credit_balance(db.session, agent, cents, reason="t", actor="t")
            made["agents"][name] = {"key_id": key_id, "secret": secret, "id": agent.id}
        account = add_payout_account(db.session, db.session.get(Agent, made["agents"]["rich"]["id"]), kind="alipay",
                                     account="13800138000", holder="张三", actor="t")
        made["payout_account"] = account.id
        hook, _secret = add_webhook(db.session, get_vault(), db.session.get(Agent, made["agents"]["rich"]["id"]),
                                    url="http://127.0.0.1:9/hook", events="*", actor="t",
                                    allow_private=True)   # the shop's own setting is off: set up directly
        made["webhooks"] = [hook.id]
        db.session.commit()
        assert db.session.get(Product, stocked.id) is not None
        db.session.remove()
        db.engine.dispose()
    return made


def _place_orders(world: dict) -> None:
    """Orders the lookups can find: a buyer's (token, and one with a query password), agents' own."""
    world["buyer_orders"] = []
    for extra in ({}, {"query_password": "look-me-up"}):
        status, body, _ = call(world, "POST", "/api/v1/orders", body=json.dumps(
            {"product_id": world["products"][0], "quantity": 1, "email": "b@example.com", "channel": "epay",
             **extra}).encode())
        assert status == 201, body
        world["buyer_orders"].append((json.loads(body)["order_no"], json.loads(body)["token"],
                                      extra.get("query_password")))
    world["agent_orders"] = []
    for product_id in (world["products"][0], world["products"][2]):   # delivered, and paid (by hand)
        status, body, _ = call(world, "POST", "/api/v1/agent/orders", agent=world["agents"]["rich"],
                            body=json.dumps({"product_id": product_id, "quantity": 1}).encode(),
                            headers={"Idempotency-Key": f"setup-{product_id}"})
        assert status == 201, body
        world["agent_orders"].append(json.loads(body)["order_no"])
    status, body, _ = call(world, "POST", "/api/v1/agent/orders/batch", agent=world["agents"]["rich"],
                           body=json.dumps({"lines": [{"product_id": world["products"][0], "quantity": 1},
                                                      {"product_id": world["products"][1], "quantity": 1}]}).encode(),
                           headers={"Idempotency-Key": "setup-batch"})
    assert status == 201, body
    world["batches"] = [json.loads(body)["batch_id"]]


def call(world, method, path, *, query="", body=b"", headers=None, agent=None, sign=True):
    """One request over HTTP; agent requests signed as agent-api.md says (the path as the server
    reads it, percent-decoded; the query as sent). (status, body bytes, headers)."""
    headers = dict(headers or {})
    target = quote(path, safe="/") + (f"?{query}" if query else "")
    if body or method == "POST":
        headers.setdefault("Content-Type", "application/json")
    if agent is not None:
        timestamp, nonce = str(int(time.time())), secrets.token_hex(16)
        signature = signing.sign(agent["secret"], method, path + (f"?{query}" if query else ""), timestamp, nonce,
                                 body)
        headers.update({"X-Kamengd-Key": agent["key_id"], "X-Kamengd-Timestamp": timestamp,
                        "X-Kamengd-Nonce": nonce,
                        "X-Kamengd-Signature": signature if sign else signature[::-1]})
    conn = http.client.HTTPConnection(world["host"], timeout=60)
    try:
        conn.request(method, target, body=body or None, headers=headers)
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    return response.status, data, response.headers


# --- what the document allows ---------------------------------------------------------------------------------

def _registry(doc):
    return referencing.Registry().with_resource(DOC_URI, DRAFT202012.create_resource(doc))


def _pointer(*parts: str) -> str:
    return "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def response_spec(doc, method, path, status):
    """(the documented answer for this status, or None; its JSON pointer in the document)."""
    responses = doc["paths"][path][method.lower()]["responses"]
    answer = responses.get(str(status)) or responses.get(f"{str(status)[0]}XX") or responses.get("default")
    if answer is None:
        return None, None
    if "$ref" in answer:
        name = answer["$ref"].rsplit("/", 1)[1]
        return doc["components"]["responses"][name], ("components", "responses", name)
    return answer, ("paths", path, method.lower(), "responses", str(status))


def check_answer(doc, registry, method, path, status, data, content_type, sent):
    assert status != 500, (method, path, sent, data[:500])
    answer, where = response_spec(doc, method, path, status)
    assert answer is not None, f"{method} {path} answered {status}, not documented: {data[:300]!r} to {sent!r}"
    if "content" not in answer:
        assert not data, (method, path, status)
        return
    media = (content_type or "").split(";")[0].strip()
    assert media in answer["content"], (method, path, status, content_type)
    if media != "application/json":
        return
    pointer = _pointer(*where, "content", media, "schema")
    validator = jsonschema.Draft202012Validator({"$ref": DOC_URI + pointer}, registry=registry,
                                                format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    errors = list(validator.iter_errors(json.loads(data)))
    assert not errors, f"{method} {path} {status}: {errors[0].message} at {list(errors[0].path)} in {data[:400]!r}"


def inline(schema, doc):
    """The schema with its #/components/... references replaced (hypothesis-jsonschema resolves
    references within the schema it is given only), without the words for people, and without
    `format` where a `pattern` says it all (generating one and filtering by the other is slow)."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            target = doc
            for part in schema["$ref"][2:].split("/"):
                target = target[part]
            schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
            return inline(schema, doc)
        dropped = {"examples", "description"} | ({"format"} if "pattern" in schema else set())
        return {k: inline(v, doc) for k, v in schema.items() if k not in dropped}
    if isinstance(schema, list):
        return [inline(v, doc) for v in schema]
    return schema


# --- requests from the document --------------------------------------------------------------------------------

JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                           | st.text(max_size=20), lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
HEADER_TEXT = st.text(alphabet=" " + PRINTABLE, max_size=80)
LONE = "LONE-SURROGATE"   # in a JSON text, replaced by \ud800: JSON's grammar allows it, Unicode does not


def _known(world, method, path) -> dict:
    """Requests made of what the shop really has: {"body": strategy} for a whole body,
    {parameter name: strategy} for parameters."""
    products = st.sampled_from(world["products"][:3])        # in stock, sold out, delivered by hand
    asking = world["products"][3]                              # asks a QQ number
    buyer = {"email": st.just("buyer@example.com"), "channel": st.just(world["channel"])}
    return {
        ("POST", "/api/v1/orders"): {"body": st.one_of(
            st.fixed_dictionaries({"product_id": products, "quantity": st.integers(1, 3), **buyer},
                                  optional={"pay_type": st.sampled_from(["alipay", "wxpay", "usdt"]),
                                            "query_password": st.text(min_size=4, max_size=12)}),
            st.fixed_dictionaries({"product_id": st.just(asking), "quantity": st.just(1), **buyer,
                                   "input": st.fixed_dictionaries({"f1": st.sampled_from(["12345678", "0x"])})}))},
        ("POST", "/api/v1/agent/orders"): {"body": st.fixed_dictionaries(
            {"product_id": products, "quantity": st.integers(1, 3)}),
            "Idempotency-Key": st.text(alphabet=string.ascii_letters, min_size=1, max_size=3)},
        ("GET", "/api/v1/agent/orders/{order_no}"): {"order_no": st.sampled_from(world["agent_orders"])},
        ("GET", "/api/v1/agent/orders"): {"idempotency_key": st.sampled_from(["setup-1", "a", "b"]),
                                          "ref": st.sampled_from(["my-1001", ""]), "limit": st.integers(1, 100)},
        ("POST", "/api/v1/agent/orders/batch"): {"body": st.fixed_dictionaries(
            {"lines": st.lists(st.fixed_dictionaries({"product_id": products, "quantity": st.integers(1, 2)},
                                                     optional={"ref": st.sampled_from(["", "my-1001"])}),
                               min_size=1, max_size=4)}, optional={"backorder": st.booleans()}),
            "Idempotency-Key": st.text(alphabet=string.ascii_letters, min_size=1, max_size=2)},
        ("GET", "/api/v1/agent/batches/{batch_id}"): {"batch_id": st.sampled_from(world["batches"])},
        ("POST", "/api/v1/agent/webhooks"): {"body": st.fixed_dictionaries(
            {"url": st.just("http://127.0.0.1:9/hook")},
            optional={"events": st.sampled_from(["*", ["order.paid"], ["order.delivered", "balance.changed"]])})},
        ("DELETE", "/api/v1/agent/webhooks/{webhook_id}"): {"webhook_id": st.sampled_from(world["webhooks"])},
        ("GET", "/api/v1/agent/webhooks/{webhook_id}/deliveries"): {
            "webhook_id": st.sampled_from(world["webhooks"])},
        ("POST", "/api/v1/agent/prices"): {"body": st.fixed_dictionaries(
            {"product_id": products, "price": st.sampled_from([None, "1", "9.90", "20.00", "1000000"])})},
        ("POST", "/api/v1/agent/withdrawals"): {"body": st.fixed_dictionaries(
            {"payout_account_id": st.just(world["payout_account"]),
             "amount": st.sampled_from(["10", "12.34"])})},
        ("POST", "/api/v1/agent/payout-accounts"): {"body": st.fixed_dictionaries(
            {"kind": st.just("alipay"), "account": st.sampled_from(["13800138000", "a@example.com"]),
             "holder": st.just("张三")})},
    }.get((method, path), {})


class Target:
    """An operation of the served document, with the shop it is tried on (and a short repr:
    Hypothesis prints its strategies' arguments)."""

    def __init__(self, world: dict, doc: dict, method: str, path: str):
        self.world, self.doc, self.method, self.path = world, doc, method, path

    def __repr__(self) -> str:
        return f"Target({self.method} {self.path})"


@st.composite
def requests_for(draw, target: Target):
    """(path, query, body bytes, headers, agent or None, sign): one request for the operation."""
    world, doc, method, path = target.world, target.doc, target.method, target.path
    spec = doc["paths"][path][method.lower()]
    params = [inline(p, doc) for p in spec.get("parameters", [])]
    known = _known(world, method, path)
    kind = draw(st.sampled_from(["schema", "known", "known", "broken"] + (["unsigned"] if "security" in spec else [])))

    def value(name, schema, required):
        if kind == "known" and name in known:
            return draw(known[name])
        if kind == "broken" and draw(st.booleans()):
            return draw(HEADER_TEXT)
        if not required and not draw(st.booleans()):
            return None
        return draw(from_schema(schema))

    filled = {"path": {}, "query": {}, "header": {}}
    for p in params:
        got = value(p["name"], p["schema"], p.get("required", False))
        if p["in"] == "path":   # one segment: a "/" would ask for another path (werkzeug redirects "//")
            got = str(got).replace("/", "") or "x"
        if got is not None:
            filled[p["in"]][p["name"]] = str(got).lower() if isinstance(got, bool) else got
    if path == "/api/v1/orders/{order_no}" and kind == "known":   # an order, with what opens it or not
        order_no, token, password = draw(st.sampled_from(world["buyer_orders"]))
        filled["path"]["order_no"] = order_no
        filled["query"] = draw(st.sampled_from([{"token": token}, {"query_password": password or "wrong-one"},
                                                {"token": token[:-1] + "x"}]))
    real_path = path
    for name, got in filled["path"].items():
        real_path = real_path.replace("{" + name + "}", str(got))
    # http.client refuses what a header cannot carry; such a header is left out (its absence is tried too)
    headers = {k: str(v) for k, v in filled["header"].items() if all(" " <= c <= "~" for c in str(v))}

    body = b""
    if "requestBody" in spec:
        schema = inline(spec["requestBody"]["content"]["application/json"]["schema"], doc)
        valid = from_schema(schema)
        if kind == "broken":
            body = draw(st.one_of(
                JSON_VALUES.filter(lambda v: not isinstance(v, dict)).map(lambda v: json.dumps(v).encode()),
                st.binary(max_size=40),
                valid.flatmap(lambda v: _one_field(v, schema, JSON_VALUES)).map(lambda v: json.dumps(v).encode()),
                valid.flatmap(lambda v: _one_field(v, schema, st.just(LONE))).map(
                    lambda v: json.dumps(v).replace(LONE, "\\ud800").encode())))
        elif kind == "known" and "body" in known:
            body = json.dumps(draw(known["body"])).encode()
        else:
            body = json.dumps(draw(valid)).encode()
    agent = None
    if "security" in spec:   # what the shop has is tried with the key that may do everything
        agent = world["agents"]["rich" if kind == "known" else draw(st.sampled_from(["rich", "poor", "reader"]))]
    return real_path, urlencode(filled["query"]), body, headers, agent, kind != "unsigned"


def _one_field(valid: dict, schema: dict, values):
    """The valid body with one of its documented fields given a value from `values`."""
    names = sorted(schema.get("properties", {}))
    if not names:
        return st.just(valid)
    return st.tuples(st.sampled_from(names), values).map(lambda pair: {**valid, pair[0]: pair[1]})


def operations():
    return sorted(documented(openapi.document()))


@pytest.mark.slow
@pytest.mark.parametrize("method, path", operations(), ids=[f"{m} {p}" for m, p in operations()])
def test_answers_are_the_documented_ones(world, method, path):
    status, data, _ = call(world, "GET", openapi.OPENAPI_PATH)
    assert status == 200
    doc = json.loads(data)
    assert doc == openapi.document(), "the server's package is not this checkout's: reinstall it (scripts/test)"
    registry = _registry(doc)
    seen = set()

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(request=requests_for(Target(world, doc, method, path)))
    def sends(request):
        real_path, query, body, headers, agent, sign = request
        status, data, answered = call(world, method, real_path, query=query, body=body, headers=headers,
                                      agent=agent, sign=sign)
        seen.add(status)
        check_answer(doc, registry, method, path, status, data, answered.get("Content-Type"),
                     (real_path, query, body[:200], headers))

    sends()
    assert any(200 <= status < 300 for status in seen), f"no request succeeded: {sorted(seen)}"


def test_the_document_is_served_cacheable(world):
    status, data, headers = call(world, "GET", openapi.OPENAPI_PATH)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert "public" in headers["Cache-Control"] and headers["ETag"]
    status, data, _ = call(world, "GET", openapi.OPENAPI_PATH, headers={"If-None-Match": headers["ETag"]})
    assert status == 304 and data == b""

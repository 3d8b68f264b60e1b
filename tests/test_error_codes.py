"""One mapping from errors to the JSON codes of CONTRACT.md (§2 buyer API, §4 agent API).

An app of its own whose /api/ views raise each kind of error: the answer's
status and code come from the error, and a 409 is `out_of_stock` only when
stock ran out.
"""
import dataclasses

import pytest
from flask import abort

from kamengd.errors import Busy, Conflict, InvalidRequest, NotFound, OutOfStock

CASES = {
    "invalid": (lambda: InvalidRequest("bad"), 400, "invalid_request"),
    "missing": (lambda: NotFound("gone"), 404, "not_found"),
    "stock": (lambda: OutOfStock("none left"), 409, "out_of_stock"),
    "conflict": (lambda: Conflict("exists"), 409, "conflict"),
    "busy": (lambda: Busy("try again"), 503, "busy"),
}
HTTP = {"h409": (409, "conflict"), "h401": (401, "unauthorized"), "h404": (404, "not_found"),
        "h405": (405, "invalid_request"), "h429": (429, "rate_limited")}


@pytest.fixture
def client(installed):
    from kamengd.app import create_app

    app = create_app(dataclasses.replace(installed, ratelimit=dataclasses.replace(installed.ratelimit,
                                                                                  enabled=False)))

    @app.get("/api/t/domain/<name>")
    def domain(name):
        raise CASES[name][0]()

    @app.get("/api/t/http/<name>")
    def http(name):
        abort(HTTP[name][0])
    return app.test_client()


@pytest.mark.parametrize("name", sorted(CASES))
def test_domain_errors_answer_their_own_code(client, name):
    _, status, code = CASES[name]
    answer = client.get(f"/api/t/domain/{name}")
    assert answer.status_code == status
    assert answer.get_json()["error"]["code"] == code


@pytest.mark.parametrize("name", sorted(HTTP))
def test_http_errors_answer_the_contract_codes(client, name):
    status, code = HTTP[name]
    answer = client.get(f"/api/t/http/{name}")
    assert answer.status_code == status
    assert answer.get_json()["error"]["code"] == code

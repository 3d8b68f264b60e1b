"""Hostile values in every field of the buyer API: a JSON error of CONTRACT.md §2, never a 500.

Each field of POST /api/v1/orders gets each value below (as a string and,
where JSON allows, as a number), the others staying valid; the order lookup
gets them in its path and its query; raw bodies that are not JSON at all
(invalid UTF-8, NUL, deep nesting, a megabyte) come last. A refused order
leaves no order behind.
"""
from __future__ import annotations

import json
import secrets

import pytest
import sqlalchemy as sa

from conftest import epay_shop

HOSTILE = ["<script>alert(1)</script>", "\"'`;--", "a\r\nSet-Cookie: x=1", "a\x00b", "x" * 1_000_000,
           "\u202eexe.txt", "1e309", "-0", "٩", "１２", "NaN", "-1", "9" * 40, "", " ", "null",
           "../../etc/passwd", "%00", "${jndi:ldap://x}", "{{7*7}}"]
NUMBERS = ["1e309", "-0", "1e-400", "-1e309", "99999999999999999999999999999999"]   # raw JSON numbers
CODES = {"invalid_request", "not_found", "out_of_stock", "rate_limited"}
FIELDS = ("product_id", "quantity", "email", "channel", "query_password", "coupon")


@pytest.fixture
def shop(app):
    return epay_shop(app, name="hostile", price_cents=100, keys=[f"H-{secrets.token_hex(8)}" for _ in range(5)],
                     pid="7007", key="hostile-merchant-key-0123456789", prefix="hst")


def orders_count(app):
    from kamengd.extensions import db
    from kamengd.orders.models import Order

    with app.app_context():
        n = db.session.scalar(sa.select(sa.func.count()).select_from(Order))
        db.session.remove()
    return n


def assert_contract_error(answer, what):
    assert 400 <= answer.status_code < 500, (what, answer.status_code, answer.data[:200])
    body = answer.get_json(silent=True)
    assert body is not None and body["error"]["code"] in CODES, (what, answer.data[:200])


def test_every_order_field_refuses_hostile_values(app, client, shop):
    valid = {"product_id": shop["id"], "quantity": 1, "email": "h@example.com", "channel": shop["channel"]}
    before = orders_count(app)
    tried = 0
    for field in FIELDS:
        for value in HOSTILE:
            answer = client.post("/api/v1/orders", json={**valid, field: value})
            tried += 1
            if answer.status_code == 201:   # a value that is fine for this field (e.g. an odd query password)
                assert field in ("query_password",), (field, value[:40])
                continue
            assert_contract_error(answer, (field, value[:40]))
        for number in NUMBERS:
            raw = json.dumps({**valid, field: 0})[:-1].replace(f'"{field}": 0', f'"{field}": {number}') + "}"
            answer = client.post("/api/v1/orders", data=raw, content_type="application/json")
            tried += 1
            assert_contract_error(answer, (field, number))
    assert tried == len(FIELDS) * (len(HOSTILE) + len(NUMBERS))
    created = orders_count(app) - before
    assert created <= len(HOSTILE), created   # only the odd-but-valid query passwords made orders


@pytest.mark.parametrize("value", HOSTILE)
def test_the_order_lookup_refuses_hostile_values(client, value):
    from urllib.parse import quote

    for url in (f"/api/v1/orders/{quote(value[:2000], safe='')}?token=x",
                f"/api/v1/orders/2026{'0' * 20}?token={quote(value[:2000], safe='')}",
                f"/api/v1/orders/2026{'0' * 20}?query_password={quote(value[:2000], safe='')}"):
        answer = client.get(url)
        assert_contract_error(answer, url[:80])


@pytest.mark.parametrize("body", [b"\xff\xfe\xfd", b'{"email": "\xff"}', b"\x00", b"[" * 100_000, b"{",
                                  b'"just a string"', b"[]", b"null", b'{"a": ' + b'"x' * 500_000 + b'"}',
                                  b'{"product_id": 1, "product_id": "twice"}'])
def test_bodies_that_are_not_an_order_are_refused(client, body):
    answer = client.post("/api/v1/orders", data=body, content_type="application/json")
    assert_contract_error(answer, body[:20])

"""The public interface's documentation (kamengd/docs/) says what the code does.

The CLI reference is written from the commands (scripts/docs) and must be
current; the stable commands it promises must exist with their options;
every buyer API route and every field of its answers must be described; the
Epay page's worked signature must be the one kamengd computes; the agent page
must say whether the agent API is served, and its commands must exist.
"""
import hashlib
import re
import secrets
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import click
import pytest

from conftest import epay_shop
from kamengd.cli.group import cli
from kamengd.cli.reference import MARK, splice, walk
from kamengd.payments import epay

DOCS = Path(__file__).resolve().parent.parent / "kamengd" / "docs"
KEY = "docs-merchant-key-0123"


def read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def section(text: str, heading: str) -> str:
    """The text under the `## ...` heading that contains `heading`, up to the next `## `."""
    parts = re.split(r"^## ", text, flags=re.M)
    found = [p for p in parts if p.splitlines()[0].find(heading) >= 0]
    assert len(found) == 1, f"one section {heading!r} expected, found {len(found)}"
    return found[0]


def commands() -> dict[str, click.Command]:
    root = click.Context(cli, info_name="kamengd")
    return {" ".join(path): command for path, command, _ctx in walk(cli, root)}


def test_the_cli_reference_is_written_from_the_current_commands():
    text = read("cli.md")
    assert text.count(MARK) == 1
    assert splice(text) == text, "kamengd/docs/cli.md is out of date: run scripts/docs"


def test_the_reference_names_every_command_and_option():
    text = read("cli.md")
    for path, command in commands().items():
        assert f"### `kamengd {path}`\n" in text
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert any(f"`{opt}" in text or f", {opt}" in text for opt in param.opts), (path, param.opts)


def _stable_rows(text: str):
    """(command path, options) of each row of a `| command | what it does |` table."""
    for cell in re.findall(r"^\| `(kamengd [^`]+)` \|", text, flags=re.M):
        words = cell.split()[1:]
        path = []
        for word in words:
            if not re.fullmatch(r"[a-z][a-z0-9-]*", word):
                break
            path.append(word)
        yield " ".join(path), set(re.findall(r"--[a-z][a-z-]*", cell)), cell


def assert_commands_exist(page: str, heading: str, at_least: int) -> None:
    """Every command of the page's `| command | ... |` table exists, with every option it names."""
    known = commands()
    rows = list(_stable_rows(section(read(page), heading)))
    assert len(rows) >= at_least
    for path, options, cell in rows:
        assert path in known, f"{cell}: no such command"
        offered = {opt for p in known[path].params for opt in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])}
        assert options <= offered, f"{cell}: {sorted(options - offered)} not offered"


def test_the_stable_commands_exist_with_their_options():
    assert_commands_exist("cli.md", "The stable commands", 15)


def _app_rules(app):
    for rule in app.url_map.iter_rules():
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield method, re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"<\1>", rule.rule)


def test_every_api_route_is_described_and_nothing_more(backend, app):
    text = read("buyer-api.md")
    described = set(re.findall(r"^## `(GET|POST|PUT|PATCH|DELETE) (/[^`]+)`", text, flags=re.M))
    served = {(m, r) for m, r in _app_rules(app) if r.startswith("/api/v1/") or r == "/healthz"}
    served_buyer = {(m, r) for m, r in served if not r.startswith("/api/v1/agent")}
    assert described == served_buyer


def test_every_agent_api_route_is_described_and_nothing_more(backend, app):
    described = set(re.findall(r"^- `(GET|POST|DELETE) (/api/v1/agent/[^`]+)`", read("agent-api.md"), flags=re.M))
    served = {(m, r) for m, r in _app_rules(app) if r.startswith("/api/v1/agent/")}
    assert described == served


def test_the_agents_commands_exist_with_their_options():
    assert_commands_exist("agent-api.md", "Commands", 5)


def test_the_suppliers_commands_exist_with_their_options():
    assert_commands_exist("suppliers.md", "Commands", 8)


def test_the_vouchers_commands_exist_with_their_options():
    assert_commands_exist("vouchers.md", "Commands", 12)


def test_the_ticket_commands_exist_with_their_options():
    assert_commands_exist("after-sales.md", "Commands", 6)


def test_the_report_commands_exist_with_their_options():
    assert_commands_exist("reports.md", "Commands", 1)


def test_every_error_code_is_in_the_table():
    from kamengd import errors
    from kamengd.http_errors import _HTTP_CODES

    table = section(read("buyer-api.md"), "Conventions")
    listed = set(re.findall(r"^\s*\| `([a-z_]+)` \| (\d{3}) \|", table, flags=re.M))
    codes = {(cls.code, str(cls.http_status)) for cls in vars(errors).values()
             if isinstance(cls, type) and issubclass(cls, errors.KamengdError)}
    codes |= {(code, str(status)) for status, code in _HTTP_CODES.items() if status not in (405, 413, 415)}
    codes.add(("internal_error", "500"))
    assert codes <= listed, sorted(codes - listed)
    assert listed <= codes, f"listed, but no error gives it: {sorted(listed - codes)}"
    for status in (405, 413, 415):   # invalid_request with werkzeug's own status
        assert _HTTP_CODES[status] == "invalid_request" and str(status) in table


def _fields(text: str) -> set[str]:
    """Every `name` the section describes in its table rows' first cells."""
    names = set()
    for first in re.findall(r"^\| ([^|]+) \|", text, flags=re.M):
        names |= set(re.findall(r"`([a-z_]+)`", first))
    return names


@pytest.fixture
def shop(app):
    shop = epay_shop(app, name="文档 docs", price_cents=990, pid="3003", key=KEY, prefix="doc",
                     keys=[f"DOC-{secrets.token_hex(6)}" for _ in range(2)])
    from kamengd.catalog.models import Product
    from kamengd.extensions import db

    with app.app_context():   # a second product that asks the buyer something
        product = db.session.get(Product, shop["id"])
        product.input_fields = '[{"key": "f1", "kind": "qq", "label": "QQ", "required": false}]'
        db.session.commit()
        db.session.remove()
    return shop


def test_every_field_of_the_answers_is_described(backend, app, client, shop):
    text = read("buyer-api.md")
    products = client.get("/api/v1/products").get_json()["products"]
    mine = next(p for p in products if p["id"] == shop["id"])
    assert set(mine) <= _fields(section(text, "`GET /api/v1/products`")), set(mine)
    assert all(f'"{name}"' in section(text, "`GET /api/v1/products`") for name in mine["input_fields"][0])

    for method in client.get("/api/v1/payment-methods").get_json()["methods"]:
        assert set(method) <= _fields(section(text, "`GET /api/v1/payment-methods`"))

    body = {"product_id": shop["id"], "quantity": 2, "email": "docs@example.com", "channel": shop["channel"],
            "query_password": "docs-pw", "input": {"f1": "123456"}, "pay_type": "alipay"}
    asking, answering = section(text, "`POST /api/v1/orders`").split("Answer `201`")
    assert set(body) <= _fields(asking)
    placed = client.post("/api/v1/orders", json=body)
    assert placed.status_code == 201, placed.get_json()
    placed = placed.get_json()
    assert set(placed) <= _fields(answering), set(placed) - _fields(answering)

    q = {k: v[0] for k, v in parse_qs(urlsplit(placed["pay_url"]).query).items()}
    paying = section(read("epay.md"), "Paying")
    assert set(q) == _fields(paying) | {"sign_type"}, set(q) ^ _fields(paying)
    params = {"pid": "3003", "trade_no": f"T{placed['order_no']}", "out_trade_no": placed["order_no"],
              "type": "alipay", "name": "x", "money": placed["amount"], "trade_status": "TRADE_SUCCESS"}
    params["sign"], params["sign_type"] = epay.sign(params, KEY), "MD5"
    assert client.get(f"/pay/{shop['channel']}/notify", query_string=params).get_data(as_text=True) == "success"

    seen = client.get(f"/api/v1/orders/{placed['order_no']}", query_string={"token": placed["token"]}).get_json()
    assert seen["status"] == "delivered" and len(seen["keys"]) == 2
    looking = section(text, "`GET /api/v1/orders/<order_no>`")
    assert set(seen) <= _fields(looking), set(seen) - _fields(looking)
    statuses = set(re.findall(r"^\| `([a-z]+)` \|", section(text, "`GET /api/v1/orders/<order_no>`")
                              .split("### Order status")[1], flags=re.M))
    from kamengd.orders.models import ORDER_STATUSES
    assert statuses == set(ORDER_STATUSES)

    health = client.get("/healthz").get_json()
    described = section(text, "`GET /healthz`")
    assert all(f'"{name}"' in described for name in health), health
    assert all(f'"{name}"' in described for name in health["scheduler"])


def test_the_worked_epay_signature_is_kamengds():
    block = section(read("epay.md"), "Signing (stable)")
    key = re.search(r"key `([^`]+)`", block).group(1)
    params = dict(pair.split("=", 1) for pair in re.search(r"^parameters: (.*)$", block, flags=re.M).group(1).split())
    signed = re.search(r"^signed: +(.*)$", block, flags=re.M).group(1)
    sign = re.search(r"^sign: +([0-9a-f]{32})$", block, flags=re.M).group(1)
    assert epay.signing_string(params) == signed
    assert epay.sign(params, key) == sign == hashlib.md5((signed + key).encode()).hexdigest()
    assert epay.verify({**params, "sign": sign, "sign_type": "MD5"}, key)


def test_the_callback_fields_are_the_ones_read():
    """The fields the page says a callback carries are those kamengd's callback check reads."""
    import inspect

    from kamengd.payments import callbacks

    text = section(read("epay.md"), "The callback (stable)")
    said = set(re.findall(r"`([a-z_]+)`", text.split("\n\n")[1]))
    read_here = set(re.findall(r'params\.get\("([a-z_]+)"', inspect.getsource(callbacks._check)))
    assert read_here <= said, read_here - said


def test_the_links_between_the_pages_resolve():
    for page in DOCS.glob("*.md"):
        for target in re.findall(r"\]\(([^)#]+\.md)\)", page.read_text(encoding="utf-8")):
            assert (DOCS / target).is_file(), f"{page.name} links to {target}"
    index = read("README.md")
    assert {p.name for p in DOCS.glob("*.md")} - {"README.md"} <= set(re.findall(r"\]\(([^)]+\.md)\)", index))

"""The agent API's W3 additions on both databases: key scopes, orders waiting for stock
(backorder), the agent's own reference, and batches of orders with per-line results."""
import io
import json
import re
import secrets

import pytest
import sqlalchemy as sa

from kamengd.agents import services as agents
from test_agent_api import balance_of, network, signed  # noqa: F401  (the fixture)

BATCH = "/api/v1/agent/orders/batch"


def _key(app, agent_id, scopes):
    from kamengd.agents.models import Agent
    from kamengd.context import get_vault
    from kamengd.extensions import db

    with app.app_context():
        key_id, secret = agents.issue_api_key(db.session, get_vault(), db.session.get(Agent, agent_id), actor="t",
                                              scopes=scopes, label="shop script")
        db.session.commit()
        db.session.remove()
    return {"key_id": key_id, "secret": secret}


def _credit(app, agent_id, cents):
    from kamengd.agents.models import Agent
    from kamengd.extensions import db

    with app.app_context():
        agents.credit_balance(db.session, db.session.get(Agent, agent_id), cents, reason="t", actor="t")
        db.session.commit()
        db.session.remove()


def _count(app, model, **where):
    from kamengd.extensions import db

    with app.app_context():
        try:
            return db.session.scalar(sa.select(sa.func.count()).select_from(model).filter_by(**where))
        finally:
            db.session.remove()


def test_a_key_does_only_what_its_scopes_allow(backend, app, client, network):
    from kamengd.agents.models import ApiNonce
    from kamengd.orders.models import Order

    alice = network["alice"]
    reader = _key(app, alice["id"], ["read"])
    assert signed(client, reader, "GET", "/api/v1/agent/balance").status_code == 200
    nonces = _count(app, ApiNonce)
    refused = signed(client, reader, "POST", "/api/v1/agent/orders", {"product_id": network["product"], "quantity": 1},
                     idempotency_key="scoped-1")
    assert refused.status_code == 403
    assert refused.get_json()["error"]["code"] == "forbidden"
    assert "place orders" in refused.get_json()["error"]["message"]
    assert signed(client, reader, "POST", "/api/v1/agent/prices",
                  {"product_id": network["product"], "price": "12.00"}).status_code == 403
    # Nothing changed: no order, no charge, not even the nonce.
    assert _count(app, Order, agent_id=alice["id"]) == 0
    assert balance_of(app, alice["id"]) == 3000
    assert _count(app, ApiNonce) == nonces
    buyer = _key(app, alice["id"], ["order"])
    assert signed(client, buyer, "GET", "/api/v1/agent/balance").status_code == 403
    placed = signed(client, buyer, "POST", "/api/v1/agent/orders", {"product_id": network["product"], "quantity": 1},
                    idempotency_key="scoped-2")
    assert placed.status_code == 201, placed.get_json()


def test_unknown_scopes_are_refused(app, network):
    from kamengd.agents.models import Agent
    from kamengd.context import get_vault
    from kamengd.errors import InvalidRequest
    from kamengd.extensions import db

    with app.app_context():
        agent = db.session.get(Agent, network["alice"]["id"])
        for wrong in (["admin"], [], "read,sudo", [1]):
            with pytest.raises(InvalidRequest):
                agents.issue_api_key(db.session, get_vault(), agent, actor="t", scopes=wrong)
        assert agents.parse_scopes("order, read") == "read,order"
        db.session.rollback()
        db.session.remove()


def test_a_backorder_is_paid_now_and_delivered_with_the_next_import(backend, app, client, network):
    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.inventory.services import import_keys
    from kamengd.orders.attention import retry_waiting_deliveries

    alice = network["alice"]
    _credit(app, alice["id"], 17000)   # 200.00 in all
    body = {"product_id": network["product"], "quantity": 3}
    for n in range(3):   # 9 of the 10 keys
        assert signed(client, alice, "POST", "/api/v1/agent/orders", body,
                      idempotency_key=f"first-{n}").status_code == 201
    short = signed(client, alice, "POST", "/api/v1/agent/orders", body, idempotency_key="short")
    assert short.status_code == 409 and short.get_json()["error"]["code"] == "out_of_stock"
    assert balance_of(app, alice["id"]) == 20000 - 3 * 2673
    waiting = signed(client, alice, "POST", "/api/v1/agent/orders", {**body, "backorder": True, "ref": "PO-77"},
                     idempotency_key="wait")
    assert waiting.status_code == 201, waiting.get_json()
    order = waiting.get_json()
    assert (order["status"], order["ref"], "keys" in order) == ("paid", "PO-77", False)
    assert balance_of(app, alice["id"]) == 20000 - 4 * 2673   # charged now
    # The same request again: the same order; with another body behind the key: 409.
    again = signed(client, alice, "POST", "/api/v1/agent/orders", {**body, "backorder": True, "ref": "PO-77"},
                   idempotency_key="wait")
    assert again.get_json()["order_no"] == order["order_no"]
    assert signed(client, alice, "POST", "/api/v1/agent/orders", {**body, "backorder": True},
                  idempotency_key="wait").status_code == 409
    with app.app_context():
        fresh = [f"NEW-{secrets.token_hex(5)}" for _ in range(5)]
        import_keys(db.session, get_vault(), product_id=network["product"],
                    fh=io.BytesIO("\n".join(fresh).encode()), actor="t")
        db.session.commit()
        retry_waiting_deliveries(db.session)
        db.session.commit()
        db.session.remove()
    now = signed(client, alice, "GET", f"/api/v1/agent/orders/{order['order_no']}").get_json()
    assert now["status"] == "delivered" and len(now["keys"]) == 3
    assert len(set(now["keys"]) & (set(fresh) | set(network["keys"]))) == 3
    assert balance_of(app, alice["id"]) == 20000 - 4 * 2673


def test_bad_backorder_and_ref_are_refused(backend, client, network):
    alice = network["alice"]
    for extra in ({"backorder": "yes"}, {"ref": "x" * 65}, {"ref": "tab\there"}, {"ref": 12}):
        answer = signed(client, alice, "POST", "/api/v1/agent/orders",
                        {"product_id": network["product"], "quantity": 1, **extra}, idempotency_key="bad")
        assert answer.status_code == 400, (extra, answer.get_json())


def test_a_batch_answers_per_line_and_once_per_key(backend, app, client, network):
    from kamengd.agents.models import AgentBatch
    from kamengd.orders.models import Order

    alice = network["alice"]
    pid = network["product"]
    lines = [{"product_id": pid, "quantity": 2, "ref": "A-1"},      # 17.82
             {"product_id": 999999, "quantity": 1, "ref": "A-2"},   # no such product
             {"product_id": pid, "quantity": 9},                    # more than 5 an order
             {"product_id": pid, "quantity": 1, "ref": "A-4"},      # 8.91: 26.73 of 30.00
             {"product_id": pid, "quantity": 1, "ref": "A-5"}]      # the balance is short
    first = signed(client, alice, "POST", BATCH, {"lines": lines}, idempotency_key="batch-1")
    assert first.status_code == 201, first.get_json()
    view = first.get_json()
    results = [(line["line"], line["result"], (line.get("error") or {}).get("code")) for line in view["lines"]]
    assert results == [(1, "ok", None), (2, "error", "not_found"), (3, "error", "invalid_request"),
                       (4, "ok", None), (5, "error", "insufficient_balance")]
    assert (view["placed"], view["failed"], view["finished"]) == (2, 3, True)
    assert view["lines"][0]["order"]["ref"] == "A-1" and len(view["lines"][0]["order"]["keys"]) == 2
    assert balance_of(app, alice["id"]) == 3000 - 2673
    again = signed(client, alice, "POST", BATCH, {"lines": lines}, idempotency_key="batch-1")
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["lines"] == view["lines"]
    assert balance_of(app, alice["id"]) == 3000 - 2673
    assert _count(app, Order, agent_id=alice["id"]) == 2
    changed = signed(client, alice, "POST", BATCH, {"lines": lines[:4]}, idempotency_key="batch-1")
    assert changed.status_code == 409
    read = signed(client, alice, "GET", f"/api/v1/agent/batches/{view['batch_id']}")
    assert read.get_json()["lines"] == view["lines"]
    # Another agent's batch is not found.
    assert signed(client, network["bob"], "GET", f"/api/v1/agent/batches/{view['batch_id']}").status_code == 404
    assert _count(app, AgentBatch, agent_id=alice["id"]) == 1


@pytest.mark.parametrize("body", [
    {"lines": []}, {"lines": "x"}, {"lines": [{"product_id": 1}]},
    {"lines": [{"product_id": 1, "quantity": 1, "price": "0.01"}]},
    {"lines": [{"product_id": 1, "quantity": 1}] * 501},
    {"lines": [{"product_id": 1, "quantity": 1}], "mode": "all"},
    {"lines": [{"product_id": 1, "quantity": 1, "ref": "x" * 65}]},
])
def test_a_malformed_batch_stores_nothing(backend, app, client, network, body):
    from kamengd.agents.models import AgentBatch, AgentBatchLine

    before = _count(app, AgentBatchLine)
    answer = signed(client, network["alice"], "POST", BATCH, body, idempotency_key="bad-batch")
    assert answer.status_code == 400, answer.get_json()
    assert _count(app, AgentBatch, agent_id=network["alice"]["id"]) == 0 and _count(app, AgentBatchLine) == before


def test_batch_files_read_csv_and_xlsx_and_write_results(tmp_path):
    from openpyxl import Workbook, load_workbook

    from kamengd.agents import batches
    from kamengd.errors import InvalidRequest

    csv_lines = batches.read_upload("orders.csv", "product_id,quantity,ref\n3,2,PO-1\n4,1,\n".encode("utf-8-sig"))
    assert csv_lines == [batches.Line(3, 2, "PO-1"), batches.Line(4, 1, "")]
    book = Workbook()
    sheet = book.active
    for row in (("product_id", "quantity", "ref"), (3, 2, "PO-1"), (4, 1, None)):
        sheet.append(row)
    out = io.BytesIO()
    book.save(out)
    assert batches.read_upload("orders.xlsx", out.getvalue()) == csv_lines
    for name, data in (("x.csv", b"id,qty\n1,1\n"), ("x.csv", b"product_id,quantity\n1,many\n"),
                       ("x.xlsx", b"not a workbook"), ("x.csv", b"\xff\xfe"), ("x.csv", b"")):
        with pytest.raises(InvalidRequest):
            batches.read_upload(name, data)
    template = load_workbook(io.BytesIO(batches.template_file("xlsx")))
    assert [c.value for c in template.worksheets[0][1]] == list(batches.TEMPLATE_COLUMNS)
    view = {"lines": [{"line": 1, "product_id": 3, "quantity": 2, "ref": "PO-1", "result": "ok",
                       "order": {"order_no": "N1", "status": "delivered", "amount": "2.00", "keys": ["=K1", "K2"]}},
                      {"line": 2, "product_id": 4, "quantity": 1, "ref": "", "result": "error",
                       "error": {"code": "out_of_stock", "message": "none left"}}]}
    rows = list(load_workbook(io.BytesIO(batches.result_file(view, "xlsx"))).worksheets[0].iter_rows(values_only=True))
    assert rows[1][8] == "=K1" and rows[2][8] == "K2" and rows[3][9] == "out_of_stock: none left"
    text = batches.result_file(view, "csv").decode("utf-8-sig")
    assert "=K1" in text and json.dumps("K2")[1:-1] in text


def test_a_file_of_orders_in_the_portal(backend, app, client, network):
    from openpyxl import load_workbook

    from panel_support import csrf_of
    from test_agent_portal import set_password, sign_in

    alice = network["alice"]
    set_password(app, alice["id"])
    assert sign_in(client, alice["username"]).status_code == 302
    page = client.get("/agent/batches").get_data(as_text=True)
    template = client.get("/agent/batches/template.xlsx")
    assert template.status_code == 200 and template.headers["Cache-Control"] == "no-store"
    assert [c.value for c in load_workbook(io.BytesIO(template.data)).worksheets[0][1]][:2] == ["product_id",
                                                                                               "quantity"]
    pid = network["product"]
    upload = f"product_id,quantity,ref\n{pid},2,PO-9\n999999,1,\n{pid},1,PO-10\n".encode()
    form = {"csrf_token": csrf_of(page), "form_key": re.search(r'name="form_key" value="([^"]+)"', page).group(1)}
    sent = client.post("/agent/batches", data={**form, "file": (io.BytesIO(upload), "orders.csv")},
                       content_type="multipart/form-data")
    assert sent.status_code == 303, sent.get_data(as_text=True)[:300]
    detail = client.get(sent.headers["Location"]).get_data(as_text=True)
    assert "2 lines ordered, 1 failed" in detail and "not_found" in detail
    assert not any(k in detail for k in network["keys"])        # the keys are in the file, not the page
    batch_id = int(sent.headers["Location"].rstrip("/").rsplit("/", 1)[1])
    result = client.get(f"/agent/batches/{batch_id}/result.xlsx")
    rows = list(load_workbook(io.BytesIO(result.data)).worksheets[0].iter_rows(values_only=True))
    keys = [r[8] for r in rows[1:] if r[4] == "ok"]
    assert len(keys) == 3 and set(keys) <= set(network["keys"]) and result.headers["Cache-Control"] == "no-store"
    # The same form sent again (a double click): the same batch, nothing bought twice.
    again = client.post("/agent/batches", data={**form, "file": (io.BytesIO(upload), "orders.csv")},
                        content_type="multipart/form-data")
    assert again.headers["Location"] == sent.headers["Location"]
    assert balance_of(app, alice["id"]) == 3000 - 3 * 891
    # A file that cannot be read: a clear error, nothing placed.
    bad = client.post("/agent/batches", data={"csrf_token": form["csrf_token"], "form_key": "other",
                                              "file": (io.BytesIO(b"id;qty\n1;1\n"), "x.csv")},
                      content_type="multipart/form-data")
    assert bad.status_code == 303
    assert "header" in client.get("/agent/batches").get_data(as_text=True)
    assert balance_of(app, alice["id"]) == 3000 - 3 * 891


@pytest.mark.parametrize("name,data,words", [
    ("x.csv", ("product_id,quantity\n1," + "9" * 140000 + "\n").encode(), "cannot be read"),
    ("x.csv", "product_id,quantity\n1,²\n".encode(), "quantity"),
    ("x.csv", ("product_id,quantity\n" + "1,1\n\n" * 501).encode(), "at most 500"),
    ("x.xlsx", b"PK\x03\x04not really a zip", "not an XLSX"),
])
def test_unreadable_or_oversized_files_are_a_clear_error(name, data, words):
    from kamengd.agents import batches
    from kamengd.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match=words):
        batches.read_upload(name, data)


def test_an_xlsx_with_blank_rows_is_read_whole_or_refused_and_a_zip_bomb_is_refused():
    import zipfile

    from openpyxl import Workbook

    from kamengd.agents import batches
    from kamengd.errors import InvalidRequest

    book = Workbook()
    sheet = book.active
    sheet.append(("product_id", "quantity", "ref"))
    for n in range(300):   # each line followed by a blank row: 300 lines, not cut at 250
        sheet.append((1, 1, f"R{n}"))
        sheet.append((None, None, None))
    out = io.BytesIO()
    book.save(out)
    assert len(batches.read_upload("x.xlsx", out.getvalue())) == 300
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("xl/sharedStrings.xml", b"A" * (batches.MAX_UNPACKED_BYTES + 1))
    with pytest.raises(InvalidRequest, match="unpacks to more than"):
        batches.read_upload("x.xlsx", bomb.getvalue())


def test_a_huge_batch_id_is_not_found(backend, client, network):
    answer = signed(client, network["alice"], "GET", "/api/v1/agent/batches/99999999999999999999")
    assert answer.status_code == 404

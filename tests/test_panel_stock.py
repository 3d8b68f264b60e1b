"""Key stock in the panel: counts, imports (pasted, uploaded, in committed chunks), audited downloads.

A file that cannot be imported imports nothing, however it is chunked; a
download is audited (with its reason, never a key) before the first key leaves.
"""
import io
import json
import secrets

import pytest
import sqlalchemy as sa

from kamengd.audit.models import AuditEntry
from kamengd.errors import InvalidRequest
from kamengd.inventory import services as inventory
from kamengd.inventory.importer import ImportFileError
from kamengd.inventory.models import CardKey, KeyImport
from panel_support import login, make_staff, post

ACTOR = "staff:tester"


def keys(n: int, prefix: str = "K") -> list[str]:
    tag = secrets.token_hex(4)
    return [f"{prefix}-{tag}-{i:06d}" for i in range(n)]


def entries(session, product_id: int, action: str) -> list[dict]:
    return [json.loads(d) for d in session.scalars(
        sa.select(AuditEntry.details).where(AuditEntry.target == f"product:{product_id}", AuditEntry.action == action)
        .order_by(AuditEntry.seq))]


# --- services -------------------------------------------------------------

def test_chunked_import_commits_parts_with_the_same_totals(backend, session, vault, make_product):
    p = make_product()
    batch = keys(7)
    data = "\n".join(["", batch[0], batch[1], batch[0], "  ", *batch[2:]]).encode()   # 10 lines
    result = inventory.import_keys_in_chunks(session, vault, product_id=p.id, fh=io.BytesIO(data), actor=ACTOR,
                                             chunk_lines=4, batch_size=2)
    assert (result.imported, result.duplicates, result.blank, result.chunks) == (7, 1, 2, 3)
    assert sorted(inventory.iter_plaintext_keys(session, vault, p.id, ["available"])) == sorted(batch)
    runs = session.scalars(sa.select(KeyImport).where(KeyImport.product_id == p.id).order_by(KeyImport.id)).all()
    assert [(r.imported, r.duplicates, r.blank) for r in runs] == [(2, 1, 1), (3, 0, 1), (2, 0, 0)]
    details = entries(session, p.id, "keys.import")
    assert [(d["chunk"], d["chunks"], d["imported"]) for d in details] == [(1, 3, 2), (2, 3, 3), (3, 3, 2)]
    assert not any(k in json.dumps(details) for k in batch)


@pytest.mark.parametrize("data, message", [
    (b"ok-1\nok-2\nok-3\nok-4\nok-5\n" + b"x" * 20 + b"\n", "line 6: key is 20 characters"),
    (b"ok-1\nok-2\nok-3\nok-4\nok-5\nbad\x01key\n", "line 6: key contains control characters"),
    ("ok-1\nok-2\nok-3\nok-4\nok-5\n坏\n".encode("utf-8") + b"\xff\xfe\xfa\n", "does not decode"),
    (b"", "holds no keys"),
    (b"\n \r\n\t\n", "holds no keys"),
])
def test_chunked_import_checks_the_whole_file_first(backend, session, vault, make_product, data, message):
    """The bad line is in the last chunk: the earlier chunks are not written either."""
    p = make_product()
    with pytest.raises(ImportFileError) as exc:
        inventory.import_keys_in_chunks(session, vault, product_id=p.id, fh=io.BytesIO(data), actor=ACTOR,
                                        chunk_lines=2, max_key_length=16,
                                        encoding="utf-8" if b"\xff" in data else None)
    assert message in exc.value.message and "nothing imported" in exc.value.message
    assert session.scalar(sa.select(sa.func.count()).select_from(CardKey).where(CardKey.product_id == p.id)) == 0
    assert session.scalar(sa.select(sa.func.count()).select_from(KeyImport).where(KeyImport.product_id == p.id)) == 0
    assert entries(session, p.id, "keys.import") == []


def test_chunked_import_keeps_the_detected_encoding(backend, session, vault, make_product):
    p = make_product()
    text = "卡密-一\r\n卡密-二\r\n卡密-三"
    result = inventory.import_keys_in_chunks(session, vault, product_id=p.id, fh=io.BytesIO(text.encode("gb18030")),
                                             actor=ACTOR, chunk_lines=1)
    assert (result.imported, result.encoding, result.chunks) == (3, "gb18030", 3)
    assert sorted(inventory.iter_plaintext_keys(session, vault, p.id, None)) == ["卡密-一", "卡密-三", "卡密-二"]
    assert {r.encoding for r in session.scalars(sa.select(KeyImport).where(KeyImport.product_id == p.id))} == {
        "gb18030"}


def test_chunked_import_says_what_a_failure_half_way_left(backend, session, vault, make_product, monkeypatch):
    p = make_product()
    real_write, calls = inventory._write_keys, []

    def failing_second_part(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise sa.exc.OperationalError("INSERT", {}, Exception("disk I/O error"))
        return real_write(*args, **kwargs)
    monkeypatch.setattr(inventory, "_write_keys", failing_second_part)
    batch = keys(5)
    with pytest.raises(inventory.ImportInterrupted, match="stopped at part 2 of 3.* 2 keys of the parts before"):
        inventory.import_keys_in_chunks(session, vault, product_id=p.id, fh=io.BytesIO("\n".join(batch).encode()),
                                        actor=ACTOR, chunk_lines=2)
    assert sorted(inventory.iter_plaintext_keys(session, vault, p.id, None)) == sorted(batch[:2])
    assert entries(session, p.id, "keys.import_incomplete") == [
        {"part": 2, "parts": 3, "imported": 2, "reason": "a database error"}]
    # Any other failure after the first part is told the same way, never a bare error.
    calls.clear()

    def crashing_second_part(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real_write(*args, **kwargs)
    monkeypatch.setattr(inventory, "_write_keys", crashing_second_part)
    with pytest.raises(inventory.ImportInterrupted, match=r"stopped at part 2 of 2 \(RuntimeError\)"):
        inventory.import_keys_in_chunks(session, vault, product_id=p.id, fh=io.BytesIO(
            "\n".join(keys(4)).encode()), actor=ACTOR, chunk_lines=2)
    # The same file again adds the rest.
    monkeypatch.setattr(inventory, "_write_keys", real_write)
    result = inventory.import_keys_in_chunks(session, vault, product_id=p.id,
                                             fh=io.BytesIO("\n".join(batch).encode()), actor=ACTOR, chunk_lines=2)
    assert (result.imported, result.duplicates) == (3, 2)


def test_key_counts_in_one_grouped_query(backend, app, session, make_product, make_keys):
    from kamengd.extensions import db

    p, q, empty = make_product(), make_product(), make_product()
    make_keys(p, 3)
    make_keys(q, 2)
    rows = session.scalars(sa.select(CardKey).where(CardKey.product_id == p.id).order_by(CardKey.id)).all()
    rows[0].status, rows[1].status = "sold", "void"
    session.flush()
    statements = []
    listen = lambda *args: statements.append(args[2])   # noqa: E731
    with app.app_context():
        engine = db.engine
    sa.event.listen(engine, "before_cursor_execute", listen)
    try:
        counts = inventory.key_counts(session, [p.id, q.id, empty.id])
    finally:
        sa.event.remove(engine, "before_cursor_execute", listen)
    assert counts == {p.id: {"available": 1, "sold": 1, "void": 1}, q.id: {"available": 2}}
    assert len(statements) == 1 and "GROUP BY" in statements[0]
    assert inventory.key_counts(session, []) == {}


def test_start_key_export_needs_a_reason(backend, session, vault, make_product, make_keys):
    p = make_product()
    make_keys(p, 3)
    for reason, message in [("", "reason: say why"), ("  ab  ", "at least 5"), ("x" * 501, "at most 500")]:
        with pytest.raises(InvalidRequest, match=message):
            inventory.start_key_export(session, product_id=p.id, status="available", reason=reason, actor=ACTOR)
    with pytest.raises(InvalidRequest, match="status: must be one of"):
        inventory.start_key_export(session, product_id=p.id, status="reserved", reason="a good reason", actor=ACTOR)
    assert entries(session, p.id, "keys.export") == []
    assert inventory.start_key_export(session, product_id=p.id, status="all", reason=" moving\n  shops ",
                                      actor=ACTOR) == 3
    [details] = entries(session, p.id, "keys.export")
    assert details == {"status": "all", "count": 3, "reason": "moving shops", "via": "panel download"}


# --- pages ----------------------------------------------------------------

def signed_in(app, role: str):
    client = app.test_client()
    client.set_cookie("lang", "en")
    staff = make_staff(app, role)
    assert login(client, staff).status_code == 302
    return client, staff


@pytest.fixture
def operator(app):
    return signed_in(app, "operator")


@pytest.fixture
def owner(app):
    return signed_in(app, "owner")


@pytest.fixture
def product_id(app):
    from kamengd.catalog.services import create_product
    from kamengd.extensions import db

    with app.app_context():
        p = create_product(db.session, name=f"stock {secrets.token_hex(4)}", price_cents=100, actor="test")
        db.session.commit()
        return p.id


def product_name(app, product_id: int) -> str:
    from kamengd.catalog.models import Product
    from kamengd.extensions import db

    with app.app_context():
        return db.session.get(Product, product_id).name


def stored(app, product_id: int) -> dict[str, int]:
    from kamengd.extensions import db

    with app.app_context():
        return inventory.key_counts(db.session, [product_id]).get(product_id, {})


def plaintext(app, product_id: int, statuses=None) -> list[str]:
    from kamengd.context import get_vault
    from kamengd.extensions import db

    with app.app_context():
        return list(inventory.iter_plaintext_keys(db.session, get_vault(), product_id, statuses))


def audit_of(app, product_id: int, action: str) -> list[tuple[str, dict]]:
    from kamengd.extensions import db

    with app.app_context():
        return [(a.actor, json.loads(a.details)) for a in db.session.scalars(
            sa.select(AuditEntry).where(AuditEntry.target == f"product:{product_id}", AuditEntry.action == action)
            .order_by(AuditEntry.seq))]


def import_page(product_id):
    return f"/admin/stock/{product_id}/import"


def upload(client, product_id, data: bytes, filename="keys.txt", **fields):
    return post(client, import_page(product_id), {"file": (io.BytesIO(data), filename), **fields},
                page_url=import_page(product_id), content_type="multipart/form-data")


def test_stock_page_counts_and_links(app, operator, product_id):
    client, _staff = operator
    post(client, import_page(product_id), {"keys": "A-1\nA-2\nA-3"}, page_url=import_page(product_id))
    name = product_name(app, product_id)
    page = client.get("/admin/stock", query_string={"q": name})   # the shared database has pages of products
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert f"/admin/stock/{product_id}/import" in html
    assert f"/admin/stock/{product_id}/export" not in html   # the operator may not download keys
    for status in ("Available", "Reserved", "Sold"):
        assert status in html


def test_import_by_paste(app, operator, product_id):
    client, staff = operator
    batch = keys(3)
    text = "\r\n".join([batch[0], "", f"  {batch[1]}  ", batch[0], batch[2]])
    resp = post(client, import_page(product_id), {"keys": text}, page_url=import_page(product_id))
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/admin/stock")
    html = client.get(resp.headers["Location"]).get_data(as_text=True)
    assert "imported 3 keys; 1 duplicates skipped, 1 blank lines; 0 waiting orders delivered" in html
    assert not any(k in html for k in batch)
    assert stored(app, product_id) == {"available": 3}
    assert sorted(plaintext(app, product_id)) == sorted(batch)
    # Again: every key is a duplicate now.
    resp = post(client, import_page(product_id), {"keys": "\n".join(batch)}, page_url=import_page(product_id))
    assert "imported 0 keys; 3 duplicates skipped" in client.get(resp.headers["Location"]).get_data(as_text=True)
    assert stored(app, product_id) == {"available": 3}
    [(actor, first), _second] = audit_of(app, product_id, "keys.import")
    assert actor == f"staff:{staff.username}" and first["imported"] == 3
    assert not any(k in json.dumps(first) for k in batch)


def test_import_by_upload_gb18030_spooled(app, operator, product_id):
    """Over 500 KB: Werkzeug spools it to a temporary file, and it is read from there."""
    client, _staff = operator
    batch = keys(25_000, prefix="卡密")
    data = "\n".join(batch).encode("gb18030")
    assert len(data) > 500 * 1024
    resp = upload(client, product_id, data)
    assert resp.status_code == 303, resp.get_data(as_text=True)
    assert "imported 25000 keys" in client.get(resp.headers["Location"]).get_data(as_text=True)
    assert stored(app, product_id) == {"available": 25_000}
    assert sorted(plaintext(app, product_id)) == sorted(batch)


def test_chunked_upload_commits_each_part(app, operator, product_id, monkeypatch):
    from kamengd.panel import stock

    monkeypatch.setattr(stock, "IMPORT_CHUNK_LINES", 3)
    client, _staff = operator
    batch = keys(8)
    resp = upload(client, product_id, "\n".join(batch).encode())
    assert resp.status_code == 303
    assert stored(app, product_id) == {"available": 8}
    chunks = [(d["chunk"], d["chunks"], d["imported"]) for _a, d in audit_of(app, product_id, "keys.import")]
    assert chunks == [(1, 3, 3), (2, 3, 3), (3, 3, 2)]


def writer_is_free(engine, product_id: int) -> bool:
    """Could another writer go ahead now? SQLite: take the database's write lock.
    MariaDB: lock the product row (the lock an import chunk and a key rotation take)."""
    import sqlite3

    raw = engine.raw_connection()
    conn = raw.driver_connection
    if engine.dialect.name != "sqlite":
        cursor = conn.cursor()
        try:
            cursor.execute("SELECT id FROM products WHERE id = %s FOR UPDATE NOWAIT", (product_id,))
            return True
        except Exception as exc:   # NOWAIT: someone holds it
            assert "lock" in str(exc).lower(), exc
            return False
        finally:
            conn.rollback()
            raw.close()
    try:
        conn.execute("PRAGMA busy_timeout=0")
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return False
        conn.execute("ROLLBACK")
        return True
    finally:
        conn.execute("PRAGMA busy_timeout=30000")
        raw.close()


def test_upload_holds_no_lock_while_checking_and_between_chunks(app, operator, product_id, monkeypatch):
    """The shop keeps selling during a big import: no lock while the file is read through,
    and each chunk's lock is let go before the next one's. SQLite: another writer can
    take the database's write lock. MariaDB: another connection can lock the product row
    (the lock an import chunk and a key rotation take) without waiting."""
    from kamengd.extensions import db
    from kamengd.panel import stock

    with app.app_context():
        engine = db.engine

    probes = []
    real_check, real_begin = inventory.check_import_file, inventory._begin_import
    monkeypatch.setattr(inventory, "check_import_file",
                        lambda *a, **kw: probes.append(writer_is_free(engine, product_id)) or real_check(*a, **kw))
    monkeypatch.setattr(inventory, "_begin_import",
                        lambda *a, **kw: probes.append(writer_is_free(engine, product_id)) or real_begin(*a, **kw))
    monkeypatch.setattr(stock, "IMPORT_CHUNK_LINES", 2)
    client, _staff = operator
    resp = upload(client, product_id, "\n".join(keys(5)).encode())
    assert resp.status_code == 303
    assert probes == [True, True, True, True]   # the check, then three chunks
    assert stored(app, product_id) == {"available": 5}


@pytest.mark.parametrize("data, fields, message", [
    (b"GOOD-1\nGOOD-2\nGOOD-3\nGOOD-4\n" + b"L" * 600 + b"\n", {}, "line 5: key is 600 characters"),
    (b"GOOD-1\nGOOD-2\nGOOD-3\nGOOD-4\n\xff\xfe\x00\x01\x02\n", {"encoding": "utf-8"},
     "line 5: the file does not decode as utf-8"),
    (b"GOOD-1\x00GOOD-2\n", {}, "control characters"),
    (b"", {}, "holds no keys"),
    (b"GOOD-1\n", {"encoding": "latin-9"}, "Choose an encoding from the list"),
])
def test_bad_upload_imports_nothing(app, operator, product_id, monkeypatch, data, fields, message):
    from kamengd.panel import stock

    monkeypatch.setattr(stock, "IMPORT_CHUNK_LINES", 2)
    client, _staff = operator
    resp = upload(client, product_id, data, **fields)
    html = resp.get_data(as_text=True)
    assert resp.status_code == 400, html
    assert message in html and "--encoding" not in html
    assert stored(app, product_id) == {}
    assert audit_of(app, product_id, "keys.import") == []


def test_paste_and_file_together_or_neither(app, operator, product_id):
    client, _staff = operator
    resp = upload(client, product_id, b"F-1\n", keys="P-1")
    assert resp.status_code == 400 and "not both" in resp.get_data(as_text=True)
    resp = post(client, import_page(product_id), {"keys": " \n "}, page_url=import_page(product_id))
    assert resp.status_code == 400 and "Paste keys (one per line) or choose a file" in resp.get_data(as_text=True)
    assert stored(app, product_id) == {}


def test_too_large_upload_says_so(app, operator, product_id, monkeypatch):
    client, _staff = operator
    token_page = import_page(product_id)
    monkeypatch.setitem(app.config, "MAX_CONTENT_LENGTH", 4096)
    resp = upload(client, product_id, b"BIG-KEY\n" * 1000)
    assert resp.status_code == 303 and resp.headers["Location"].endswith(token_page)
    html = client.get(token_page).get_data(as_text=True)
    assert "too large to import" in html and "Nothing was imported" in html
    monkeypatch.setitem(app.config, "MAX_CONTENT_LENGTH", 64 * 1024 * 1024)
    monkeypatch.setitem(app.config, "MAX_FORM_MEMORY_SIZE", 100)
    # The browser sends the form as multipart: the pasted text is one of its fields.
    resp = post(client, token_page, {"keys": "PASTED-KEY\n" * 100}, page_url=token_page,
                content_type="multipart/form-data")
    assert resp.status_code == 303
    assert "too large to import" in client.get(token_page).get_data(as_text=True)
    assert stored(app, product_id) == {}


def test_too_large_before_sign_in_shows_nothing_of_the_product(app, product_id, monkeypatch):
    monkeypatch.setitem(app.config, "MAX_CONTENT_LENGTH", 100)
    resp = app.test_client().post(import_page(product_id), data={"keys": "X" * 500})
    assert resp.status_code in (302, 303)
    follow = app.test_client().get(resp.headers["Location"])
    assert follow.status_code == 302 and "/admin/login" in follow.headers["Location"]


def test_import_unknown_product(app, operator):
    client, _staff = operator
    assert client.get(import_page(999_999_999)).status_code == 404
    resp = post(client, import_page(999_999_999), {"keys": "K-1"}, page_url="/admin/stock")
    assert resp.status_code == 404


def test_export_with_reason_streams_the_keys_after_auditing(app, owner, product_id):
    client, staff = owner
    batch = keys(5)
    post(client, import_page(product_id), {"keys": "\n".join(batch)}, page_url=import_page(product_id))
    export = f"/admin/stock/{product_id}/export"
    page = client.get(export)
    assert page.status_code == 200 and 'name="reason"' in page.get_data(as_text=True)
    resp = post(client, export, {"status": "available", "reason": "Moving stock to the new shop"}, page_url=export)
    assert resp.status_code == 200
    assert resp.headers["Content-Disposition"].startswith("attachment; filename=")
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.mimetype == "text/plain"
    assert sorted(resp.get_data(as_text=True).splitlines()) == sorted(batch)
    [(actor, details)] = audit_of(app, product_id, "keys.export")
    assert actor == f"staff:{staff.username}"
    assert details == {"status": "available", "count": 5, "reason": "Moving stock to the new shop",
                       "via": "panel download"}
    assert not any(k in json.dumps(details) for k in batch)
    # While a (slow) client is still taking the file, the shop can write: the stream
    # reads a snapshot. (It used to hold SQLite's write lock until the last byte.)
    from kamengd.extensions import db

    with app.app_context():
        engine = db.engine
    slow = post(client, export, {"status": "available", "reason": "Moving stock to the new shop"},
                page_url=export, buffered=False)
    first = next(iter(slow.response))
    assert first.decode().splitlines()[0] in batch
    assert writer_is_free(engine, product_id)
    slow.close()
    # Nothing sold yet: a download of the sold keys is empty (and audited).
    resp = post(client, export, {"status": "sold", "reason": "checking sales"}, page_url=export)
    assert resp.status_code == 200 and resp.get_data() == b""
    assert audit_of(app, product_id, "keys.export")[-1][1]["count"] == 0


@pytest.mark.parametrize("fields, message", [
    ({"status": "available"}, "reason: say why"),
    ({"status": "available", "reason": "why"}, "at least 5 characters"),
    ({"status": "available", "reason": "x" * 501}, "at most 500 characters"),
    ({"status": "everything", "reason": "a fine reason"}, "status: must be one of"),
])
def test_export_without_a_reason_gives_no_file(app, owner, product_id, fields, message):
    client, _staff = owner
    post(client, import_page(product_id), {"keys": "SECRET-A\nSECRET-B"}, page_url=import_page(product_id))
    export = f"/admin/stock/{product_id}/export"
    resp = post(client, export, fields, page_url=export)
    html = resp.get_data(as_text=True)
    assert resp.status_code == 400
    assert "Content-Disposition" not in resp.headers and resp.mimetype == "text/html"
    assert message in html and "SECRET-A" not in html
    assert audit_of(app, product_id, "keys.export") == []


def test_operator_may_not_export(app, operator, product_id):
    client, _staff = operator
    post(client, import_page(product_id), {"keys": "SECRET-OP"}, page_url=import_page(product_id))
    export = f"/admin/stock/{product_id}/export"
    assert client.get(export).status_code == 403
    resp = post(client, export, {"status": "available", "reason": "I would like them"}, page_url="/admin/stock")
    assert resp.status_code == 403 and b"SECRET-OP" not in resp.get_data()
    assert audit_of(app, product_id, "keys.export") == []


def test_a_products_keys_masked_and_a_wrong_batch_voided(backend, app, operator, product_id):
    """W10 §7: the keys of a product, masked, by status and batch; a wrongly imported batch
    taken off sale (its available keys void; reserved and sold ones left), audited."""
    from kamengd.extensions import db
    from kamengd.inventory.models import KeyImport
    from kamengd.orders.services import create_order
    from kamengd.payments.services import add_channel
    from kamengd.context import get_vault

    client, staff = operator
    good, wrong = keys(3, "GOOD"), keys(4, "WRONG")
    for batch in (good, wrong):
        assert upload(client, product_id, "\n".join(batch).encode()).status_code == 303
    with app.app_context():
        first, second = db.session.scalars(sa.select(KeyImport.id).where(KeyImport.product_id == product_id)
                                           .order_by(KeyImport.id)).all()
        code = f"v{secrets.token_hex(3)}"
        add_channel(db.session, get_vault(), channel_type="epay", code=code, actor="t",
                    options={"gateway": "https://pay.example.com", "pid": "1", "key": "k3y-0123456789abcdef"})
        db.session.commit()
        # An order reserves one key (the oldest available: from the good batch).
        create_order(db.session, product_id=product_id, quantity=1, email="v@example.com", channel_code=code)
        db.session.commit()

    page = client.get(f"/admin/stock/{product_id}/keys").get_data(as_text=True)
    assert "Keys found: 7" in page and not any(k in page for k in good + wrong)
    assert page.count("••••") >= 7 and f'id="batch-{second}"' in page
    only = client.get(f"/admin/stock/{product_id}/keys", query_string={"batch": second}).get_data(as_text=True)
    assert "Keys found: 4" in only
    reserved = client.get(f"/admin/stock/{product_id}/keys", query_string={"status": "reserved"}).get_data(as_text=True)
    assert "Keys found: 1" in reserved

    url = f"/admin/stock/{product_id}/batches/{second}/void"
    refused = post(client, url, {"reason": " "}, page_url=f"/admin/stock/{product_id}/keys", follow_redirects=True)
    assert "reason: required" in refused.get_data(as_text=True) and stored(app, product_id).get("void", 0) == 0
    done = post(client, url, {"reason": "wrong supplier file"}, page_url=f"/admin/stock/{product_id}/keys",
                follow_redirects=True)
    assert "4 available keys taken off sale" in done.get_data(as_text=True)
    assert stored(app, product_id) == {"available": 2, "reserved": 1, "void": 4}
    assert sorted(plaintext(app, product_id, ["available"])) == sorted(good[1:])   # good[0]: the reserved one
    [(who, details)] = audit_of(app, product_id, "keys.void")
    assert who == f"staff:{staff.username}" and details == {"import_id": second, "reason": "wrong supplier file",
                                                            "voided": 4, "reserved": 0, "sold": 0}
    # The first batch's reserved key stays reserved if that batch is voided too.
    post(client, f"/admin/stock/{product_id}/batches/{first}/void", {"reason": "test"},
         page_url=f"/admin/stock/{product_id}/keys")
    assert stored(app, product_id) == {"reserved": 1, "void": 6}
    # Another product's batch number is not this product's.
    other = post(client, f"/admin/stock/{product_id}/batches/999999/void", {"reason": "x"},
                 page_url=f"/admin/stock/{product_id}/keys", follow_redirects=True)
    assert "not found" in other.get_data(as_text=True)


def test_support_cannot_see_or_void_keys(app, product_id):
    client, _staff = signed_in(app, "support")
    assert client.get(f"/admin/stock/{product_id}/keys").status_code == 403

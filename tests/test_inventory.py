import io
import tracemalloc

import pytest
import sqlalchemy as sa

from kamengd.audit.models import AuditEntry
from kamengd.catalog.services import available_stock
from kamengd.errors import NotFound
from kamengd.inventory.importer import ImportFileError
from kamengd.inventory.models import CardKey, KeyImport
from kamengd.inventory.services import export_keys, import_keys, iter_plaintext_keys
from kamengd.vault import DecryptionError


def do_import(session, vault, product, text, **kw):
    data = text if isinstance(text, bytes) else text.encode()
    return import_keys(session, vault, product_id=product.id, fh=io.BytesIO(data), actor="cli:test", **kw)


def test_import_counts_and_stores_ciphertext(backend, session, vault, make_product):
    p = make_product()
    r = do_import(session, vault, p, "  AAA  \r\nBBB\n\n\nAAA\n卡密一\n \t \n")
    assert (r.imported, r.duplicates, r.blank) == (3, 1, 3)
    assert available_stock(session, p.id) == 3
    rows = session.scalars(sa.select(CardKey).where(CardKey.product_id == p.id)).all()
    assert {bytes(r.fingerprint) for r in rows}.__len__() == 3
    for row in rows:
        assert b"AAA" not in bytes(row.ciphertext) and len(bytes(row.nonce)) == 12
    assert sorted(iter_plaintext_keys(session, vault, p.id, ["available"])) == sorted(["AAA", "BBB", "卡密一"])
    run = session.scalars(sa.select(KeyImport).where(KeyImport.product_id == p.id)).one()
    assert (run.imported, run.duplicates, run.blank) == (3, 1, 3)


def test_duplicates_against_stock_and_per_product(backend, session, vault, make_product):
    p, q = make_product(), make_product(name="other")
    do_import(session, vault, p, "K1\nK2\n")
    r = do_import(session, vault, p, "K2\nK3\nK3\n")
    assert (r.imported, r.duplicates) == (1, 2)
    # The same key may be stock of another product.
    assert do_import(session, vault, q, "K1\n").imported == 1


def test_import_is_audited_without_the_keys(backend, session, vault, make_product):
    p = make_product()
    do_import(session, vault, p, "SECRET-KEY-1\n")
    entry = session.scalars(sa.select(AuditEntry).order_by(AuditEntry.id.desc()).limit(1)).one()
    assert entry.action == "keys.import" and entry.target == f"product:{p.id}"
    assert '"imported":1' in entry.details and "SECRET-KEY-1" not in entry.details


def test_bad_line_is_named(backend, session, vault, make_product):
    p = make_product()
    with pytest.raises(ImportFileError, match="line 3: key is 9 characters"):
        do_import(session, vault, p, "ok1\nok2\n123456789\nok4\n", max_key_length=8, batch_size=1)


def test_unknown_product(backend, session, vault):
    with pytest.raises(NotFound):
        import_keys(session, vault, product_id=999999, fh=io.BytesIO(b"x"), actor="t")


def test_copied_ciphertext_does_not_decrypt(backend, session, vault, make_product):
    p = make_product()
    do_import(session, vault, p, "FIRST\nSECOND\n")
    a, b = session.scalars(sa.select(CardKey).where(CardKey.product_id == p.id).order_by(CardKey.id)).all()
    b.ciphertext, b.nonce = a.ciphertext, a.nonce
    session.flush()
    with pytest.raises(DecryptionError):
        list(iter_plaintext_keys(session, vault, p.id, None))


def test_export(backend, session, vault, make_product, tmp_path):
    p = make_product()
    do_import(session, vault, p, "E1\nE2\nE3\n")
    # Within one import keys are sold (and exported) in an order of their own.
    first = next(iter(iter_plaintext_keys(session, vault, p.id, None)))
    session.execute(sa.update(CardKey).where(CardKey.product_id == p.id,
                                             CardKey.id == sa.select(sa.func.min(CardKey.id)).where(
                                                 CardKey.product_id == p.id).scalar_subquery())
                    .values(status="sold"))
    out = tmp_path / "out.txt"
    result = export_keys(session, vault, product_id=p.id, output=out, actor="cli:test", status="available")
    assert not out.exists()   # appears only once the audit entry is committed
    result.finish()
    text = out.read_text()
    assert text.endswith("\n") and sorted(text.splitlines()) == sorted({"E1", "E2", "E3"} - {first})
    assert (out.stat().st_mode & 0o777) == 0o600
    sold = export_keys(session, vault, product_id=p.id, output=tmp_path / "sold.txt", actor="t", status="sold")
    sold.finish()
    assert (tmp_path / "sold.txt").read_text() == f"{first}\n"
    every = export_keys(session, vault, product_id=p.id, output=tmp_path / "all.txt", actor="t", status="all")
    every.discard()
    assert every.count == 3 and not (tmp_path / "all.txt").exists()
    assert list(tmp_path.glob(".kamengd-export-*")) == []
    actions = session.scalars(sa.select(AuditEntry.action).order_by(AuditEntry.id.desc()).limit(3)).all()
    assert actions == ["keys.export"] * 3


def test_large_import_streams(backend, session, vault, make_product):
    """Memory stays flat: 100,000 keys would need well over 20 MB held at once."""
    p = make_product()
    data = b"".join(b"STREAM-%08d-abcdefghijklmnopqrstuvwxyz\n" % i for i in range(100_000))
    tracemalloc.start()
    try:
        r = do_import(session, vault, p, data, batch_size=2000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.imported == 100_000
    assert peak < 8 * 1024 * 1024, f"peak traced memory {peak / 1e6:.1f} MB"

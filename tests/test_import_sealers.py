"""Imports read and sealed by child processes (kamengd.inventory.sealer), as big files are.

Each test forces the child processes on a small real file (sealer_min_bytes=0)
and small batches, so several processes share it batch by batch.
"""
import os
import signal

import pytest
import sqlalchemy as sa

from kamengd.catalog.services import available_stock
from kamengd.inventory import sealer as sealer_module
from kamengd.inventory.importer import ImportFileError
from kamengd.inventory.models import CardKey, KeyImport
from kamengd.inventory.sealer import SealerFailed, Sealers, parallel_readers
from kamengd.inventory import services
from kamengd.inventory.services import import_keys, iter_plaintext_keys
from kamengd.inventory.sealing import seal_lines


def import_file(session, vault, product, tmp_path, data: bytes, **kw):
    path = tmp_path / "keys.txt"
    path.write_bytes(data)
    kw.setdefault("batch_size", 3)
    savepoint = session.begin_nested()   # the caller's transaction: the CLI rolls back on an error
    try:
        with open(path, "rb") as fh:
            result = import_keys(session, vault, product_id=product.id, fh=fh, actor="cli:test",
                                 sealer_min_bytes=0, **kw)
    except BaseException:
        savepoint.rollback()
        raise
    savepoint.commit()
    return result


def test_this_machine_runs_several_sealers():
    # The tests below are only worth something if the file is really shared.
    assert parallel_readers() >= 2


@pytest.mark.parametrize("sorted_move", [False, True], ids=["file-order", "fingerprint-order"])
def test_sealers_import_counts_duplicates_and_blanks(backend, session, vault, make_product, tmp_path,
                                                      monkeypatch, sorted_move):
    if sorted_move:   # as a big import is moved into stock
        monkeypatch.setattr(services, "SORTED_MOVE_MIN", 0)
    p = make_product()
    keys = [f"KEY-{i:04d}" for i in range(40)]
    lines = keys[:10] + ["", "  "] + keys[10:] + ["KEY-0003", "KEY-0039", "", "卡密一"]
    r = import_file(session, vault, p, tmp_path, "\r\n".join(lines).encode())
    assert (r.imported, r.duplicates, r.blank) == (41, 2, 3)
    assert available_stock(session, p.id) == 41
    assert sorted(iter_plaintext_keys(session, vault, p.id, None)) == sorted(keys + ["卡密一"])
    run = session.scalars(sa.select(KeyImport).where(KeyImport.product_id == p.id)).one()
    assert (run.imported, run.duplicates, run.blank) == (41, 2, 3)
    # Against what is in stock already, and stored as the in-process path stores it.
    again = import_file(session, vault, p, tmp_path, b"KEY-0000\nNEW-1\nKEY-0020\n")
    assert (again.imported, again.duplicates) == (1, 2)
    row = session.scalars(sa.select(CardKey).where(CardKey.product_id == p.id).limit(1)).one()
    assert bytes(row.fingerprint) == vault.fingerprint(p.id, vault.decrypt_card_key(
        p.id, bytes(row.fingerprint), bytes(row.nonce), bytes(row.ciphertext), row.key_version))
    assert row.key_version == vault.current_version and b"KEY-" not in bytes(row.ciphertext)


def test_a_small_import_is_sold_in_the_files_order(backend, session, vault, make_product, tmp_path):
    p = make_product()
    keys = [f"ORDERED-{i:03d}-{(i * 7919) % 1000:03d}" for i in range(200)]
    import_file(session, vault, p, tmp_path, "\n".join(keys).encode())
    assert list(iter_plaintext_keys(session, vault, p.id, None)) == keys


def test_sealers_read_other_encodings(backend, session, vault, make_product, tmp_path):
    p = make_product()
    keys = [f"卡密-{i}" for i in range(20)]
    assert import_file(session, vault, p, tmp_path, "\n".join(keys).encode("gb18030")).imported == 20
    q = make_product(name="utf16")
    r = import_file(session, vault, q, tmp_path, "\n".join(keys).encode("utf-16"))
    assert (r.imported, r.encoding) == (20, "utf-16")
    assert sorted(iter_plaintext_keys(session, vault, q.id, None)) == sorted(keys)


@pytest.mark.parametrize("bad_line", [2, 17, 40])
def test_a_bad_line_anywhere_imports_nothing(backend, session, vault, make_product, tmp_path, bad_line):
    """Whichever process owns the batch, the first bad line is named and nothing is written."""
    p = make_product()
    lines = [f"OK-{i}" for i in range(1, 41)]
    lines[bad_line - 1] = "X" * 30
    with pytest.raises(ImportFileError, match=f"line {bad_line}: key is 30 characters"):
        import_file(session, vault, p, tmp_path, "\n".join(lines).encode(), max_key_length=20)
    assert available_stock(session, p.id) == 0
    assert session.scalar(sa.select(sa.func.count()).select_from(KeyImport)
                          .where(KeyImport.product_id == p.id)) == 0


def test_undecodable_file_imports_nothing(backend, session, vault, make_product, tmp_path):
    p = make_product()
    with pytest.raises(ImportFileError, match="does not decode as utf-8"):
        import_file(session, vault, p, tmp_path, b"OK-1\nOK-2\n\xff\xfe\xfa\n", encoding="utf-8")
    assert available_stock(session, p.id) == 0


def test_every_batch_is_sealed_by_exactly_one_reader(vault):
    lines = [(i, f"K{i}") for i in range(1, 24)] + [(24, ""), (25, "")]
    shares = [list(seal_lines(vault, 7, lines, max_key_length=10, batch_size=4, share=(k, 3))) for k in range(3)]
    assert sum(b.keys for share in shares for b in share) == 23
    assert sum(b.blank for share in shares for b in share) == 2
    assert [len(share) for share in shares] == [2, 2, 2]


def test_a_reader_that_dies_fails_the_import_cleanly(backend, session, vault, make_product, tmp_path, monkeypatch):
    p = make_product()
    started = []
    real_start = sealer_module.SealerProcess.start

    def start_then_kill(self):
        encoding = real_start(self)
        if not started:
            started.append(self._proc.pid)
            os.kill(self._proc.pid, signal.SIGKILL)
        return encoding
    monkeypatch.setattr(sealer_module.SealerProcess, "start", start_then_kill)
    data = "\n".join(f"K-{i}" for i in range(3000)).encode()
    with pytest.raises(SealerFailed, match="nothing imported"):
        import_file(session, vault, p, tmp_path, data)
    assert available_stock(session, p.id) == 0


def test_readers_stop_with_a_failed_import(vault, tmp_path):
    path = tmp_path / "k.txt"
    path.write_bytes(b"\n".join(b"K-%d" % i for i in range(200_000)))
    with open(path, "rb") as fh:
        with pytest.raises(RuntimeError), Sealers(vault, fh, count=2, product_id=1, encoding=None,
                                                   max_key_length=50, batch_size=100) as sealers:
            sealers.start()
            next(sealers.batches())
            procs = [proc._proc for proc in sealers._procs]
            raise RuntimeError("the transaction failed")
    assert all(proc.returncode is not None for proc in procs)


def test_sealers_find_duplicates_under_an_older_key_version(backend, make_install, tmp_path):
    """Between `key rotate --prepare` and the re-encryption, stock carries version-1
    fingerprints while imports write version 2: the readers send both."""
    import json

    from conftest import run_cli
    from test_backup import populate

    from kamengd.app import create_app
    from kamengd.extensions import db
    from kamengd.vault import load_vault

    cfg = make_install(backend)
    keys, _ = populate(cfg, n_keys=30)
    assert json.loads(run_cli("key", "rotate", "--prepare", "--json", config=cfg.path, check=True).out)["version"] == 2
    path = tmp_path / "dup.txt"
    path.write_text("\n".join(keys[:25] + ["BRAND-NEW-1", "BRAND-NEW-2"]), encoding="utf-8")
    application = create_app(cfg)
    with application.app_context():
        vault = load_vault(cfg.security.data_key_file)
        assert vault.versions == [1, 2] and vault.current_version == 2
        with open(path, "rb") as fh:
            result = import_keys(db.session, vault, product_id=1, fh=fh, actor="t", batch_size=4,
                                 sealer_min_bytes=0)
        db.session.commit()
        versions = dict(db.session.execute(sa.text(
            "SELECT key_version, COUNT(*) FROM card_keys GROUP BY key_version")).all())
        db.session.remove()
        db.engine.dispose()
    assert (result.imported, result.duplicates) == (2, 25)
    assert versions == {1: 30, 2: 2}


def test_the_cli_imports_a_big_file_and_a_big_pipe_with_readers(backend, make_install, tmp_path):
    """Over SEALER_MIN_BYTES, as a merchant's script runs it: from a file, and from
    stdin (spooled to a deleted temporary file the readers open through /proc)."""
    import json
    import secrets

    from conftest import assert_one_line_error, run_cli

    cfg = make_install(backend)
    product = json.loads(run_cli("product", "create", "--name", "big", "--price", "1.00", "--json",
                                 config=cfg.path, check=True).out)["id"]
    keys = [f"BIG-{secrets.token_hex(10)}" for _ in range(200_000)]
    data = ("\n".join(keys) + "\n").encode()
    assert len(data) > services.SEALER_MIN_BYTES
    path = tmp_path / "big.txt"
    path.write_bytes(data[:len(data) // 2])
    first = json.loads(run_cli("keys", "import", "--product", product, path, "--json", config=cfg.path,
                               check=True).out)
    assert first == {"imported": 100_000, "duplicates": 0, "blank": 0}
    piped = json.loads(run_cli("keys", "import", "--product", product, "-", "--json", input=data,
                               config=cfg.path, check=True).out)
    assert piped == {"imported": 100_000, "duplicates": 100_000, "blank": 0}
    bad = data + b"\x01BAD\n"
    assert_one_line_error(run_cli("keys", "import", "--product", product, "-", input=bad, config=cfg.path),
                          "line 200001", "control characters", "nothing imported")
    out = tmp_path / "all.txt"
    run_cli("keys", "export", "--product", product, "--output", out, config=cfg.path, check=True)
    assert sorted(out.read_text().split()) == sorted(keys)

"""A damaged or foreign backup given to `kamengd restore` is refused before anything is touched.

Truncated and bit-flipped archives (plain and sealed), a tar.gz that is not a
kamengd backup, and a genuine backup of another shop (its keys sealed with
another data key): each is one line on stderr, a non-zero exit, and every row
of every table exactly as it was — compared row by row, not by counts.
"""
from __future__ import annotations

import io
import tarfile

import pytest
import sqlalchemy as sa

from conftest import assert_one_line_error, run_cli
from test_backup import passphrase_file, populate


def every_row(cfg) -> dict[str, list]:
    """Every row of every table, in primary-key order."""
    engine = sa.create_engine(cfg.database_url)
    try:
        meta = sa.MetaData()
        meta.reflect(engine)
        with engine.connect() as conn:
            return {name: [tuple(r) for r in conn.execute(sa.select(table).order_by(*table.primary_key.columns
                                                                                    or table.columns))]
                    for name, table in sorted(meta.tables.items())}
    finally:
        engine.dispose()


@pytest.fixture
def shop(backend, make_install, tmp_path):
    cfg = make_install(backend)
    populate(cfg, n_keys=50)
    archive = tmp_path / "shop.tar.gz"
    run_cli("backup", "--output", archive, config=cfg.path, check=True)
    sealed = tmp_path / "shop.sealed"
    run_cli("backup", "--output", sealed, "--passphrase-file", passphrase_file(tmp_path), config=cfg.path,
            check=True)
    return cfg, archive, sealed


def damaged(tmp_path, source, name, change) -> str:
    data = bytearray(source.read_bytes())
    path = tmp_path / name
    path.write_bytes(bytes(change(data)))
    return str(path)


def cut(data):
    return data[: len(data) * 2 // 3]


def flip(data):
    data[len(data) * 2 // 3] ^= 0x10
    return data


@pytest.mark.parametrize("kind", ["truncated", "bit-flipped"])
def test_a_damaged_plain_archive_is_refused_untouched(shop, tmp_path, kind):
    cfg, archive, _ = shop
    path = damaged(tmp_path, archive, kind, cut if kind == "truncated" else flip)
    before = every_row(cfg)
    proc = run_cli("restore", path, "--force", config=cfg.path)
    # A flip inside the compressed stream shows as a member that fails its checksum.
    assert_one_line_error(proc, "damaged")
    assert every_row(cfg) == before


@pytest.mark.parametrize("kind", ["truncated", "bit-flipped"])
def test_a_damaged_sealed_archive_is_refused_untouched(shop, tmp_path, kind):
    cfg, _, sealed = shop
    path = damaged(tmp_path, sealed, kind, cut if kind == "truncated" else flip)
    before = every_row(cfg)
    proc = run_cli("restore", path, "--force", "--passphrase-file", passphrase_file(tmp_path), config=cfg.path)
    assert_one_line_error(proc, "truncated" if kind == "truncated" else "damaged")
    assert every_row(cfg) == before


def test_a_foreign_tar_is_refused_untouched(shop, tmp_path):
    cfg, _, _ = shop
    foreign = tmp_path / "photos.tar.gz"
    with tarfile.open(foreign, "w:gz") as tar:
        body = b"not a kamengd table\n" * 100
        info = tarfile.TarInfo("holiday/notes.txt")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    before = every_row(cfg)
    assert_one_line_error(run_cli("restore", foreign, "--force", config=cfg.path), "not a kamengd backup")
    assert every_row(cfg) == before


def test_another_shops_backup_is_refused_untouched(shop, backend, make_install, tmp_path):
    cfg, _, _ = shop
    other = make_install(backend)          # its own data key
    populate(other, n_keys=20)
    theirs = tmp_path / "theirs.tar.gz"
    run_cli("backup", "--output", theirs, config=other.path, check=True)
    before = every_row(cfg)
    assert_one_line_error(run_cli("restore", theirs, "--force", config=cfg.path), "does not open this backup")
    assert every_row(cfg) == before

"""Backups and restores through the real CLI: SQLite <-> MariaDB round trips, sealed archives,
key backups, and every kind of bad input refused before anything changes."""
import base64
import dataclasses
import datetime as dt
import io
import json
import os
import tarfile
import threading

import pytest
import sqlalchemy as sa

from conftest import assert_one_line_error, run_cli
from kamengd.database import make_engine

PASSPHRASE = "correct horse battery staple"


def passphrase_file(tmp_path, text=PASSPHRASE):
    path = tmp_path / f"pass-{len(text)}-{abs(hash(text)) % 10000}"
    path.write_text(text + "\n")
    return path


def populate(cfg, n_keys=300):
    """A small shop: a product with keys, a channel, a delivered order and a pending one."""
    from kamengd.app import create_app
    from kamengd.context import get_vault
    from kamengd.catalog.services import create_product
    from kamengd.extensions import db
    from kamengd.inventory.services import import_keys
    from kamengd.orders.services import create_order
    from kamengd.payments.callbacks import handle_epay_notify
    from kamengd.payments.services import add_channel
    from test_orders import KEY, callback

    app = create_app(dataclasses.replace(cfg, ratelimit=dataclasses.replace(cfg.ratelimit, enabled=False)))
    with app.app_context():
        s, vault = db.session, get_vault()
        p = create_product(s, name="月卡 \"quoted\"", price_cents=990, actor="t")
        keys = [f"CARD-{i:05d}-密钥" for i in range(n_keys)]
        import_keys(s, vault, product_id=p.id, fh=io.BytesIO("\n".join(keys).encode()), actor="t")
        add_channel(s, vault, channel_type="epay", code="epay", actor="t",
                    options={"gateway": "http://gw.example", "pid": "1001", "key": KEY})
        s.commit()
        paid = create_order(s, product_id=p.id, quantity=2, email="buyer@example.com", channel_code="epay",
                            query_password="secret-pw").order
        s.commit()
        assert handle_epay_notify(s, vault, "epay", callback(paid)).recorded
        create_order(s, product_id=p.id, quantity=1, email="later@example.com", channel_code="epay")
        s.commit()
        order_no = paid.order_no
        db.session.remove()
        db.engine.dispose()
    return keys, order_no


def counts(cfg):
    engine = make_engine(cfg.database_url, pooled=False)
    with engine.connect() as conn:
        names = [n for n in sa.inspect(conn).get_table_names()
                 if n not in ("alembic_version", "scheduler_lease", "server_processes")]
        found = {n: conn.execute(sa.text(f"SELECT COUNT(*) FROM {n}")).scalar_one() for n in names}
    engine.dispose()
    return found


def delivered_keys(cfg, order_no):
    from kamengd.app import create_app
    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.orders.services import find_order_for_buyer, order_keys

    app = create_app(cfg)
    with app.app_context():
        order = find_order_for_buyer(db.session, order_no, query_password="secret-pw")
        keys = order_keys(db.session, get_vault(), order)
        db.session.remove()
        db.engine.dispose()
    return keys


@pytest.fixture
def other_backend(backend, request):
    if "mysql" not in request.config.kamengd_backends:
        pytest.skip("needs --db mysql")
    return "mysql" if backend == "sqlite" else "sqlite"


def test_round_trip_between_backends(backend, other_backend, make_install, tmp_path):
    """SQLite -> MariaDB and MariaDB -> SQLite: identical row counts, every key decrypts, orders readable."""
    source, target = make_install(backend), make_install(other_backend)
    keys, order_no = populate(source)
    archive, key_file, pw = tmp_path / "shop.tar.gz", tmp_path / "data.key.backup", passphrase_file(tmp_path)
    made = json.loads(run_cli("backup", "--output", archive, "--json", config=source.path, check=True).out)
    assert made["rows"]["card_keys"] == len(keys) and made["sealed"] is False and oct(archive.stat().st_mode)[-3:] == "600"
    run_cli("key", "backup", "--output", key_file, "--passphrase-file", pw, config=source.path, check=True)
    expected = made["rows"]   # the database as the backup saw it

    # The target has its own key: the backup's card keys do not open with it, so nothing happens.
    before = counts(target)
    assert_one_line_error(run_cli("restore", archive, config=target.path), "kamengd key restore")
    assert counts(target) == before
    assert expected == {k: v for k, v in counts(source).items() if k in expected} | {
        "audit_log": expected["audit_log"], "ops_records": 0}   # since then: the backups' own records
    restored_key = json.loads(run_cli("key", "restore", key_file, "--passphrase-file", pw, "--json",
                                      config=target.path, check=True).out)
    assert restored_key["versions"] == [1] and os.path.exists(restored_key["old_key_file"])
    out = json.loads(run_cli("restore", archive, "--json", config=target.path, check=True).out)
    assert out["keys_decrypted"] == len(keys)
    after = counts(target)
    after["audit_log"] -= 1          # the restore itself is audited on the target
    assert after == expected
    assert delivered_keys(target, order_no) == delivered_keys(source, order_no) == keys[:2]
    run_cli("audit", "verify", config=target.path, check=True)
    assert json.loads(run_cli("product", "list", "--json", config=target.path, check=True).out)["products"][0][
        "stock"] == len(keys) - 3


def test_the_archive_holds_no_secret(backend, make_install, tmp_path):
    cfg = make_install(backend)
    keys, _ = populate(cfg, n_keys=50)
    archive = tmp_path / "b.tar.gz"
    run_cli("backup", "--output", archive, config=cfg.path, check=True)
    raw = b""
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            raw += tar.extractfile(member).read()
    data_key = cfg.security.data_key_file.read_text().strip().splitlines()[-1].split(":", 1)[1]
    for secret in [data_key.encode(), base64.b64decode(data_key), b"merchant-key", *(k.encode() for k in keys)]:
        assert secret not in raw
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
    assert manifest["format"] == "kamengd-backup" and manifest["schema_revision"]
    assert all(len(t["sha256"]) == 64 for t in manifest["tables"])


def test_sealed_backup_and_bad_input_change_nothing(backend, make_install, tmp_path):
    cfg = make_install(backend)
    populate(cfg, n_keys=20)
    pw, wrong = passphrase_file(tmp_path), passphrase_file(tmp_path, "not the passphrase")
    sealed = tmp_path / "b.sealed"
    at_backup = counts(cfg)
    run_cli("backup", "--output", sealed, "--passphrase-file", pw, config=cfg.path, check=True)
    assert not tarfile.is_tarfile(sealed)
    before = counts(cfg)
    assert_one_line_error(run_cli("restore", sealed, "--force", config=cfg.path), "passphrase")
    assert_one_line_error(run_cli("restore", sealed, "--force", "--passphrase-file", wrong, config=cfg.path),
                          "wrong passphrase")
    data = sealed.read_bytes()
    (tmp_path / "cut").write_bytes(data[: len(data) // 2])
    assert_one_line_error(run_cli("restore", tmp_path / "cut", "--force", "--passphrase-file", pw, config=cfg.path),
                          "truncated")
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 1
    (tmp_path / "flipped").write_bytes(bytes(flipped))
    assert_one_line_error(run_cli("restore", tmp_path / "flipped", "--force", "--passphrase-file", pw,
                                  config=cfg.path), "damaged")
    assert_one_line_error(run_cli("backup", "--output", sealed, config=cfg.path), "already exists")
    assert_one_line_error(run_cli("backup", "--output", tmp_path / "x", "--passphrase-file",
                                  passphrase_file(tmp_path, "short"), config=cfg.path), "at least 8")
    assert_one_line_error(run_cli("restore", tmp_path / "missing.tar.gz", config=cfg.path), "missing.tar.gz")
    assert counts(cfg) == before
    # The shop holds data: a restore needs --force, then works (sealed).
    assert_one_line_error(run_cli("restore", sealed, "--passphrase-file", pw, config=cfg.path), "--force")
    run_cli("restore", sealed, "--force", "--passphrase-file", pw, config=cfg.path, check=True)
    after = counts(cfg)
    after["audit_log"] -= 1
    assert after == at_backup


def _repack(src, dest, change):
    """Rewrite an archive member by member; `change(name, bytes) -> bytes`."""
    with tarfile.open(src) as tin, tarfile.open(dest, "w:gz") as tout:
        for member in tin.getmembers():
            body = change(member.name, tin.extractfile(member).read())
            member.size = len(body)
            tout.addfile(member, io.BytesIO(body))


def test_tampered_or_newer_backups_are_refused(backend, make_install, tmp_path):
    cfg = make_install(backend)
    populate(cfg, n_keys=20)
    archive = tmp_path / "b.tar.gz"
    run_cli("backup", "--output", archive, config=cfg.path, check=True)
    before = counts(cfg)

    def altered_row(name, body):
        return body.replace(b"later@example.com", b"LATER@example.com") if name == "tables/orders.jsonl" else body
    _repack(archive, tmp_path / "altered.tar.gz", altered_row)
    assert_one_line_error(run_cli("restore", tmp_path / "altered.tar.gz", "--force", config=cfg.path),
                          "tables/orders.jsonl does not match its checksum")

    def newer(name, body):
        if name != "manifest.json":
            return body
        manifest = json.loads(body)
        manifest["schema_revision"] = "9999"
        return json.dumps(manifest).encode()
    _repack(archive, tmp_path / "newer.tar.gz", newer)
    assert_one_line_error(run_cli("restore", tmp_path / "newer.tar.gz", "--force", config=cfg.path),
                          "newer than this kamengd")
    _repack(archive, tmp_path / "no-manifest.tar.gz", lambda n, b: b if n != "manifest.json" else b"[]")
    assert_one_line_error(run_cli("restore", tmp_path / "no-manifest.tar.gz", "--force", config=cfg.path),
                          "not a kamengd backup")
    (tmp_path / "junk").write_bytes(os.urandom(5000))
    assert_one_line_error(run_cli("restore", tmp_path / "junk", "--force", config=cfg.path), "not a readable")
    assert counts(cfg) == before


def test_an_older_backup_restores_and_migrates_forward(backend, databases, make_install, tmp_path):
    from kamengd.operations import schema
    from kamengd.backup.archive import write_backup

    old_url = databases.new_url(backend)
    if backend == "sqlite":
        open(old_url.removeprefix("sqlite:///"), "wb").close()
    schema.upgrade(old_url, "0003")
    engine = make_engine(old_url, pooled=False)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO products (name, description, price_cents, currency, delivery_mode, "
                             "low_stock_threshold, min_quantity, max_quantity, is_active, sort_order, created_at, "
                             "updated_at) VALUES ('旧商品', '', 500, 'CNY', 'auto', 3, 1, 10, 1, 0, :t, :t)"),
                     {"t": dt.datetime(2026, 1, 1, 12, 0, 0, 123456)})
    engine.dispose()
    archive = tmp_path / "old.tar.gz"
    assert write_backup(old_url, archive).manifest["schema_revision"] == "0003"
    target = make_install(backend)
    out = json.loads(run_cli("restore", archive, "--json", config=target.path, check=True).out)
    assert out["schema_revision_of_backup"] == "0003" and out["schema_revision"] == schema.head_revision()
    engine = make_engine(target.database_url, pooled=False)
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT name, price_cents, low_stock_alerted, created_at FROM products")).one()
    engine.dispose()
    assert (row.name, row.price_cents, bool(row.low_stock_alerted)) == ("旧商品", 500, False)
    assert str(row.created_at) == "2026-01-01 12:00:00.123456"   # microseconds kept, on both backends


def test_a_backup_taken_while_selling_is_consistent(backend, make_install, tmp_path):
    """Imports (each audited, each moving the audit head) run while the backup is taken: the
    restored audit chain still verifies, so the snapshot saw one moment of the database."""
    cfg = make_install(backend)
    populate(cfg, n_keys=500)
    stop, errors = threading.Event(), []

    def keep_importing():
        n = 0
        while not stop.is_set():
            f = tmp_path / f"more-{n}.txt"
            f.write_text("\n".join(f"MORE-{n}-{i}" for i in range(100)))
            proc = run_cli("keys", "import", "--product", "1", f, config=cfg.path)
            if proc.returncode != 0:
                errors.append(proc.err)
            n += 1
    writer = threading.Thread(target=keep_importing)
    writer.start()
    try:
        archives = []
        for i in range(2):
            archives.append(tmp_path / f"live-{i}.tar.gz")
            run_cli("backup", "--output", archives[-1], config=cfg.path, check=True)
    finally:
        stop.set()
        writer.join()
    assert not errors
    target = make_install(backend)
    shutil_key = cfg.security.data_key_file.read_bytes()
    target.security.data_key_file.unlink()
    target.security.data_key_file.write_bytes(shutil_key)
    target.security.data_key_file.chmod(0o600)
    for archive in archives:
        run_cli("restore", archive, "--force", config=target.path, check=True)
        run_cli("audit", "verify", config=target.path, check=True)


def test_key_backup_bad_input(backend, make_install, tmp_path):
    cfg = make_install(backend)
    pw = passphrase_file(tmp_path)
    out = tmp_path / "key.bak"
    run_cli("key", "backup", "--output", out, "--passphrase-file", pw, config=cfg.path, check=True)
    assert oct(out.stat().st_mode)[-3:] == "600" and cfg.security.data_key_file.read_bytes() not in out.read_bytes()
    original = cfg.security.data_key_file.read_bytes()
    assert_one_line_error(run_cli("key", "backup", "--output", out, "--passphrase-file", pw, config=cfg.path),
                          "already exists")
    assert_one_line_error(run_cli("key", "restore", out, "--passphrase-file",
                                  passphrase_file(tmp_path, "wrong passphrase"), config=cfg.path), "wrong passphrase")
    assert_one_line_error(run_cli("key", "restore", out, config=cfg.path), "--passphrase-file")
    archive = tmp_path / "b.sealed"
    run_cli("backup", "--output", archive, "--passphrase-file", pw, config=cfg.path, check=True)
    assert_one_line_error(run_cli("key", "restore", archive, "--passphrase-file", pw, config=cfg.path),
                          "backup archive, not a key backup")
    assert cfg.security.data_key_file.read_bytes() == original
    assert sorted(p.name for p in cfg.security.data_key_file.parent.iterdir() if "replaced" in p.name) == []


def test_daily_backups_keep_the_newest(backend, make_install, tmp_path):
    from kamengd.app import create_app
    from kamengd.backup.services import daily_backup
    from kamengd.extensions import db

    cfg = make_install(backend)
    cfg = dataclasses.replace(cfg, backup=dataclasses.replace(cfg.backup, directory=tmp_path / "daily", keep=2))
    app = create_app(cfg)
    now = dt.datetime.utcnow()
    with app.app_context():
        results = []
        for day in range(4):
            results.append(daily_backup(db.session, cfg, now=now + dt.timedelta(days=day)))
            assert daily_backup(db.session, cfg, now=now + dt.timedelta(days=day, hours=1)) == {
                "skipped": "recent backup"}
        db.session.remove()
    files = sorted(p.name for p in (tmp_path / "daily").iterdir())
    assert len(files) == 2 and files == sorted(r["file"] for r in results[-2:])
    # Named after the job's clock, not the wall clock.
    assert files[-1] == f"kamengd-daily-{now + dt.timedelta(days=3):%Y%m%dT%H%M%SZ}.tar.gz"


def test_backups_in_one_second_all_land_and_prune_in_order(backend, make_install, tmp_path):
    from kamengd.backup.services import DAILY_PREFIX, backup_to_dir, prune_daily

    cfg = make_install(backend)
    cfg = dataclasses.replace(cfg, backup=dataclasses.replace(cfg.backup, directory=tmp_path / "daily"))
    now = dt.datetime(2026, 12, 4, 21, 0, 0)
    made = [backup_to_dir(cfg, DAILY_PREFIX, now=now).path.name for _ in range(3)]
    stamp = f"{DAILY_PREFIX}20261204T210000Z"
    assert made == [f"{stamp}.tar.gz", f"{stamp}_2.tar.gz", f"{stamp}_3.tar.gz"]
    gone = prune_daily(tmp_path / "daily", keep=1)
    assert [p.name for p in gone] == made[:2]
    assert sorted(p.name for p in (tmp_path / "daily").iterdir()) == made[2:]
    assert oct((tmp_path / "daily").stat().st_mode)[-3:] == "700"


def test_doctor_wants_a_backup_and_a_key_backup(backend, make_install, tmp_path):
    cfg = make_install(backend)
    run_cli("scheduler", "--once", config=cfg.path, check=True)   # the heartbeat check passes
    out = run_cli("doctor", config=cfg.path, check=True).out
    assert "WARN  key backup: the data key was never backed up" in out
    assert "free disk" in out
    pw = passphrase_file(tmp_path)
    run_cli("key", "backup", "--output", tmp_path / "k", "--passphrase-file", pw, config=cfg.path, check=True)
    out = run_cli("doctor", config=cfg.path, check=True).out
    assert "ok    key backup: made" in out and "ok    backup: last 0 h ago" in out   # the daily job ran
    run_cli("key", "rotate", config=cfg.path, check=True)
    out = run_cli("doctor", "--json", config=cfg.path, check=True).out
    checks = {c["name"]: c for c in json.loads(out)["checks"]}
    assert checks["key backup"]["warning"] and "version 2" in checks["key backup"]["detail"]
    # A key file the service user does not own is a failure, not a warning.
    if os.geteuid() == 0:
        os.chown(cfg.security.data_key_file, 12345, 12345)
        proc = run_cli("doctor", config=cfg.path)
        assert proc.returncode != 0 and "FAIL  data key file" in proc.out and "owned by uid 12345" in proc.out


def test_a_missing_key_file_or_a_dead_database_is_one_line(backend, make_install, tmp_path):
    cfg = make_install(backend)
    archive = tmp_path / "b.tar.gz"
    run_cli("backup", "--output", archive, config=cfg.path, check=True)
    dead = {"KAMENGD_DATABASE_URL": "mysql+pymysql://root@127.0.0.1:1/nowhere"}
    assert_one_line_error(run_cli("backup", "--output", tmp_path / "c.tar.gz", config=cfg.path, env=dead),
                          "database")
    assert_one_line_error(run_cli("restore", archive, "--force", config=cfg.path, env=dead), "database")
    assert not (tmp_path / "c.tar.gz").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".kamengd")]
    before = counts(cfg)
    cfg.security.data_key_file.rename(tmp_path / "away")
    assert_one_line_error(run_cli("restore", archive, "--force", config=cfg.path), "data key file")
    assert_one_line_error(run_cli("key", "backup", "--output", tmp_path / "k", "--passphrase-file",
                                  passphrase_file(tmp_path), config=cfg.path), "data key file")
    assert counts(cfg) == before and not (tmp_path / "k").exists()


def test_a_backup_whose_keys_the_key_file_cannot_all_open_is_refused_first(backend, make_install, tmp_path):
    """Taken mid-rotation (versions 1 and 2), restored after version 1 was retired: refused before
    anything changes, not after the tables were replaced."""
    from kamengd.app import create_app
    from kamengd.extensions import db
    from kamengd.operations.rotation import reencrypt_card_keys
    from kamengd.vault import load_vault

    cfg = make_install(backend)
    populate(cfg, n_keys=120)
    run_cli("key", "rotate", "--prepare", config=cfg.path, check=True)

    class Crash(Exception):
        pass

    def crash(done):
        raise Crash
    app = create_app(cfg)
    with app.app_context():
        with pytest.raises(Crash):
            reencrypt_card_keys(db.session, load_vault(cfg.security.data_key_file), batch=50, progress=crash)
        db.session.remove()
        db.engine.dispose()
    archive = tmp_path / "mid.tar.gz"
    run_cli("backup", "--output", archive, config=cfg.path, check=True)
    run_cli("key", "rotate", config=cfg.path, check=True)
    run_cli("key", "retire", config=cfg.path, check=True)
    before = counts(cfg)
    assert_one_line_error(run_cli("restore", archive, "--force", config=cfg.path), "does not open this backup")
    assert counts(cfg) == before


def test_a_channel_secret_the_key_cannot_open_is_refused(backend, make_install, tmp_path):
    source, target = make_install(backend), make_install(backend)
    run_cli("channel", "add", "--type", "epay", "--code", "epay", "--option", "gateway=http://g", "--option",
            "pid=1", "--option", "key=k3y-0123456789abcdef", config=source.path, check=True)
    archive = tmp_path / "ch.tar.gz"
    run_cli("backup", "--output", archive, config=source.path, check=True)
    assert_one_line_error(run_cli("restore", archive, config=target.path), "does not open this backup")


def test_a_forged_sealed_header_is_refused_at_once(backend, make_install, tmp_path):
    import time

    cfg = make_install(backend)
    pw = passphrase_file(tmp_path)
    sealed = tmp_path / "s.sealed"
    run_cli("backup", "--output", sealed, "--passphrase-file", pw, config=cfg.path, check=True)
    data = bytearray(sealed.read_bytes())
    data[16:19] = bytes([22, 32, 16])      # scrypt log2(N), r, p: gigabytes of memory if believed
    (tmp_path / "forged").write_bytes(bytes(data))
    started = time.monotonic()
    assert_one_line_error(run_cli("restore", tmp_path / "forged", "--force", "--passphrase-file", pw,
                                  config=cfg.path), "damaged")
    assert time.monotonic() - started < 20


def test_scheduled_sealed_backups_open_with_the_same_passphrase_file(backend, make_install, tmp_path):
    from kamengd.app import create_app
    from kamengd.backup.services import daily_backup
    from kamengd.extensions import db

    cfg = make_install(backend)
    pw = tmp_path / "pw"
    pw.write_text(" spaces around it \n")
    cfg = dataclasses.replace(cfg, backup=dataclasses.replace(cfg.backup, directory=tmp_path / "d",
                                                              passphrase_file=pw))
    app = create_app(cfg)
    with app.app_context():
        made = daily_backup(db.session, cfg)
        db.session.remove()
        db.engine.dispose()
    archive = tmp_path / "d" / made["file"]
    assert archive.name.endswith(".sealed")
    run_cli("restore", archive, "--force", "--passphrase-file", pw, config=cfg.path, check=True)


def test_restore_and_upgrade_refuse_while_a_web_server_runs(backend, make_install, start_server, tmp_path):
    cfg = make_install(backend)
    archive = tmp_path / "b.tar.gz"
    run_cli("backup", "--output", archive, config=cfg.path, check=True)
    start_server(cfg.path, "--no-scheduler")
    assert_one_line_error(run_cli("restore", archive, "--force", config=cfg.path), "`kamengd serve`")
    assert json.loads(run_cli("upgrade", "--json", config=cfg.path, check=True).out)["backup"] is None  # at head

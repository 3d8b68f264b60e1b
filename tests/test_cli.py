"""The `kamengd` command in real processes, as CONTRACT.md §1 describes it."""
import json
import os
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import sqlalchemy as sa

from conftest import MYSQL_PREFIX, assert_one_line_error, run_cli, write_password

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def shop(backend, databases, tmp_path):
    """A fresh installation made by `kamengd install`; returns its config path."""
    pw = write_password(tmp_path)
    args = ["install", "--data-dir", tmp_path / "data", "--admin-password-file", pw, "--yes",
            "--site-name", "测试店"]
    if backend != "sqlite":
        args += ["--database-url", databases.new_url(backend)]
    proc = run_cli(*args, check=True)
    config = tmp_path / "data" / "kamengd.toml"
    assert proc.out.strip() == str(config)
    return config


@pytest.fixture
def sqlite_shop(tmp_path):
    """For behaviour that is SQLite's own (files, locks)."""
    run_cli("install", "--data-dir", tmp_path / "data", "--admin-password-file", write_password(tmp_path),
            "--yes", check=True)
    return tmp_path / "data" / "kamengd.toml"


def make_product(config, *extra):
    proc = run_cli("product", "create", "--name", "月卡", "--price", "9.9", *extra, "--json",
                   config=config, check=True)
    return json.loads(proc.out)


def stock(config, product_id):
    products = json.loads(run_cli("product", "list", "--json", config=config, check=True).out)["products"]
    return next(p["stock"] for p in products if p["id"] == product_id)


def audit_actions(config):
    from kamengd.config import load_config
    from kamengd.database import make_engine

    engine = make_engine(load_config(config, env={}).database_url, pooled=False)
    with engine.connect() as conn:
        actions = conn.execute(sa.text("SELECT action FROM audit_log ORDER BY id")).scalars().all()
    engine.dispose()
    return actions


def test_install_layout(backend, shop):
    data = shop.parent
    for name in ("kamengd.toml", "secret_key", "data.key"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
    if backend == "sqlite":
        assert stat.S_IMODE((data / "kamengd.db").stat().st_mode) == 0o600
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert audit_actions(shop) == ["install", "user.create"]
    doctor = run_cli("doctor", config=shop)
    assert doctor.returncode != 0 and "FAIL  scheduler: no scheduler has ever run" in doctor.out
    assert "leader" in run_cli("scheduler", "--once", config=shop, check=True).out
    doctor = run_cli("doctor", config=shop)
    assert doctor.returncode == 0, doctor.out + doctor.err
    assert "FAIL" not in doctor.out


def test_install_refuses_an_existing_installation(backend, shop, tmp_path):
    before = {p.name: p.read_bytes() for p in shop.parent.iterdir() if p.is_file() and p.suffix != ".db"}
    proc = run_cli("install", "--data-dir", shop.parent, "--admin-password-file", write_password(tmp_path),
                   "--yes")
    assert_one_line_error(proc, "already holds an installation")
    after = {p.name: p.read_bytes() for p in shop.parent.iterdir() if p.is_file() and p.suffix != ".db"}
    assert before == after


def test_install_refuses_a_database_in_use(backend, shop, tmp_path):
    if backend == "sqlite":
        url = f"sqlite:///{shop.parent / 'kamengd.db'}"
        fragment = "already exists"
    else:
        from kamengd.config import load_config
        url = load_config(shop, env={}).database.url
        fragment = "already holds a kamengd installation"
    proc = run_cli("install", "--data-dir", tmp_path / "second", "--database-url", url,
                   "--admin-password-file", write_password(tmp_path), "--yes")
    assert_one_line_error(proc, fragment)
    assert not (tmp_path / "second").exists()


def test_install_with_unreachable_database_changes_nothing(tmp_path):
    proc = run_cli("install", "--data-dir", tmp_path / "d", "--yes", "--admin-password-file",
                   write_password(tmp_path), "--database-url", "mysql+pymysql://u:pw@127.0.0.1:1/x")
    assert_one_line_error(proc, "cannot use database")
    assert "pw@" not in proc.err
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--admin-user", "bad user!"], "admin user"),
    (["--database-url", "not a url"], "database URL"),
    (["--database-url", "postgresql://x/y"], "postgresql is not supported"),
])
def test_install_bad_input(tmp_path, args, fragment):
    proc = run_cli("install", "--data-dir", tmp_path / "d", "--yes", "--admin-password-file",
                   write_password(tmp_path), *args)
    assert_one_line_error(proc, fragment)
    assert not (tmp_path / "d").exists()


def test_install_short_password(tmp_path):
    proc = run_cli("install", "--data-dir", tmp_path / "d", "--yes", "--admin-password-file",
                   write_password(tmp_path, "short"))
    assert_one_line_error(proc, "at least 8 characters")


def test_install_generates_a_password(tmp_path):
    proc = run_cli("install", "--data-dir", tmp_path / "d", "--yes", "--json", check=True)
    payload = json.loads(proc.out)
    password_file = tmp_path / "d" / "initial-admin-password"
    assert payload["admin_password_file"] == str(password_file)
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert len(password_file.read_text().strip()) >= 16


def test_product_create_json(backend, shop):
    product = make_product(shop, "--delivery", "manual", "--low-stock", "5")
    assert product["price"] == "9.90" and product["delivery"] == "manual" and product["low_stock"] == 5
    assert isinstance(product["id"], int)


@pytest.mark.parametrize("args, fragment", [
    (["--price", "9.999"], "more than two decimal places"),
    (["--price", "-1"], "more than zero"),
    (["--price", "abc"], "not a decimal amount"),
    (["--price", "1", "--delivery", "drone"], "Invalid value for '--delivery'"),
    (["--price", "1", "--low-stock", "-3"], "--low-stock"),
])
def test_product_create_bad_input(backend, shop, args, fragment):
    proc = run_cli("product", "create", "--name", "x", *args, config=shop)
    assert_one_line_error(proc, fragment)
    assert json.loads(run_cli("product", "list", "--json", config=shop).out)["products"] == []


def test_keys_import_and_export_round_trip(backend, shop, tmp_path):
    pid = make_product(shop)["id"]
    keys_file = tmp_path / "keys.txt"
    keys_file.write_bytes("\ufeffA-1\r\nB-2\r\n\r\n  C-3 \r\nA-1\r\n".encode("utf-8"))
    proc = run_cli("keys", "import", "--product", pid, keys_file, "--json", config=shop, check=True)
    assert json.loads(proc.out) == {"imported": 3, "duplicates": 1, "blank": 1}
    # stdin, GB18030, a key already in stock
    proc = run_cli("keys", "import", "--product", pid, "-", "--json", config=shop,
                   input="卡密-四\nB-2\n".encode("gb18030"), check=True)
    assert json.loads(proc.out) == {"imported": 1, "duplicates": 1, "blank": 0}
    assert stock(shop, pid) == 4
    out = tmp_path / "export.txt"
    run_cli("keys", "export", "--product", pid, "--output", out, config=shop, check=True)
    assert sorted(out.read_text(encoding="utf-8").splitlines()) == ["A-1", "B-2", "C-3", "卡密-四"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    run_cli("keys", "export", "--product", pid, "--output", out, "--status", "sold", config=shop, check=True)
    assert out.read_text() == ""
    assert audit_actions(shop)[-4:] == ["keys.import", "keys.import", "keys.export", "keys.export"]


def test_utf16_import(backend, shop, tmp_path):
    pid = make_product(shop)["id"]
    f = tmp_path / "u16.txt"
    f.write_bytes("\ufeff甲-1\r\n乙-2\r\n".encode("utf-16-le"))
    proc = run_cli("keys", "import", "--product", pid, f, "--json", config=shop, check=True)
    assert json.loads(proc.out)["imported"] == 2


@pytest.mark.parametrize("content, fragment", [
    (b"good-1\ngood-2\n\xff\xfe\x80bad\ngood-4\n", "line 3: the file does not decode"),
    (b"good-1\n" + b"x" * 600 + b"\n", "line 2: key is 600 characters"),
])
def test_bad_import_imports_nothing(backend, shop, tmp_path, content, fragment):
    pid = make_product(shop)["id"]
    f = tmp_path / "bad.txt"
    f.write_bytes(content)
    before = audit_actions(shop)
    proc = run_cli("keys", "import", "--product", pid, f, config=shop)
    assert_one_line_error(proc, fragment, "nothing imported")
    assert stock(shop, pid) == 0
    assert audit_actions(shop) == before


def test_bad_import_after_many_batches_imports_nothing(backend, shop, tmp_path):
    pid = make_product(shop)["id"]
    f = tmp_path / "late-bad.txt"
    f.write_bytes(b"".join(b"K-%06d\n" % i for i in range(12_000)) + b"\xff\n")
    proc = run_cli("keys", "import", "--product", pid, f, config=shop)
    assert_one_line_error(proc, "line 12001")
    assert stock(shop, pid) == 0


def test_keys_cli_bad_input(backend, shop, tmp_path):
    assert_one_line_error(run_cli("keys", "import", "--product", "999", "/etc/hostname", config=shop),
                          "product 999 not found")
    assert_one_line_error(run_cli("keys", "import", "--product", "1", tmp_path / "missing.txt", config=shop),
                          "cannot open")
    pid = make_product(shop)["id"]
    assert_one_line_error(run_cli("keys", "import", "--product", pid, "/etc/hostname", "--encoding", "nope",
                                  config=shop), "unknown encoding")
    assert_one_line_error(run_cli("keys", "export", "--product", pid, "--output", tmp_path / "no" / "x.txt",
                                  config=shop), "does not exist")
    assert_one_line_error(run_cli("keys", "export", "--product", pid, "--output", "x", "--status", "bogus",
                                  config=shop), "--status")


def test_channel_add(backend, shop):
    run_cli("channel", "add", "--type", "epay", "--code", "epay1", "--name", "易支付",
            "--option", "gateway=https://pay.example.com", "--option", "pid=1001",
            "--option", "key=MERCHANTKEY1234567890", config=shop, check=True)
    listed = json.loads(run_cli("channel", "list", "--json", config=shop, check=True).out)["channels"]
    assert listed == [{"id": 1, "code": "epay1", "type": "epay", "name": "易支付", "enabled": True,
                       "gateway": "https://pay.example.com", "pid": "1001"}]
    assert audit_actions(shop)[-1] == "channel.add"
    # The merchant key is stored encrypted, never in clear.
    from kamengd.config import load_config
    from kamengd.database import make_engine
    engine = make_engine(load_config(shop, env={}).database_url, pooled=False)
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT * FROM payment_channels")).one()
        audit = conn.execute(sa.text("SELECT details FROM audit_log")).scalars().all()
    engine.dispose()
    assert b"MERCHANTKEY1234567890" not in repr(tuple(row)).encode() and "MERCHANTKEY1234567890" not in "".join(audit)


@pytest.mark.parametrize("options, fragment", [
    (["gateway=https://p.example", "pid=1"], "option key: required"),
    (["gateway=https://p.example", "pid=1", "key="], "option key: required"),
    (["gateway=ftp://p.example", "pid=1", "key=k3y-0123456789abcdef"], "option gateway"),
    (["gateway=https://p.example", "pid=1", "key=k3y-0123456789abcdef", "colour=red"], "option colour"),
    (["gateway"], "expected KEY=VALUE"),
    # Keys anyone could guess, then forge callbacks with (W9): refused, nothing stored.
    (["gateway=https://p.example", "pid=1", "key=x"], "at least 16 characters"),
    (["gateway=https://p.example", "pid=1", "key=\u200b"], "invisible characters (U+200B)"),
    (["gateway=https://p.example", "pid=1", "key=Abcdef0123456789\u200b"], "invisible characters (U+200B)"),
    (["gateway=https://p.example", "pid=1", "key=ab\u00adcdefgh0123456789"], "invisible characters (U+00AD)"),
    (["gateway=https://p.example", "pid=1", "key=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"], "too simple"),
    (["gateway=https://p.example", "pid=1", "key=abcdefghijklmnopqrstuvwxyzabcdef"], "too simple"),
    (["gateway=https://p.example", "pid=1", "key=12121212121212121212aa"], "too simple"),
    (["gateway=https://p.example", "pid=1", "key=商户密钥商户密钥商户密钥商户密钥a1"], "only letters, digits and ASCII"),
])
def test_channel_add_bad_input(backend, shop, options, fragment):
    args = [a for o in options for a in ("--option", o)]
    proc = run_cli("channel", "add", "--type", "epay", "--code", "c", *args, config=shop)
    assert_one_line_error(proc, fragment)
    assert json.loads(run_cli("channel", "list", "--json", config=shop).out)["channels"] == []


def test_channel_code_unique(backend, shop):
    args = ["channel", "add", "--type", "epay", "--code", "dup", "--option", "gateway=http://g",
            "--option", "pid=1", "--option", "key=k3y-0123456789abcdef"]
    run_cli(*args, config=shop, check=True)
    assert_one_line_error(run_cli(*args, config=shop), "already exists")


def test_user_create(backend, shop, tmp_path):
    pw = write_password(tmp_path, "another good password")
    proc = run_cli("user", "create", "--username", "kefu", "--role", "support", "--password-file", pw,
                   "--json", config=shop, check=True)
    assert json.loads(proc.out)["role"] == "support"
    assert_one_line_error(run_cli("user", "create", "--username", "kefu", "--role", "support",
                                  "--password-file", pw, config=shop), "already exists")
    assert_one_line_error(run_cli("user", "create", "--username", "x2", "--role", "root",
                                  "--password-file", pw, config=shop), "--role")
    assert_one_line_error(run_cli("user", "create", "--username", "x3", "--role", "admin",
                                  "--password-file", tmp_path / "none", config=shop), "cannot read password file")
    assert audit_actions(shop)[-1] == "user.create"


def test_audit_verify_detects_tampering(backend, shop):
    make_product(shop)
    ok = run_cli("audit", "verify", "--json", config=shop, check=True)
    assert json.loads(ok.out) == {"ok": True, "entries": 3}
    from kamengd.config import load_config
    from kamengd.database import make_engine
    engine = make_engine(load_config(shop, env={}).database_url, pooled=False)
    with engine.begin() as conn:
        bad_id = conn.execute(sa.text("SELECT id FROM audit_log WHERE action = 'user.create'")).scalar()
        conn.execute(sa.text("UPDATE audit_log SET target = 'user:999' WHERE id = :id"), {"id": bad_id})
    engine.dispose()
    proc = run_cli("audit", "verify", config=shop)
    assert_one_line_error(proc, f"entry #{bad_id}", "altered")
    doctor = run_cli("doctor", config=shop)
    assert doctor.returncode != 0 and "FAIL  audit log" in doctor.out


def test_config_resolution(backend, shop, tmp_path):
    by_env = run_cli("product", "list", "--json", env={"KAMENGD_CONFIG": str(shop)})
    assert by_env.returncode == 0, by_env.err
    missing = run_cli("product", "list", env={"KAMENGD_CONFIG": str(tmp_path / "nope.toml")})
    assert_one_line_error(missing, "nope.toml not found")
    # --config wins over the environment
    assert run_cli("product", "list", config=shop, env={"KAMENGD_CONFIG": "/nonexistent"}).returncode == 0
    bad_env = run_cli("product", "list", config=shop, env={"KAMENGD_SERVER_WORKERZ": "3"})
    assert_one_line_error(bad_env, "unknown setting server.workerz")


def test_doctor_flags_loose_permissions(backend, shop):
    key_file = shop.parent / "data.key"
    os.chmod(key_file, 0o644)
    run_cli("scheduler", "--once", config=shop, check=True)
    proc = run_cli("doctor", config=shop)
    assert proc.returncode != 0
    assert "FAIL  data key file" in proc.out and "chmod 600" in proc.out
    assert proc.err.strip() == "kamengd: doctor found problems: data key file"


def test_doctor_detects_the_wrong_key_file(backend, shop, tmp_path):
    pid = make_product(shop)["id"]
    run_cli("keys", "import", "--product", pid, "-", config=shop, input=b"K1\nK2\n", check=True)
    from kamengd.vault import generate_key_file
    key_file = shop.parent / "data.key"
    key_file.unlink()
    generate_key_file(key_file)
    proc = run_cli("doctor", config=shop)
    assert proc.returncode != 0 and "FAIL  data key: card key #" in proc.out


def test_usage_errors_are_one_line(shop):
    assert_one_line_error(run_cli("product", "create", "--name", "x", config=shop), "Missing option '--price'")
    assert_one_line_error(run_cli("no-such-command", config=shop), "No such command")


def test_install_refuses_a_leftover_password_file(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    (data / "initial-admin-password").write_text("old\n")
    assert_one_line_error(run_cli("install", "--data-dir", data, "--yes"), "initial-admin-password")
    assert sorted(p.name for p in data.iterdir()) == ["initial-admin-password"]


def test_install_with_a_relative_sqlite_url(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kamengd", "install", "--data-dir", "d", "--yes",
                           "--database-url", "sqlite:///shop.db"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "shop.db").exists()
    run_cli("scheduler", "--once", config=tmp_path / "d" / "kamengd.toml", check=True)
    assert run_cli("doctor", config=tmp_path / "d" / "kamengd.toml").returncode == 0


@pytest.mark.parametrize("args, fragment", [
    (["product", "create", "--name", "x", "--price", "1e1000000"], "too large"),
    (["product", "create", "--name", b"bad\xff", "--price", "1"], "not valid UTF-8"),
    (["keys", "import", "--product", "99999999999999999999", "/etc/hostname"], "--product"),
    (["keys", "export", "--product", "1", "--output", "/proc/nope/x.txt"], "does not exist"),
    (["keys", "export", "--product", "1", "--output", "/proc/x.txt"], "cannot write"),
])
def test_bad_input_never_gives_a_traceback(backend, shop, args, fragment):
    if args[0] == "keys" and args[1] == "export":
        make_product(shop)
    assert_one_line_error(run_cli(*args, config=shop), fragment)


def test_install_into_an_impossible_directory(tmp_path):
    assert_one_line_error(run_cli("install", "--data-dir", "/proc/kamengd-test", "--yes"), "cannot create")


def test_unsupported_database_in_the_environment(backend, shop):
    proc = run_cli("product", "list", config=shop, env={"KAMENGD_DATABASE_URL": "postgresql://x/y"})
    assert_one_line_error(proc, "database.url", "postgresql is not supported")


def test_import_from_a_pipe_path(backend, shop):
    pid = make_product(shop)["id"]
    proc = run_cli("keys", "import", "--product", pid, "/dev/stdin", "--json", config=shop, input=b"P1\nP2\n")
    assert proc.returncode == 0, proc.err
    assert json.loads(proc.out)["imported"] == 2


def test_a_missing_sqlite_file_is_not_recreated(sqlite_shop, tmp_path):
    db_file = sqlite_shop.parent / "kamengd.db"
    db_file.unlink()
    assert_one_line_error(run_cli("product", "list", config=sqlite_shop), "database error")
    assert not db_file.exists()
    doctor = run_cli("doctor", config=sqlite_shop)
    assert doctor.returncode != 0 and "FAIL  database" in doctor.out
    assert not db_file.exists()


def test_read_only_commands_do_not_wait_for_a_writer(sqlite_shop):
    """`product list` answers at once while an import holds SQLite's write lock."""
    import sqlite3
    import time

    writer = sqlite3.connect(sqlite_shop.parent / "kamengd.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE audit_head SET seq = seq")
    try:
        started = time.monotonic()
        assert run_cli("product", "list", config=sqlite_shop).returncode == 0
        assert run_cli("audit", "verify", config=sqlite_shop).returncode == 0
        assert time.monotonic() - started < 20  # a writer would wait out the 30 s busy timeout
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_a_writer_that_cannot_get_the_lock_says_busy_and_changes_nothing(sqlite_shop):
    """A write command that waits out the lock timeout: one line that says the database is busy
    and to run it again, exit 1, nothing written."""
    import sqlite3

    writer = sqlite3.connect(sqlite_shop.parent / "kamengd.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE audit_head SET seq = seq")
    try:
        proc = run_cli("product", "create", "--name", "blocked", "--price", "1", config=sqlite_shop,
                       env={"KAMENGD_DATABASE_LOCK_TIMEOUT_SECONDS": "1"})
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert_one_line_error(proc, "the database is busy", "nothing was changed: run the command again")
    assert "blocked" not in run_cli("product", "list", config=sqlite_shop, check=True).out


def test_actor_is_the_real_os_user(sqlite_shop):
    import pwd
    run_cli("product", "create", "--name", "x", "--price", "1", config=sqlite_shop, env={"LOGNAME": "alice", "USER": "alice"},
            check=True)
    from kamengd.config import load_config
    from kamengd.database import make_engine
    engine = make_engine(load_config(sqlite_shop, env={}).database_url, pooled=False)
    with engine.connect() as conn:
        actor = conn.execute(sa.text("SELECT actor FROM audit_log ORDER BY id DESC LIMIT 1")).scalar()
    engine.dispose()
    assert actor == f"cli:{pwd.getpwuid(os.geteuid()).pw_name}"


def test_tables_are_utf8mb4_bin_on_mysql(mysql_backend, make_install):
    """New tables must carry the same options (autogenerate from SQLite would drop them)."""
    from kamengd.database import make_engine
    engine = make_engine(make_install(mysql_backend).database_url, pooled=False)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT table_name, table_collation, engine FROM information_schema.tables "
                                    "WHERE table_schema = DATABASE() AND table_name != 'alembic_version'")).all()
    engine.dispose()
    assert len(rows) >= 11
    assert {(r[1], r[2]) for r in rows} == {("utf8mb4_bin", "InnoDB")}, rows


def test_order_deliver_command(backend, shop, tmp_path):
    """A manual-delivery order, paid, delivered by `kamengd order deliver`."""
    from kamengd.app import create_app
    from kamengd.context import get_vault
    from kamengd.config import load_config
    from kamengd.extensions import db
    from kamengd.orders.services import create_order
    from kamengd.payments.callbacks import handle_epay_notify
    from kamengd.payments.services import add_channel
    from test_orders import callback

    pid = make_product(shop, "--delivery", "manual")["id"]
    app = create_app(load_config(shop, env={}))
    with app.app_context():
        add_channel(db.session, get_vault(), channel_type="epay", code="epay", actor="t",
                    options={"gateway": "http://g", "pid": "1001", "key": "merchant-key-123"})
        order = create_order(db.session, product_id=pid, quantity=2, email="b@example.com", channel_code="epay").order
        assert handle_epay_notify(db.session, get_vault(), "epay", callback(order)).recorded
        db.session.commit()
        order_no = order.order_no
        db.session.remove()
        db.engine.dispose()
    keys = tmp_path / "manual.txt"
    keys.write_text("MANUAL-1\n")
    assert_one_line_error(run_cli("order", "deliver", order_no, "--file", keys, config=shop), "needs 2 keys")
    keys.write_text("MANUAL-1\r\nMANUAL-2\r\n")
    out = run_cli("order", "deliver", order_no, "--file", keys, "--json", config=shop, check=True).out
    assert json.loads(out) == {"order_no": order_no, "status": "delivered", "keys": 2}
    assert_one_line_error(run_cli("order", "deliver", order_no, "--file", keys, config=shop), "is delivered")
    assert audit_actions(shop)[-1] == "order.deliver"
    assert_one_line_error(run_cli("order", "deliver", "nope", "--file", keys, config=shop), "not found")


def test_every_command_is_found_where_the_lazy_group_looks():
    """The group imports a command's module when the command runs: the map must name every
    command, each in the module that defines it, and every command module must be in it."""
    import pathlib

    import click

    import kamengd.cli
    from kamengd.cli.group import COMMAND_MODULES, cli

    ctx = click.Context(cli)
    for name, module in COMMAND_MODULES.items():
        command = cli.get_command(ctx, name)
        assert command is not None and command.name == name
        assert command.callback.__module__ == f"kamengd.cli.{module}", name
    assert set(cli.commands) == set(COMMAND_MODULES)   # no module adds a command the map lacks
    here = pathlib.Path(kamengd.cli.__file__).parent
    modules = {p.stem for p in here.glob("*.py")} - {"__init__", "group", "reference"}   # reference: the docs
    assert modules == set(COMMAND_MODULES.values())


def test_channel_enable_and_disable(backend, shop):
    run_cli("channel", "add", "--type", "epay", "--code", "sw", "--option", "gateway=https://pay.example.com",
            "--option", "pid=1", "--option", "key=k3y-0123456789abcdef", config=shop, check=True)
    out = json.loads(run_cli("channel", "disable", "--code", "sw", "--json", config=shop, check=True).out)
    assert out == {"code": "sw", "enabled": False, "changed": True}
    assert "already disabled" in run_cli("channel", "disable", "--code", "sw", config=shop, check=True).out
    assert audit_actions(shop)[-1] == "channel.disable"
    assert json.loads(run_cli("channel", "enable", "--code", "sw", "--json", config=shop, check=True).out)["enabled"]
    assert_one_line_error(run_cli("channel", "enable", "--code", "nope", config=shop), "channel 'nope' not found")


def test_channel_remove(backend, shop):
    """A channel no order used is deleted with its stored key, audited; one an order used is
    refused, and nothing changes: its orders' callbacks and reconciliation still need it."""
    options = ["--option", "gateway=https://pay.example.com", "--option", "pid=1",
               "--option", "key=k3y-0123456789abcdef"]
    for code in ("spare", "used", "other"):
        run_cli("channel", "add", "--type", "epay", "--code", code, *options, config=shop, check=True)
    pid = make_product(shop)["id"]
    run_cli("keys", "import", "--product", pid, "-", config=shop, input=b"RM-KEY-1", check=True)
    from kamengd.app import create_app
    from kamengd.config import load_config
    from kamengd.database import make_engine
    from kamengd.extensions import db
    from kamengd.orders.services import create_order

    app = create_app(load_config(shop, env={}))
    with app.app_context():
        create_order(db.session, product_id=pid, quantity=1, email="rm@example.com", channel_code="used")
        db.session.commit()
        db.engine.dispose()

    out = json.loads(run_cli("channel", "remove", "--code", "spare", "--json", config=shop, check=True).out)
    assert out == {"code": "spare", "removed": True}
    listed = json.loads(run_cli("channel", "list", "--json", config=shop, check=True).out)["channels"]
    assert [c["code"] for c in listed] == ["used", "other"]
    [entry] = json.loads(run_cli("audit", "list", "--action", "channel.remove", "--json", config=shop,
                                 check=True).out)["entries"]
    assert entry["target"] == "channel:spare" and entry["actor"].startswith("cli")
    assert entry["details"]["secret_deleted"] is True and "k3y-0123456789abcdef" not in json.dumps(entry)
    engine = make_engine(load_config(shop, env={}).database_url, pooled=False)
    with engine.connect() as conn:   # the row, and the encrypted key in it, are gone
        assert conn.execute(sa.text("SELECT code FROM payment_channels ORDER BY id")).scalars().all() == [
            "used", "other"]
    engine.dispose()

    before = audit_actions(shop)
    assert_one_line_error(run_cli("channel", "remove", "--code", "used", config=shop),
                          "channel used cannot be removed: 1 order(s) used it", "Disable it instead")
    assert audit_actions(shop) == before
    listed = json.loads(run_cli("channel", "list", "--json", config=shop, check=True).out)["channels"]
    assert [(c["code"], c["enabled"]) for c in listed] == [("used", True), ("other", True)]
    assert_one_line_error(run_cli("channel", "remove", "--code", "spare", config=shop), "channel 'spare' not found")
    assert run_cli("channel", "remove", "--code", "other", config=shop, check=True).out.strip() == "removed channel other"
    assert audit_actions(shop)[-1] == "channel.remove"


def test_order_list_show_and_audit_list(backend, shop):
    """W10 §11: what an admin scripting the shop expects: orders listed and shown (never
    their keys), the audit log listed with filters."""
    pid = json.loads(run_cli("product", "create", "--name", "列表 list", "--price", "2.00", "--json",
                             config=shop, check=True).out)["id"]
    run_cli("channel", "add", "--type", "epay", "--code", "ls", "--option", "gateway=https://pay.example.com",
            "--option", "pid=1", "--option", "key=k3y-0123456789abcdef", config=shop, check=True)
    run_cli("keys", "import", "--product", pid, "-", config=shop, input=b"LIST-KEY-1", check=True)
    from kamengd.app import create_app
    from kamengd.config import load_config
    from kamengd.extensions import db
    from kamengd.orders.services import create_order

    app = create_app(load_config(shop, env={}))
    with app.app_context():
        no = create_order(db.session, product_id=pid, quantity=1, email="List@Example.com",
                          channel_code="ls").order.order_no
        db.session.commit()
        db.engine.dispose()
    listed = json.loads(run_cli("order", "list", "--email", "list@example.com", "--json", config=shop, check=True).out)
    assert listed["total"] == 1 and listed["orders"][0]["order_no"] == no and listed["orders"][0]["status"] == "pending"
    assert json.loads(run_cli("order", "list", "--status", "delivered", "--json", config=shop, check=True).out)[
        "total"] == 0
    shown = json.loads(run_cli("order", "show", no, "--json", config=shop, check=True).out)
    assert shown["product"] == "列表 list" and shown["keys"] == {"reserved": 1} and shown["payments"] == []
    assert "LIST-KEY-1" not in run_cli("order", "show", no, config=shop, check=True).out
    assert_one_line_error(run_cli("order", "show", "NOPE", config=shop), "not found")
    entries = json.loads(run_cli("audit", "list", "--action", "channel.*", "--json", config=shop, check=True).out)
    assert [e["action"] for e in entries["entries"]] == ["channel.add"]
    assert entries["entries"][0]["target"] == "channel:ls"
    assert "k3y-0123456789abcdef" not in json.dumps(entries["entries"][0]["details"])   # secrets by name only
    assert "product.create" in run_cli("audit", "list", "--limit", "5", config=shop, check=True).out


def products(config):
    return {p["id"]: p for p in json.loads(run_cli("product", "list", "--json", config=config, check=True).out)[
        "products"]}


def product_row(config, product_id):
    """Every column of a product, straight from the database."""
    from kamengd.config import load_config
    from kamengd.database import make_engine

    engine = make_engine(load_config(config, env={}).database_url, pooled=False)
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT * FROM products WHERE id = :id"), {"id": product_id}).mappings().one()
    engine.dispose()
    return {k: v for k, v in row.items() if k != "updated_at"}


def make_category(config, name):
    from kamengd.app import create_app
    from kamengd.catalog.services import create_category
    from kamengd.config import load_config
    from kamengd.extensions import db

    app = create_app(load_config(config, env={}))
    with app.app_context():
        category_id = create_category(db.session, name=name, actor="test").id
        db.session.commit()
        db.session.remove()
        db.engine.dispose()
    return category_id


def test_product_edit(backend, shop):
    """W10 §11: `product edit ID` changes only what it is given, prints the product as create does
    and is audited as product.update with the old and new values."""
    pid = make_product(shop)["id"]
    games = make_category(shop, "游戏 Games")
    out = json.loads(run_cli("product", "edit", pid, "--name", "季卡", "--price", "25", "--cost", "18.5",
                             "--description", "三个月", "--category", "游戏 games", "--min-quantity", "2",
                             "--max-quantity", "5", "--delivery", "manual", "--low-stock", "3", "--hidden",
                             "--json", config=shop, check=True).out)
    assert {k: out[k] for k in ("id", "name", "price", "delivery", "low_stock", "active")} == {
        "id": pid, "name": "季卡", "price": "25.00", "delivery": "manual", "low_stock": 3, "active": False}
    assert out["changed"]["price"] == {"old": "9.90", "new": "25.00"}
    assert out["changed"]["category"] == {"old": None, "new": games}
    row = product_row(shop, pid)
    assert (row["cost_price_cents"], row["description"], row["category_id"], row["min_quantity"],
            row["max_quantity"]) == (1850, "三个月", games, 2, 5)
    assert audit_actions(shop)[-1] == "product.update"

    text = run_cli("product", "edit", pid, "--shown", "--no-category", "--no-cost-price", "--sort-order", "7",
                   config=shop, check=True).out
    assert text.startswith(f"updated product {pid}: ") and "visible" in text and "category" in text
    row = product_row(shop, pid)
    assert (row["is_active"], row["category_id"], row["cost_price_cents"], row["sort_order"]) == (True, None, None, 7)
    # The same values again: nothing changes, nothing is audited.
    before = audit_actions(shop)
    out = json.loads(run_cli("product", "edit", pid, "--price", "25.00", "--shown", "--json", config=shop,
                             check=True).out)
    assert out["changed"] == {} and out["price"] == "25.00"
    assert "unchanged" in run_cli("product", "edit", pid, "--name", "季卡", config=shop, check=True).out
    assert audit_actions(shop) == before


@pytest.mark.parametrize("args, fragment", [
    (["--price", "0"], "price: must be more than zero"),
    (["--price", "9.999"], "more than two decimal places"),
    (["--cost-price", "-1"], "cost price"),
    (["--name", "  "], "name: must not be empty"),
    (["--min-quantity", "5", "--max-quantity", "3"], "quantity limits"),
    (["--max-quantity", "0"], "--max-quantity"),
    (["--delivery", "drone"], "Invalid value for '--delivery'"),
    (["--category", "999"], "category 999 does not exist"),
    (["--category", "no such"], "no category named 'no such'"),
    (["--cost", "1", "--no-cost-price"], "not both"),
    (["--sort-order", "10000"], "--sort-order"),
    ([], "nothing to change"),
    (["--description", "x" * 20_001], "description: at most"),
])
def test_product_edit_bad_input_changes_nothing(backend, shop, args, fragment):
    pid = make_product(shop, "--cost-price", "5")["id"]
    before, audited = product_row(shop, pid), audit_actions(shop)
    assert_one_line_error(run_cli("product", "edit", pid, *args, config=shop), fragment)
    assert product_row(shop, pid) == before
    assert audit_actions(shop) == audited


def test_product_edit_unknown_product(backend, shop):
    assert_one_line_error(run_cli("product", "edit", "42", "--name", "x", config=shop), "product 42 not found")
    assert_one_line_error(run_cli("product", "edit", "0", "--name", "x", config=shop), "ID")
    assert_one_line_error(run_cli("product", "edit", "abc", "--name", "x", config=shop), "ID")
    assert products(shop) == {}


def test_product_create_category_sort_order_and_hidden(backend, shop):
    games = make_category(shop, "Games")
    out = make_product(shop, "--category", str(games), "--sort-order", "3", "--hidden")
    assert out["active"] is False
    row = product_row(shop, out["id"])
    assert (row["category_id"], row["sort_order"], row["is_active"]) == (games, 3, False)
    assert_one_line_error(run_cli("product", "create", "--name", "y", "--price", "1", "--category", "Nope",
                                  config=shop), "no category named 'Nope'")
    assert list(products(shop)) == [out["id"]]


def test_config_example_is_shipped_with_the_package(sqlite_shop, tmp_path):
    """W10 §11: the installed (non-editable) package prints the annotated example, the
    repository's config/kamengd.example.toml itself; with the required settings added
    (here from the environment) the real loader accepts every line of it."""
    proc = run_cli("config", "example", check=True)
    source = (REPO / "config" / "kamengd.example.toml").read_text(encoding="utf-8")
    assert proc.out == source
    example = tomllib.loads(proc.out)
    assert {"site", "database", "security", "server"} <= set(example)
    assert json.loads(run_cli("config", "example", "--json", check=True).out) == {"example": source}

    written = tmp_path / "from-example.toml"
    out = json.loads(run_cli("config", "example", "--output", written, "--json", check=True).out)
    assert out == {"output": str(written), "bytes": len(source.encode())}
    assert written.read_text(encoding="utf-8") == source
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    from kamengd.config import load_config
    real = load_config(sqlite_shop, env={})
    required = {"KAMENGD_DATABASE_URL": real.database.url,
                "KAMENGD_SECURITY_SECRET_KEY_FILE": str(real.security.secret_key_file),
                "KAMENGD_SECURITY_DATA_KEY_FILE": str(real.security.data_key_file)}
    listed = run_cli("--config", written, "product", "list", "--json", env=required)
    assert listed.returncode == 0, listed.err
    assert json.loads(listed.out) == {"products": []}
    # The config `kamengd install` writes names the command.
    assert "`kamengd config example`" in sqlite_shop.read_text()


def test_config_example_output_refuses_to_overwrite(tmp_path):
    target = tmp_path / "kamengd.toml"
    target.write_text("mine\n")
    assert_one_line_error(run_cli("config", "example", "--output", target), "already exists", "--force")
    assert target.read_text() == "mine\n"
    assert "wrote" in run_cli("config", "example", "--output", target, "--force", check=True).out
    assert target.read_text(encoding="utf-8") == (REPO / "config" / "kamengd.example.toml").read_text(encoding="utf-8")
    assert_one_line_error(run_cli("config", "example", "--output", tmp_path / "no" / "x.toml"), "No such file")
    assert_one_line_error(run_cli("config", "example", "--output", tmp_path), "is a directory")
    assert_one_line_error(run_cli("config", "example", "--force"), "--force goes with --output")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kamengd.toml"]


def test_mysql_test_databases_carry_the_prefix(mysql_backend, databases):
    """KAMENGD_TEST_MYSQL_PREFIX names every database the tests make (scripts/test grants on it)."""
    url = databases.new_url(mysql_backend)
    name = url.rsplit("/", 1)[1].split("?", 1)[0]
    assert name.startswith(MYSQL_PREFIX) and name in databases.mysql_names

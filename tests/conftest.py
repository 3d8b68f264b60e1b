"""Fixtures: real databases (SQLite files, a MariaDB server), cheap hashing.

The backends come from --db (or KAMENGD_TEST_DBS): "sqlite", "mysql" or
"sqlite,mysql". Tests that take the `backend` fixture run once per backend.
MySQL databases are created fresh for the run and dropped at its end; their
names start with KAMENGD_TEST_MYSQL_PREFIX (default "kamengd_test_"), so a
test account may be granted exactly those (scripts/test does).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from kamengd.accounts import passwords

MYSQL_SERVER_URL = os.environ.get("KAMENGD_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306")
# Every MariaDB database a test creates is named MYSQL_PREFIX + something (checked in pytest_configure).
MYSQL_PREFIX = os.environ.get("KAMENGD_TEST_MYSQL_PREFIX", "kamengd_test_")
MYSQL_PREFIX_RE = r"[A-Za-z0-9_]{1,40}"
PASSWORD = "correct horse battery"

# The tests start `python -m kamengd` (the CLI, servers, their scheduler child) from
# the repository, pytest's working directory: Python would put that directory first
# on sys.path and run the checkout's kamengd/, not the installed package under test
# (whose package data, such as the example config, is what users get).
os.environ["PYTHONSAFEPATH"] = "1"

# Cheap argon2 in this process (CLI subprocesses keep the real cost).
passwords.set_cost(time_cost=1, memory_cost=8, parallelism=1)


def pytest_addoption(parser):
    parser.addoption("--db", default=os.environ.get("KAMENGD_TEST_DBS", "sqlite"),
                     help="comma-separated backends to test: sqlite,mysql")
    parser.addoption("--redis", default=os.environ.get("KAMENGD_TEST_REDIS_URL", ""),
                     help="a Redis URL: also test Redis-backed rate limits (scripts/test sets it)")


def pytest_configure(config):
    backends = [b.strip() for b in config.getoption("--db").split(",") if b.strip()]
    unknown = set(backends) - {"sqlite", "mysql"}
    if unknown or not backends:
        raise pytest.UsageError(f"--db: unknown backend(s) {sorted(unknown)}")
    if not re.fullmatch(MYSQL_PREFIX_RE, MYSQL_PREFIX):
        # Names go into CREATE/DROP DATABASE unquoted: letters, digits and _ only.
        raise pytest.UsageError(f"KAMENGD_TEST_MYSQL_PREFIX={MYSQL_PREFIX!r}: expected 1-40 letters, digits or _")
    if "mysql" in backends:
        try:
            engine = sa.create_engine(MYSQL_SERVER_URL + "/")
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            engine.dispose()
        except sa.exc.SQLAlchemyError as exc:
            raise pytest.UsageError(f"--db mysql: MariaDB/MySQL at {MYSQL_SERVER_URL} is unreachable: "
                                    f"{exc.__class__.__name__}: {getattr(exc, 'orig', exc)}")
    config.kamengd_backends = backends


# Deployment layouts that need one database shared by several machines: MariaDB only.
SHARED_DATABASE_LAYOUTS = ("two-servers",)


def pytest_generate_tests(metafunc):
    layouts = metafunc.definition.get_closest_marker("layouts")
    if layouts is not None:
        # @pytest.mark.layouts(...): each layout on each backend that can run it (two servers
        # never share a SQLite file), so no combination is generated only to be skipped.
        metafunc.parametrize(("backend", "layout"), [
            (backend, layout) for backend in metafunc.config.kamengd_backends for layout in layouts.args
            if not (backend == "sqlite" and layout in SHARED_DATABASE_LAYOUTS)], scope="session")
    elif "backend" in metafunc.fixturenames:
        # @pytest.mark.backends(...): behaviour only those databases can show (never generated, then skipped).
        only = metafunc.definition.get_closest_marker("backends")
        metafunc.parametrize("backend", [b for b in metafunc.config.kamengd_backends
                                         if only is None or b in only.args], scope="session")
    if "mysql_backend" in metafunc.fixturenames:  # tests of MySQL-only behaviour
        metafunc.parametrize("mysql_backend", [b for b in metafunc.config.kamengd_backends if b == "mysql"])
    if "redis_url" in metafunc.fixturenames:
        redis = metafunc.config.getoption("--redis")
        metafunc.parametrize("redis_url", [redis] if redis else [])


def mysql_database_name(suffix: str) -> str:
    """The name of a MariaDB database a test creates (on the shared server or its own)."""
    return f"{MYSQL_PREFIX}{suffix}"


class Databases:
    """Hands out empty databases: SQLite files or fresh MySQL schemas."""

    def __init__(self, tmp_root: Path):
        self.tmp_root = tmp_root
        self.mysql_names: list[str] = []

    def new_url(self, backend: str, directory: Path | None = None) -> str:
        if backend == "sqlite":
            directory = directory or self.tmp_root
            return f"sqlite:///{directory / f'db-{secrets.token_hex(4)}.db'}"
        name = mysql_database_name(secrets.token_hex(5))
        engine = sa.create_engine(MYSQL_SERVER_URL + "/")
        with engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci")
        engine.dispose()
        self.mysql_names.append(name)
        return f"{MYSQL_SERVER_URL}/{name}?charset=utf8mb4"

    def drop_all(self):
        if not self.mysql_names:
            return
        engine = sa.create_engine(MYSQL_SERVER_URL + "/")
        with engine.begin() as conn:
            for name in self.mysql_names:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        engine.dispose()


@pytest.fixture(scope="session")
def databases(tmp_path_factory):
    dbs = Databases(tmp_path_factory.mktemp("databases"))
    yield dbs
    dbs.drop_all()


def write_password(directory: Path, password: str = PASSWORD) -> Path:
    path = directory / "password.txt"
    path.write_text(password + "\n")
    return path


@pytest.fixture
def make_install(databases, tmp_path_factory):
    """make_install(backend) -> Config of a brand-new installation (in-process)."""
    from kamengd.config import load_config
    from kamengd.operations.installation import install

    def factory(backend: str, **kwargs):
        root = tmp_path_factory.mktemp("install")
        data_dir = root / "data"
        url = None if backend == "sqlite" else databases.new_url(backend)
        result = install(data_dir, admin_password=PASSWORD, database_url=url, **kwargs)
        return load_config(result.config_path, env={})
    return factory


@pytest.fixture(scope="session")
def installed(backend, databases, tmp_path_factory):
    """One installation per backend, shared by the service tests."""
    from kamengd.config import load_config
    from kamengd.operations.installation import install

    data_dir = tmp_path_factory.mktemp(f"shared-{backend}") / "data"
    url = None if backend == "sqlite" else databases.new_url(backend)
    result = install(data_dir, admin_password=PASSWORD, database_url=url)
    return load_config(result.config_path, env={})


@pytest.fixture(scope="session")
def app(installed):
    """The shared app; rate limits off (tests/test_buyer_api.py tests them on their own app)."""
    import dataclasses

    from kamengd.app import create_app

    config = dataclasses.replace(installed, ratelimit=dataclasses.replace(installed.ratelimit, enabled=False),
                                 # the tests' webhook receivers listen on 127.0.0.1
                                 notifications=dataclasses.replace(installed.notifications,
                                                                   agent_webhook_private=True))
    application = create_app(config)
    application.config["TESTING"] = True
    return application


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def shared_setting(app):
    """shared_setting(key, value): a run-time setting of the shared shop for one test; the
    other tests share its database, so the setting is forgotten (its default again) after it."""
    from kamengd.extensions import db
    from kamengd.settings.models import Setting
    from kamengd.settings.services import set_setting

    keys = set()

    def put(key, value):
        keys.add(key)
        with app.app_context():
            set_setting(db.session, key, value, actor="test")
            db.session.commit()
            db.session.remove()
    yield put
    with app.app_context():
        db.session.execute(sa.delete(Setting).where(Setting.key.in_(keys)))
        db.session.commit()
        db.session.remove()


@pytest.fixture
def vault(app):
    from kamengd.context import get_vault

    with app.app_context():
        return get_vault()


@pytest.fixture
def session(app):
    """A session whose work is rolled back after the test (services only flush)."""
    from kamengd.extensions import db

    with app.app_context():
        conn = db.engine.connect()
        outer = conn.begin()
        sess = Session(bind=conn, join_transaction_mode="create_savepoint")
        try:
            yield sess
        finally:
            sess.close()
            outer.rollback()
            conn.close()


@pytest.fixture
def make_product(session):
    from kamengd.catalog.services import create_product

    def factory(name="测试商品 test product", price_cents=990, **kwargs):
        return create_product(session, name=name, price_cents=price_cents, actor="test", **kwargs)
    return factory


@pytest.fixture
def make_keys(session, vault):
    """make_keys(product, n or list) -> the plaintext keys imported."""
    import io

    from kamengd.inventory.services import import_keys

    def factory(product, keys):
        if isinstance(keys, int):
            keys = [f"KEY-{secrets.token_hex(8)}" for _ in range(keys)]
        import_keys(session, vault, product_id=product.id, fh=io.BytesIO("\n".join(keys).encode()),
                    actor="test")
        return keys
    return factory


def epay_shop(app, *, name: str, price_cents: int, keys: list[str], pid: str, key: str, prefix: str) -> dict:
    """A product with `keys` in stock and an Epay channel, committed in the shared app's database."""
    import io
    import secrets

    from kamengd.catalog.services import create_product
    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.inventory.services import import_keys
    from kamengd.payments.services import add_channel

    with app.app_context():
        p = create_product(db.session, name=name, price_cents=price_cents, actor="t")
        import_keys(db.session, get_vault(), product_id=p.id, fh=io.BytesIO("\n".join(keys).encode()), actor="t")
        code = f"{prefix}{secrets.token_hex(3)}"
        add_channel(db.session, get_vault(), channel_type="epay", code=code, actor="t",
                    options={"gateway": "https://pay.example.com", "pid": pid, "key": key})
        db.session.commit()
        product_id = p.id
        db.session.remove()
    return {"id": product_id, "keys": keys, "channel": code}


def run_cli(*args, config: Path | None = None, env: dict | None = None, input: bytes | None = None,
            check: bool = False) -> subprocess.CompletedProcess:
    """Run the installed `kamengd` in a real process, as a merchant's script would."""
    argv = [sys.executable, "-m", "kamengd"]
    if config is not None:
        argv += ["--config", str(config)]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("KAMENGD_")}
    full_env.update(env or {})
    argv += [a if isinstance(a, bytes) else str(a) for a in args]
    proc = subprocess.run(argv, input=input, capture_output=True, env=full_env, timeout=120)
    proc.out = proc.stdout.decode()
    proc.err = proc.stderr.decode()
    if check and proc.returncode != 0:
        raise AssertionError(f"kamengd {' '.join(map(str, args))} failed ({proc.returncode}): {proc.err}")
    return proc


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode != 0, proc.out
    lines = proc.err.strip().splitlines()
    assert len(lines) == 1, proc.err
    assert "Traceback" not in proc.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def install_shop(backend, databases, tmp_path: Path, *, product: str, price: str, keys: int, prefix: str,
                 site_url: str | None = None) -> tuple[Path, int, list[str]]:
    """A new installation by the CLI (SQLite, or a new database of `backend`), with one product
    and `keys` keys: (its config, the product's id, the keys as imported)."""
    args = ["install", "--data-dir", tmp_path / "data", "--admin-password-file", tmp_path / "pw", "--yes"]
    (tmp_path / "pw").write_text(secrets.token_urlsafe(16) + "\n")
    if backend != "sqlite":
        args += ["--database-url", databases.new_url(backend)]
    if site_url:
        args += ["--site-url", site_url]
    run_cli(*args, check=True)
    config = tmp_path / "data" / "kamengd.toml"
    pid = json.loads(run_cli("product", "create", "--name", product, "--price", price, "--json",
                             config=config, check=True).out)["id"]
    made = [f"{prefix}-{i:03d}-{secrets.token_hex(5)}" for i in range(keys)]
    run_cli("keys", "import", "--product", pid, "-", config=config, input="\n".join(made).encode(), check=True)
    return config, pid, made


def _kamengd_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAMENGD_")}
    env["KAMENGD_RATELIMIT_ENABLED"] = "0"
    env.update(extra or {})
    return env


class Servers:
    """Real `kamengd serve` and `kamengd scheduler` processes, stopped at the test's end."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []
        self.by_base: dict[str, subprocess.Popen] = {}
        self._logs: dict[subprocess.Popen, object] = {}

    def _popen(self, argv: list[str], env: dict | None) -> subprocess.Popen:
        import tempfile

        # A file, not a pipe: a chatty server must never block on a full pipe.
        log = tempfile.TemporaryFile()
        # A process group of its own: kill9() takes a server with its workers
        # and its scheduler child, as the kernel's OOM killer or a crash would.
        proc = subprocess.Popen(argv, env=_kamengd_env(env), stdout=subprocess.DEVNULL, stderr=log,
                                start_new_session=True)
        self.procs.append(proc)
        self._logs[proc] = log
        return proc

    def log(self, proc: subprocess.Popen) -> str:
        """What the process wrote to stderr so far."""
        fh = self._logs[proc]
        fh.seek(0)
        return fh.read().decode(errors="replace")

    def __call__(self, config: Path, *extra: str, env: dict | None = None, port: int | None = None) -> str:
        """A server on a free port (or `port`: a server started again where it was); returns
        its base URL once /healthz answers."""
        import time
        import urllib.error
        import urllib.request

        port = port or free_port()
        proc = self._popen([sys.executable, "-m", "kamengd", "--config", str(config), "serve",
                            "--bind", f"127.0.0.1:{port}", *extra], env)
        base = f"http://127.0.0.1:{port}"
        self.by_base[base] = proc
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=5) as resp:
                    if resp.status == 200:
                        return base
            except (urllib.error.URLError, ConnectionError):
                pass
            if proc.poll() is not None:
                raise AssertionError(f"server exited: {self.log(proc)}")
            if time.monotonic() > deadline:
                raise AssertionError("server did not come up in 30 s")
            time.sleep(0.2)

    def scheduler(self, config: Path, env: dict | None = None) -> subprocess.Popen:
        return self._popen([sys.executable, "-m", "kamengd", "--config", str(config), "scheduler"], env)

    def kill9(self, proc: subprocess.Popen) -> None:
        """SIGKILL to the process and every process it started (its group)."""
        import signal

        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def stop_all(self) -> dict[subprocess.Popen, str]:
        """Stop every process; returns what each wrote to stderr."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        logs = {}
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            logs[proc] = self.log(proc)
            self._logs.pop(proc).close()
        self.procs = []
        return logs


@pytest.fixture
def start_server():
    """start_server(config, *extra_args, env=None) -> base URL of a real `kamengd serve` process.

    start_server.scheduler(config) starts a `kamengd scheduler`; start_server.stop_all()
    stops them all and returns their stderr."""
    servers = Servers()
    yield servers
    servers.stop_all()


def run_concurrently(*targets) -> None:
    """Start every callable in its own thread and wait for all of them."""
    import threading

    threads = [threading.Thread(target=target) for target in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

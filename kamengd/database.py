"""Engines, column types and clock shared by every model.

SQLite: WAL, a busy timeout, foreign keys on, and every transaction opened
with BEGIN IMMEDIATE unless it is marked read-only (execution option
``kamengd_readonly``). Taking the write lock up front means two transactions
never both read and then fail to upgrade to writing ("database is locked"
half-way through an order); SQLite serialises writers anyway.

MySQL/MariaDB: READ COMMITTED (no gap locks around SKIP LOCKED claims),
strict SQL mode (an over-long value is an error, never silently truncated),
utf8mb4, and pre-ping so a connection dropped by the server is replaced.
"""
from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
import sqlite3
import threading
import time
import weakref
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import NullPool

# Microseconds are kept on MySQL too: the audit chain hashes timestamps and
# must read back exactly what it wrote.
UTCDateTime = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
# SQLite only auto-increments an INTEGER PRIMARY KEY; MySQL tables that may
# hold millions of rows get BIGINT.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# Fixed statements (no value in them comes from outside).
PRAGMA_CACHE = "PRAGMA cache_size=-8192"          # 8 MiB per connection
PRAGMA_BULK_CACHE = "PRAGMA cache_size=-32768"    # 32 MiB for a bulk import
PRAGMA_FK = {True: "PRAGMA foreign_keys=ON", False: "PRAGMA foreign_keys=OFF"}
# SQLite checkpoints its WAL itself only past this many pages (a safety net);
# kamengd's writers checkpoint every CHECKPOINT_EVERY commits, after the
# write lock is let go (see _WriterGate).
PRAGMA_AUTOCHECKPOINT = "PRAGMA wal_autocheckpoint=20000"
PRAGMA_CHECKPOINT = "PRAGMA wal_checkpoint(PASSIVE)"



def FixedBinary(length: int):
    """BINARY(n) on MySQL (indexable, fixed size); BLOB on SQLite, which has no
    BINARY type and would reflect one as NUMERIC."""
    return sa.LargeBinary().with_variant(mysql.BINARY(length), "mysql", "mariadb")


SET_SQL_MODE = ("SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ZERO_DATE,NO_ZERO_IN_DATE,"
                "ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION'")


def utcnow() -> dt.datetime:
    """Naive UTC, the only kind of datetime stored."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def existing_only(url: str) -> str:
    """The URL for the running app: SQLite must open an existing file, never
    create an empty database where the shop's has gone missing."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return url
    path = quote(parsed.database, safe="/")
    return parsed.set(database=f"file:{path}", query={"mode": "rw", "uri": "true"}).render_as_string(
        hide_password=False)


def engine_options(url: str, pool_size: int = 5, lock_timeout: int = 30) -> dict:
    if is_sqlite(url):
        return {"connect_args": {"timeout": lock_timeout, "check_same_thread": False}}
    return {
        "isolation_level": "READ COMMITTED",
        "pool_pre_ping": True,
        "pool_recycle": 1800,
        "pool_size": pool_size,
        "max_overflow": pool_size * 2,
        "connect_args": {"charset": "utf8mb4", "connect_timeout": 10},
    }


def configure_engine(engine: Engine, *, foreign_keys: bool = True, lock_timeout: int = 30) -> Engine:
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn, _record):
            # Let SQLAlchemy, not the driver, decide when transactions start.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute(f"PRAGMA busy_timeout={int(lock_timeout) * 1000}")
            cur.execute(PRAGMA_FK[foreign_keys])
            cur.execute(PRAGMA_CACHE)
            cur.execute(PRAGMA_AUTOCHECKPOINT)
            cur.close()

        gate = _WriterGate(engine, lock_timeout)

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            # A bulk import that has checked its parent rows itself switches
            # per-row foreign key checks off (a third of its time; the pragma
            # only works outside a transaction, hence here) and gets a page
            # cache big enough for the unique index it fills at random.
            options = conn.get_execution_options()
            if options.get("kamengd_bulk"):
                conn.exec_driver_sql(PRAGMA_FK[False])
                conn.exec_driver_sql(PRAGMA_BULK_CACHE)
                conn.connection.info["kamengd_bulk"] = True
            # Read-only work (health checks, listings) opts out of the write
            # lock: in WAL mode it then reads a snapshot while an import writes.
            if options.get("kamengd_readonly"):
                conn.exec_driver_sql("BEGIN")
                return
            gate.enter(conn.connection)
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            except BaseException:
                gate.leave(conn.connection)
                raise

        @event.listens_for(engine, "checkin")
        def _sqlite_checkin(dbapi_conn, record):
            # Undo a bulk transaction's settings (only then: two statements on
            # every request's check-in would be a tenth of a small request).
            if dbapi_conn is not None and record.info.pop("kamengd_bulk", False):
                dbapi_conn.execute(PRAGMA_FK[foreign_keys])
                dbapi_conn.execute(PRAGMA_CACHE)
    else:
        @event.listens_for(engine, "connect")
        def _mysql_connect(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute(SET_SQL_MODE)
            cur.execute("SET SESSION time_zone = '+00:00'")
            cur.execute(f"SET SESSION innodb_lock_wait_timeout = {int(lock_timeout)}")
            cur.close()
    return engine


class _WriterGate:
    """Writers queue here before they ask SQLite for its write lock.

    SQLite makes a writer that finds the lock taken poll for it, sleeping 1,
    2, 5, 10… up to 100 ms between tries: the lock stands free most of that
    time, and under load a server's threads spend it asleep while the luckier
    ones of another process take the lock again and again (a p99 of seconds).
    Here the threads of one process queue on a lock that hands over at once;
    the one at its head takes a lock file beside the database (flock), polled
    every half millisecond, which every kamengd process on the machine shares.
    Entered at BEGIN IMMEDIATE, left when the transaction commits or rolls back.
    A writer that is not kamengd still meets us in SQLite's own lock.

    The WAL is checkpointed every CHECKPOINT_EVERY commits of this process by
    the writer that just left, holding no lock (PASSIVE: it never waits for,
    nor blocks, the next writer). SQLite's own checkpoint runs inside the
    committing call, so here it would hold the gate for milliseconds every
    thousand pages: the slowest hundredth of all writes.
    """

    POLL_SECONDS = 0.0005
    CHECKPOINT_EVERY = 200

    def __init__(self, engine: Engine, timeout: int):
        self._lock = threading.Lock()
        self._timeout = timeout
        database = engine.url.database or ""
        memory = database in ("", ":memory:") or database.startswith("file::memory:")
        self._path = None if memory else database.split("?", 1)[0].removeprefix("file:") + "-writer.lock"
        self._fd, self._pid = None, os.getpid()
        self._commits = 0
        dialect = engine.dialect
        commit, rollback = dialect.do_commit, dialect.do_rollback

        def do_commit(dbapi_conn):
            try:
                commit(dbapi_conn)
            finally:
                self.leave(dbapi_conn)
            self._commits += 1
            if self._commits % self.CHECKPOINT_EVERY == 0 and self._path is not None:
                try:
                    cursor = dbapi_conn.cursor()
                    cursor.execute(PRAGMA_CHECKPOINT).fetchall()
                    cursor.close()
                except sqlite3.Error:   # SQLite checkpoints later by itself
                    pass

        def do_rollback(dbapi_conn):
            try:
                rollback(dbapi_conn)
            finally:
                self.leave(dbapi_conn)
        dialect.do_commit, dialect.do_rollback = do_commit, do_rollback   # this engine's dialect only

    def _lock_file(self) -> int | None:
        if self._path is None:
            return None
        if self._fd is None or self._pid != os.getpid():   # opened lazily: never shared with a forked child
            try:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError:   # a read-only directory: SQLite's own lock alone
                self._path = None
                return None
            self._pid = os.getpid()
        return self._fd

    def enter(self, proxied_conn) -> None:
        if proxied_conn.info.get("kamengd_writer"):
            return
        deadline = time.monotonic() + self._timeout
        if not self._lock.acquire(timeout=self._timeout):
            raise _busy()
        try:
            fd = self._lock_file()
            while fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise _busy() from None
                    time.sleep(self.POLL_SECONDS)
        except BaseException:
            self._lock.release()
            raise
        proxied_conn.info["kamengd_writer"] = True

    def leave(self, proxied_conn) -> None:
        try:
            info = proxied_conn.info
        except (AttributeError, NotImplementedError):   # a raw connection (the pool's first connect)
            return
        if info.pop("kamengd_writer", False):
            try:
                if self._fd is not None:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                self._lock.release()


def _busy():
    # What SQLite itself says when its busy timeout runs out: handled as `busy`.
    return sa.exc.OperationalError("BEGIN IMMEDIATE", None, sqlite3.OperationalError(
        "database is locked (waited for the other writers)"))


def make_engine(url: str, *, foreign_keys: bool = True, pooled: bool = True) -> Engine:
    """An engine outside Flask (migrations, install)."""
    options = engine_options(url)
    if not pooled:
        for key in ("pool_size", "max_overflow", "pool_recycle"):
            options.pop(key, None)
        options["poolclass"] = NullPool
    return configure_engine(sa.create_engine(url, **options), foreign_keys=foreign_keys)


# MySQL/MariaDB error numbers that mean "not now, try again": lock wait
# timeout, deadlock, too many connections, server shutting down or gone, a
# full disk or table (until the admin makes room: the log says which).
_MYSQL_BUSY = {1205, 1213, 1040, 1053, 2002, 2003, 2006, 2013, 1021, 1114}
_SQLITE_BUSY = ("database is locked", "database table is locked", "database is busy", "database or disk is full")


def is_busy(exc: BaseException) -> bool:
    """True for a database error that a retry a moment later may not get: a
    lock wait that ran out, a deadlock, a full pool, a server that is away —
    or an error raised while handling one (a connection lost mid-query makes
    the next statement on it fail differently)."""
    seen = 0
    while exc is not None and seen < 8:
        if _busy_itself(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _busy_itself(exc: BaseException) -> bool:
    if isinstance(exc, (sa.exc.TimeoutError, sa.exc.DisconnectionError)):
        return True
    if not isinstance(exc, sa.exc.DBAPIError):
        return _driver_busy(exc)
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):
        return args[0] in _MYSQL_BUSY
    message = str(orig).lower()
    return any(fragment in message for fragment in _SQLITE_BUSY)


def _driver_busy(exc: BaseException) -> bool:
    """The same test for a driver's own error, before SQLAlchemy wrapped it (its pool's)."""
    args = getattr(exc, "args", ())
    if type(exc).__module__.startswith("pymysql") and args and isinstance(args[0], int):
        return args[0] in _MYSQL_BUSY
    if isinstance(exc, sqlite3.OperationalError):
        return any(fragment in str(exc).lower() for fragment in _SQLITE_BUSY)
    return False


class BusyReports:
    """One log line per outage, not one per request: the first busy answer of a
    process is logged, then at most one line every `every` seconds while they go
    on, saying how many were not. A database that is away for two seconds under
    a hundred buyers leaves a line, not a hundred."""

    def __init__(self, every: float = 60.0):
        self.every = every
        self._lock = threading.Lock()
        self._last: float | None = None
        self._quiet = 0

    def allow(self) -> int | None:
        """None: stay quiet (counted). Else: log now; the count of those kept quiet since."""
        now = time.monotonic()
        with self._lock:
            if self._last is not None and now - self._last < self.every:
                self._quiet += 1
                return None
            quiet, self._quiet, self._last = self._quiet, 0, now
            return quiet

    def warning(self, logger: logging.Logger, message: str, *args) -> None:
        quiet = self.allow()
        if quiet is None:
            return
        if quiet:
            message += f" ({quiet} more busy answers since the last such line)"
        logger.warning(message, *args)


busy_reports = BusyReports()


class _OneLineWhenAway(logging.Filter):
    """SQLAlchemy's pool logs a traceback when it cannot roll back a connection the
    server dropped (a database restart): one line is what that deserves, as for
    every other busy answer, and only as often (busy_reports). Anything else
    keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and is_busy(exc):
            quiet = busy_reports.allow()
            if quiet is None:
                return False
            record.msg = f"{record.getMessage()}: {exc}" + (
                f" ({quiet} more busy answers since the last such line)" if quiet else "")
            record.args, record.exc_info, record.exc_text = None, None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


# Filters are not inherited: each pool class logs under its own name.
for _pool in (sa.pool.QueuePool, sa.pool.NullPool, sa.pool.SingletonThreadPool, sa.pool.StaticPool):
    logging.getLogger(f"{_pool.__module__}.{_pool.__name__}").addFilter(_OneLineWhenAway())


def readonly_connection(engine: Engine):
    """A connection for reads only: on SQLite it never waits for a writer."""
    return engine.connect().execution_options(kamengd_readonly=True)


def insert_ignoring(table: sa.Table):
    """An INSERT that does nothing for a row whose key exists (SQLite: OR IGNORE; MySQL: IGNORE)."""
    return sa.insert(table).prefix_with("OR IGNORE", dialect="sqlite").prefix_with("IGNORE", dialect="mysql")


def write_apart(session, statement, params) -> int:
    """Run one write in a short transaction of its own, beside the session's (which it never
    joins: a counter's row made inside an order's transaction would make MySQL hold a shared
    lock that the order's UPDATE then needs exclusively, and concurrent orders deadlock).
    A session bound to one connection (tests) writes in it. Returns the rowcount."""
    bind = session.get_bind()
    if isinstance(bind, Engine):
        with bind.begin() as own:
            return own.execute(statement, params).rowcount
    return bind.execute(statement, params).rowcount


def database_key(session) -> str:
    """Which database a session writes to, for what a process keeps of it for a few seconds
    (one shop's rules or coupon terms are never another's: tests run many shops in one process)."""
    engine = session.get_bind().engine
    try:
        return _keys[engine]
    except KeyError:   # (rendering a URL costs as much as a small query: once per engine)
        key = _keys[engine] = str(engine.url)
        return key


_keys: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

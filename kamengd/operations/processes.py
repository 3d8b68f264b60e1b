"""Which `kamengd serve` processes are running on this database.

Each registers itself and beats every HEARTBEAT_SECONDS; a clean stop
removes its row. `kamengd restore` and `kamengd upgrade` refuse to replace or
migrate a database a web server is still writing to: orders taken meanwhile
would be lost. (The scheduler has its own lease; see kamengd.scheduler.)
"""
from __future__ import annotations

import atexit
import datetime as dt
import logging
import os
import secrets
import socket
import threading

import sqlalchemy as sa

from ..database import is_busy, utcnow
from ..extensions import db
from .models import ServerProcess

log = logging.getLogger("kamengd.processes")
HEARTBEAT_SECONDS = 10
STALE_SECONDS = 3 * HEARTBEAT_SECONDS


def _beat(app, process_id: str, role: str, started: dt.datetime) -> None:
    with app.app_context():
        try:
            row = db.session.get(ServerProcess, process_id)
            if row is None:
                db.session.add(ServerProcess(id=process_id, role=role, started_at=started, heartbeat_at=utcnow()))
            else:
                row.heartbeat_at = utcnow()
            db.session.commit()   # a heartbeat is a transaction of its own, in its own thread
        except Exception as exc:   # a database that is briefly away must not stop the server
            db.session.rollback()
            log.warning("could not record this server's heartbeat", exc_info=not is_busy(exc))
        finally:
            db.session.remove()


def _forget(app, process_id: str) -> None:
    with app.app_context():
        try:
            db.session.execute(sa.delete(ServerProcess).where(ServerProcess.id == process_id))
            db.session.commit()   # the last act of a stopping server
        except Exception:
            db.session.rollback()
        finally:
            db.session.remove()


def register(app, role: str = "web") -> str:
    """Beat now and then every HEARTBEAT_SECONDS in a daemon thread; forget on exit."""
    process_id = f"{socket.gethostname()[:80]}:{os.getpid()}:{secrets.token_hex(3)}"
    started, stop = utcnow(), threading.Event()
    _beat(app, process_id, role, started)

    def loop():
        while not stop.wait(HEARTBEAT_SECONDS):
            _beat(app, process_id, role, started)
    threading.Thread(target=loop, name="kamengd-heartbeat", daemon=True).start()

    owner_pid = os.getpid()

    def at_exit():
        if os.getpid() != owner_pid:   # a forked gunicorn worker inherits this hook: not its row
            return
        stop.set()
        _forget(app, process_id)
    atexit.register(at_exit)
    return process_id


def live_servers(conn, now: dt.datetime | None = None) -> list[str]:
    """Servers that beat within STALE_SECONDS (none when the table is not there yet)."""
    if "server_processes" not in sa.inspect(conn).get_table_names():
        return []
    since = (now or utcnow()) - dt.timedelta(seconds=STALE_SECONDS)
    t = ServerProcess.__table__
    return list(conn.execute(sa.select(t.c.id).where(t.c.heartbeat_at > since)).scalars())

import datetime as dt

from flask import Blueprint, jsonify
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from .version import __version__
from .database import readonly_connection, utcnow
from .extensions import db
from .operations.schema import current_revision

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    try:
        with readonly_connection(db.engine) as conn:
            conn.execute(text("SELECT 1"))
            schema = current_revision(conn)
            lease = conn.execute(text("SELECT owner, heartbeat_at FROM scheduler_lease WHERE name = 'main'")).first()
    except SQLAlchemyError:
        return jsonify({"status": "error", "database": "unreachable", "version": __version__}), 503
    heartbeat = lease.heartbeat_at if lease else None
    if isinstance(heartbeat, str):  # SQLite through a text query
        heartbeat = dt.datetime.fromisoformat(heartbeat)
    scheduler = {"leader": lease.owner if lease else None,
                 "heartbeat_at": heartbeat.isoformat(timespec="seconds") + "Z" if heartbeat else None,
                 "heartbeat_age_seconds": round((utcnow() - heartbeat).total_seconds(), 1) if heartbeat else None}
    return jsonify({"status": "ok", "database": "ok", "schema": schema, "version": __version__,
                    "scheduler": scheduler})

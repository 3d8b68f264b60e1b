from flask import Blueprint, jsonify
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from . import __version__
from .database import readonly_connection
from .extensions import db
from .schema import current_revision

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    try:
        with readonly_connection(db.engine) as conn:
            conn.execute(text("SELECT 1"))
            schema = current_revision(conn)
    except SQLAlchemyError:
        return jsonify({"status": "error", "database": "unreachable", "version": __version__}), 503
    return jsonify({"status": "ok", "database": "ok", "schema": schema, "version": __version__})

"""Domain errors, and the one registry that turns them into HTTP answers.

Service functions raise these; the CLI prints their message on one line and
exits non-zero; the web app answers JSON under /api/ (CONTRACT.md §2) and a
plain page elsewhere.
"""
from __future__ import annotations

from flask import Flask, jsonify, make_response, render_template, request
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from .database import is_busy


class KamengdError(Exception):
    code = "invalid_request"
    http_status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ConfigError(KamengdError):
    """The configuration is missing, unreadable or invalid."""


class InvalidRequest(KamengdError):
    pass


class NotFound(KamengdError):
    code = "not_found"
    http_status = 404


class Conflict(KamengdError):
    """The request is valid but the current state forbids it (e.g. already exists)."""
    code = "invalid_request"
    http_status = 409


class OutOfStock(KamengdError):
    code = "out_of_stock"
    http_status = 409


class RateLimited(KamengdError):
    code = "rate_limited"
    http_status = 429


class Busy(KamengdError):
    """The database could not take the request now (a lock wait ran out, the
    server is away): nothing was changed, the client should try again."""
    code = "busy"
    http_status = 503
    retry_after = 2


_HTTP_CODES = {400: "invalid_request", 404: "not_found", 405: "invalid_request",
               409: "out_of_stock", 413: "invalid_request", 415: "invalid_request",
               429: "rate_limited"}


def _wants_json() -> bool:
    return request.path.startswith("/api/") or request.path == "/healthz"


def error_response(code: str, message: str, status: int):
    if _wants_json():
        return jsonify({"error": {"code": code, "message": message}}), status
    if request.path.startswith("/admin"):
        try:
            return render_template("panel/error.html", status=status, message=message), status
        except Exception:   # the error page itself must never fail
            pass
    return message, status, {"Content-Type": "text/plain; charset=utf-8"}


def _with_retry_after(response, seconds: int):
    response = make_response(response)
    response.headers["Retry-After"] = str(seconds)
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(KamengdError)
    def _domain(exc: KamengdError):
        response = error_response(exc.code, exc.message, exc.http_status)
        retry_after = getattr(exc, "retry_after", None)
        return _with_retry_after(response, retry_after) if retry_after else response

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        status = exc.code or 500
        code = _HTTP_CODES.get(status, "invalid_request" if status < 500 else "internal_error")
        return error_response(code, exc.description or exc.name, status)

    @app.errorhandler(SQLAlchemyError)
    def _database(exc: SQLAlchemyError):
        if not is_busy(exc):
            return _unexpected(exc)
        app.logger.warning("database busy on %s %s: %s", request.method, request.path,
                           getattr(exc, "orig", None) or exc.__class__.__name__)
        response = error_response(Busy.code, "the shop is busy; nothing was changed, please try again",
                                  Busy.http_status)
        return _with_retry_after(response, Busy.retry_after)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        app.logger.exception("unhandled error on %s %s", request.method, request.path)
        return error_response("internal_error", "internal error", 500)

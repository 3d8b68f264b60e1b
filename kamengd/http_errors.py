"""The one registry that turns errors into HTTP answers: JSON under /api/
(CONTRACT.md §2), the panel's error page under /admin, a plain page elsewhere."""
from __future__ import annotations

from flask import Flask, jsonify, make_response, render_template, request
from flask_babel import gettext
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from .database import busy_reports, is_busy
from .errors import Busy, KamengdError

# The codes of CONTRACT.md (§2, §4) for statuses that no domain error set: a
# 409 from werkzeug is a conflict; only OutOfStock says out_of_stock.
_HTTP_CODES = {400: "invalid_request", 401: "unauthorized", 404: "not_found", 405: "invalid_request",
               409: "conflict", 413: "invalid_request", 415: "invalid_request", 429: "rate_limited"}


def _wants_json() -> bool:
    return request.path.startswith("/api/") or request.path == "/healthz"


def error_response(code: str, message: str, status: int, *, kind: str | None = None, extra: dict | None = None):
    """`kind` picks the buyer's page's wording where the status alone does not say it
    ("expired": a form sent after its token ran out); `extra`: more fields of a JSON error
    (a captcha's challenge)."""
    if _wants_json():
        return jsonify({"error": {"code": code, "message": message, **(extra or {})}}), status
    if request.path.startswith("/admin"):
        try:
            return render_template("panel/error.html", status=status, message=message), status
        except Exception:   # the error page itself must never fail
            pass
    elif not request.path.startswith("/pay/") or request.path.endswith("/return"):
        # Buyers get a page in their language; gateways (callbacks) keep plain text.
        try:
            return render_template("error.html", status=status, kind=kind or str(status)), status
        except Exception:
            pass
    return message, status, {"Content-Type": "text/plain; charset=utf-8"}


def _said(exc: KamengdError) -> str:
    """The error's words: the staff panel's in the staff member's language; JSON, gateways and
    plain answers keep the English (CONTRACT.md)."""
    if request.path.startswith("/admin") and not _wants_json():
        try:
            return exc.localized(gettext)
        except Exception:   # never fail an error answer over its wording
            pass
    return exc.message


def _with_retry_after(response, seconds: int):
    response = make_response(response)
    response.headers["Retry-After"] = str(seconds)
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(KamengdError)
    def _domain(exc: KamengdError):
        challenge = getattr(exc, "challenge", None)
        response = error_response(exc.code, _said(exc), exc.http_status,
                                  extra={"challenge": challenge} if challenge else None)
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
        busy_reports.warning(app.logger, "database busy on %s %s: %s", request.method, request.path,
                             getattr(exc, "orig", None) or exc.__class__.__name__)
        busy = Busy("the shop is busy; nothing was changed, please try again")
        response = error_response(busy.code, _said(busy), busy.http_status)
        return _with_retry_after(response, Busy.retry_after)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        app.logger.exception("unhandled error on %s %s", request.method, request.path)
        return error_response("internal_error", "internal error", 500)

"""Domain errors: service functions raise these.

The CLI prints their message on one line and exits non-zero; the web app
turns them into answers (kamengd.http_errors). A leaf that imports nothing:
a key-sealing process loads it without Flask or SQLAlchemy.
"""
from __future__ import annotations


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
    """The request is valid but the current state forbids it (e.g. already exists).
    Never a buyer's order: a shop without enough stock says OutOfStock."""
    code = "conflict"
    http_status = 409


class OutOfStock(KamengdError):
    code = "out_of_stock"
    http_status = 409


class Busy(KamengdError):
    """The database could not take the request now (a lock wait ran out, the
    server is away): nothing was changed, the client should try again."""
    code = "busy"
    http_status = 503
    retry_after = 2

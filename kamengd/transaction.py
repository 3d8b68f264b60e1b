"""A web request's transaction: a snapshot for GET views, one commit at the end.

Views and the services they call only change the session (services flush).
The request commits once, after the view has built its answer and before a
byte of it is sent: an answer below 400 commits, an error answer rolls back,
and an exception never reaches the commit. A commit that fails (a lock wait
ran out, the database went away) is answered like any database error
(kamengd.http_errors: 503 busy), and the cookie goes back as the request brought
it: no flash message, remembered order or sign-in claims what was not saved.

GET views call `read_only()` first: on SQLite they then read a snapshot and
never wait for the write lock (an import may be writing).
"""
from __future__ import annotations

from flask import Flask, request, session as cookie

from .extensions import db


def read_only() -> None:
    """Read a snapshot; never wait for SQLite's write lock.

    Only the first call of a request counts (the panel's guard makes it before
    the view does)."""
    if not db.session().in_transaction():
        db.session.connection(execution_options={"kamengd_readonly": True})


class TransactionalFlask(Flask):
    """Flask, with the commit of each request between its view and its answer."""

    def dispatch_request(self):
        response = self.make_response(super().dispatch_request())
        finish(self, response)
        return response


def finish(app: Flask, response) -> None:
    session = db.session()
    if not session.in_transaction():
        return
    if response.status_code >= 400:
        session.rollback()
        return
    try:
        session.commit()   # the request's one commit
    except BaseException:
        session.rollback()
        _restore_cookie(app)
        raise


def _restore_cookie(app: Flask) -> None:
    """The cookie's contents as the request brought them: an error page follows."""
    brought = app.session_interface.open_session(app, request)
    if brought is not None:
        cookie.clear()
        cookie.update(brought)

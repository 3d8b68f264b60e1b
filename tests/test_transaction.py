"""One commit per web request (kamengd.transaction): after the view, before the answer.

An app of its own with a few test views that write a row: an answer below
400 commits it, an error answer or an exception does not, and a commit that
fails is a 503 `busy` that leaves the cookie as it was.
"""
import dataclasses
import secrets
import sqlite3

import pytest
import sqlalchemy as sa
from flask import session as cookie

from kamengd.errors import InvalidRequest


@pytest.fixture
def shop(installed):
    from kamengd.app import create_app
    from kamengd.backup.models import note
    from kamengd.extensions import db

    app = create_app(dataclasses.replace(installed, ratelimit=dataclasses.replace(installed.ratelimit,
                                                                                  enabled=False)))
    app.config["WTF_CSRF_ENABLED"] = False   # these test views take no form

    def write(name):
        note(db.session, name, {"written": True})
        db.session.flush()

    @app.post("/t/ok/<name>")
    def ok(name):
        write(name)
        cookie["mark"] = name
        return "ok"

    @app.post("/t/refused/<name>")
    def refused(name):
        write(name)
        return "no", 409

    @app.post("/t/raises/<name>")
    def raises(name):
        write(name)
        raise InvalidRequest("no")

    @app.post("/t/commit-fails/<name>")
    def commit_fails(name):
        write(name)
        cookie["mark"] = name

        def busy():
            raise sa.exc.OperationalError("COMMIT", None, sqlite3.OperationalError("database is locked"))
        db.session().commit = busy   # this request's session only
        return "ok"

    @app.get("/t/mark")
    def mark():
        return cookie.get("mark", "")

    return app


def stored(app, name) -> bool:
    from kamengd.backup.models import read
    from kamengd.extensions import db

    with app.app_context():
        try:
            return read(db.session, name) is not None
        finally:
            db.session.remove()


def test_an_answer_below_400_commits(backend, shop):
    name = f"t.{secrets.token_hex(4)}"
    client = shop.test_client()
    assert client.post(f"/t/ok/{name}").status_code == 200
    assert stored(shop, name)
    assert client.get("/t/mark").text == name


@pytest.mark.parametrize("view", ["refused", "raises"])
def test_an_error_answer_rolls_back(backend, shop, view):
    name = f"t.{secrets.token_hex(4)}"
    assert shop.test_client().post(f"/t/{view}/{name}").status_code in (400, 409)
    assert not stored(shop, name)


def test_a_failed_commit_is_busy_and_keeps_the_cookie(backend, shop):
    client = shop.test_client()
    first, second = f"t.{secrets.token_hex(4)}", f"t.{secrets.token_hex(4)}"
    client.post(f"/t/ok/{first}")
    answer = client.post(f"/t/commit-fails/{second}")
    assert answer.status_code == 503 and answer.headers["Retry-After"]
    assert not stored(shop, second)
    assert client.get("/t/mark").text == first   # the failed request's cookie change is gone

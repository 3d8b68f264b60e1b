"""What buyers and staff see when something is refused (W10 §5, §8): a page in their
language, never a bare English text; a panel form sent after the session ended brings
the staff member back to it, filled in again (panel.js keeps the draft)."""
from urllib.parse import parse_qs, urlsplit

import pytest

from panel_support import login, make_staff


@pytest.fixture
def csrf_app(make_install):
    import dataclasses

    from kamengd.app import create_app

    cfg = make_install("sqlite")
    app = create_app(dataclasses.replace(cfg, ratelimit=dataclasses.replace(cfg.ratelimit, enabled=False)))
    app.config["TESTING"] = True     # CSRF stays on: it is what these tests are about
    return app


@pytest.mark.parametrize("lang, words", [("zh", "页面不存在"), ("en", "Page not found")])
def test_a_missing_page_is_a_page_in_the_buyers_language(client, lang, words):
    answer = client.get("/product/999999999", query_string={"lang": lang})
    assert answer.status_code == 404 and answer.mimetype == "text/html" and words in answer.get_data(as_text=True)
    assert client.get("/api/v1/orders/x").get_json()["error"]["code"] == "not_found"    # the API stays JSON


def test_an_expired_storefront_form_says_so(csrf_app):
    answer = csrf_app.test_client().post("/lookup", data={"email": "a@example.com", "query_password": "x"})
    html = answer.get_data(as_text=True)
    assert answer.status_code == 400 and answer.mimetype == "text/html" and "页面已过期" in html
    assert "CSRF" not in html


def test_a_panel_form_after_the_session_ended_goes_through_sign_in_back_to_it(csrf_app):
    client = csrf_app.test_client()
    client.set_cookie("lang", "en")
    answer = client.post("/admin/products/new", data={"name": "draft"},
                         headers={"Referer": "http://localhost/admin/products/new"})
    assert answer.status_code == 303
    target = urlsplit(answer.headers["Location"])
    assert target.path == "/admin/login"
    assert parse_qs(target.query)["next"] == ["/admin/products/new?restore=1"]
    page = client.get(answer.headers["Location"]).get_data(as_text=True)
    assert "Sign in again: what you typed is filled in again" in page


def test_a_panel_form_open_too_long_comes_back_filled_in(csrf_app):
    client = csrf_app.test_client()
    client.set_cookie("lang", "en")
    staff = make_staff(csrf_app, "operator")
    assert login(client, staff).status_code == 302
    answer = client.post("/admin/products/new", data={"name": "draft", "csrf_token": "stale"},
                         headers={"Referer": "https://evil.example/admin/x"})
    assert answer.status_code == 303 and answer.headers["Location"].endswith("/admin/?restore=1")   # not elsewhere
    answer = client.post("/admin/products/new", data={"name": "draft", "csrf_token": "stale"},
                         headers={"Referer": "http://localhost/admin/products/new"})
    assert answer.headers["Location"].endswith("/admin/products/new?restore=1")
    assert "filled in again" in client.get(answer.headers["Location"]).get_data(as_text=True)

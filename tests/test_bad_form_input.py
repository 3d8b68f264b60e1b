"""Bad values in every field of every form, panel and storefront: an answer, never a server error.

The forms are read from the pages themselves (as tests/test_escaping.py does), so a new
form or field is covered without touching this file. Each field in turn gets each
value below while the others keep their defaults; the owner posts (every panel form
is open to the owner), with CSRF off (tests/test_panel_permissions.py checks it).
"""
from __future__ import annotations

from urllib.parse import quote_plus, urlencode

from test_escaping import Forms
from test_panel_permissions import _sign_in, _url, world  # noqa: F401 (fixture)

BAD = ["", "-1", "--5", "9" * 40, "a\x00b", "NaN", "１２", "1e9", "<x>", "x" * 70_000,
       # W8's hostile strings: markup, quotes, header injection, direction marks, odd numbers.
       "<script>alert(1)</script>", "\"'`;--", "a\r\nSet-Cookie: x=1", "\u202eexe.txt", "1e309", "-0", "٩"]
# Sent as raw form bodies: bytes that are not UTF-8, and a megabyte.
RAW = [b"%FF%FE%FD", b"x" * 1_000_000]
# Forms that end the session: posting them would sign the owner out between the cases.
SIGN_OUT = {"/admin/logout", "/admin/account/logout-everywhere"}


def pages(app, ids) -> list[str]:
    found = {"/", "/lookup", f"/product/{ids['product_id']}"}
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("panel.") and "GET" in rule.methods:
            found.add(_url(rule, ids))
    return sorted(found)


def test_no_field_gives_a_server_error(world):
    app, ids, staff = world
    client = app.test_client()
    owner = staff["owner"].id
    tried, errors = 0, []
    for page in pages(app, ids):
        _sign_in(client, app, owner)
        resp = client.get(page)
        if resp.status_code != 200 or resp.mimetype != "text/html":
            continue
        for form in Forms(resp.get_data(as_text=True), page).forms:
            if form["method"] != "post" or form["action"] in SIGN_OUT:
                continue
            defaults = {name: value for name, value in form["fields"] if value is not None and name != "csrf_token"}
            for name in defaults:
                for bad in BAD + RAW:
                    _sign_in(client, app, owner)
                    if isinstance(bad, bytes):
                        others = {k: v for k, v in defaults.items() if k != name}
                        body = (urlencode(others) + ("&" if others else "") + quote_plus(name)).encode() + b"=" + bad
                        answer = client.post(form["action"], data=body,
                                             content_type="application/x-www-form-urlencoded")
                    else:
                        answer = client.post(form["action"], data={**defaults, name: bad})
                    answer.close()   # a download streams: let go of it before the next case
                    tried += 1
                    if answer.status_code >= 500:
                        errors.append((form["action"], name, bad[:20], answer.status_code))
    assert tried > 500, tried
    assert not errors, errors

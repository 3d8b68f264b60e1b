"""After-sales tickets end to end (W6), then the reports (W7, tests/reports_e2e.py) on the
same servers: real servers in each layout, on SQLite and MariaDB.

A buyer buys a key through the buyer API and the Epay callback, then opens a ticket from its
order page (the form, with the page's CSRF token and the order's token); two support staff,
each signed in through the panel's real form on a different server, answer it and press
"replace the chosen keys" on the same key from four threads at once: exactly one reissue goes
through (the buyer has one new key, the stock one key fewer), every other press is refused.
"""
from __future__ import annotations

import hashlib
from http.cookiejar import CookieJar
import json
import re
import threading
import urllib.error
import urllib.request
from urllib.parse import urlencode

import pytest

from conftest import install_shop, run_cli
from reports_e2e import check_reports
from test_channel_stripe import http
from test_concurrency import start_layout

LAYOUTS = ("waitress", "gunicorn", "gunicorn+scheduler", "two-servers")
KEY = "ticket-e2e-merchant-key-0123456789ab"
PASSWORD = "support-e2e-password"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def browser():
    return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()), _NoRedirect)


def token_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def send(opener, url: str, form: dict | None = None) -> tuple[int, str, str]:
    """(status, Location, body) of a GET, or of a POST of the form; redirects are not followed."""
    request = urllib.request.Request(url, data=urlencode(form, doseq=True).encode() if form is not None else None)
    try:
        with opener.open(request, timeout=60) as resp:
            return resp.status, resp.headers.get("Location", ""), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Location", ""), exc.read().decode()


def sign_in(base: str, username: str):
    opener = browser()
    page = send(opener, f"{base}/admin/login")[2]
    status, _, _ = send(opener, f"{base}/admin/login", {"csrf_token": token_of(page), "username": username,
                                                         "password": PASSWORD})
    assert status in (302, 303), status
    return opener


@pytest.mark.slow
@pytest.mark.layouts(*LAYOUTS)
def test_a_ticket_opened_by_the_buyer_is_answered_and_racing_reissues_give_one_new_key(layout, backend, databases,
                                                                                      tmp_path, start_server):
    from kamengd.payments import epay

    config, pid, keys = install_shop(backend, databases, tmp_path, product="售后 e2e", price="9.90", keys=5,
                                     prefix="T")
    (tmp_path / "spw").write_text(PASSWORD + "\n")
    for name, role in (("desk-a", "support"), ("desk-b", "support"), ("clerk", "finance")):
        run_cli("user", "create", "--username", name, "--role", role, "--password-file", tmp_path / "spw",
                config=config, check=True)
    run_cli("channel", "add", "--type", "epay", "--code", "ep", "--option", "gateway=https://pay.example.com",
            "--option", "pid=1001", "--option", f"key={KEY}", config=config, check=True)
    bases = start_layout(layout, start_server, config)

    status, _, text = http("POST", f"{bases[0]}/api/v1/orders", {"product_id": pid, "quantity": 1,
                                                                "email": "buyer@example.com", "channel": "ep"})
    placed = json.loads(text)
    assert status == 201, placed
    params = {"pid": "1001", "trade_no": f"T{placed['order_no']}", "out_trade_no": placed["order_no"],
              "type": "alipay", "name": "x", "money": placed["amount"], "trade_status": "TRADE_SUCCESS"}
    params["sign"] = hashlib.md5((epay.signing_string(params) + KEY).encode()).hexdigest()
    assert http("GET", f"{bases[-1]}/pay/ep/notify?{urlencode(params)}")[2] == "success"
    order_url = f"{bases[0]}/order/{placed['order_no']}?token={placed['token']}&lang=en"
    [key] = json.loads(http("GET", f"{bases[0]}/api/v1/orders/{placed['order_no']}?token={placed['token']}")[2])["keys"]

    # The buyer opens a ticket from the order page (a browser's cookie, the page's CSRF token).
    buyer = browser()
    page = send(buyer, order_url)[2]
    assert 'id="after-sales"' in page
    status, location, _ = send(buyer, f"{bases[-1]}/order/{placed['order_no']}/ticket",
                               {"csrf_token": token_of(page), "token": placed["token"],
                                "message": "这个卡密提示无效 / the key says invalid"})
    assert status == 303 and location.endswith("#after-sales"), (status, location)

    desks = [sign_in(bases[0], "desk-a"), sign_in(bases[-1], "desk-b")]
    listing = send(desks[0], f"{bases[0]}/admin/tickets")[2]
    ticket_id = re.search(r'href="/admin/tickets/(\d+)"', listing).group(1)
    ticket_page = f"/admin/tickets/{ticket_id}"
    html = send(desks[1], bases[-1] + ticket_page)[2]
    assert "the key says invalid" in html and key not in html
    [key_id] = re.findall(r'name="key" value="(\d+)"', html)
    status, _, _ = send(desks[1], f"{bases[-1]}{ticket_page}/reply", {"csrf_token": token_of(html),
                                                                      "message": "马上为您更换 / replacing it now"})
    assert status == 303
    assert "replacing it now" in send(buyer, order_url)[2]

    tokens = [token_of(send(d, (bases[0] if i == 0 else bases[-1]) + ticket_page)[2]) for i, d in enumerate(desks)]
    outcomes, lock, barrier = [], threading.Lock(), threading.Barrier(4)

    def press(n):
        desk = n % 2
        base = bases[0] if desk == 0 else bases[-1]
        barrier.wait()
        status, _, _ = send(desks[desk], f"{base}{ticket_page}/reissue", {"csrf_token": tokens[desk], "key": key_id,
                                                                          "reason": f"无效卡密 desk {desk}"})
        with lock:
            outcomes.append(status)
    threads = [threading.Thread(target=press, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == [303, 409, 409, 409], outcomes

    [fresh] = json.loads(http("GET", f"{bases[-1]}/api/v1/orders/{placed['order_no']}?token={placed['token']}")[2])["keys"]
    assert fresh != key and fresh in keys
    stock = {p["id"]: p for p in json.loads(run_cli("product", "list", "--json", config=config, check=True).out)["products"]}
    assert stock[pid]["stock"] == 3, stock[pid]
    shown = send(buyer, order_url)[2]
    assert "keys replaced" in shown and fresh in shown and key not in shown
    audit = run_cli("audit", "list", "--json", config=config, check=True).out
    assert audit.count('"order.reissue"') == 1 and key not in audit and fresh not in audit

    # W7 on the same servers: the sale in today's profit report, the orders list across servers.
    check_reports(bases, config, sign_in(bases[0], "clerk"), "售后 e2e", [placed["order_no"]], "9.90")
    logs = start_server.stop_all()
    assert not any("Traceback" in log for log in logs.values()), logs

"""Reports end to end (W7): real servers in each layout, on SQLite and MariaDB.

Three purchases through the buyer API and the Epay callback; a finance clerk signed in on one
server reads them in today's sales report (the live part) and asks there for the orders list;
the list is written in the background by that server's worker, and its page and file are read
from the other server (two servers: the file is in the database, any server hands it out).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import time
from urllib.parse import urlencode

import pytest

from conftest import install_shop, run_cli
from test_channel_stripe import http
from test_concurrency import start_layout
from test_tickets_e2e import PASSWORD, send, sign_in, token_of

LAYOUTS = ("waitress", "gunicorn", "gunicorn+scheduler", "two-servers")
KEY = "reports-e2e-merchant-key-0123456789ab"


@pytest.mark.slow
@pytest.mark.layouts(*LAYOUTS)
def test_todays_sales_and_a_list_written_on_one_server_taken_from_another(layout, backend, databases, tmp_path,
                                                                         start_server):
    from kamengd.payments import epay

    config, pid, _keys = install_shop(backend, databases, tmp_path, product="报表 e2e", price="9.90", keys=5,
                                      prefix="R")
    (tmp_path / "fpw").write_text(PASSWORD + "\n")
    run_cli("user", "create", "--username", "clerk", "--role", "finance", "--password-file", tmp_path / "fpw",
            config=config, check=True)
    run_cli("channel", "add", "--type", "epay", "--code", "ep", "--option", "gateway=https://pay.example.com",
            "--option", "pid=1001", "--option", f"key={KEY}", config=config, check=True)
    bases = start_layout(layout, start_server, config)
    sold = []
    for _ in range(3):
        status, _, text = http("POST", f"{bases[0]}/api/v1/orders", {"product_id": pid, "quantity": 1,
                                                                    "email": "buyer@example.com", "channel": "ep"})
        placed = json.loads(text)
        assert status == 201, placed
        params = {"pid": "1001", "trade_no": f"T{placed['order_no']}", "out_trade_no": placed["order_no"],
                  "type": "alipay", "name": "x", "money": placed["amount"], "trade_status": "TRADE_SUCCESS"}
        params["sign"] = hashlib.md5((epay.signing_string(params) + KEY).encode()).hexdigest()
        assert http("GET", f"{bases[-1]}/pay/ep/notify?{urlencode(params)}")[2] == "success"
        sold.append(placed["order_no"])

    clerk = sign_in(bases[0], "clerk")
    page = send(clerk, f"{bases[-1]}/admin/reports?report=profit&lang=en")[2]
    row = re.search(r'<th scope="row">报表 e2e</th>(.*?)</tr>', page)
    assert row and re.findall(r"<td[^>]*>([^<]*)</td>", row.group(1))[1:3] == ["3", "29.70"], page[-3000:]

    lists = send(clerk, f"{bases[0]}/admin/reports/lists")[2]
    status, location, _ = send(clerk, f"{bases[0]}/admin/reports/lists", {
        "csrf_token": token_of(lists), "list": "orders", "format": "csv",
        "from": re.search(r'id="from" name="from" type="date" value="([^"]+)"', lists).group(1),
        "to": re.search(r'id="to" name="to" type="date" value="([^"]+)"', lists).group(1)})
    assert status == 303, status
    path = location.replace(bases[0], "") if location.startswith("http") else location
    deadline = time.monotonic() + 60
    while 'data-status="done"' not in (html := send(clerk, bases[-1] + path)[2]):
        assert 'data-status="failed"' not in html and time.monotonic() < deadline, html[-2000:]
        time.sleep(0.3)
    status, _, body = send(clerk, f"{bases[-1]}{path}/download")
    assert status == 200
    rows = list(csv.reader(io.StringIO(body.lstrip("\ufeff"))))
    assert rows[0][0] == "order_no" and sorted(r[0] for r in rows[1:]) == sorted(sold)
    audit = run_cli("audit", "list", "--json", config=config, check=True).out
    assert audit.count('"report.export"') == 1 and audit.count('"report.download"') == 1
    assert "buyer@example.com" not in audit
    logs = start_server.stop_all()
    assert not any("Traceback" in log for log in logs.values()), logs

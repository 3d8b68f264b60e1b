"""Reports end to end (W7), run inside the after-sales end-to-end test (tests/test_tickets_e2e.py)
on its servers in each layout, SQLite and MariaDB: its purchase is read in today's profit report
(the live part) by a finance clerk signed in on one server, who asks there for the orders list;
the list is written in the background by that server's worker, and its page and file are read
from the other server (two servers: the file is in the database, any server hands it out).
(One set of servers for both: each layout's install and start-up is most of such a test's time.)
"""
from __future__ import annotations

import csv
import io
import re
import time

from conftest import run_cli


def check_reports(bases: list[str], config, clerk, product: str, sold: list[str], amount: str) -> None:
    """`clerk`: a finance clerk's signed-in opener (tests/test_tickets_e2e.sign_in)."""
    from test_tickets_e2e import send, token_of

    page = send(clerk, f"{bases[-1]}/admin/reports?report=profit&lang=en")[2]
    row = re.search(rf'<th scope="row">{re.escape(product)}</th>(.*?)</tr>', page)
    assert row and re.findall(r"<td[^>]*>([^<]*)</td>", row.group(1))[1:3] == [str(len(sold)), amount], page[-3000:]

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

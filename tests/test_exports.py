"""Big lists as CSV and XLSX (kamengd.reports.exports): the same cells in both, nothing a
spreadsheet would run, every row once however many share an instant, times in the shop's zone,
and never a voucher's code. On every backend, in days of 2037 no other test uses."""
from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import secrets
import zipfile
from decimal import Decimal

import pytest
import sqlalchemy as sa

from kamengd.orders.models import Order
from kamengd.reports import exports

T = dt.datetime(2037, 3, 10, 15, 59, 30)    # 23:59:30 in Shanghai
DAY = (dt.datetime(2037, 3, 10), dt.datetime(2037, 3, 11))
SHANGHAI = "Asia/Shanghai"


def order_row(product_id: int, created: dt.datetime, *, cents: int = 990, email: str = "b@example.com",
              status: str = "delivered", channel_id: int | None = None, **extra) -> Order:
    """A bare order row (no events, no mails)."""
    no = f"EX{secrets.token_hex(7).upper()}"
    paid = created + dt.timedelta(seconds=40) if status in ("paid", "delivered", "refunded", "held") else None
    return Order(order_no=no, product_id=product_id, channel_id=channel_id, quantity=1, unit_price_cents=cents,
                 amount_cents=cents, currency="CNY", email=email, status=status,
                 token_hash=hashlib.sha256(no.encode()).digest(), created_at=created, updated_at=created,
                 expires_at=created + dt.timedelta(minutes=15), paid_at=paid,
                 delivered_at=paid if status == "delivered" else None, **extra)


def add_orders(session, orders: list[Order]) -> list[Order]:
    session.add_all(orders)
    session.flush()
    return orders


def csv_rows(data: bytes) -> list[list[str]]:
    assert data.startswith(b"\xef\xbb\xbf")   # the BOM: Excel reads Chinese right
    return list(csv.reader(io.StringIO(data[3:].decode("utf-8"), newline="")))


def xlsx_rows(data: bytes) -> list[list]:
    from openpyxl import load_workbook
    book = load_workbook(io.BytesIO(data), read_only=True)
    rows = []
    for sheet in book.worksheets:
        rows += [list(r) for r in sheet.iter_rows(values_only=True)]
    book.close()
    return rows


def same_cell(in_csv: str, in_xlsx) -> bool:
    """An XLSX cell holds what the CSV's says (money: the same number; a workbook keeps 12.00 as 12)."""
    if in_xlsx is None:
        return in_csv == ""
    if isinstance(in_xlsx, dt.datetime):
        return in_csv == in_xlsx.isoformat(" ", "seconds")
    if isinstance(in_xlsx, (int, float)) and not isinstance(in_xlsx, bool):
        return Decimal(in_csv) == Decimal(repr(in_xlsx))
    return in_csv == in_xlsx


def both(export: exports.Export) -> tuple[list[list[str]], list[list]]:
    rows = list(export.rows)
    as_csv, as_xlsx = io.BytesIO(), io.BytesIO()
    assert exports.write_csv(export.header, rows, as_csv) == len(rows)
    assert exports.write_xlsx(export.header, rows, as_xlsx, sheet=export.name) == len(rows)
    return csv_rows(as_csv.getvalue()), xlsx_rows(as_xlsx.getvalue())


def same_cells(export: exports.Export) -> list[dict[str, str]]:
    """Write the export both ways, check they match cell by cell; its rows as dicts of text."""
    from_csv, from_xlsx = both(export)
    assert from_csv[0] == export.header and list(from_xlsx[0]) == export.header
    assert len(from_csv) == len(from_xlsx)
    header = export.header
    for c_row, x_row in zip(from_csv[1:], from_xlsx[1:]):
        x_row = list(x_row) + [None] * (len(header) - len(x_row))
        assert len(c_row) == len(header)
        assert all(same_cell(c, x) for c, x in zip(c_row, x_row)), (c_row, x_row)
    return [dict(zip(header, r)) for r in from_csv[1:]]


@pytest.fixture
def product(make_product):
    return make_product(name=f"=HYPERLINK(\"http://evil.example\") 商品 {secrets.token_hex(3)}")


@pytest.fixture
def channel(session, vault):
    from kamengd.payments.services import add_channel
    return add_channel(session, vault, channel_type="epay", code=f"ex{secrets.token_hex(3)}", actor="t",
                       options={"gateway": "http://127.0.0.1:9", "pid": "1001", "key": "merchant-key-123"})


def orders_of(session, **kwargs) -> exports.Export:
    kwargs.setdefault("start", DAY[0])
    kwargs.setdefault("end", DAY[1])
    return exports.orders(session, tz=kwargs.pop("tz", SHANGHAI), **kwargs)


# -- the writers ------------------------------------------------------------------------

def test_the_writers_agree_on_every_kind_of_cell_and_neutralise_formulas():
    header = ["text", "number", "money", "time", "none"]
    rows = [["=1+1", 7, Decimal("12.30"), dt.datetime(2037, 1, 2, 3, 4, 5), None],
            ["+86 138", -3, Decimal("-0.05"), dt.datetime(2037, 12, 31, 23, 59, 59), None],
            ["@SUM(A1)", 0, Decimal("0.00"), None, None],
            ["-2+3", 1, Decimal("99999999999.99"), None, None],
            ["-5.00", 2, Decimal("1.00"), None, None],
            ["中文 bell\x07", 3, Decimal("0.01"), None, ""]]
    out_csv, out_xlsx = io.BytesIO(), io.BytesIO()
    assert exports.write_csv(header, rows, out_csv) == exports.write_xlsx(header, rows, out_xlsx, sheet="cells") == 6
    from_csv, from_xlsx = csv_rows(out_csv.getvalue()), xlsx_rows(out_xlsx.getvalue())
    assert [r[0] for r in from_csv[1:]] == ["'=1+1", "'+86 138", "'@SUM(A1)", "'-2+3", "-5.00", "中文 bell\x07"]
    assert [r[2] for r in from_csv[1:]] == ["12.30", "-0.05", "0.00", "99999999999.99", "1.00", "0.01"]
    assert from_csv[1][3] == "2037-01-02 03:04:05"
    # The workbook: the same text (a control character it cannot hold is replaced), real numbers and times.
    assert [r[0] for r in from_xlsx[1:]] == ["'=1+1", "'+86 138", "'@SUM(A1)", "'-2+3", "-5.00", "中文 bell\ufffd"]
    assert [r[1] for r in from_xlsx[1:]] == [7, -3, 0, 1, 2, 3]
    assert [f"{r[2]:.2f}" for r in from_xlsx[1:]] == [r[2] for r in from_csv[1:]]
    assert from_xlsx[1][3] == dt.datetime(2037, 1, 2, 3, 4, 5)
    with zipfile.ZipFile(out_xlsx) as z:
        sheet = z.read("xl/worksheets/sheet1.xml").decode()
        assert "<f>" not in sheet   # no formula anywhere
    from openpyxl import load_workbook
    cells = load_workbook(io.BytesIO(out_xlsx.getvalue())).active
    assert cells["C2"].number_format == exports.MONEY_FORMAT and cells["D2"].number_format == exports.TIME_FORMAT
    assert cells["C3"].number_format == exports.MONEY_FORMAT   # a second row's money has its format too


def test_csv_chunks_stream_what_write_csv_writes():
    rows = [[f"row {i}", i, Decimal(i).scaleb(-2)] for i in range(3000)]
    chunks = list(exports.csv_chunks(["a", "b", "c"], iter(rows), chunk=4096))
    assert len(chunks) > 10 and all(isinstance(c, bytes) and len(c) < 4096 + 100 for c in chunks)
    whole = io.BytesIO()
    exports.write_csv(["a", "b", "c"], iter(rows), whole)
    assert b"".join(chunks) == whole.getvalue()
    assert csv_rows(whole.getvalue())[-1] == ["row 2999", "2999", "29.99"]


def test_a_workbook_goes_on_to_another_sheet_when_one_is_full(monkeypatch):
    from kamengd.reports import xlsx
    monkeypatch.setattr(xlsx, "MAX_ROWS", 4)   # the header and three rows a sheet
    rows = [[i, Decimal(i)] for i in range(8)]
    out = io.BytesIO()
    assert exports.write_xlsx(["n", "money"], iter(rows), out, sheet="orders") == 8
    from openpyxl import load_workbook
    book = load_workbook(io.BytesIO(out.getvalue()), read_only=True)
    assert book.sheetnames == ["orders", "orders (2)", "orders (3)"]
    sheets = [[list(r) for r in ws.iter_rows(values_only=True)] for ws in book.worksheets]
    assert [s[0] for s in sheets] == [["n", "money"]] * 3
    assert [r[0] for s in sheets for r in s[1:]] == list(range(8))
    empty = io.BytesIO()
    assert exports.write_xlsx(["n"], iter([]), empty) == 0
    assert xlsx_rows(empty.getvalue()) == [["n"]]


# -- orders -----------------------------------------------------------------------------

def test_orders_as_csv_and_xlsx_match_cell_by_cell(backend, session, product, channel):
    add_orders(session, [
        order_row(product.id, T, cents=1234, email="=cmd|' /C calc'!A0@example.com", channel_id=channel.id,
                  pay_type="alipay", buyer_input='[{"label": "QQ", "value": "=1+1"}]'),
        order_row(product.id, T - dt.timedelta(hours=1), cents=1200, status="expired"),
        order_row(product.id, T - dt.timedelta(hours=2), cents=0, flagged_at=T, flag_reason="held: paid 0.01"),
    ])
    rows = same_cells(orders_of(session, product_id=product.id))
    assert [r["amount"] for r in rows] == ["12.34", "12.00", "0.00"]
    first = rows[0]
    assert first["product"] == "'" + product.name and first["email"] == "'=cmd|' /C calc'!A0@example.com"
    assert first["channel"] == channel.code and first["pay_type"] == "alipay" and first["input"] == "QQ: =1+1"
    assert first["created"] == "2037-03-10 23:59:30" and first["paid"] == "2037-03-11 00:00:10"
    assert rows[1]["status"] == "expired" and rows[1]["paid"] == "" and rows[1]["channel"] == ""
    assert rows[2]["flag"] == "held: paid 0.01"


def test_keyset_pages_give_every_order_once_when_many_share_an_instant(backend, session, product):
    same = add_orders(session, [order_row(product.id, T) for _ in range(23)])
    around = add_orders(session, [order_row(product.id, T - dt.timedelta(seconds=1)),
                                  order_row(product.id, T + dt.timedelta(seconds=1))])
    statements = []

    def seen(conn, cursor, statement, parameters, *args):
        if "FROM orders" in statement:
            statements.append((statement, parameters))
    engine = session.get_bind().engine
    sa.event.listen(engine, "before_cursor_execute", seen)
    try:
        newest = [r[0] for r in orders_of(session, product_id=product.id, page_size=4).rows]
    finally:
        sa.event.remove(engine, "before_cursor_execute", seen)
    oldest = [r[0] for r in orders_of(session, product_id=product.id, page_size=4, newest_first=False).rows]
    by_id = sorted(same, key=lambda o: o.id)
    expected = [around[0].order_no] + [o.order_no for o in by_id] + [around[1].order_no]
    assert oldest == expected
    assert newest == expected[::-1]
    # 25 rows, 4 a page: 7 reads, none skipping rows (SQLite's dialect writes "OFFSET 0" after a LIMIT)
    assert len(statements) == 7
    assert all("OFFSET" not in sql or list(parameters)[-1] == 0 for sql, parameters in statements), statements


def test_times_are_the_shop_s_and_the_range_is_start_inclusive_end_exclusive(backend, session, product):
    start, end = dt.datetime(2037, 3, 10, 16, 0), dt.datetime(2037, 3, 11, 16, 0)   # a Shanghai day
    made = add_orders(session, [order_row(product.id, start - dt.timedelta(microseconds=1)),
                                order_row(product.id, start),
                                order_row(product.id, end - dt.timedelta(microseconds=1)),
                                order_row(product.id, end)])
    rows = list(orders_of(session, start=start, end=end, product_id=product.id, newest_first=False).rows)
    assert [r[0] for r in rows] == [made[1].order_no, made[2].order_no]
    assert [r[1] for r in rows] == [dt.datetime(2037, 3, 11, 0, 0), dt.datetime(2037, 3, 11, 23, 59, 59, 999_999)]
    # 15:59:30.999999 UTC: 23:59:30 in Shanghai in both files (a second's fraction is dropped, never rounded up).
    late = add_orders(session, [order_row(product.id, T.replace(microsecond=999_999))])[0]
    for zone, shown in ((SHANGHAI, "2037-03-10 23:59:30"), ("UTC", "2037-03-10 15:59:30"),
                        ("America/New_York", "2037-03-10 11:59:30")):   # EDT from 8 March 2037
        export = orders_of(session, product_id=product.id, tz=zone)
        row = [r for r in export.rows if r[0] == late.order_no]
        in_csv, in_xlsx = io.BytesIO(), io.BytesIO()
        exports.write_csv(export.header, row, in_csv)
        exports.write_xlsx(export.header, row, in_xlsx)
        assert csv_rows(in_csv.getvalue())[1][1] == shown
        assert xlsx_rows(in_xlsx.getvalue())[1][1] == dt.datetime.fromisoformat(shown)


def test_filters_by_status_product_and_channel(backend, session, make_product, product, channel):
    other = make_product()
    add_orders(session, [order_row(product.id, T, status="delivered", channel_id=channel.id),
                         order_row(product.id, T, status="expired"),
                         order_row(other.id, T, status="delivered", channel_id=channel.id)])
    names = lambda **kw: sorted((r[2], r[7]) for r in orders_of(session, **kw).rows)   # noqa: E731
    assert names(product_id=product.id, status="delivered") == [(product.name, "delivered")]
    assert names(channel_id=channel.id) == sorted([(product.name, "delivered"), (other.name, "delivered")])
    assert names(product_id=other.id, status="expired") == []


def test_an_export_outside_a_transaction_reads_a_snapshot_without_the_write_lock(backend, app):
    from kamengd.extensions import db

    with app.app_context():
        try:
            for source in (exports.orders, exports.ledger_entries, exports.redemptions):
                rows = source(db.session, start=dt.datetime(2037, 1, 1), end=dt.datetime(2037, 1, 2),
                              tz=SHANGHAI).rows
                assert not db.session().in_transaction()   # nothing is read before the rows are asked for
                assert list(rows) == []
                assert db.session.connection().get_execution_options().get("kamengd_readonly") is True
                db.session.rollback()
        finally:
            db.session.remove()


# -- the ledger -------------------------------------------------------------------------

def test_ledger_entries_name_their_accounts_and_match_cell_by_cell(backend, session):
    from kamengd.agents import services as agents
    from kamengd.ledger import services as ledger
    from kamengd.ledger.models import LedgerTransaction

    level, _ = agents.set_level(session, name=f"lv-{secrets.token_hex(3)}", discount="10", actor="t")
    agent = agents.create_agent(session, username=f"ag-{secrets.token_hex(3)}", level=level.name, actor="t")
    tag = secrets.token_hex(4)
    inside = ledger.post(session, cause=f"credit:ex-{tag}", kind="credit", actor="staff:t", memo="=SUM(A1:A9)",
                         legs=ledger.agent_credit_legs(session, agent.id, 5000)
                         + [(ledger.shop_ref(session, "shop:adjustments"), -5000)])
    outside = ledger.post(session, cause=f"credit:ex-{tag}-2", kind="credit", actor="staff:t",
                          legs=ledger.agent_credit_legs(session, agent.id, 100)
                          + [(ledger.shop_ref(session, "shop:adjustments"), -100)])
    for booking, when in ((inside, T), (outside, DAY[1])):
        session.execute(sa.update(LedgerTransaction).where(LedgerTransaction.id == booking.transaction_id)
                        .values(created_at=when))
    rows = same_cells(exports.ledger_entries(session, start=DAY[0], end=DAY[1], tz=SHANGHAI, page_size=1))
    mine = [r for r in rows if r["transaction_id"] == str(inside.transaction_id)]
    assert {r["transaction_id"] for r in rows} >= {str(inside.transaction_id)}
    assert str(outside.transaction_id) not in {r["transaction_id"] for r in rows}
    assert [(r["account"], r["holder"], r["holder_kind"], r["balance"], r["amount"], r["balance_after"])
            for r in sorted(mine, key=lambda r: r["amount"])] == [
        ("shop:adjustments", "", "shop", "shop", "-50.00", ""),
        (f"agent:{agent.id}:available", agent.username, "agent", "available", "50.00", "50.00")]
    assert {r["time"] for r in mine} == {"2037-03-10 23:59:30"}
    assert {(r["kind"], r["cause"], r["memo"], r["actor"]) for r in mine} == {
        ("credit", f"credit:ex-{tag}", "'=SUM(A1:A9)", "staff:t")}


# -- voucher redemptions ----------------------------------------------------------------

def test_redemptions_never_show_a_voucher_code(backend, session, vault, make_product):
    from kamengd.accounts.services import create_user
    from kamengd.vouchers import services, stock
    from kamengd.vouchers.codes import grouped
    from kamengd.vouchers.models import Redemption

    coffee = make_product(name=f"咖啡券 {secrets.token_hex(3)}")
    services.set_terms(session, product_id=coffee.id, kind="uses", uses=2, actor="t")
    issued = stock.issue_batch(session, vault, product_id=coffee.id, count=2, reason="a company's gift", actor="t",
                               now=T - dt.timedelta(days=1))
    store = services.add_store(session, name=f"东店 {secrets.token_hex(3)}", actor="t")
    clerk = create_user(session, username=f"clerk-{secrets.token_hex(3)}", role="verifier",
                        password="correct horse battery", actor="t")
    services.bind_verifier(session, store.id, clerk.username, actor="t")
    done = services.redeem(session, vault, typed=grouped(issued.codes[0]), store_id=store.id, user=clerk, now=T)
    assert done.redemption_id
    wrong = issued.codes[1][:-1] + ("A" if issued.codes[1][-1] != "A" else "B")   # a typo: refused, its hash kept
    services.redeem(session, vault, typed=wrong, store_id=store.id, user=clerk, now=T + dt.timedelta(seconds=5))
    session.flush()
    lookups = [lk.hex() for lk in session.scalars(sa.select(Redemption.code_lookup).where(
        Redemption.store_id == store.id, Redemption.code_lookup.is_not(None)))]

    export = exports.redemptions(session, start=DAY[0], end=DAY[1], tz=SHANGHAI, store_ids=[store.id])
    rows = same_cells(export)
    assert [(r["product"], r["outcome"], r["uses"], r["staff"], r["store"]) for r in rows] == [
        (coffee.name, "redeemed", "1", clerk.username, store.name), ("", "refused", "0", clerk.username, store.name)]
    assert rows[0]["voucher_id"] and rows[0]["time"] == "2037-03-10 23:59:30" and rows[1]["reason"]
    of_two = exports.redemptions(session, start=DAY[0], end=DAY[1], tz=SHANGHAI, store_ids=[store.id, 2**31 - 1],
                                 page_size=1)
    assert [r[0] for r in of_two.rows] == [int(r["redemption_id"]) for r in rows]
    again = exports.redemptions(session, start=DAY[0], end=DAY[1], tz=SHANGHAI, store_ids=[store.id])
    as_csv, as_xlsx = io.BytesIO(), io.BytesIO()
    rows = list(again.rows)
    exports.write_csv(again.header, rows, as_csv)
    exports.write_xlsx(again.header, rows, as_xlsx)
    with zipfile.ZipFile(as_xlsx) as z:
        files = [as_csv.getvalue().decode("utf-8-sig")] + [z.read(n).decode("utf-8") for n in z.namelist()]
    secrets_ = [c for code in issued.codes for c in (code, grouped(code), code.lower())] + [wrong] + lookups
    for text in files:
        for secret in secrets_:
            assert secret not in text

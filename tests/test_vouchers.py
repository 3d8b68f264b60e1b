"""Vouchers (卡券, W6): codes kamengd makes, sold like keys, redeemed (核销) at stores.

The codes (alphabet, check character), a voucher product bought and paid through the buyer
API, redemption by terminals (every refusal said and recorded), two terminals on one code,
a stored value redeemed in parts at once, undo by a store's manager, refunds, batches for
companies (CSV and XLSX, audited) and a key rotation. SQLite and MariaDB.
"""
from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import secrets
import threading

import pytest
import sqlalchemy as sa

from kamengd.errors import Conflict, InvalidRequest, NotFound
from kamengd.vouchers import codes

KEY = "voucher-merchant-key-0123456789abcd"


def _db():
    from kamengd.extensions import db
    return db


# -- codes ------------------------------------------------------------------------------

def test_the_check_character_catches_one_wrong_character_and_swapped_neighbours():
    alphabet = codes.DEFAULT_ALPHABET
    for _ in range(200):
        code = codes.generate(alphabet, 16)
        assert len(code) == 16 and codes.is_well_formed(code, alphabet)
        i = secrets.randbelow(16)
        wrong = code[:i] + alphabet[(alphabet.index(code[i]) + 1 + secrets.randbelow(len(alphabet) - 1))
                                    % len(alphabet)] + code[i + 1:]
        assert not codes.is_well_formed(wrong, alphabet), (code, wrong)
        j = secrets.randbelow(15)
        if code[j] != code[j + 1]:
            swapped = code[:j] + code[j + 1] + code[j] + code[j + 2:]
            # Luhn mod N misses one pair of neighbours (its two "self-inverse" values)
            pair = {alphabet.index(code[j]), alphabet.index(code[j + 1])}
            if pair != {0, len(alphabet) - 1} and pair != {len(alphabet) // 2 - 1 + (len(alphabet) % 2),
                                                           len(alphabet) // 2}:
                assert not codes.is_well_formed(swapped, alphabet), (code, swapped)
    assert codes.normalise(" abcd-efgh ") == "ABCDEFGH"
    assert codes.grouped("ABCDEFGHJK") == "ABCD-EFGH-JK"


def test_codes_made_in_bulk_use_every_character_alike_and_carry_their_check():
    import collections
    for alphabet in (codes.DEFAULT_ALPHABET, "23456789ABCDEFGHJK"):   # 32 divides 256, 18 does not
        made = codes.generate_many(alphabet, 16, 20000)
        assert len(made) == 20000 and len(set(made)) == 20000
        assert all(codes.is_well_formed(c, alphabet) for c in made)
        seen = collections.Counter("".join(c[:-1] for c in made))
        expected = 20000 * 15 / len(alphabet)
        assert set(seen) == set(alphabet)
        # A character 4 % more or less likely than the others would fall outside these bounds.
        assert all(abs(n - expected) < expected * 0.04 for n in seen.values()), seen


def test_an_alphabet_with_look_alikes_or_too_few_characters_is_refused():
    for bad in ("0123456789O", "ABC", "AABCDEFGHIJK", "1ABCDEFGHIL", "ABCDEFGHJK-"):
        with pytest.raises(codes.CodeError):
            codes.check_alphabet(bad)
    assert codes.check_alphabet("23456789abcdefghjk") == "23456789ABCDEFGHJK"
    with pytest.raises(codes.CodeError):
        codes.check_length(8, "23456789ABCDEFGHJK")   # 7 x 4 bits: too easy to guess
    assert codes.check_length(16, codes.DEFAULT_ALPHABET) == 16


# -- a shop with a voucher product ------------------------------------------------------

@pytest.fixture
def voucher_shop(app):
    """A uses voucher (one use) and a stored-value voucher (10.00), each with codes for sale, an
    Epay channel, two stores, a verifier bound to the first (its manager) and one to the second."""
    from kamengd.catalog.services import create_product
    from kamengd.context import get_vault
    from kamengd.payments.services import add_channel
    from kamengd.vouchers import services, stock
    from panel_support import make_staff

    tag = secrets.token_hex(3)
    db = _db()
    with app.app_context():
        coffee = create_product(db.session, name=f"咖啡券 {tag}", price_cents=1500, actor="t", max_quantity=10)
        card = create_product(db.session, name=f"储值卡 {tag}", price_cents=1000, actor="t", max_quantity=10)
        services.set_terms(db.session, product_id=coffee.id, kind="uses", uses=1, entitlement="一杯中杯拿铁",
                           valid_days=30, actor="t")
        services.set_terms(db.session, product_id=card.id, kind="value", value="10.00", actor="t")
        stock.generate_stock(db.session, get_vault(), product_id=coffee.id, count=20, actor="t")
        stock.generate_stock(db.session, get_vault(), product_id=card.id, count=20, actor="t")
        code = f"vc{tag}"
        add_channel(db.session, get_vault(), channel_type="epay", code=code, actor="t",
                    options={"gateway": "https://pay.example.com", "pid": "7008", "key": KEY})
        east = services.add_store(db.session, name=f"东店 {tag}", address="东大街 1 号", actor="t")
        west = services.add_store(db.session, name=f"West {tag}", actor="t")
        db.session.commit()
        found = {"coffee": coffee.id, "card": card.id, "channel": code, "east": east.id, "west": west.id,
                 "east_name": east.name, "west_name": west.name}
        db.session.remove()
    found["manager"] = make_staff(app, "verifier")
    found["clerk"] = make_staff(app, "verifier")
    with app.app_context():
        services.bind_verifier(db.session, found["east"], found["manager"].username, manager=True, actor="t")
        services.bind_verifier(db.session, found["east"], found["clerk"].username, actor="t")
        services.bind_verifier(db.session, found["west"], found["clerk"].username, actor="t")
        db.session.commit()
        db.session.remove()
    return found


def buy(client, shop, product="coffee", quantity=1):
    """Order and pay through the buyer API; the order as the buyer sees it."""
    from kamengd.payments import epay
    answer = client.post("/api/v1/orders", json={"product_id": shop[product], "quantity": quantity,
                                                 "email": "v@example.com", "channel": shop["channel"]})
    assert answer.status_code == 201, answer.get_json()
    order = answer.get_json()
    params = {"pid": "7008", "trade_no": f"T{order['order_no']}", "out_trade_no": order["order_no"],
              "type": "alipay", "name": "x", "money": order["amount"], "trade_status": "TRADE_SUCCESS"}
    params["sign"] = hashlib.md5((epay.signing_string(params) + KEY).encode()).hexdigest()
    assert client.get(f"/pay/{shop['channel']}/notify", query_string=params).get_data(as_text=True) == "success"
    shown = client.get(f"/api/v1/orders/{order['order_no']}", query_string={"token": order["token"]}).get_json()
    assert shown["status"] == "delivered", shown
    return {**shown, "token": order["token"]}


def user(app, staff):
    from kamengd.accounts.models import StaffUser
    return _db().session.get(StaffUser, staff.id)


def redeem(app, shop, code, *, staff="clerk", store="east", **kwargs):
    from kamengd.context import get_vault
    from kamengd.vouchers import services
    db = _db()
    with app.app_context():
        try:
            out = services.redeem(db.session, get_vault(), typed=code, store_id=shop[store],
                                  user=user(app, shop[staff]), **kwargs)
            db.session.commit()
            return out.seen.as_dict() | {"redemption_id": out.redemption_id}
        finally:
            db.session.remove()


def voucher_row(app, code):
    from kamengd.context import get_vault
    from kamengd.vouchers import services
    db = _db()
    with app.app_context():
        _code, v = services.find_voucher(db.session, get_vault(), code)
        db.session.expunge_all()
        db.session.remove()
    return v


def test_a_bought_voucher_is_redeemed_once_and_the_second_time_says_where_and_when(app, client, voucher_shop):
    s = voucher_shop
    order = buy(client, s)
    [code] = order["keys"]
    assert codes.is_well_formed(codes.normalise(code), codes.DEFAULT_ALPHABET) and code.count("-") == 3
    v = voucher_row(app, code)
    assert v.status == "active" and v.uses_left == 1 and v.issued_at is not None
    assert dt.timedelta(days=29, hours=23) < v.valid_until - v.issued_at <= dt.timedelta(days=30)
    # Typed in lower case, without dashes: the same code.
    first = redeem(app, s, code.replace("-", "").lower())
    assert first["ok"] and first["redemption_id"] and first["entitlement"] == "一杯中杯拿铁"
    again = redeem(app, s, code, store="west")
    assert (again["ok"], again["refusal"], again["last_redeemed"]["store"]) == (False, "used_up", s["east_name"])
    assert voucher_row(app, code).uses_left == 0
    from kamengd.vouchers.models import Redemption
    db = _db()
    with app.app_context():
        rows = db.session.execute(sa.select(Redemption.outcome, Redemption.reason, Redemption.store_id)
                                  .where(Redemption.voucher_id == v.id).order_by(Redemption.id)).all()
        db.session.remove()
    assert rows == [("redeemed", None, s["east"]), ("refused", "used_up", s["west"])]


def test_every_refusal_is_said_and_recorded(app, client, voucher_shop):
    from kamengd.context import get_vault
    from kamengd.vouchers import services
    from kamengd.vouchers.models import Redemption, Voucher
    s = voucher_shop
    db = _db()
    # A code still in stock (never sold) is refused.
    with app.app_context():
        unsold = db.session.scalar(sa.select(Voucher).where(Voucher.product_id == s["coffee"],
                                                            Voucher.status == "stock").limit(1))
        from kamengd.inventory.models import CardKey
        k = db.session.get(CardKey, unsold.card_key_id)
        unsold_code = get_vault().decrypt_card_key(k.product_id, k.fingerprint, k.nonce, k.ciphertext,
                                                   k.key_version).decode()
        db.session.remove()
    assert redeem(app, s, unsold_code)["refusal"] == "not_sold"
    # A typo (check character) and a well-formed code nobody has.
    good = codes.generate(codes.DEFAULT_ALPHABET, 16)
    assert redeem(app, s, good)["refusal"] == "unknown"
    assert redeem(app, s, good[:-1] + ("2" if good[-1] != "2" else "3"))["refusal"] == "typo"
    # Expired, not yet valid, other store.
    code = buy(client, s)["keys"][0]
    with app.app_context():
        t = Voucher.__table__
        _c, v = services.find_voucher(db.session, get_vault(), code)
        vid = v.id
        db.session.execute(t.update().where(t.c.id == vid).values(valid_until=dt.datetime(2020, 1, 1)))
        db.session.commit()
        db.session.remove()
    assert redeem(app, s, code)["refusal"] == "expired"
    with app.app_context():
        db.session.execute(t.update().where(t.c.id == vid).values(valid_until=None,
                                                                    valid_from=dt.datetime(2099, 1, 1)))
        db.session.commit()
        db.session.remove()
    assert redeem(app, s, code)["refusal"] == "not_yet"
    with app.app_context():
        db.session.execute(t.update().where(t.c.id == vid).values(valid_from=None))
        services.set_terms(db.session, product_id=s["coffee"], kind="uses", uses=1, store_ids=str(s["west"]),
                           actor="t")
        db.session.commit()
        db.session.remove()
    assert redeem(app, s, code)["refusal"] == "other_store"
    assert redeem(app, s, code, store="west")["ok"]
    # The manager is not bound to the west store: not found there.
    with pytest.raises(NotFound):
        redeem(app, s, code, staff="manager", store="west")
    with app.app_context():
        reasons = db.session.scalars(sa.select(Redemption.reason).where(Redemption.store_id == s["east"],
                                                                        Redemption.outcome == "refused")).all()
        db.session.remove()
    assert {"not_sold", "unknown", "typo", "expired", "not_yet", "other_store"} <= set(reasons)


def test_a_refunded_order_s_code_is_refused(app, client, voucher_shop):
    from kamengd.orders.staff import refund_order
    s = voucher_shop
    order = buy(client, s)
    db = _db()
    with app.app_context():
        done = refund_order(db.session, order_no=order["order_no"], reason="buyer changed mind", actor="t")
        db.session.commit()
        db.session.remove()
    assert done.previous_status == "delivered"
    refused = redeem(app, s, order["keys"][0])
    assert (refused["ok"], refused["refusal"], refused["status"]) == (False, "refunded", "refunded")


def test_two_terminals_redeeming_one_code_at_once_one_succeeds(app, client, voucher_shop):
    s = voucher_shop
    [code] = buy(client, s)["keys"]
    results, barrier = [], threading.Barrier(8)

    def terminal(n):
        barrier.wait()
        results.append(redeem(app, s, code, staff="clerk" if n % 2 else "manager"))
    threads = [threading.Thread(target=terminal, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r["ok"] for r in results) == 1, results
    assert {r["refusal"] for r in results if not r["ok"]} == {"used_up"}
    assert all(r["last_redeemed"]["store"] == s["east_name"] for r in results if not r["ok"])
    assert voucher_row(app, code).uses_left == 0


def test_a_stored_value_redeemed_in_parts_at_once_never_goes_below_zero(app, client, voucher_shop):
    s = voucher_shop
    [code] = buy(client, s, "card")["keys"]
    results, barrier = [], threading.Barrier(12)

    def till(n):
        barrier.wait()
        results.append(redeem(app, s, code, amount="1.50"))
    threads = [threading.Thread(target=till, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 10.00 holds six parts of 1.50 (9.00); the seventh would go below zero.
    assert sum(r["ok"] for r in results) == 6, results
    assert {r["refusal"] for r in results if not r["ok"]} == {"not_enough"}
    assert voucher_row(app, code).value_left_cents == 100
    assert redeem(app, s, code, amount="1.00")["ok"]
    assert redeem(app, s, code, amount="0.01")["refusal"] == "used_up"
    with pytest.raises(InvalidRequest):
        redeem(app, s, code, amount="-1")


def test_a_manager_undoes_a_redemption_once_within_the_window(app, client, voucher_shop, shared_setting):
    from kamengd.audit.models import AuditEntry
    from kamengd.vouchers import services
    s = voucher_shop
    code = buy(client, s, "card")["keys"][0]
    done = redeem(app, s, code, amount="4.00")
    db = _db()

    def undo(staff, **kwargs):
        with app.app_context():
            try:
                row = services.undo(db.session, redemption_id=done["redemption_id"], user=user(app, s[staff]),
                                    reason="wrong card", **kwargs)
                db.session.commit()
                return row.undone_at
            finally:
                db.session.remove()
    with pytest.raises(NotFound):   # a clerk is not the store's manager
        undo("clerk")
    late = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(minutes=16)
    with pytest.raises(Conflict, match="15 minutes"):
        undo("manager", now=late)
    assert undo("manager") is not None
    assert voucher_row(app, code).value_left_cents == 1000
    with pytest.raises(Conflict, match="undone already"):
        undo("manager")
    with app.app_context():
        entry = db.session.scalars(sa.select(AuditEntry).where(
            AuditEntry.action == "voucher.undo", AuditEntry.target == f"redemption:{done['redemption_id']}")).one()
        assert s["manager"].username in entry.actor
        db.session.remove()


def test_a_batch_is_issued_active_and_exported_as_csv_and_xlsx_with_a_reason(app, voucher_shop, tmp_path):
    from openpyxl import load_workbook

    from kamengd.audit.models import AuditEntry
    from kamengd.context import get_vault
    from kamengd.vouchers import stock
    s = voucher_shop
    db = _db()
    with app.app_context():
        with pytest.raises(InvalidRequest):
            stock.issue_batch(db.session, get_vault(), product_id=s["coffee"], count=10, reason="", actor="t")
        issued = stock.issue_batch(db.session, get_vault(), product_id=s["coffee"], count=1200,
                                   reason="ACME 年会礼品", actor="t")
        db.session.commit()
        batch, rows = stock.batch_codes(db.session, get_vault(), issued.batch.id)
        product = db.session.get(stock.Product, s["coffee"])
        terms = db.session.get(stock.VoucherTerms, s["coffee"])
        stock.write_private(tmp_path / "b.csv", stock.render_csv(stock.export_rows(product, terms, rows)))
        stock.write_private(tmp_path / "b.xlsx", stock.render_xlsx(stock.export_rows(product, terms, rows)))
        actions = set(db.session.scalars(sa.select(AuditEntry.action).where(
            AuditEntry.target == f"product:{s['coffee']}")))
        db.session.remove()
    assert len(rows) == 1200 == len({c for c, _v in rows}) and sorted(issued.codes) == sorted(c for c, _v in rows)
    assert "voucher.batch" in actions
    assert (tmp_path / "b.csv").stat().st_mode & 0o777 == 0o600
    table = list(csv.reader(io.StringIO((tmp_path / "b.csv").read_text(encoding="utf-8-sig"))))
    assert table[0][0] == "code" and len(table) == 1201 and table[1][-1] == "active"
    sheet = load_workbook(tmp_path / "b.xlsx", read_only=True)["codes"]
    assert sum(1 for _ in sheet.iter_rows()) == 1201
    assert redeem(app, s, rows[0][0])["ok"]


def test_terms_are_checked_and_a_product_with_imported_keys_is_refused(app, session, make_product, make_keys):
    from kamengd.vouchers import services
    p = make_product()
    make_keys(p, 2)
    with pytest.raises(InvalidRequest, match="imported keys"):
        services.set_terms(session, product_id=p.id, kind="uses", actor="t")
    q = make_product()
    for bad in ({"kind": "gift"}, {"kind": "value"}, {"kind": "uses", "uses": "0"}, {"kind": "uses", "alphabet": "01O"},
                {"kind": "uses", "valid_days": "x"}, {"kind": "uses", "stores": "999999"}):
        kind = bad.pop("kind")
        stores = bad.pop("stores", None)
        with pytest.raises(InvalidRequest):
            services.set_terms(session, product_id=q.id, kind=kind, store_ids=stores, actor="t", **bad)
    loop = make_product(delivery_mode="loop")
    with pytest.raises(InvalidRequest, match="automatically"):
        services.set_terms(session, product_id=loop.id, kind="uses", actor="t")


def test_codes_are_found_after_a_key_rotation_and_the_old_key_retires(backend, make_install):
    """A code's lookup hash is made with the data key: the rotation makes it again under the new
    key, so the old one can leave the key file and the code is still found."""
    from kamengd.app import create_app
    from kamengd.catalog.services import create_product
    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.operations.rotation import retire_unused, rotate, versions_in_use
    from kamengd.vault import parse_key_file
    from kamengd.vouchers import services, stock

    cfg = make_install(backend)
    application = create_app(cfg)
    key_file = cfg.security.data_key_file
    with application.app_context():
        p = create_product(db.session, name="rotated voucher", price_cents=100, actor="t")
        services.set_terms(db.session, product_id=p.id, kind="uses", uses=2, actor="t")
        [code] = stock.issue_batch(db.session, get_vault(), product_id=p.id, count=1, reason="rotation test",
                                   actor="t").codes
        stock.generate_stock(db.session, get_vault(), product_id=p.id, count=3, actor="t")
        # Beside them, an ordinary product's keys in Chinese: re-encrypted, never taken for codes.
        from kamengd.inventory.services import import_keys
        plain = create_product(db.session, name="ordinary", price_cents=100, actor="t")
        import_keys(db.session, get_vault(), product_id=plain.id, fh=io.BytesIO("卡密-一二三\n卡密-四五六".encode()),
                    actor="t")
        db.session.commit()
        assert versions_in_use(db.session)[1] >= 10   # six keys and four codes
        rotate(db.session, key_file)
        db.session.commit()
        assert retire_unused(db.session, key_file)[0] == [1]
        assert sorted(parse_key_file(key_file.read_text())) == [2]
    application = create_app(cfg)   # a server started after: only the new key
    with application.app_context():
        _c, v = services.find_voucher(db.session, get_vault(), code)
        assert v is not None and v.key_version == 2
        seen = services.look_up(db.session, get_vault(), code, store_id=1)
        assert seen.voucher is not None and seen.refusal is None
        db.session.remove()
        db.engine.dispose()


def test_the_order_page_and_the_mail_show_each_code_with_its_qr(app, client, voucher_shop):
    import dataclasses
    import email
    import email.policy
    from kamengd.context import get_config, get_vault
    from kamengd.notifications.email import render_delivery_email
    from kamengd.notifications.models import EmailOutbox
    from kamengd.orders.models import Order
    s = voucher_shop
    order = buy(client, s, quantity=2)
    page = client.get(f"/order/{order['order_no']}", query_string={"token": order["token"]})
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert html.count('class="voucher-card"') == 2 and html.count("<svg") >= 2
    for code in order["keys"]:
        assert code in html
    assert "一杯中杯拿铁" in html and ("剩余 1/1 次" in html or "1 of 1 uses left" in html)
    db = _db()
    with app.app_context():
        o = db.session.scalar(sa.select(Order).where(Order.order_no == order["order_no"]))
        mail = db.session.scalar(sa.select(EmailOutbox).where(EmailOutbox.order_id == o.id))
        config = get_config()
        config = dataclasses.replace(config, smtp=dataclasses.replace(config.smtp, from_address="shop@example.com"))
        msg = email.message_from_bytes(bytes(render_delivery_email(db.session, get_vault(), config, mail)),
                                       policy=email.policy.default)
        db.session.remove()
    text = msg.get_body(("plain",)).get_content()
    assert all(code in text for code in order["keys"])
    pictures = [p for p in msg.walk() if p.get_content_type() == "image/png"]
    assert len(pictures) == 2 and all(p.get_payload(decode=True).startswith(b"\x89PNG") for p in pictures)
    body = msg.get_body(("html",)).get_content()
    assert body.count('src="cid:qr') == 2 and "<script" not in body


def test_a_verifier_signs_in_to_the_terminal_and_sees_nothing_else(app, voucher_shop):
    from panel_support import csrf_of, login
    s = voucher_shop
    buyer = app.test_client()
    [code] = buy(buyer, s)["keys"]
    client = app.test_client()
    login(client, s["clerk"])
    landed = client.get("/admin/", follow_redirects=True)
    assert landed.status_code == 200 and landed.request.path == "/admin/terminal"
    page = client.get("/admin/terminal").get_data(as_text=True)
    # Bound to two stores: it chooses; both are offered, no other store.
    assert s["east_name"] in page and s["west_name"] in page
    for other in ("/admin/dashboard", "/admin/orders", "/admin/products", "/admin/stock"):
        assert client.get(other).status_code == 403, other
    token = csrf_of(page)
    looked = client.post("/admin/terminal/look", data={"csrf_token": token, "store": s["east"], "code": code.lower()})
    html = looked.get_data(as_text=True)
    assert looked.status_code == 200 and "一杯中杯拿铁" in html and 'id="redeem-form"' in html
    done = client.post("/admin/terminal/redeem", data={"csrf_token": token, "store": s["east"], "code": code,
                                                       "uses": "1"}, follow_redirects=True)
    assert done.status_code == 200 and 'id="redeemed"' in done.get_data(as_text=True)
    again = client.post("/admin/terminal/redeem", json={"store": s["west"], "code": code},
                        headers={"X-CSRFToken": token, "Accept": "application/json"})
    body = again.get_json()
    assert again.status_code == 409 and body["redeemed"] is False and body["refusal"] == "used_up"
    assert body["last_redeemed"]["store"] == s["east_name"] and s["east_name"] in body["message"]
    # A store it is not bound to: not found (the manager works at the east store only).
    manager = app.test_client()
    login(manager, s["manager"])
    mtoken = csrf_of(manager.get("/admin/terminal").get_data(as_text=True))
    other = manager.post("/admin/terminal/redeem", json={"store": s["west"], "code": code},
                         headers={"X-CSRFToken": mtoken, "Accept": "application/json"})
    assert other.status_code == 404
    # Without the CSRF token nothing happens.
    assert client.post("/admin/terminal/redeem", data={"store": s["east"], "code": code}).status_code in (400, 302, 303)


def test_an_admin_runs_vouchers_from_the_panel(app):
    """Stores and verifiers, a voucher product's terms, codes for sale, a batch downloaded as a
    workbook, and the report (today's live count, a range, CSV) — through the panel's forms."""
    from openpyxl import load_workbook

    from kamengd.catalog.services import create_product
    from panel_support import csrf_of, login, make_staff
    db = _db()
    tag = secrets.token_hex(3)
    with app.app_context():
        p = create_product(db.session, name=f"Panel voucher {tag}", price_cents=800, actor="t")
        db.session.commit()
        pid = p.id
        db.session.remove()
    admin, clerk = make_staff(app, "admin"), make_staff(app, "verifier")
    client = app.test_client()
    login(client, admin)
    token = csrf_of(client.get("/admin/stores").get_data(as_text=True))
    assert client.post("/admin/stores", data={"csrf_token": token, "name": f"<b>Shop</b> {tag}"}).status_code == 303
    page = client.get("/admin/stores").get_data(as_text=True)
    assert f"&lt;b&gt;Shop&lt;/b&gt; {tag}" in page and clerk.username in page
    from kamengd.vouchers.models import Store
    with app.app_context():
        store_id = db.session.scalar(sa.select(Store.id).where(Store.name == f"<b>Shop</b> {tag}"))
        db.session.remove()
    bound = client.post(f"/admin/stores/{store_id}/verifiers", data={"csrf_token": token,
                                                                      "username": clerk.username, "manager": "1"})
    assert bound.status_code == 303
    bad = client.post("/admin/vouchers/products", data={"csrf_token": token, "product_id": pid, "kind": "value"})
    assert bad.status_code == 400 and "value" in bad.get_data(as_text=True)
    saved = client.post("/admin/vouchers/products", data={"csrf_token": token, "product_id": pid, "kind": "uses",
                                                          "uses": "3", "entitlement": "三次洗车", "length": "16"})
    assert saved.status_code == 303
    assert client.post(f"/admin/vouchers/products/{pid}/generate",
                       data={"csrf_token": token, "count": "25"}).status_code == 303
    listed = client.get("/admin/vouchers/products?lang=en").get_data(as_text=True)
    assert "Unsold: 25 · sold or issued: 0" in listed, listed
    refused = client.post(f"/admin/vouchers/products/{pid}/batch", data={"csrf_token": token, "count": "5",
                                                                        "reason": "", "format": "xlsx"})
    assert refused.status_code == 400
    got = client.post(f"/admin/vouchers/products/{pid}/batch", data={"csrf_token": token, "count": "40",
                                                                    "reason": "ACME gift", "format": "xlsx"})
    assert got.status_code == 200 and "attachment" in got.headers["Content-Disposition"]
    rows = list(load_workbook(io.BytesIO(got.data), read_only=True)["codes"].iter_rows(values_only=True))
    assert len(rows) == 41 and rows[1][2] == "uses" and rows[1][3] == 3
    code = rows[1][0]
    # The verifier redeems one of the batch's codes twice (two of its three uses).
    till = app.test_client()
    login(till, clerk)
    ttoken = csrf_of(till.get("/admin/terminal").get_data(as_text=True))
    for _ in range(2):
        done = till.post("/admin/terminal/redeem", json={"store": store_id, "code": code},
                         headers={"X-CSRFToken": ttoken, "Accept": "application/json"})
        assert done.status_code == 200, done.get_json()
    assert done.get_json()["uses_left"] == 1
    today = client.get("/admin/vouchers/today").get_json()
    assert {"store": f"<b>Shop</b> {tag}", "store_id": store_id, "redeemed": 2, "refused": 0} in today["stores"]
    report = client.get("/admin/vouchers").get_data(as_text=True)
    assert f"Panel voucher {tag}" in report
    csv_text = client.get("/admin/vouchers/report.csv").data.decode("utf-8-sig")
    assert any(line.startswith(f"<b>Shop</b> {tag},") and line.split(",")[3] == "2"
               for line in csv_text.splitlines()), csv_text
    again = client.post("/admin/vouchers/batches/999999999/export", data={"csrf_token": token, "reason": "lost it"})
    assert again.status_code == 404


def test_the_scheduler_keeps_a_voucher_product_stocked(app, client, voucher_shop):
    from kamengd.inventory.models import CardKey
    from kamengd.scheduler.jobs import JOBS
    from kamengd.vouchers import services
    s = voucher_shop
    db = _db()
    with app.app_context():
        services.set_terms(db.session, product_id=s["coffee"], kind="uses", uses=1, keep_in_stock=30, actor="t")
        db.session.commit()
        done = JOBS["refill_vouchers"][0](db.session)
        db.session.commit()
        available = db.session.scalar(sa.select(sa.func.count()).select_from(CardKey).where(
            CardKey.product_id == s["coffee"], CardKey.status == "available"))
        again = JOBS["refill_vouchers"][0](db.session)
        db.session.remove()
    assert done["generated"] >= 10 and available == 30 and again == {"generated": 0}


def test_a_voucher_order_is_never_delivered_by_hand_with_typed_keys(app, voucher_shop):
    from kamengd.context import get_vault
    from kamengd.orders.services import create_order, deliver_manually
    from kamengd.orders.staff import find_order
    s = voucher_shop
    db = _db()
    with app.app_context():
        placed = create_order(db.session, product_id=s["coffee"], quantity=1, email="m@example.com",
                              channel_code=s["channel"])
        order_no = placed.order.order_no
        db.session.execute(sa.text("UPDATE orders SET status = 'paid' WHERE order_no = :no"), {"no": order_no})
        db.session.commit()
        with pytest.raises(InvalidRequest, match="voucher product"):
            deliver_manually(db.session, get_vault(), order_no=order_no, keys=["NOT-A-VOUCHER"], actor="t")
        db.session.rollback()
        assert find_order(db.session, order_no).status == "paid"
        db.session.remove()


def test_two_terminals_through_the_panel_race_for_one_code_and_a_reload_never_redeems_twice(app, client,
                                                                                           voucher_shop):
    """Through the terminal's real request path (its reads in a snapshot, the write lock only for
    the UPDATE): eight signed-in terminals send one two-use code at once; two win."""
    from kamengd.vouchers import services
    from panel_support import csrf_of, login
    s = voucher_shop
    db = _db()
    with app.app_context():
        services.set_terms(db.session, product_id=s["coffee"], kind="uses", uses=2, actor="t")
        db.session.commit()
        db.session.remove()
    [code] = buy(client, s)["keys"]
    tills = []
    for n in range(8):
        till = app.test_client()
        login(till, s["clerk" if n % 2 else "manager"])
        tills.append((till, csrf_of(till.get(f"/admin/terminal?store={s['east']}").get_data(as_text=True))))
    answers, barrier = [], threading.Barrier(len(tills))

    def send(till, token):
        barrier.wait()
        answers.append(till.post("/admin/terminal/redeem", json={"store": s["east"], "code": code},
                                 headers={"X-CSRFToken": token, "Accept": "application/json"}))
    threads = [threading.Thread(target=send, args=pair) for pair in tills]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(a.status_code for a in answers) == [200, 200] + [409] * 6, [a.get_json() for a in answers]
    assert voucher_row(app, code).uses_left == 0
    # The form's redeem sends the till on to a page showing it; reloading that page redeems nothing.
    [other] = buy(client, s)["keys"]
    till, token = tills[1]
    done = till.post("/admin/terminal/redeem", data={"csrf_token": token, "store": s["east"], "code": other})
    assert done.status_code == 303 and "redeemed=" in done.headers["Location"]
    for _ in range(2):
        page = till.get(done.headers["Location"])
        assert page.status_code == 200 and 'id="redeemed"' in page.get_data(as_text=True)
    assert voucher_row(app, other).uses_left == 1


def test_mistakes_are_refused_in_words_never_a_500(app, client, voucher_shop, tmp_path):
    from kamengd.catalog.services import get_product, update_product
    from kamengd.context import get_vault
    from kamengd.inventory.services import import_keys
    from kamengd.vouchers import services, stock
    from kamengd.vouchers.models import Redemption
    from panel_support import csrf_of, login, make_staff
    s = voucher_shop
    db = _db()
    with app.app_context():
        with pytest.raises(InvalidRequest, match="voucher product"):
            import_keys(db.session, get_vault(), product_id=s["coffee"], fh=io.BytesIO(b"K-1\n"), actor="t")
        db.session.rollback()
        with pytest.raises(InvalidRequest, match="automatically"):
            update_product(db.session, get_product(db.session, s["coffee"]), actor="t", delivery_mode="manual")
        db.session.rollback()
        with pytest.raises(InvalidRequest, match="uses vouchers already"):
            services.set_terms(db.session, product_id=s["coffee"], kind="value", value="5", actor="t")
        db.session.rollback()
        with pytest.raises(InvalidRequest, match="already past"):
            services.set_terms(db.session, product_id=s["coffee"], kind="uses", valid_until=dt.datetime(2020, 1, 1),
                               actor="t")
        db.session.rollback()
        with pytest.raises(InvalidRequest, match="store ids"):
            services.set_terms(db.session, product_id=s["coffee"], kind="uses", store_ids="99999999999999999999",
                               actor="t")
        db.session.rollback()
        with pytest.raises(InvalidRequest, match="200"):
            stock.issue_batch(db.session, get_vault(), product_id=s["coffee"], count=1, reason="x" * 201, actor="t")
        db.session.rollback()
        db.session.remove()
    admin = make_staff(app, "admin")
    panel = app.test_client()
    login(panel, admin)
    for query in ("from=9999-12-31&to=9999-12-31", "from=0001-01-01&to=0001-01-01", "to=2020-01-01&from=2021-01-01",
                  "_method=POST&_scheme=javascript", "from=x&by_store=1"):
        assert panel.get(f"/admin/vouchers?{query}").status_code == 200, query
        assert panel.get(f"/admin/vouchers/report.csv?{query}").status_code in (200, 302), query
    till = app.test_client()
    login(till, s["clerk"])
    token = csrf_of(till.get("/admin/terminal").get_data(as_text=True))
    headers = {"X-CSRFToken": token, "Accept": "application/json", "Content-Type": "application/json"}
    for body in ('{"store": 1e999, "code": "X"}', '{"store": [1], "code": "X"}', '[1, 2]', '"x"',
                 '{"store": %d, "code": {"a": 1}}' % s["east"], '{"store": %d, "code": "\u00e9\u00e9"}' % s["east"],
                 '{"store": %d, "code": "AAAA", "uses": [1]}' % s["east"]):
        answer = till.post("/admin/terminal/redeem", data=body, headers=headers)
        assert answer.status_code in (400, 404, 409), (body, answer.status_code)
    # An unknown code's refusal names which code by its hash, never the code.
    unknown = codes.generate(codes.DEFAULT_ALPHABET, 16)
    assert redeem(app, s, unknown)["refusal"] == "unknown"
    with app.app_context():
        row = db.session.scalars(sa.select(Redemption).where(Redemption.store_id == s["east"])
                                 .order_by(Redemption.id.desc()).limit(1)).one()
        assert row.voucher_id is None and bytes(row.code_lookup) == get_vault().voucher_lookups(unknown)[0][1]
        db.session.remove()


def test_staff_void_a_code_or_withdraw_a_batch(app, client, voucher_shop):
    from kamengd.context import get_vault
    from kamengd.inventory.models import CardKey
    from kamengd.vouchers import services, stock
    from kamengd.vouchers.models import Voucher
    s = voucher_shop
    db = _db()
    [sold] = buy(client, s)["keys"]
    with app.app_context():
        services.void_voucher(db.session, get_vault(), typed=sold, reason="lost by the buyer", actor="t")
        db.session.commit()
        # An unsold code reserved by an order being paid is not voided under it.
        from kamengd.orders.services import create_order
        placed = create_order(db.session, product_id=s["coffee"], quantity=1, email="r@example.com",
                              channel_code=s["channel"])
        db.session.commit()
        held = db.session.scalar(sa.select(CardKey).where(CardKey.order_id == placed.order.id))
        k = held
        reserved_code = get_vault().decrypt_card_key(k.product_id, k.fingerprint, k.nonce, k.ciphertext,
                                                     k.key_version).decode()
        with pytest.raises(Conflict, match="reserved"):
            services.void_voucher(db.session, get_vault(), typed=reserved_code, reason="mistake", actor="t")
        db.session.rollback()
        issued = stock.issue_batch(db.session, get_vault(), product_id=s["card"], count=3, reason="ACME", actor="t")
        db.session.commit()
        batch_id, batch_codes = issued.batch.id, issued.codes
        db.session.remove()
    assert redeem(app, s, sold)["refusal"] == "void"
    assert redeem(app, s, batch_codes[0], amount="2.00")["ok"]
    with app.app_context():
        assert stock.void_batch(db.session, batch_id=batch_id, reason="order cancelled", actor="t") == 3
        db.session.commit()
        with pytest.raises(Conflict, match="withdrawn already"):
            stock.void_batch(db.session, batch_id=batch_id, reason="order cancelled", actor="t")
        db.session.rollback()
        statuses = set(db.session.scalars(sa.select(Voucher.status).where(Voucher.batch_id == batch_id)))
        db.session.remove()
    assert statuses == {"void"}
    assert redeem(app, s, batch_codes[1], amount="1.00")["refusal"] == "void"


def test_an_agent_buys_vouchers_through_the_agent_api_and_they_are_redeemable(app, client, voucher_shop):
    """The agent API's purchase (paid from the balance and delivered in one transaction) makes the
    codes redeemable as a buyer's paid order does."""
    from kamengd.agents import services as agents
    from kamengd.context import get_vault
    from test_agent_api import signed
    s = voucher_shop
    db = _db()
    tag = secrets.token_hex(3)
    with app.app_context():
        level, _ = agents.set_level(db.session, name=f"券-{tag}", discount="0", actor="t")
        agent = agents.create_agent(db.session, username=f"voucher-agent-{tag}", level=level.name, actor="t")
        key_id, secret = agents.issue_api_key(db.session, get_vault(), agent, actor="t")
        agents.credit_balance(db.session, agent, 10000, reason="t", actor="t")
        db.session.commit()
        caller = {"id": agent.id, "key_id": key_id, "secret": secret}
        db.session.remove()
    answer = signed(client, caller, "POST", "/api/v1/agent/orders", {"product_id": s["coffee"], "quantity": 2},
                    idempotency_key=f"v-{tag}")
    assert answer.status_code == 201, answer.get_json()
    codes_bought = answer.get_json()["keys"]
    assert len(codes_bought) == 2
    assert all(voucher_row(app, c).status == "active" for c in codes_bought)
    assert redeem(app, s, codes_bought[0])["ok"]

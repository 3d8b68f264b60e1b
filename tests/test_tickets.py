"""After-sales tickets (售后, W6): the buyer opens one from the order page (its token), with a
message and a picture; staff answer (mailed), and end it with a refund, a reissued key or by
closing it; the scheduler marks a ticket overdue past tickets.sla_hours. Reissue racing reissue
gives one new key. SQLite and MariaDB.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import re
import secrets
import threading

import pytest
import sqlalchemy as sa
from PIL import Image

from conftest import epay_shop
from panel_support import csrf_of, login, make_staff

KEY = "ticket-merchant-key-0123456789abcdef"


def _db():
    from kamengd.extensions import db
    return db


@pytest.fixture
def shop(app):
    keys = [f"TK-{secrets.token_hex(6)}" for _ in range(6)]
    return epay_shop(app, name=f"售后商品 {secrets.token_hex(2)}", price_cents=990, keys=keys, pid="7010", key=KEY,
                     prefix="tk")


def buy(client, shop, quantity=1, email="buyer@example.com"):
    """Order and pay through the buyer API: (order_no, token)."""
    from kamengd.payments import epay
    answer = client.post("/api/v1/orders", json={"product_id": shop["id"], "quantity": quantity, "email": email,
                                                 "channel": shop["channel"]})
    assert answer.status_code == 201, answer.get_json()
    order = answer.get_json()
    params = {"pid": "7010", "trade_no": f"T{order['order_no']}", "out_trade_no": order["order_no"],
              "type": "alipay", "name": "x", "money": order["amount"], "trade_status": "TRADE_SUCCESS"}
    params["sign"] = hashlib.md5((epay.signing_string(params) + KEY).encode()).hexdigest()
    assert client.get(f"/pay/{shop['channel']}/notify", query_string=params).get_data(as_text=True) == "success"
    return order["order_no"], order["token"]


def keys_of(client, order_no, token):
    shown = client.get(f"/api/v1/orders/{order_no}", query_string={"token": token}).get_json()
    return shown["keys"]


def write(client, order_no, token, message, picture: bytes | None = None):
    # (in English: the tests read the errors' words)
    page = client.get(f"/order/{order_no}", query_string={"token": token, "lang": "en"})
    assert page.status_code == 200
    data = {"csrf_token": csrf_of(page.get_data(as_text=True)), "token": token, "message": message}
    if picture is not None:
        data["picture"] = (io.BytesIO(picture), "shot.jpg")
    return client.post(f"/order/{order_no}/ticket", data=data, content_type="multipart/form-data")


def photo_with_gps() -> bytes:
    picture = Image.new("RGB", (2400, 1200), (200, 30, 30))
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"           # Make
    exif[0x8825] = {1: "N", 2: (31.0, 14.0, 0.0)}   # GPSInfo
    out = io.BytesIO()
    picture.save(out, "JPEG", exif=exif)
    return out.getvalue()


def ticket_of(app, order_no):
    from kamengd.orders.models import Order
    from kamengd.tickets.models import Ticket
    db = _db()
    with app.app_context():
        t = db.session.scalar(sa.select(Ticket).join(Order, Order.id == Ticket.order_id)
                              .where(Order.order_no == order_no).order_by(Ticket.id.desc()).limit(1))
        if t is not None:
            db.session.expunge(t)
        db.session.remove()
    return t


def opened(app, client, shop, message):
    """A paid order and the buyer's ticket about it: (order_no, token, the ticket)."""
    order_no, token = buy(client, shop)
    assert write(client, order_no, token, message).status_code == 303
    return order_no, token, ticket_of(app, order_no)


def test_a_buyer_opens_a_ticket_with_a_picture_from_the_order_page_and_only_it_sees_it(app, client, shop):
    order_no, token = buy(client, shop)
    answer = write(client, order_no, token, "卡密无效 <script>alert(1)</script>\n第二行", photo_with_gps())
    assert answer.status_code == 303 and answer.headers["Location"].endswith("#after-sales")
    page = client.get(f"/order/{order_no}", query_string={"token": token}).get_data(as_text=True)
    assert "等待客服回复" in page or "Waiting for the shop" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert(1)" not in page
    src = re.search(r'<img src="([^"]+/ticket/pictures/\d+[^"]*)"', page).group(1).replace("&amp;", "&")
    got = client.get(src)
    assert got.status_code == 200 and got.headers["Content-Type"] == "image/webp"
    assert got.headers["Cache-Control"] == "private, no-store"
    stored = Image.open(io.BytesIO(got.data))
    assert stored.format == "WEBP" and max(stored.size) == 1600 and not stored.getexif()   # no GPS, no make
    # Another browser without the token, or with another order's token, sees nothing.
    other_no, other_token = buy(client, shop, email="other@example.com")
    stranger = app.test_client()
    assert stranger.get(src.split("?")[0]).status_code == 404
    wrong = src.split("?")[0] + f"?token={other_token}"
    assert stranger.get(wrong).status_code == 404
    t = ticket_of(app, order_no)
    assert (t.status, t.live_order_id is not None, t.waiting_since is not None) == ("open", True, True)
    from kamengd.audit.models import AuditEntry
    from kamengd.notifications.models import Event
    db = _db()
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(AuditEntry).where(
            AuditEntry.action == "ticket.open", AuditEntry.target == f"ticket:{t.id}")) == 1
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Event).where(
            Event.type == "ticket.opened", Event.payload.contains(order_no))) == 1
        db.session.remove()


def test_bad_input_is_said_on_the_page_and_writes_nothing(app, client, shop):
    from kamengd.tickets.models import Ticket, TicketMessage
    order_no, token = buy(client, shop)
    for message, picture, status, words in (
            ("", None, 400, "required"), ("x" * 2001, None, 400, "2000"),
            ("bad picture", b"not a picture at all", 400, "JPEG"),
            ("bell \x07", None, 400, "control")):
        answer = write(client, order_no, token, message, picture)
        assert answer.status_code == status, (message[:10], answer.status_code)
        assert words in answer.get_data(as_text=True)
    db = _db()
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(TicketMessage)
                                 .join(Ticket).where(Ticket.live_order_id.is_not(None),
                                                     TicketMessage.body.like("bad picture%"))) == 0
        db.session.remove()
    assert ticket_of(app, order_no) is None
    # No token: the order is nobody's to write about; an unpaid order has no after-sales.
    page = client.get(f"/order/{order_no}", query_string={"token": token}).get_data(as_text=True)
    assert app.test_client().post(f"/order/{order_no}/ticket", data={"message": "hi", "token": "x" * 32,
                                                                     "csrf_token": "nope"}).status_code in (400, 404)
    fresh = app.test_client()
    fresh_page = fresh.get(f"/order/{order_no}", query_string={"token": token}).get_data(as_text=True)
    assert fresh.post(f"/order/{order_no}/ticket", data={"csrf_token": csrf_of(fresh_page), "message": "hi",
                                                         "token": "0" * 43}).status_code == 404
    assert "csrf_token" in page
    pending = client.post("/api/v1/orders", json={"product_id": shop["id"], "quantity": 1,
                                                  "email": "p@example.com", "channel": shop["channel"]}).get_json()
    shown = client.get(f"/order/{pending['order_no']}", query_string={"token": pending["token"]})
    assert shown.status_code == 200 and 'id="after-sales"' not in shown.get_data(as_text=True)
    answer = client.post(f"/order/{pending['order_no']}/ticket",
                         data={"csrf_token": csrf_of(page), "token": pending["token"], "message": "where is my key?"})
    assert answer.status_code == 409 and "pending" in answer.get_data(as_text=True)
    assert ticket_of(app, pending["order_no"]) is None


def test_a_buyer_writing_too_often_is_told_to_wait(app, client, shop):
    from kamengd.tickets.services import BUYER_PER_HOUR
    order_no, token = buy(client, shop)
    for i in range(BUYER_PER_HOUR):
        assert write(client, order_no, token, f"message {i}").status_code == 303
    answer = write(client, order_no, token, "one more")
    assert answer.status_code == 429 and "wait" in answer.get_data(as_text=True)


def _staff_client(app, role):
    staff = make_staff(app, role)
    c = app.test_client()
    assert login(c, staff).status_code in (302, 303)
    return c, staff


def staff_post(c, url, data, page):
    token = csrf_of(c.get(page).get_data(as_text=True))
    return c.post(url, data={"csrf_token": token, **data})


def test_staff_answer_by_mail_the_buyer_writes_again_and_the_sla_marks_it_overdue(app, client, shop):
    from kamengd.notifications.email import render_email
    from kamengd.notifications.models import EmailOutbox, Event
    from kamengd.scheduler.jobs import JOBS
    from kamengd.tickets import services
    order_no, token, t = opened(app, client, shop, "the key says invalid")
    db = _db()
    # Not yet overdue; a day and an hour later it is (once, with an event); the answer clears it.
    with app.app_context():
        assert JOBS["flag_overdue_tickets"][0](db.session) == {"overdue": 0}
        later = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(hours=25)
        assert services.flag_overdue(db.session, later) >= 1
        assert services.flag_overdue(db.session, later) == 0
        db.session.commit()
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Event).where(
            Event.type == "ticket.overdue", Event.payload.contains(order_no))) == 1
        db.session.remove()
    support, _s = _staff_client(app, "support")
    listing = support.get("/admin/tickets?overdue=1").get_data(as_text=True)
    assert order_no in listing
    dashboard = support.get("/admin/dashboard").get_data(as_text=True)
    assert 'id="ticket-count"' in dashboard and 'id="ticket-overdue-count"' in dashboard
    assert f'href="/admin/tickets/{t.id}"' in support.get(f"/admin/orders/{order_no}").get_data(as_text=True)
    page = f"/admin/tickets/{t.id}"
    assert "the key says invalid" in support.get(page).get_data(as_text=True)
    answer = staff_post(support, f"/admin/tickets/{t.id}/reply", {"message": "请重新复制卡密，注意大小写。"}, page)
    assert answer.status_code == 303
    t = ticket_of(app, order_no)
    assert (t.status, t.waiting_since, t.overdue_at) == ("answered", None, None)
    with app.app_context():
        mail = db.session.scalar(sa.select(EmailOutbox).where(EmailOutbox.kind == "ticket.reply")
                                 .order_by(EmailOutbox.id.desc()).limit(1))
        assert mail.to_address == "buyer@example.com"
        import dataclasses
        from kamengd.context import get_config, get_vault
        config = get_config()
        config = dataclasses.replace(config, smtp=dataclasses.replace(config.smtp, from_address="shop@example.com"))
        msg = render_email(db.session, get_vault(), config, mail)
        assert "请重新复制卡密" in msg.get_content() and f"/order/{order_no}" in msg.get_content()
        assert order_no in msg["Subject"]
        db.session.remove()
    shown = client.get(f"/order/{order_no}", query_string={"token": token}).get_data(as_text=True)
    assert "请重新复制卡密" in shown
    assert write(client, order_no, token, "still invalid").status_code == 303
    t = ticket_of(app, order_no)
    assert t.status == "open" and t.waiting_since is not None
    # A refused reply (empty) changes nothing and says why.
    bad = staff_post(support, f"/admin/tickets/{t.id}/reply", {"message": "  "}, page)
    assert bad.status_code == 400 and ticket_of(app, order_no).status == "open"


def test_reissue_voids_the_key_and_delivers_a_fresh_one_in_one_step(app, client, shop):
    from kamengd.audit.models import AuditEntry
    from kamengd.inventory.models import CardKey
    from kamengd.tickets.models import KeyReissue
    order_no, token = buy(client, shop, quantity=2)
    before = keys_of(client, order_no, token)
    assert write(client, order_no, token, f"{before[0]} 提示已使用").status_code == 303
    t = ticket_of(app, order_no)
    support, _s = _staff_client(app, "support")
    page = f"/admin/tickets/{t.id}"
    html = support.get(page).get_data(as_text=True)
    key_ids = re.findall(r'name="key" value="(\d+)"', html)
    assert len(key_ids) == 2 and before[0] not in html.replace(before[0] + " 提示已使用", "")   # masked
    answer = staff_post(support, f"/admin/tickets/{t.id}/reissue", {"key": key_ids[0], "reason": "卡密已被使用"}, page)
    assert answer.status_code == 303, answer.get_data(as_text=True)[:500]
    after = keys_of(client, order_no, token)
    assert len(after) == 2 and before[0] not in after and before[1] in after
    assert set(after) - set(before) and set(after) - set(before) <= set(shop["keys"])
    t = ticket_of(app, order_no)
    assert (t.status, t.resolution, t.live_order_id) == ("resolved", "reissue", None)
    db = _db()
    with app.app_context():
        old = db.session.get(CardKey, int(key_ids[0]))
        assert old.status == "void"
        row = db.session.scalar(sa.select(KeyReissue).where(KeyReissue.old_key_id == old.id))
        assert row.reason == "卡密已被使用" and db.session.get(CardKey, row.new_key_id).status == "sold"
        entry = db.session.scalar(sa.select(AuditEntry).where(AuditEntry.action == "order.reissue",
                                                              AuditEntry.target == f"order:{order_no}"))
        assert entry is not None and before[0] not in entry.details
        db.session.remove()
    shown = client.get(f"/order/{order_no}", query_string={"token": token}).get_data(as_text=True)
    assert "卡密已被使用" in shown and "keys replaced" in shown
    # The ticket has ended: a new message opens a new one.
    assert write(client, order_no, token, "thanks, one more question").status_code == 303
    assert ticket_of(app, order_no).id != t.id


def test_reissue_without_stock_or_of_a_key_not_the_orders_changes_nothing(app, client, shop):
    from kamengd.errors import Conflict, NotFound, OutOfStock
    from kamengd.inventory.models import CardKey
    from kamengd.orders.models import Order
    from kamengd.tickets import services
    order_no, token = buy(client, shop, quantity=1)
    other_no, _ = buy(client, shop, quantity=1)
    db = _db()
    with app.app_context():
        session = db.session
        order = session.scalar(sa.select(Order).where(Order.order_no == order_no))
        other = session.scalar(sa.select(Order).where(Order.order_no == other_no))
        mine = session.scalar(sa.select(CardKey.id).where(CardKey.order_id == order.id))
        theirs = session.scalar(sa.select(CardKey.id).where(CardKey.order_id == other.id))
        with pytest.raises(Conflict, match="not one order"):
            services.reissue_keys(session, order_no=order_no, key_ids=[str(theirs)], reason="x", actor="t")
        session.rollback()
        for bad in ([], ["abc"], ["-1"], ["9" * 30]):
            with pytest.raises(Exception) as caught:
                services.reissue_keys(session, order_no=order_no, key_ids=bad, reason="x", actor="t")
            assert caught.type.__name__ in ("InvalidRequest", "Conflict"), bad
            session.rollback()
        with pytest.raises(Exception, match="reason"):
            services.reissue_keys(session, order_no=order_no, key_ids=[str(mine)], reason=" ", actor="t")
        with pytest.raises(NotFound):
            services.reissue_keys(session, order_no="nope", key_ids=[str(mine)], reason="x", actor="t")
        session.rollback()
        # No stock left: the reissue is refused whole, the old key stays the buyer's.
        session.execute(sa.update(CardKey).where(CardKey.product_id == shop["id"], CardKey.status == "available")
                        .values(status="void"))
        with pytest.raises(OutOfStock, match="nothing replaced"):
            services.reissue_keys(session, order_no=order_no, key_ids=[str(mine)], reason="x", actor="t")
        session.rollback()
        assert session.get(CardKey, mine).status == "sold"
        assert session.scalar(sa.select(sa.func.count()).select_from(CardKey).where(
            CardKey.product_id == shop["id"], CardKey.status == "available")) > 0
        session.remove()
    assert len(keys_of(client, order_no, token)) == 1


def test_a_loop_key_is_never_reissued_for_one_buyer(app, session, make_product, make_keys):
    from kamengd.errors import Conflict
    from kamengd.tickets import services
    from kamengd.orders.models import Order
    from kamengd.database import utcnow
    product = make_product(delivery_mode="loop")
    make_keys(product, ["LOOP-KEY-0001-shared"])
    # (any delivered order of a loop product: made by hand here)
    o = Order(order_no=f"L{secrets.token_hex(6)}", product_id=product.id, quantity=1, unit_price_cents=990,
              amount_cents=990, currency="CNY", email="l@example.com", status="delivered",
              token_hash=b"\0" * 32, expires_at=utcnow(), delivered_at=utcnow(), paid_at=utcnow())
    session.add(o)
    session.flush()
    from kamengd.orders.keys import loop_key_id
    o.loop_key_id = loop_key_id(session, product.id)
    session.flush()
    with pytest.raises(Conflict, match="loop key"):
        services.reissue_keys(session, order_no=o.order_no, key_ids=[str(o.loop_key_id)], reason="x", actor="t")


def test_two_reissues_of_one_key_at_once_give_one_new_key(app, client, shop):
    """Two staff press "replace" on the same key at the same moment (each its own connection)."""
    from kamengd.errors import Conflict
    from kamengd.inventory.models import CardKey
    from kamengd.orders.models import Order
    from kamengd.tickets import services
    from kamengd.tickets.models import KeyReissue
    db = _db()
    for _round in range(3):
        order_no, token = buy(client, shop)
        with app.app_context():
            order_id = db.session.scalar(sa.select(Order.id).where(Order.order_no == order_no))
            key_id = db.session.scalar(sa.select(CardKey.id).where(CardKey.order_id == order_id))
            available = db.session.scalar(sa.select(sa.func.count()).select_from(CardKey).where(
                CardKey.product_id == shop["id"], CardKey.status == "available"))
            db.session.remove()
        if available < 2:
            with app.app_context():
                from kamengd.context import get_vault
                from kamengd.inventory.services import import_keys
                more = [f"TK-{secrets.token_hex(6)}" for _ in range(4)]
                import_keys(db.session, get_vault(), product_id=shop["id"], fh=io.BytesIO("\n".join(more).encode()),
                            actor="t")
                db.session.commit()
                available += 4
                db.session.remove()
        outcomes, barrier = [], threading.Barrier(2)

        def press(who):
            with app.app_context():
                try:
                    barrier.wait(timeout=10)
                    pairs = services.reissue_keys(db.session, order_no=order_no, key_ids=[str(key_id)],
                                                  reason=f"by {who}", actor=who)
                    db.session.commit()
                    outcomes.append(("done", pairs))
                except Conflict as exc:
                    db.session.rollback()
                    outcomes.append(("refused", str(exc)))
                finally:
                    db.session.remove()
        threads = [threading.Thread(target=press, args=(f"staff-{i}",)) for i in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert sorted(o[0] for o in outcomes) == ["done", "refused"], outcomes
        with app.app_context():
            sold = db.session.scalars(sa.select(CardKey.id).where(CardKey.order_id == order_id,
                                                                  CardKey.status == "sold")).all()
            assert len(sold) == 1 and sold[0] != key_id
            assert db.session.scalar(sa.select(sa.func.count()).select_from(KeyReissue)
                                     .where(KeyReissue.order_id == order_id)) == 1
            assert db.session.scalar(sa.select(sa.func.count()).select_from(CardKey).where(
                CardKey.product_id == shop["id"], CardKey.status == "available")) == available - 1
            db.session.remove()
        assert len(keys_of(client, order_no, token)) == 1


def test_refund_and_close_end_the_ticket_and_roles_decide_who_may(app, client, shop):
    from kamengd.orders.models import Order
    order_no, token, t = opened(app, client, shop, "I want my money back")
    page = f"/admin/tickets/{t.id}"
    # Support answers and reissues but may not refund; finance refunds but may not reissue;
    # an operator or a verifier sees no ticket.
    support, _ = _staff_client(app, "support")
    assert staff_post(support, f"/admin/tickets/{t.id}/refund", {"reason": "x"}, page).status_code == 403
    finance, _ = _staff_client(app, "finance")
    assert 'id="refund-send"' in finance.get(page).get_data(as_text=True)
    assert 'id="reissue-send"' not in finance.get(page).get_data(as_text=True)
    assert staff_post(finance, f"/admin/tickets/{t.id}/reissue", {"key": "1", "reason": "x"}, page).status_code == 403
    for role in ("operator", "verifier", "auditor"):
        c, _ = _staff_client(app, role)
        assert c.get(page).status_code == 403 and c.get("/admin/tickets").status_code == 403
    assert staff_post(finance, f"/admin/tickets/{t.id}/refund", {"reason": "买家不想要了"}, page).status_code == 303
    t = ticket_of(app, order_no)
    assert (t.status, t.resolution) == ("resolved", "refund")
    db = _db()
    with app.app_context():
        assert db.session.scalar(sa.select(Order.status).where(Order.order_no == order_no)) == "refunded"
        db.session.remove()
    assert "买家不想要了" in client.get(f"/order/{order_no}", query_string={"token": token}).get_data(as_text=True)
    # A second refund of the ended ticket is refused, nothing changes.
    assert staff_post(finance, f"/admin/tickets/{t.id}/refund", {"reason": "again"}, page).status_code == 409
    # Close with a note: mailed, ended; unknown and malformed ticket ids are 404s.
    other_no, other_token = buy(client, shop)
    assert write(client, other_no, other_token, "question").status_code == 303
    t2 = ticket_of(app, other_no)
    answer = staff_post(support, f"/admin/tickets/{t2.id}/close", {"note": "已解决，如有问题再联系"}, f"/admin/tickets/{t2.id}")
    assert answer.status_code == 303 and ticket_of(app, other_no).status == "closed"
    for bad in ("999999999", "abc", "9" * 40, "-1"):
        assert support.get(f"/admin/tickets/{bad}").status_code == 404
        assert staff_post(support, f"/admin/tickets/{bad}/reply", {"message": "x"}, "/admin/tickets").status_code == 404
    assert support.get("/admin/tickets?status=nonsense&page=x").status_code == 200


def test_a_reissued_voucher_code_keeps_what_the_old_one_had_left(app, client):
    from kamengd.catalog.services import create_product
    from kamengd.context import get_vault
    from kamengd.payments.services import add_channel
    from kamengd.vouchers import services as vouchers, stock
    from kamengd.vouchers.models import Voucher
    from kamengd.inventory.models import CardKey
    from kamengd.orders.models import Order
    from kamengd.tickets import services
    db = _db()
    tag = secrets.token_hex(3)
    with app.app_context():
        card = create_product(db.session, name=f"储值卡 {tag}", price_cents=1000, actor="t")
        vouchers.set_terms(db.session, product_id=card.id, kind="value", value="10.00", actor="t")
        stock.generate_stock(db.session, get_vault(), product_id=card.id, count=3, actor="t")
        add_channel(db.session, get_vault(), channel_type="epay", code=f"tv{tag}", actor="t",
                    options={"gateway": "https://pay.example.com", "pid": "7010", "key": KEY})
        db.session.commit()
        shop = {"id": card.id, "channel": f"tv{tag}"}
        db.session.remove()
    order_no, token = buy(client, shop)
    [code] = keys_of(client, order_no, token)
    with app.app_context():
        order_id = db.session.scalar(sa.select(Order.id).where(Order.order_no == order_no))
        key_id = db.session.scalar(sa.select(CardKey.id).where(CardKey.order_id == order_id))
        db.session.execute(sa.update(Voucher).where(Voucher.card_key_id == key_id).values(value_left_cents=350))
        old = db.session.scalar(sa.select(Voucher).where(Voucher.card_key_id == key_id))
        valid_until = old.valid_until
        services.reissue_keys(db.session, order_no=order_no, key_ids=[str(key_id)], reason="券码泄露", actor="t")
        db.session.commit()
        rows = {v.card_key_id: v for v in db.session.scalars(sa.select(Voucher).where(Voucher.order_id == order_id))}
        assert rows[key_id].status == "void"
        [new] = [v for k, v in rows.items() if k != key_id]
        assert (new.status, new.value_left_cents, new.valid_until) == ("active", 350, valid_until)
        db.session.remove()
    [fresh] = keys_of(client, order_no, token)
    assert fresh != code


def test_the_command_line_reads_answers_and_ends_tickets(app, installed, client, shop):
    import json

    from conftest import assert_one_line_error, run_cli
    config = installed.path
    order_no, token = buy(client, shop, quantity=2)
    [key, other_key] = keys_of(client, order_no, token)
    assert write(client, order_no, token, "第一个卡密无效 first key invalid").status_code == 303
    t = ticket_of(app, order_no)
    listed = json.loads(run_cli("ticket", "list", "--json", config=config, check=True).out)
    assert t.id in [x["id"] for x in listed["tickets"]]
    shown = json.loads(run_cli("ticket", "show", t.id, "--json", config=config, check=True).out)
    assert shown["order_no"] == order_no and shown["messages"][0]["body"] == "第一个卡密无效 first key invalid"
    assert len(shown["keys"]) == 2 and key not in json.dumps(shown) and other_key not in json.dumps(shown)
    assert "answer sent" in run_cli("ticket", "reply", t.id, "--message-file", "-", config=config,
                                    input="请稍等 / one moment".encode(), check=True).out
    # Bad input: one line, non-zero, nothing changed.
    assert_one_line_error(run_cli("ticket", "reply", t.id, config=config), "message: required")
    assert_one_line_error(run_cli("ticket", "show", "99999999", config=config), "not found")
    assert_one_line_error(run_cli("ticket", "reissue", t.id, "--key", "abc", "--reason", "x", config=config),
                          "choose the keys")
    done = json.loads(run_cli("ticket", "reissue", t.id, "--key", shown["keys"][0]["id"], "--reason", "无效",
                              "--json", config=config, check=True).out)
    assert done["replaced"][0]["old_key_id"] == shown["keys"][0]["id"]
    after = keys_of(client, order_no, token)
    assert key not in after and other_key in after and len(after) == 2
    assert_one_line_error(run_cli("ticket", "close", t.id, config=config), "resolved")
    # Another question about the same order: refunded from the command line (Epay cannot give money
    # back: the order is marked refunded).
    assert write(client, order_no, token, "please refund").status_code == 303
    t2 = ticket_of(app, order_no)
    refunded = json.loads(run_cli("ticket", "refund", t2.id, "--reason", "退款", "--json", config=config,
                                  check=True).out)
    assert refunded["through_channel"] is False and refunded["amount"] == "19.80"
    assert ticket_of(app, order_no).resolution == "refund"


def test_a_reissue_is_refused_while_a_refund_is_under_way(app, client, shop):
    """(The mark set and cleared around a real gateway: tests/test_channel_alipay.py.)"""
    from kamengd.errors import Conflict
    from kamengd.inventory.models import CardKey
    from kamengd.orders.models import Order
    from kamengd.tickets import services
    from kamengd.tickets.models import Ticket
    order_no, token, t = opened(app, client, shop, "refund or a new key?")
    db = _db()
    with app.app_context():
        # A refund through the channel marks the ticket before asking the gateway (no lock held then).
        db.session.execute(sa.update(Ticket).where(Ticket.id == t.id).values(resolution="refund"))
        db.session.commit()
        order_id = db.session.scalar(sa.select(Order.id).where(Order.order_no == order_no))
        key_id = db.session.scalar(sa.select(CardKey.id).where(CardKey.order_id == order_id))
        with pytest.raises(Conflict, match="being refunded"):
            services.reissue(db.session, t.id, key_ids=[str(key_id)], reason="x", actor="t")
        db.session.rollback()
        assert db.session.get(CardKey, key_id).status == "sold"
        db.session.remove()
    # The order's own refund (Epay cannot give money back) goes on and resolves it.
    with app.app_context():
        done = services.refund(db.session, None, t.id, reason="退款", actor="t")
        db.session.commit()
        assert done.through_channel is False and db.session.get(Ticket, t.id).status == "resolved"
        db.session.remove()

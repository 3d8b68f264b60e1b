"""The orders pages of the staff panel, through HTTP: search, one order, and the staff actions."""
from __future__ import annotations

import datetime as dt
import io
import json
import secrets
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from panel_support import login, make_staff, post
from test_order_staff import quiet
from test_orders import KEY, callback


def make_shop(app):
    """Committed: an auto product with keys, a manual one, a channel, and orders in several states."""
    from kamengd.context import get_vault
    from kamengd.catalog.services import create_product
    from kamengd.extensions import db
    from kamengd.inventory.services import import_keys
    from kamengd.orders.services import create_order
    from kamengd.payments.callbacks import handle_epay_notify
    from kamengd.payments.services import add_channel

    tag = secrets.token_hex(4)
    with app.app_context():
        s, vault = db.session, get_vault()
        auto = create_product(s, name=f"Auto {tag}", price_cents=990, actor="t")
        manual = create_product(s, name=f"Manual {tag}", price_cents=500, actor="t", delivery_mode="manual")
        keys = [f"KEY-{tag}-{i}" for i in range(4)]
        import_keys(s, vault, product_id=auto.id, fh=io.BytesIO("\n".join(keys).encode()), actor="t")
        channel = add_channel(s, vault, channel_type="epay", code=f"p{tag}", actor="t",
                              options={"gateway": "http://127.0.0.1:9", "pid": "1001", "key": KEY})
        email = f"Buyer.{tag}@example.com"

        def order(product, money="", to=email):
            o = create_order(s, product_id=product.id, quantity=1, email=to, channel_code=channel.code).order
            if money is not None:
                assert handle_epay_notify(s, vault, channel.code, callback(o, money=money or None)).recorded
            return o.order_no

        shop = SimpleNamespace(tag=tag, email=email, keys=keys, auto_id=auto.id, manual_id=manual.id,
                               delivered=order(auto), held=order(auto, money="0.01"),
                               manual=order(manual), pending=order(auto, money=None, to=f"other.{tag}@example.com"))
        s.commit()
    return shop


@pytest.fixture
def shop(app):
    """The shop's committed orders; afterwards nothing of them is left for another test's sweep
    (mail sender, stuck-order flags, expiry) to find in the worker's shared database."""
    shop = make_shop(app)
    yield shop
    quiet(app, shop.auto_id, shop.manual_id)


def db_order(app, order_no):
    from kamengd.extensions import db
    from kamengd.orders.models import Order

    with app.app_context():
        order = db.session.scalar(sa.select(Order).where(Order.order_no == order_no))
        db.session.expunge(order)
        return order


def audit(app, order_no, action=None):
    from kamengd.audit.models import AuditEntry
    from kamengd.extensions import db

    with app.app_context():
        q = sa.select(AuditEntry).where(AuditEntry.target == f"order:{order_no}")
        if action:
            q = q.where(AuditEntry.action == action)
        return [(a.action, a.actor, a.source_ip, json.loads(a.details))
                for a in db.session.scalars(q.order_by(AuditEntry.seq))]


def key_statuses(app, product_id):
    from kamengd.extensions import db
    from kamengd.inventory.models import CardKey

    with app.app_context():
        return dict(db.session.execute(sa.select(CardKey.status, sa.func.count())
                                       .where(CardKey.product_id == product_id).group_by(CardKey.status)).all())


def signed_in(app, client, role):
    client.set_cookie("lang", "en")   # the assertions below read the English texts
    staff = make_staff(app, role)
    assert login(client, staff).status_code == 302
    return staff


def listed(client, **args) -> str:
    resp = client.get("/admin/orders", query_string=args)
    assert resp.status_code == 200
    return resp.get_data(as_text=True)


def shop_today(app) -> dt.date:
    from kamengd.context import get_config

    with app.app_context():
        return dt.datetime.now(ZoneInfo(get_config().site.timezone)).date()


def test_search_filters_work_and_combine(app, client, shop):
    signed_in(app, client, "support")
    ours = {shop.delivered, shop.held, shop.manual, shop.pending}

    def found(**args):
        return {no for no in ours if no in listed(client, **args)}

    assert found(email=shop.email.lower()) == {shop.delivered, shop.held, shop.manual}   # any letter case
    assert found(email=shop.email, status="held") == {shop.held}
    assert found(email=shop.email, flagged="1") == {shop.held}
    assert found(q=shop.delivered) == {shop.delivered}
    assert found(q=shop.pending[:-3], status="pending") == {shop.pending}
    assert found(q=shop.delivered[:8], email=shop.email, status="delivered") == {shop.delivered}
    today = shop_today(app)
    assert found(email=shop.email, **{"from": today.isoformat(), "to": today.isoformat()}) == \
        {shop.delivered, shop.held, shop.manual}
    assert found(email=shop.email, **{"from": (today + dt.timedelta(days=1)).isoformat()}) == set()
    assert found(email=shop.email, to=(today - dt.timedelta(days=1)).isoformat()) == set()
    page = listed(client, email=shop.email, status="held")
    assert f"Auto {shop.tag}" in page and "9.90" in page and "paid 0.01" in page   # product, amount, flag

    # What cannot be read is said and ignored, never a server error.
    for bad in ({"from": "2026-13-45"}, {"from": "0001-01-01"}, {"to": "9999-12-31"}, {"page": "abc"},
                {"page": "-5"}, {"status": "nonsense"}, {"q": "%_" * 40}, {"email": "x" * 500}):
        assert client.get("/admin/orders", query_string=bad).status_code == 200
    assert "is not a date" in listed(client, **{"from": "2026-13-45"})


def test_order_page_shows_payment_and_history(app, client, shop):
    signed_in(app, client, "support")
    resp = client.get(f"/admin/orders/{shop.delivered}")
    page = resp.get_data(as_text=True)
    assert resp.status_code == 200 and resp.headers["Cache-Control"] == "no-store"
    assert f"T{shop.delivered}" in page and f"p{shop.tag}" in page            # the payment and its channel
    assert "order.paid" in page and "order.delivered" in page                 # events
    assert "Delivery e-mails" in page and "pending" in page                   # the queued mail
    assert shop.keys[0] not in page and shop.keys[1] not in page              # keys only after a POST
    held = client.get(f"/admin/orders/{shop.held}").get_data(as_text=True)
    assert "order.held" in held and "paid 0.01" in held and "0.01" in held
    assert f"/admin/orders/{shop.held}/acknowledge" in held
    # Support sees no money actions; a held order's page shows none of them to support.
    assert f"/admin/orders/{shop.held}/release" not in held and f"/admin/orders/{shop.held}/refund" not in held


@pytest.mark.parametrize("role", ["support", "owner"])
def test_keys_are_shown_only_after_a_post_and_each_view_is_audited(app, client, shop, role):
    staff = signed_in(app, client, role)
    url = f"/admin/orders/{shop.delivered}"
    assert client.get(url + "/keys").status_code == 405
    resp = post(client, url + "/keys", page_url=url)
    page = resp.get_data(as_text=True)
    assert resp.status_code == 200 and resp.headers["Cache-Control"] == "no-store"
    [key] = [k for k in shop.keys if k in page]
    assert audit(app, shop.delivered) == [("order.keys_view", f"staff:{staff.username}", "127.0.0.1",
                                           {"keys": 1})]
    assert key not in client.get(url).get_data(as_text=True)
    post(client, url + "/keys", page_url=url)
    assert len(audit(app, shop.delivered, "order.keys_view")) == 2
    # An order with nothing delivered: refused, not audited.
    resp = post(client, f"/admin/orders/{shop.pending}/keys", page_url=url)
    assert resp.status_code == 409 and "no delivered keys" in resp.get_data(as_text=True)
    assert audit(app, shop.pending) == []


def test_finance_cannot_reveal_keys(app, client, shop):
    signed_in(app, client, "finance")
    url = f"/admin/orders/{shop.delivered}"
    page = client.get(url).get_data(as_text=True)
    assert url + "/keys" not in page and url + "/refund" in page
    assert post(client, url + "/keys", page_url=url).status_code == 403
    assert audit(app, shop.delivered) == []


def test_support_cannot_refund_or_release(app, client, shop):
    signed_in(app, client, "support")
    for order_no, action in ((shop.delivered, "refund"), (shop.held, "refund"), (shop.held, "release")):
        resp = post(client, f"/admin/orders/{order_no}/{action}", {"refund_reason": "x", "release_reason": "x"},
                    page_url="/admin/orders")
        assert resp.status_code == 403
    assert db_order(app, shop.delivered).status == "delivered" and db_order(app, shop.held).status == "held"
    assert audit(app, shop.held) == []


def test_finance_refunds_with_a_reason(app, client, shop):
    staff = signed_in(app, client, "finance")
    url = f"/admin/orders/{shop.held}"
    resp = post(client, url + "/refund", {"refund_reason": "  "}, page_url=url)
    assert resp.status_code == 400 and "reason: required" in resp.get_data(as_text=True)
    assert db_order(app, shop.held).status == "held" and key_statuses(app, shop.auto_id)["reserved"] == 2

    resp = post(client, url + "/refund", {"refund_reason": "buyer cancelled"}, page_url=url)
    assert resp.status_code == 303 and resp.headers["Location"] == url
    page = client.get(url).get_data(as_text=True)
    assert "does not move money" in page and "order.refund" in page
    order = db_order(app, shop.held)
    assert order.status == "refunded" and order.flagged_at is None
    assert key_statuses(app, shop.auto_id) == {"sold": 1, "reserved": 1, "available": 2}   # held key back
    [(action, who, ip, details)] = audit(app, shop.held)
    assert (action, who, ip) == ("order.refund", f"staff:{staff.username}", "127.0.0.1")
    assert details["reason"] == "buyer cancelled" and details["previous_status"] == "held"

    resp = post(client, url + "/refund", {"refund_reason": "again"}, page_url=url)
    assert resp.status_code == 409 and "is refunded" in resp.get_data(as_text=True)
    resp = post(client, f"/admin/orders/{shop.pending}/refund", {"refund_reason": "x"}, page_url=url)
    assert resp.status_code == 409 and db_order(app, shop.pending).status == "pending"
    # A delivered order: its key stays sold.
    resp = post(client, f"/admin/orders/{shop.delivered}/refund", {"refund_reason": "x"}, page_url=url)
    assert resp.status_code == 303 and key_statuses(app, shop.auto_id)["sold"] == 1


def test_finance_releases_a_held_order(app, client, shop):
    signed_in(app, client, "finance")
    url = f"/admin/orders/{shop.held}"
    assert url + "/release" in client.get(url).get_data(as_text=True)
    assert post(client, url + "/release", {"release_reason": ""}, page_url=url).status_code == 400
    resp = post(client, url + "/release", {"release_reason": "the buyer topped up by bank"}, page_url=url)
    assert resp.status_code == 303
    assert "the order is delivered" in client.get(url).get_data(as_text=True)
    order = db_order(app, shop.held)
    assert order.status == "delivered" and order.flagged_at is None
    assert audit(app, shop.held)[0][3]["reason"] == "the buyer topped up by bank"
    resp = post(client, url + "/release", {"release_reason": "again"}, page_url=url)
    assert resp.status_code == 409 and "only a held order" in resp.get_data(as_text=True)
    assert len(audit(app, shop.held)) == 1


def test_support_delivers_a_manual_order_by_hand(app, client, shop):
    signed_in(app, client, "support")
    url = f"/admin/orders/{shop.manual}"
    assert url + "/deliver" in client.get(url).get_data(as_text=True)
    resp = post(client, url + "/deliver", {"keys": "ONE\nTWO"}, page_url=url)
    assert resp.status_code == 400 and "needs 1 key, 2 pasted" in resp.get_data(as_text=True)
    assert db_order(app, shop.manual).status == "paid"
    resp = post(client, url + "/deliver", {"keys": f"\n  MANUAL-{shop.tag}  \n"}, page_url=url)
    assert resp.status_code == 303 and db_order(app, shop.manual).status == "delivered"
    assert f"MANUAL-{shop.tag}" in post(client, url + "/keys", page_url=url).get_data(as_text=True)
    assert [a[0] for a in audit(app, shop.manual)] == ["order.deliver", "order.keys_view"]
    assert post(client, url + "/deliver", {"keys": "X"}, page_url=url).status_code == 409


@pytest.fixture
def panel_smtp(app):
    """A mail server set in the panel's settings, removed afterwards (the database is shared)."""
    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.settings.messaging import save_group
    from kamengd.settings.models import Setting

    def set_it():
        with app.app_context():
            save_group(db.session, get_vault(), "smtp", {"smtp.source": "panel", "smtp.host": "smtp.example.invalid"},
                       actor="t")
            db.session.commit()
    yield set_it
    with app.app_context():
        db.session.execute(sa.delete(Setting).where(Setting.key.like("smtp.%")))
        db.session.commit()


def test_resend_the_delivery_mail(app, client, shop, panel_smtp):
    from kamengd.extensions import db
    from kamengd.notifications.models import EmailOutbox

    signed_in(app, client, "support")
    url = f"/admin/orders/{shop.delivered}"
    resp = post(client, url + "/resend", page_url=url)
    assert resp.status_code == 409 and "no SMTP server" in resp.get_data(as_text=True)
    panel_smtp()
    resp = post(client, url + "/resend", page_url=url)
    assert resp.status_code == 409 and "already waiting to be sent" in resp.get_data(as_text=True)
    order_id = db_order(app, shop.delivered).id
    with app.app_context():
        db.session.execute(sa.update(EmailOutbox).where(EmailOutbox.order_id == order_id).values(status="sent"))
        db.session.commit()
    resp = post(client, url + "/resend", page_url=url)
    assert resp.status_code == 303
    with app.app_context():
        assert db.session.scalars(sa.select(EmailOutbox.status).where(EmailOutbox.order_id == order_id)
                                  .order_by(EmailOutbox.id)).all() == ["sent", "pending"]
    assert [a[0] for a in audit(app, shop.delivered)] == ["order.resend_email"]
    assert post(client, f"/admin/orders/{shop.manual}/resend", page_url=url).status_code == 409


def test_acknowledge_a_flag(app, client, shop):
    signed_in(app, client, "support")
    url = f"/admin/orders/{shop.held}"
    reason = db_order(app, shop.held).flag_reason
    resp = post(client, url + "/acknowledge", {"note": "asked the buyer"}, page_url=url)
    assert resp.status_code == 303
    order = db_order(app, shop.held)
    assert order.flagged_at is None and order.status == "held"
    assert audit(app, shop.held)[0][3] == {"reason": reason, "note": "asked the buyer"}
    assert shop.held not in listed(client, flagged="1", email=shop.email)
    assert post(client, url + "/acknowledge", page_url=url).status_code == 409


def test_bad_order_numbers_are_404_pages(app, client):
    signed_in(app, client, "owner")
    for order_no in ("nope", "9" * 28, "x" * 200, "%25", "a b"):
        assert client.get(f"/admin/orders/{order_no}").status_code == 404
        for action in ("keys", "deliver", "release", "refund", "resend", "acknowledge"):
            resp = post(client, f"/admin/orders/{order_no}/{action}",
                        {"refund_reason": "r", "release_reason": "r", "keys": "K"}, page_url="/admin/orders")
            assert resp.status_code == 404, (order_no, action)


def test_product_channel_and_key_filters_and_the_csv_export(app, client, shop):
    """W10 §7: filters by product and channel, an order found by the key its buyer says
    does not work (by fingerprint: nothing decrypted, the key not kept), and the CSV."""
    import csv

    from kamengd.extensions import db
    from kamengd.orders.models import Order

    with app.app_context():
        channel_id = db.session.scalar(sa.select(Order.channel_id).where(Order.order_no == shop.delivered))
        db.session.remove()
    signed_in(app, client, "finance")
    ours = {shop.delivered, shop.held, shop.manual, shop.pending}

    def found(**args):
        return {no for no in ours if no in listed(client, **args)}

    assert found(product=shop.manual_id) == {shop.manual}
    assert found(product=shop.auto_id, channel=channel_id) == {shop.delivered, shop.held, shop.pending}
    assert found(product=shop.auto_id, channel=999999) == set()
    for bad in ("x", "-1", "9" * 30):
        assert client.get("/admin/orders", query_string={"product": bad, "channel": bad}).status_code == 200

    # The delivered order's key (imported first, so sold first).
    with app.app_context():
        from kamengd.context import get_vault
        from kamengd.orders.services import order_keys

        delivered = db.session.scalar(sa.select(Order).where(Order.order_no == shop.delivered))
        [key] = order_keys(db.session, get_vault(), delivered)
        db.session.remove()
    page = listed(client, key=f"  {key} ")
    assert shop.delivered in page and shop.held not in page and "it is not kept" in page
    assert key not in page          # not in the form, not in a link
    assert found(key="NO-SUCH-KEY") == set()

    answer = client.get("/admin/orders/export.csv", query_string={"product": shop.auto_id})
    assert answer.status_code == 200 and answer.mimetype == "text/csv"
    assert "attachment" in answer.headers["Content-Disposition"]
    text = answer.get_data(as_text=True)
    assert text.startswith("\ufeff")
    rows = list(csv.DictReader(io.StringIO(text.lstrip("\ufeff"))))
    mine = {r["order_no"]: r for r in rows}
    assert set(mine) == {shop.delivered, shop.held, shop.pending}
    assert mine[shop.delivered]["amount"] == "9.90" and mine[shop.delivered]["status"] == "delivered"
    assert mine[shop.held]["flag"].startswith("paid 0.01")
    with app.app_context():
        kinds = dict(db.session.execute(sa.select(Order.order_no, Order.pay_type)
                                        .where(Order.order_no.in_(list(mine)))).all())
        db.session.remove()
    assert {no: row["pay_type"] for no, row in mine.items()} == {no: kind or "" for no, kind in kinds.items()}
    assert all(row["input"] == "" for row in rows)   # no input fields on these products
    from kamengd.audit.models import AuditEntry

    with app.app_context():
        last = db.session.scalars(sa.select(AuditEntry).where(AuditEntry.action == "orders.export")
                                  .order_by(AuditEntry.seq.desc())).first()
        assert json.loads(last.details)["filters"] == {"product": str(shop.auto_id)}
        db.session.remove()


def test_support_may_not_export_orders(app, client, shop):
    signed_in(app, client, "support")
    assert client.get("/admin/orders/export.csv").status_code == 403
    assert "export.csv" not in listed(client)


def test_pager_numbers_its_pages(app):
    import re

    with app.test_request_context("/admin/orders"):
        macro = app.jinja_env.get_template("panel/macros.html").module.pager
        html = str(macro("panel.orders", 6, True, pages=12, newest_first=True, args={"status": "paid"}))
    numbers = re.findall(r">(\d+)</(?:a|strong)>", html)
    assert numbers == ["1", "2", "4", "5", "6", "7", "8", "11", "12"] and html.count("…") == 2
    assert 'aria-current="page">6</strong>' in html and "page=12" in html and "status=paid" in html

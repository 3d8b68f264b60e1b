"""Routing and health in the panel (W4): a channel's rules, a product's channels, the Test button
as a health check. On SQLite and MariaDB; the values must survive bad input unchanged."""
from __future__ import annotations

import secrets

import sqlalchemy as sa

from fake_epay import FakeEpay
from kamengd.payments.models import PaymentChannel, ProductChannel
from panel_support import login, make_staff, post


def _add(app, code, gateway="https://pay.example.com", key=None):
    from kamengd.context import get_vault
    from kamengd.extensions import db
    from kamengd.payments.services import add_channel
    with app.app_context():
        ch = add_channel(db.session, get_vault(), channel_type="epay", code=code, actor="t",
                         options={"gateway": gateway, "pid": "1001", "key": key or f"k-{secrets.token_hex(12)}"})
        db.session.commit()
        found = ch.id
        db.session.remove()
    return found


def _channel(app, channel_id):
    from kamengd.extensions import db
    with app.app_context():
        ch = db.session.get(PaymentChannel, channel_id)
        db.session.expunge(ch)
        db.session.remove()
    return ch


def _admin(app, client):
    client.set_cookie("lang", "en")
    assert login(client, make_staff(app, "admin")).status_code == 302
    return client


def test_the_routing_page_saves_rules_and_refuses_bad_ones_whole(app, client):
    admin = _admin(app, client)
    cid = _add(app, f"rp{secrets.token_hex(3)}")
    page = admin.get(f"/admin/channels/{cid}/routing").get_data(as_text=True)
    assert "Working" in page and 'name="daily_cap"' in page
    form = {"priority": "3", "weight": "2", "min_amount": "1.00", "max_amount": "500", "daily_cap": "8000.50",
            "fee_percent": "0.6", "fee_fixed": "0.10"}
    done = post(admin, f"/admin/channels/{cid}/routing", form, page_url=f"/admin/channels/{cid}/routing")
    assert done.status_code == 303
    ch = _channel(app, cid)
    assert (ch.sort_order, ch.weight, ch.min_amount_cents, ch.max_amount_cents, ch.daily_cap_cents, ch.fee_bp,
            ch.fee_fixed_cents) == (3, 2, 100, 50000, 800050, 60, 10)
    bad = post(admin, f"/admin/channels/{cid}/routing", {**form, "weight": "-4", "fee_percent": "abc",
                                                         "min_amount": "900"},
               page_url=f"/admin/channels/{cid}/routing")
    assert bad.status_code == 400
    text = bad.get_data(as_text=True)
    assert "weight" in text and "fee percent" in text
    again = _channel(app, cid)
    assert (again.weight, again.fee_bp, again.min_amount_cents) == (2, 60, 100)   # nothing of it written
    cleared = post(admin, f"/admin/channels/{cid}/routing", {**form, "daily_cap": "", "min_amount": ""},
                   page_url=f"/admin/channels/{cid}/routing")
    assert cleared.status_code == 303 and _channel(app, cid).daily_cap_cents is None


def test_a_products_channels_from_its_page(app, client):
    from kamengd.catalog.services import create_product
    from kamengd.extensions import db
    admin = _admin(app, client)
    a, b = f"pa{secrets.token_hex(3)}", f"pb{secrets.token_hex(3)}"
    ida, _ = _add(app, a), _add(app, b)
    with app.app_context():
        pid = create_product(db.session, name="路由商品", price_cents=100, actor="t").id
        db.session.commit()
        db.session.remove()
    page = admin.get(f"/admin/products/{pid}").get_data(as_text=True)
    assert 'id="product-channels"' in page and f'value="{a}"' in page
    done = post(admin, f"/admin/products/{pid}/channels", {"channels": [a]}, page_url=f"/admin/products/{pid}")
    assert done.status_code == 303
    with app.app_context():
        rows = db.session.execute(sa.select(ProductChannel.channel_id).where(ProductChannel.product_id == pid)).all()
        db.session.remove()
    assert [r[0] for r in rows] == [ida]
    routing_page = admin.get(f"/admin/channels/{ida}/routing").get_data(as_text=True)
    assert "路由商品" in routing_page
    refused = post(admin, f"/admin/products/{pid}/channels", {"channels": [a, "no-such"]},
                   page_url=f"/admin/products/{pid}", follow_redirects=True)
    assert "no-such" in refused.get_data(as_text=True)
    post(admin, f"/admin/products/{pid}/channels", {}, page_url=f"/admin/products/{pid}")
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(ProductChannel)
                                 .where(ProductChannel.product_id == pid)) == 0
        db.session.remove()
    # An operator edits products but not how they are paid.
    operator = app.test_client()
    operator.set_cookie("lang", "en")
    login(operator, make_staff(app, "operator"))
    assert 'id="product-channels"' not in operator.get(f"/admin/products/{pid}").get_data(as_text=True)
    assert post(operator, f"/admin/products/{pid}/channels", {"channels": [a]},
                page_url=f"/admin/products/{pid}").status_code == 403


def test_the_test_button_is_a_health_check(app, client):
    """An Epay channel is taken out of routing only when its own key fails (not every Epay site
    answers the merchant query); a channel that is down and passes the test is back."""
    from kamengd.extensions import db
    from kamengd.payments.routing import mark_health
    admin = _admin(app, client)
    key = f"gw-{secrets.token_hex(12)}"
    with FakeEpay("1001", key) as gw:
        cid = _add(app, f"hc{secrets.token_hex(3)}", gateway=gw.url, key=key)
        gw.active = 0   # the gateway says the merchant is disabled
        post(admin, f"/admin/channels/{cid}/test", page_url="/admin/channels")
        ch = _channel(app, cid)
        assert ch.health == "ok" and ch.health_checked_at is not None
        with app.app_context():
            mark_health(db.session, db.session.get(PaymentChannel, cid), False, "create call failed")
            db.session.commit()
            db.session.remove()
        listing = admin.get("/admin/channels").get_data(as_text=True)
        assert "Down" in listing and "create call failed" in listing
        gw.active = 1
        post(admin, f"/admin/channels/{cid}/test", page_url="/admin/channels")
        assert _channel(app, cid).health == "ok"

"""Every route of the app, for every role and for an anonymous visitor.

The expected table below is written out on its own, not read from
kamengd/panel/permissions.py: a change there that widens access fails here,
and a new route that nobody gave a rule fails `test_every_route_is_listed`.
"""
from __future__ import annotations

import dataclasses
import io
import re

import pytest
import sqlalchemy as sa

from kamengd.accounts.models import ROLES
from panel_support import make_staff

ALL = frozenset(ROLES)
MANAGERS = frozenset({"owner", "admin"})

# Endpoint -> roles that may use it ("*" anyone signed in, "public" anyone at all).
EXPECTED: dict[str, frozenset[str] | str] = {
    "panel.login": "public",
    "panel.login_2fa": "public",
    "panel.logout": "*",
    "panel.home": "*",
    "panel.account": "*",
    "panel.password": "*",
    "panel.logout_everywhere": "*",
    "panel.totp_enrol": "*",
    "panel.totp_qr": "*",
    "panel.totp_disable": "*",
    "panel.recovery_codes": "*",
    "panel.dashboard": MANAGERS | {"operator", "support", "finance"},
    # Vouchers: the report (numbers, no codes) and their management.
    "panel.vouchers_report": MANAGERS | {"operator", "finance"},
    "panel.vouchers_today": MANAGERS | {"operator", "finance"},
    "panel.vouchers_report_csv": MANAGERS | {"operator", "finance"},
    "panel.voucher_products": MANAGERS,
    "panel.voucher_terms_save": MANAGERS,
    "panel.voucher_generate": MANAGERS,
    "panel.voucher_batch": MANAGERS,
    "panel.voucher_batch_export": MANAGERS,
    "panel.stores": MANAGERS,
    "panel.store_new": MANAGERS,
    "panel.store_edit": MANAGERS,
    "panel.store_verifiers": MANAGERS,
    # The verifier terminal: a verifier's only pages (besides its own account).
    "panel.terminal": MANAGERS | {"verifier"},
    "panel.terminal_store": MANAGERS | {"verifier"},
    "panel.terminal_look": MANAGERS | {"verifier"},
    "panel.terminal_redeem": MANAGERS | {"verifier"},
    "panel.terminal_undo": MANAGERS | {"verifier"},
    # After-sales tickets: support and finance read and answer; ending one with a refund or a
    # reissued key is who may refund or deliver.
    "panel.tickets_list": MANAGERS | {"support", "finance"},
    "panel.ticket_detail": MANAGERS | {"support", "finance"},
    "panel.ticket_reply": MANAGERS | {"support", "finance"},
    "panel.ticket_close": MANAGERS | {"support", "finance"},
    "panel.ticket_picture": MANAGERS | {"support", "finance"},
    "panel.ticket_reissue": MANAGERS | {"support"},
    "panel.ticket_refund": MANAGERS | {"finance"},
    # Reports: the business's figures (cost prices, profit), no buyer's data.
    "panel.reports": MANAGERS | {"finance"},
    "panel.report_export": MANAGERS | {"finance"},
    # Lists: operators may take the redemptions (the route lets them in; the list decides).
    "panel.report_lists": MANAGERS | {"finance", "operator"},
    "panel.report_list_start": MANAGERS | {"finance", "operator"},
    "panel.report_list_detail": MANAGERS | {"finance", "operator"},
    "panel.report_list_download": MANAGERS | {"finance", "operator"},
    "panel.products": MANAGERS | {"operator", "support", "finance"},
    "panel.product_new": MANAGERS | {"operator"},
    "panel.product_edit": MANAGERS | {"operator"},
    "panel.product_visibility": MANAGERS | {"operator"},
    "panel.product_picture": MANAGERS | {"operator"},
    "panel.product_picture_remove": MANAGERS | {"operator"},
    "panel.categories": MANAGERS | {"operator", "support", "finance"},
    "panel.category_new": MANAGERS | {"operator"},
    "panel.category_edit": MANAGERS | {"operator"},
    "panel.stock": MANAGERS | {"operator"},
    "panel.stock_import": MANAGERS | {"operator"},
    "panel.stock_export": MANAGERS,
    "panel.stock_keys": MANAGERS | {"operator"},
    "panel.stock_void_batch": MANAGERS | {"operator"},
    "panel.orders": MANAGERS | {"support", "finance"},
    "panel.order_detail": MANAGERS | {"support", "finance"},
    "panel.order_keys": MANAGERS | {"support"},
    "panel.order_deliver": MANAGERS | {"support"},
    "panel.order_resend": MANAGERS | {"support"},
    "panel.order_acknowledge": MANAGERS | {"support", "finance"},
    "panel.order_release": MANAGERS | {"finance"},
    "panel.order_refund": MANAGERS | {"finance"},
    "panel.order_refund_extra": MANAGERS | {"finance"},
    "panel.orders_export": MANAGERS | {"finance"},
    "panel.channels": MANAGERS,
    "panel.suppliers_list": MANAGERS,
    "panel.supplier_add": MANAGERS,
    "panel.supplier_detail": MANAGERS,
    "panel.supplier_sync": MANAGERS,
    "panel.supplier_settings": MANAGERS,
    "panel.supplier_map": MANAGERS,
    "panel.supplier_unmap": MANAGERS,
    # Coupons give money away: as agents' discounts, never the operator who edits products.
    "panel.coupons_list": MANAGERS,
    "panel.coupon_new": MANAGERS,
    "panel.coupon_edit": MANAGERS,
    "panel.coupon_toggle": MANAGERS,
    # Risk rules decide who may buy: as coupons. Their review queue is held orders: who releases them.
    "panel.risk_rules": MANAGERS,
    "panel.risk_rule_new": MANAGERS,
    "panel.risk_rule_edit": MANAGERS,
    "panel.risk_rule_toggle": MANAGERS,
    "panel.risk_queue": MANAGERS | {"finance"},
    "panel.risk_approve": MANAGERS | {"finance"},
    "panel.channel_new": MANAGERS,
    "panel.channel_edit": MANAGERS,
    "panel.channel_toggle": MANAGERS,
    "panel.channel_remove": MANAGERS,
    "panel.channel_test": MANAGERS,
    "panel.channel_routing": MANAGERS,
    "panel.product_channels": MANAGERS,
    "panel.staff": frozenset({"owner"}),
    "panel.staff_new": frozenset({"owner"}),
    "panel.staff_edit": frozenset({"owner"}),
    "panel.staff_reset_2fa": frozenset({"owner"}),
    "panel.settings": MANAGERS,
    "panel.settings_mail": MANAGERS,
    "panel.settings_notifications": MANAGERS,
    "panel.settings_test_mail": MANAGERS,
    "panel.audit": MANAGERS | {"auditor"},
    "panel.audit_verify": MANAGERS | {"auditor"},
    "panel.jobs": MANAGERS | {"finance"},
    "panel.reconcile": MANAGERS | {"finance"},
    "panel.reconcile_report": MANAGERS | {"finance"},
    "panel.notifications": MANAGERS | {"finance"},
    "panel.agents_list": MANAGERS | {"finance", "support"},
    "panel.agent_detail": MANAGERS | {"finance", "support"},
    "panel.agent_level_save": MANAGERS,
    "panel.agent_toggle": MANAGERS,
    "panel.agent_create": MANAGERS,
    "panel.agent_rule_save": MANAGERS,
    "panel.agent_level_price_save": MANAGERS,
    "panel.agent_host_bind": MANAGERS,
    "panel.agent_host_unbind": MANAGERS,
    # Agents' money: never operator or support.
    "panel.agent_credit": MANAGERS | {"finance"},
    "panel.agent_points": MANAGERS | {"finance"},
    "panel.withdrawals_list": MANAGERS | {"finance"},
    "panel.withdrawal_pay": MANAGERS | {"finance"},
    "panel.withdrawal_reject": MANAGERS | {"finance"},
}

SIGN_OUT = {"panel.logout", "panel.logout_everywhere"}   # they end on the sign-in page

# Everything outside /admin is for buyers, gateways and monitors: no staff role.
PUBLIC_ELSEWHERE = {
    "static", "health.healthz",
    "shop.index", "shop.favicon", "shop.media", "shop.product", "shop.buy", "shop.order_page", "shop.lookup",
    "api.products", "api.new_order", "api.get_order", "api.payment_methods", "api.openapi_document",
    "pay.notify", "shop.payment_return", "shop.order_status", "shop.sandbox_page", "shop.sandbox_pay",
    "shop.balance_page", "shop.balance_pay", "shop.points_page", "shop.points_pay",
    "shop.payment_start", "shop.ticket_write", "shop.ticket_picture",
    # The agent API: signed by the agent's key (kamengd.agents.auth), never a staff session.
    "agent_api.products", "agent_api.balance", "agent_api.new_order", "agent_api.get_order",
    "agent_api.list_payout_accounts", "agent_api.add_payout_account", "agent_api.list_withdrawals",
    "agent_api.request_withdrawal", "agent_api.list_commissions", "agent_api.list_prices", "agent_api.set_price",
    "agent_api.ledger_statement", "agent_api.list_orders", "agent_api.new_batch", "agent_api.get_batch",
    "agent_api.list_webhooks", "agent_api.add_webhook", "agent_api.remove_webhook", "agent_api.webhook_deliveries",
    # The agent portal: an agent's own sign-in (kamengd.portal), never a staff session.
    "portal.login", "portal.login_2fa", "portal.logout", "portal.account", "portal.password",
    "portal.logout_everywhere", "portal.totp_enrol", "portal.totp_qr", "portal.totp_disable",
    "portal.recovery_codes", "portal.dashboard", "portal.products", "portal.product_price", "portal.orders",
    "portal.order_detail", "portal.team", "portal.ledger", "portal.withdrawals_page", "portal.withdrawal_request",
    "portal.payout_account_add", "portal.payout_account_remove", "portal.keys", "portal.key_issue",
    "portal.key_revoke", "portal.station", "portal.station_save",
    "portal.webhooks_page", "portal.webhook_add", "portal.webhook_remove",
    "portal.batches_page", "portal.batch_template", "portal.batch_upload", "portal.batch_detail",
    "portal.batch_result",
}


@pytest.fixture(scope="module")
def world(backend, databases, tmp_path_factory):
    """Its own installation (the allowed POSTs really run) with one of everything."""
    from kamengd.app import create_app
    from kamengd.context import get_vault
    from kamengd.catalog.models import Category
    from kamengd.catalog.services import create_product
    from kamengd.config import load_config
    from kamengd.extensions import db
    from kamengd.operations.installation import install
    from kamengd.inventory.services import import_keys
    from kamengd.orders.services import create_order
    from kamengd.payments.services import add_channel

    data_dir = tmp_path_factory.mktemp(f"perm-{backend}") / "data"
    url = None if backend == "sqlite" else databases.new_url(backend)
    config = load_config(install(data_dir, admin_password="correct horse battery", database_url=url).config_path,
                         env={})
    config = dataclasses.replace(config, ratelimit=dataclasses.replace(config.ratelimit, enabled=False))
    app = create_app(config)
    app.config.update(TESTING=True, WTF_CSRF_ENABLED=False)   # CSRF has its own test below
    with app.app_context():
        category = Category(name="perm-category")
        db.session.add(category)
        product = create_product(db.session, name="perm product", price_cents=100, actor="test")
        import_keys(db.session, get_vault(), product_id=product.id, fh=io.BytesIO(b"K-1\nK-2\nK-3\n"), actor="test")
        channel = add_channel(db.session, get_vault(), channel_type="epay", code="permpay", actor="test",
                              name="Perm pay", options={"gateway": "http://127.0.0.1:9/", "pid": "1001",
                                                        "key": "perm-merchant-key-0123456789"})
        order = create_order(db.session, product_id=product.id, quantity=1, email="b@example.com",
                             channel_code="permpay", query_password=None, coupon=None).order
        from kamengd.agents import services as agents
        level, _ = agents.set_level(db.session, name="perm-level", discount="5", actor="test")
        agent = agents.create_agent(db.session, username="perm-agent", level=level.name, actor="test")
        from kamengd.suppliers.services import add_supplier
        supplier = add_supplier(db.session, get_vault(), name="perm-supplier", url="http://127.0.0.1:9",
                                key_id="ak_perm", secret="perm-secret-0123456789", actor="test")
        from kamengd.marketing.coupons import create_coupon, parse_coupon_form
        coupon = create_coupon(db.session, "PERM-COUPON", parse_coupon_form({"kind": "fixed", "amount_off": "1"},
                                                                             "Asia/Shanghai"), actor="test")
        from kamengd.risk.rules import create_rule
        risk_rule = create_rule(db.session, name="perm-rule", kind="ip_list", action="review",
                                form={"ranges": "192.0.2.0/24"}, actor="test")
        db.session.commit()
        ids = {"supplier_id": supplier.id, "coupon_id": coupon.id, "rule_id": risk_rule.id, "product_id": product.id, "category_id": category.id, "channel_id": channel.id,
               "order_no": order.order_no, "day": "2026-01-01", "payment_id": 1, "import_id": 1,
               "agent_id": agent.id, "withdrawal_id": 1, "redemption_id": 1, "store_id": 1,
               "batch_id": 1, "ticket_id": 1, "image_id": 1, "export_id": 1}
    staff = {role: make_staff(app, role) for role in ROLES}
    ids["user_id"] = make_staff(app, "support").id   # the target of staff edits
    return app, ids, staff


def _panel_rules(app):
    return [r for r in app.url_map.iter_rules() if r.endpoint.startswith("panel.")]


def _url(rule, ids) -> str:
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", lambda m: str(ids[m.group(1)]), rule.rule)


def _sign_in(client, app, user_id):
    """The session cookie of a signed-in user (sign-in itself is tested in test_panel_auth.py)."""
    import time

    from kamengd.accounts.models import StaffUser
    from kamengd.extensions import db

    from kamengd.accounts.auth import open_session

    with app.app_context():
        user = db.session.get(StaffUser, user_id)
        epoch, token = user.session_epoch, open_session(db.session, user, ip="127.0.0.1", user_agent="test")
        db.session.commit()
    with client.session_transaction() as s:
        now = int(time.time())
        s["staff"] = {"id": user_id, "sid": token, "epoch": epoch, "since": now, "seen": now}


def test_every_route_is_listed(app):
    from kamengd.panel.permissions import ENDPOINTS

    endpoints = {r.endpoint for r in app.url_map.iter_rules()}
    panel = {e for e in endpoints if e.startswith("panel.")}
    assert panel == set(EXPECTED), "panel routes and the expected table differ"
    assert panel == set(ENDPOINTS), "panel routes and kamengd/panel/permissions.py differ"
    assert endpoints - panel == PUBLIC_ELSEWHERE


def test_permission_table_matches(app):
    """The single table in permissions.py says what this test expects, role by role."""
    from kamengd.panel.permissions import ENDPOINTS, PUBLIC, SELF, can

    for endpoint, expected in EXPECTED.items():
        rule = ENDPOINTS[endpoint]
        if expected == "public":
            assert rule == PUBLIC, endpoint
        elif expected == "*":
            assert rule == SELF, endpoint
        else:
            assert {role for role in ROLES if can(role, rule)} == expected, endpoint


def test_anonymous_is_sent_to_sign_in(world):
    app, ids, _staff = world
    client = app.test_client()
    for rule in _panel_rules(app):
        url = _url(rule, ids)
        method = "GET" if "GET" in rule.methods else "POST"
        resp = client.open(url, method=method)
        if EXPECTED[rule.endpoint] == "public":
            assert resp.status_code in (200, 302), (url, resp.status_code)
            assert "/admin/login" in (resp.headers.get("Location") or "/admin/login")
        else:
            assert resp.status_code == 302, (url, resp.status_code)
            assert resp.headers["Location"].startswith("/admin/login"), url


@pytest.mark.parametrize("role", ROLES)
def test_every_route_for_role(world, role):
    app, ids, staff = world
    client = app.test_client()
    user = staff[role]
    for rule in sorted(_panel_rules(app), key=lambda r: r.endpoint):
        expected = EXPECTED[rule.endpoint]
        if expected == "public":
            continue
        allowed = expected == "*" or role in expected
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            _sign_in(client, app, user.id)
            url = _url(rule, ids)
            resp = client.open(url, method=method)
            where = f"{role} {method} {url} -> {resp.status_code}"
            assert resp.status_code < 500, where
            if allowed:
                assert resp.status_code != 403, where
                if rule.endpoint not in SIGN_OUT:
                    assert not (resp.headers.get("Location") or "").startswith("/admin/login"), where
            else:
                assert resp.status_code == 403, where
                assert "You do not have access" in resp.get_data(as_text=True) or \
                    "无权" in resp.get_data(as_text=True), where


def test_every_form_needs_the_csrf_token(backend, make_install):
    """With CSRF on (the default), every POST route refuses a request without the token,
    before the view runs (the owner's session is kept: nothing changed). The refusal sends
    the staff member back to the form, to be filled in again (W10 §8), never runs it."""
    from kamengd.app import create_app
    from kamengd.audit.models import AuditEntry
    from kamengd.extensions import db

    config = make_install(backend)
    config = dataclasses.replace(config, ratelimit=dataclasses.replace(config.ratelimit, enabled=False))
    app = create_app(config)
    owner = make_staff(app, "owner")
    client = app.test_client()
    ids = {"product_id": 1, "category_id": 1, "channel_id": 1, "order_no": "X", "user_id": owner.id,
           "day": "2026-01-01", "payment_id": 1, "import_id": 1, "agent_id": 1, "withdrawal_id": 1, "redemption_id": 1, "store_id": 1, "batch_id": 1, "ticket_id": 1, "image_id": 1, "export_id": 1, "supplier_id": 1,
           "coupon_id": 1, "rule_id": 1}
    with app.app_context():
        before = db.session.scalar(sa.select(sa.func.count()).select_from(AuditEntry))
    posts = [r for r in _panel_rules(app) if "POST" in r.methods]
    assert len(posts) > 20
    for rule in posts:
        _sign_in(client, app, owner.id)
        resp = client.post(_url(rule, ids), data={"username": owner.username, "password": owner.password})
        assert resp.status_code == 303, (rule.rule, resp.status_code)
        assert resp.headers["Location"].endswith("restore=1"), (rule.rule, resp.headers["Location"])
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(AuditEntry)) == before

"""Who may do what in the panel: the only place permissions are decided.

Every panel endpoint is listed in ENDPOINTS with the permission it needs;
the panel's before-request guard looks it up, and an endpoint missing here
is refused to everyone (tests/test_panel_permissions.py fails on it first).
"""
from __future__ import annotations

from ..accounts.models import ROLES

# Pages anyone may open (sign-in itself).
PUBLIC = "public"
# Any signed-in staff member, whatever the role: their own account.
SELF = "self"

PERMISSIONS: dict[str, frozenset[str]] = {
    "dashboard.view": frozenset({"owner", "admin", "operator", "support", "finance"}),
    "catalog.view": frozenset({"owner", "admin", "operator", "support", "finance"}),
    "catalog.edit": frozenset({"owner", "admin", "operator"}),
    "stock.view": frozenset({"owner", "admin", "operator"}),
    "stock.import": frozenset({"owner", "admin", "operator"}),
    # Plaintext keys in bulk: never the operator, who only loads them.
    "stock.export": frozenset({"owner", "admin"}),
    "orders.view": frozenset({"owner", "admin", "support", "finance"}),
    # Every order's buyer e-mail in one file: personal data leaves the shop.
    "orders.export": frozenset({"owner", "admin", "finance"}),
    # One delivered order's keys, each view audited.
    "orders.keys": frozenset({"owner", "admin", "support"}),
    "orders.deliver": frozenset({"owner", "admin", "support"}),
    "orders.resend": frozenset({"owner", "admin", "support"}),
    "orders.acknowledge": frozenset({"owner", "admin", "support", "finance"}),
    # A held order was paid the wrong amount: money decides.
    "orders.release": frozenset({"owner", "admin", "finance"}),
    "orders.refund": frozenset({"owner", "admin", "finance"}),
    "channels.manage": frozenset({"owner", "admin"}),
    # Other shops this one buys from: their keys spend this shop's money there.
    "suppliers.manage": frozenset({"owner", "admin"}),
    # Coupons give the shop's money away (as agents' discounts do): never the operator, who edits products.
    "coupons.manage": frozenset({"owner", "admin"}),
    # Risk rules decide which buyers may order at all: as coupons, owners and admins. (Their review
    # queue is held orders: orders.release looks at it and approves.)
    "risk.manage": frozenset({"owner", "admin"}),
    # Vouchers (卡券): redeeming at a store's till is the verifier's only right (its stores only,
    # decided by kamengd.vouchers.services); owners and admins redeem anywhere.
    "vouchers.redeem": frozenset({"owner", "admin", "verifier"}),
    # Terms, codes made for sale or issued in a batch, stores and who verifies at them.
    "vouchers.manage": frozenset({"owner", "admin"}),
    # What stores redeemed: numbers, no codes.
    "vouchers.report": frozenset({"owner", "admin", "operator", "finance"}),
    # After-sales tickets: read and answer (the buyer's words, its order); ending one with a refund
    # or a reissued key needs orders.refund or orders.deliver besides.
    "tickets.handle": frozenset({"owner", "admin", "support", "finance"}),
    # The business's figures: sales, cost prices, profit, agents' commission (no buyer's data).
    "reports.view": frozenset({"owner", "admin", "finance"}),
    # Big lists written in the background (each list needs its own right besides: orders.export,
    # finance.manage, vouchers.report).
    "lists.export": frozenset({"owner", "admin", "finance", "operator"}),
    "staff.manage": frozenset({"owner"}),
    "settings.manage": frozenset({"owner", "admin"}),
    "audit.view": frozenset({"owner", "admin", "auditor"}),
    "ops.view": frozenset({"owner", "admin", "finance"}),
    # Agents: who they are and what they hold; changing them (levels, enable/disable).
    "agents.view": frozenset({"owner", "admin", "finance", "support"}),
    "agents.manage": frozenset({"owner", "admin"}),
    # Agents' money: credits and debits, withdrawals paid or rejected. Never operator or support.
    "finance.manage": frozenset({"owner", "admin", "finance"}),
}

ENDPOINTS: dict[str, str] = {
    # account.py
    "panel.login": PUBLIC,
    "panel.login_2fa": PUBLIC,
    "panel.logout": SELF,
    "panel.home": SELF,
    "panel.account": SELF,
    "panel.password": SELF,
    "panel.logout_everywhere": SELF,
    "panel.totp_enrol": SELF,
    "panel.totp_qr": SELF,
    "panel.totp_disable": SELF,
    "panel.recovery_codes": SELF,
    # dashboard.py
    "panel.dashboard": "dashboard.view",
    # catalog.py
    "panel.products": "catalog.view",
    "panel.product_new": "catalog.edit",
    "panel.product_edit": "catalog.edit",
    "panel.product_visibility": "catalog.edit",
    "panel.product_picture": "catalog.edit",
    "panel.product_picture_remove": "catalog.edit",
    "panel.categories": "catalog.view",
    "panel.category_new": "catalog.edit",
    "panel.category_edit": "catalog.edit",
    # stock.py
    "panel.stock": "stock.view",
    "panel.stock_import": "stock.import",
    "panel.stock_export": "stock.export",
    "panel.stock_keys": "stock.view",
    "panel.stock_void_batch": "stock.import",
    # orders.py
    "panel.orders": "orders.view",
    "panel.order_detail": "orders.view",
    "panel.orders_export": "orders.export",
    "panel.order_keys": "orders.keys",
    "panel.order_deliver": "orders.deliver",
    "panel.order_resend": "orders.resend",
    "panel.order_acknowledge": "orders.acknowledge",
    "panel.order_release": "orders.release",
    "panel.order_refund": "orders.refund",
    "panel.order_refund_extra": "orders.refund",
    # suppliers.py
    "panel.suppliers_list": "suppliers.manage",
    "panel.supplier_add": "suppliers.manage",
    "panel.supplier_detail": "suppliers.manage",
    "panel.supplier_sync": "suppliers.manage",
    "panel.supplier_settings": "suppliers.manage",
    "panel.supplier_map": "suppliers.manage",
    "panel.supplier_unmap": "suppliers.manage",
    # coupons.py
    "panel.coupons_list": "coupons.manage",
    "panel.coupon_new": "coupons.manage",
    "panel.coupon_edit": "coupons.manage",
    "panel.coupon_toggle": "coupons.manage",
    # risk.py
    "panel.risk_rules": "risk.manage",
    "panel.risk_rule_new": "risk.manage",
    "panel.risk_rule_edit": "risk.manage",
    "panel.risk_rule_toggle": "risk.manage",
    # vouchers.py
    "panel.vouchers_report": "vouchers.report",
    "panel.vouchers_today": "vouchers.report",
    "panel.vouchers_report_csv": "vouchers.report",
    "panel.voucher_products": "vouchers.manage",
    "panel.voucher_terms_save": "vouchers.manage",
    "panel.voucher_generate": "vouchers.manage",
    "panel.voucher_batch": "vouchers.manage",
    "panel.voucher_batch_export": "vouchers.manage",
    "panel.stores": "vouchers.manage",
    "panel.store_new": "vouchers.manage",
    "panel.store_edit": "vouchers.manage",
    "panel.store_verifiers": "vouchers.manage",
    # terminal.py
    "panel.terminal": "vouchers.redeem",
    "panel.terminal_store": "vouchers.redeem",
    "panel.terminal_look": "vouchers.redeem",
    "panel.terminal_redeem": "vouchers.redeem",
    "panel.terminal_undo": "vouchers.redeem",
    "panel.risk_queue": "orders.release",
    "panel.risk_approve": "orders.release",
    # tickets.py
    "panel.tickets_list": "tickets.handle",
    # reports.py
    "panel.reports": "reports.view",
    "panel.report_export": "reports.view",
    # Big lists (orders, ledger, redemptions) in the background: each list's own right besides.
    "panel.report_lists": "lists.export",
    "panel.report_list_start": "lists.export",
    "panel.report_list_detail": "lists.export",
    "panel.report_list_download": "lists.export",
    "panel.ticket_detail": "tickets.handle",
    "panel.ticket_reply": "tickets.handle",
    "panel.ticket_close": "tickets.handle",
    "panel.ticket_picture": "tickets.handle",
    "panel.ticket_reissue": "orders.deliver",
    "panel.ticket_refund": "orders.refund",
    # channels.py
    "panel.channels": "channels.manage",
    "panel.channel_new": "channels.manage",
    "panel.channel_edit": "channels.manage",
    "panel.channel_toggle": "channels.manage",
    "panel.channel_remove": "channels.manage",
    "panel.channel_test": "channels.manage",
    "panel.channel_routing": "channels.manage",
    "panel.product_channels": "channels.manage",
    # staff.py
    "panel.staff": "staff.manage",
    "panel.staff_new": "staff.manage",
    "panel.staff_edit": "staff.manage",
    "panel.staff_reset_2fa": "staff.manage",
    # settings.py
    "panel.settings": "settings.manage",
    "panel.settings_mail": "settings.manage",
    "panel.settings_notifications": "settings.manage",
    "panel.settings_test_mail": "settings.manage",
    # audit.py
    "panel.audit": "audit.view",
    "panel.audit_verify": "audit.view",
    # ops.py
    "panel.jobs": "ops.view",
    "panel.reconcile": "ops.view",
    "panel.reconcile_report": "ops.view",
    "panel.notifications": "ops.view",
    # agents.py
    "panel.agents_list": "agents.view",
    "panel.agent_detail": "agents.view",
    "panel.agent_level_save": "agents.manage",
    "panel.agent_toggle": "agents.manage",
    "panel.agent_create": "agents.manage",
    "panel.agent_rule_save": "agents.manage",
    "panel.agent_level_price_save": "agents.manage",
    "panel.agent_host_bind": "agents.manage",
    "panel.agent_host_unbind": "agents.manage",
    "panel.agent_credit": "finance.manage",
    "panel.agent_points": "finance.manage",
    "panel.withdrawals_list": "finance.manage",
    "panel.withdrawal_pay": "finance.manage",
    "panel.withdrawal_reject": "finance.manage",
}

# What a signed-in owner or admin without 2FA may still open: setting it up.
ENROL_ENDPOINTS = frozenset({"panel.logout", "panel.account", "panel.totp_enrol", "panel.totp_qr",
                             "panel.password"})

assert all(rule in (PUBLIC, SELF) or rule in PERMISSIONS for rule in ENDPOINTS.values())
assert all(roles <= set(ROLES) for roles in PERMISSIONS.values())


def can(role: str | None, permission: str) -> bool:
    if role is None:
        return False
    if permission == SELF:
        return True
    return role in PERMISSIONS.get(permission, ())


def endpoint_rule(endpoint: str | None) -> str | None:
    return ENDPOINTS.get(endpoint or "")

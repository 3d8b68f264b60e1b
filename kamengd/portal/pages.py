"""The agent's business: dashboard, products and prices, orders, team, ledger, withdrawals, API keys.

Thin views: the services decide, check, book and audit (kamengd.agents.*); a
page reads only the signed-in agent's rows.
"""
from __future__ import annotations

from flask import Response, abort, flash, redirect, render_template, request, url_for

from ..agents import overview, services as agents, sites, statements, withdrawals
from ..agents.checkout import order_of
from ..catalog.services import pool_stock
from ..context import get_vault
from ..errors import InvalidRequest, KamengdError, NotFound
from ..extensions import db, limiter
from ..ledger.models import POINTS_KIND
from ..ledger.services import AGENT_KINDS
from ..marketing import points as loyalty
from ..money import format_cents
from ..settings.services import get_setting, shop_url
from ..storefront.i18n import t
from .blueprint import actor, bp, client_ip, current_agent, flash_errors

STATUSES = ("pending", "paid", "delivered", "expired", "cancelled", "refunded", "held")


def _act(work, done: str, back: str):
    """Run a service's change for the form just sent: its message on success, the service's
    error(s) otherwise (nothing changed); back to the page the form is on either way."""
    try:
        work()
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
    else:
        flash(done, "success")
    return redirect(url_for(back), code=303)


@bp.get("/")
def dashboard():
    agent = current_agent()
    return render_template("portal/dashboard.html", agent=agent,
                           summary=agents.agent_summary(db.session, agent),
                           figures=overview.dashboard(db.session, agent),
                           recent=overview.orders(db.session, agent.id, limit=10),
                           points=loyalty.balance(db.session, agent.id), points_owed=loyalty.owed(db.session, agent.id))


@bp.get("/products")
def products():
    agent = current_agent()
    return render_template("portal/products.html", rows=agents.selling_prices(db.session, agent),
                           pool=pool_stock(db.session, agent.id))


@bp.post("/products/<int:product_id>/price")
def product_price(product_id: int):
    price = None if "clear" in request.form else request.form.get("price", "").strip()[:32]
    return _act(lambda: agents.set_selling_price(db.session, current_agent(), product_id=product_id, price=price,
                                                 actor=actor(), source_ip=client_ip()),
                t("售价已保存。", "Price saved.") if price is not None else
                t("已恢复为商城价格。", "Back to the shop's price."), "portal.products")


def _int_arg(name: str) -> int | None:
    value = request.args.get(name, "")
    if not value:
        return None
    if not value.isdigit() or len(value) > 18:
        abort(400)
    return int(value)


@bp.get("/orders")
def orders():
    agent = current_agent()
    status = request.args.get("status") or None
    if status is not None and status not in STATUSES:
        status = None
    before = _int_arg("before")
    rows = overview.orders(db.session, agent.id, before=before, status=status)
    more = rows[-1].id if len(rows) == overview.ORDERS_PAGE else None
    return render_template("portal/orders.html", rows=rows, status=status, statuses=STATUSES, more=more,
                           sold=overview.sold_through(db.session, agent.id) if before is None else [])


@bp.get("/orders/<order_no>")
def order_detail(order_no: str):
    agent = current_agent()
    try:
        order = order_of(db.session, get_vault(), agent.id, order_no)
    except NotFound:
        abort(404)
    return render_template("portal/order_detail.html", order=order)


@bp.get("/team")
def team():
    agent = current_agent()
    return render_template("portal/team.html", rows=overview.team(db.session, agent), days=overview.TEAM_DAYS)


@bp.get("/ledger")
def ledger():
    agent = current_agent()
    account = request.args.get("account") or None
    since, until = request.args.get("from") or None, request.args.get("to") or None
    as_csv = request.args.get("format") == "csv"
    try:
        rows = statements.statement(db.session, agent.id, account=account, since=since, until=until,
                                    limit=statements.MAX_ROWS if as_csv else 200)
    except InvalidRequest as exc:
        flash_errors(exc)
        rows, as_csv = [], False
    if as_csv:
        return Response(statements.as_csv(rows), mimetype="text/csv", headers={
            "Content-Disposition": f'attachment; filename="ledger-{agent.username}.csv"'})
    return render_template("portal/ledger.html", rows=rows, kinds=AGENT_KINDS + (POINTS_KIND,), account=account,
                           since=since or "",
                           until=until or "")


@bp.get("/withdrawals")
def withdrawals_page():
    agent = current_agent()
    accounts = withdrawals.payout_accounts(db.session, agent.id)
    by_id = {a.id: a for a in accounts}
    rows = withdrawals.list_withdrawals(db.session, agent_id=agent.id, limit=100)
    return render_template("portal/withdrawals.html", summary=agents.agent_summary(db.session, agent),
                           accounts=accounts, rows=rows, by_id=by_id, kinds=withdrawals.PAYOUT_KINDS,
                           mask=withdrawals.mask_account)


@bp.post("/withdrawals")
@limiter.limit("30/minute")
def withdrawal_request():
    agent = current_agent()
    account_id = request.form.get("payout_account_id", "")
    try:
        row = withdrawals.request_withdrawal(
            db.session, agent, payout_account_id=int(account_id) if account_id.isdigit() and len(account_id) < 10
            else account_id, amount=request.form.get("amount", "").strip()[:32], actor=actor(),
            source_ip=client_ip())
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        return redirect(url_for("portal.withdrawals_page"), code=303)
    flash(t(f"提现申请已提交：{format_cents(row.amount_cents)}，等待财务处理。",
            f"Withdrawal of {format_cents(row.amount_cents)} requested; finance will review it."), "success")
    return redirect(url_for("portal.withdrawals_page"), code=303)


@bp.post("/payout-accounts")
def payout_account_add():
    form = request.form
    return _act(lambda: withdrawals.add_payout_account(
        db.session, current_agent(), kind=form.get("kind", "")[:32], account=form.get("account", "")[:200],
        holder=form.get("holder", "")[:100], bank=form.get("bank", "")[:100], actor=actor(), source_ip=client_ip()),
        t("收款账户已添加。", "Payout account added."), "portal.withdrawals_page")


@bp.post("/payout-accounts/<int:account_id>/remove")
def payout_account_remove(account_id: int):
    return _act(lambda: withdrawals.remove_payout_account(db.session, current_agent(), account_id, actor=actor(),
                                                          source_ip=client_ip()),
                t("收款账户已删除。", "Payout account removed."), "portal.withdrawals_page")


@bp.get("/keys")
def keys():
    agent = current_agent()
    return render_template("portal/keys.html", keys=agents.list_api_keys(db.session, agent), scopes=agents.SCOPES)


@bp.post("/keys")
@limiter.limit("10/minute")
def key_issue():
    agent = current_agent()
    try:
        key_id, secret = agents.issue_api_key(db.session, get_vault(), agent, actor=actor(), source_ip=client_ip(),
                                              scopes=request.form.getlist("scope"),
                                              label=request.form.get("label", ""))
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        return redirect(url_for("portal.keys"), code=303)
    # Shown this once, on the answer to the POST: never in a page one can load again.
    return render_template("portal/key_issued.html", key_id=key_id, secret=secret,
                           scopes=request.form.getlist("scope"))


@bp.post("/keys/<key_id>/revoke")
def key_revoke(key_id: str):
    return _act(lambda: agents.revoke_api_key(db.session, key_id, actor=actor(), source_ip=client_ip(),
                                              agent_id=current_agent().id),
                t(f"密钥 {key_id} 已停用。", f"Key {key_id} is revoked."), "portal.keys")


@bp.get("/station")
def station():
    agent = current_agent()
    base = shop_url().rstrip("/")
    return render_template("portal/station.html", agent=agent, hosts=[h for h, _n in sites.hosts(db.session, agent.id)],
                           station_url=f"{base}/s/{agent.username}/", invite_url=f"{base}/?ref={agent.username}",
                           ref_days=get_setting(db.session, "agents.ref_days"))


@bp.post("/station")
def station_save():
    form = request.form
    return _act(lambda: sites.set_site(db.session, current_agent(), title=form.get("title", "")[:200],
                                       notice=form.get("notice", "")[:5000], contact=form.get("contact", "")[:500],
                                       actor=actor(), source_ip=client_ip()),
                t("分站信息已保存。", "Your sub-station is saved."), "portal.station")

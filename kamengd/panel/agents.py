"""Agents and their money in the panel: the agents, their levels, one agent's books, credits,
and the withdrawals finance pays or rejects. Money is `finance.manage` (never operator or
support); the services decide, audit and book everything (kamengd.agents.*)."""
from __future__ import annotations

import secrets

import sqlalchemy as sa
from flask import abort, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _, ngettext

from ..agents import services as agents
from ..agents import levels as agent_levels
from ..agents import sites, withdrawals
from ..agents.models import Agent, AgentLevel, Commission, LevelPrice, PayoutAccount, Withdrawal
from ..catalog.models import Product
from ..errors import KamengdError, NotFound
from ..extensions import db
from ..ledger import services as ledger
from ..ledger.models import LedgerAccount, LedgerEntry, LedgerTransaction
from ..marketing import points as loyalty
from ..money import format_cents
from ..orders.models import Order
from ..transaction import read_only
from .blueprint import bp
from .helpers import flash_errors
from .session import actor, client_ip

LIST_LIMIT = 500
BOOK_LIMIT = 100


@bp.get("/agents")
def agents_list():
    read_only()
    rows = [agents.agent_summary(db.session, a) for a in agents.list_agents(db.session)[:LIST_LIMIT]]
    return render_template("panel/agents_list.html", agents=rows, levels=agents.list_levels(db.session),
                           rules=agent_levels.list_rules(db.session), format_cents=format_cents,
                           level_prices=_level_prices())


def _level_prices() -> list:
    """(level, product, its own price) of every level's own price, by level and product."""
    return db.session.execute(
        sa.select(AgentLevel.name, Product.id, Product.name.label("product"), Product.price_cents,
                  LevelPrice.price_cents.label("own"))
        .join(AgentLevel, AgentLevel.id == LevelPrice.level_id).join(Product, Product.id == LevelPrice.product_id)
        .order_by(AgentLevel.discount_bp.desc(), AgentLevel.name, Product.id).limit(LIST_LIMIT)).all()


@bp.post("/agents/level-prices")
def agent_level_price_save():
    """A level's own price for one product (instead of its discount), or back to the discount."""
    form = request.form
    product = form.get("product_id", "").strip()[:12]
    try:
        agents.set_level_price(db.session, level=form.get("level", "")[:64],
                               product_id=int(product) if product.isdigit() else product,
                               price=None if form.get("clear") else form.get("price", "").strip()[:20],
                               actor=actor(), source_ip=client_ip())
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        return redirect(url_for("panel.agents_list"), code=303)
    flash(_("The level's price is saved."), "success")
    return redirect(url_for("panel.agents_list"), code=303)


@bp.post("/agents/rules")
def agent_rule_save():
    """A level's automatic rule: delivered sales over N days that earn it (the hourly job)."""
    form = request.form
    try:
        if form.get("remove"):
            agent_levels.remove_rule(db.session, level=form.get("level", "")[:64], actor=actor(),
                                     source_ip=client_ip())
        else:
            agent_levels.set_rule(db.session, level=form.get("level", "")[:64],
                                  min_sales=form.get("min_sales", "").strip()[:20], days=form.get("days", "")[:4],
                                  actor=actor(), source_ip=client_ip())
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        return redirect(url_for("panel.agents_list"), code=303)
    flash(_("The level rules are saved."), "success")
    return redirect(url_for("panel.agents_list"), code=303)


@bp.post("/agents/levels")
def agent_level_save():
    try:
        level, created = agents.set_level(db.session, name=request.form.get("name", "")[:100],
                                          discount=request.form.get("discount", "")[:20], actor=actor(),
                                          source_ip=client_ip())
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        return redirect(url_for("panel.agents_list"), code=303)
    flash((_("Level %(name)s created: %(discount)s %% off.", name=level.name,
             discount=agents.format_discount(level.discount_bp)) if created else
           _("Level %(name)s is now %(discount)s %% off.", name=level.name,
             discount=agents.format_discount(level.discount_bp))), "success")
    return redirect(url_for("panel.agents_list"), code=303)


def _agent(agent_id: int) -> Agent:
    agent = db.session.get(Agent, agent_id)
    if agent is None:
        abort(404)
    return agent


@bp.get("/agents/<int:agent_id>")
def agent_detail(agent_id: int):
    read_only()
    agent = _agent(agent_id)
    money = ledger.balances(db.session, agent.id)
    entries = db.session.execute(
        sa.select(LedgerEntry, LedgerTransaction, LedgerAccount.kind)
        .join(LedgerTransaction, LedgerTransaction.id == LedgerEntry.transaction_id)
        .join(LedgerAccount, LedgerAccount.id == LedgerEntry.account_id)
        .where(LedgerAccount.agent_id == agent.id)
        .order_by(LedgerEntry.id.desc()).limit(BOOK_LIMIT)).all()
    earned = db.session.execute(
        sa.select(Commission, Order.order_no).join(Order, Order.id == Commission.order_id)
        .where(Commission.agent_id == agent.id).order_by(Commission.id.desc()).limit(BOOK_LIMIT)).all()
    asked = db.session.execute(
        sa.select(Withdrawal, PayoutAccount).join(PayoutAccount, PayoutAccount.id == Withdrawal.payout_account_id)
        .where(Withdrawal.agent_id == agent.id).order_by(Withdrawal.id.desc()).limit(BOOK_LIMIT)).all()
    return render_template("panel/agent_detail.html", agent=agent, summary=agents.agent_summary(db.session, agent),
                           money=money, entries=entries, earned=earned, asked=asked,
                           keys=agents.list_api_keys(db.session, agent), format_cents=format_cents,
                           mask=withdrawals.mask_account, new_reference=f"panel-{secrets.token_hex(6)}",
                           hosts=[h for h, _name in sites.hosts(db.session, agent.id)],
                           points=loyalty.balance(db.session, agent.id), points_owed=loyalty.owed(db.session, agent.id),
                           whole=str)


@bp.post("/agents")
def agent_create():
    """A new agent under the shop or another agent, with its portal password when given."""
    form = request.form
    password, repeat = form.get("password", "")[:1024], form.get("password_repeat", "")[:1024]
    if password != repeat:
        flash(_("The two passwords differ."), "error")
        return redirect(url_for("panel.agents_list"), code=303)
    try:
        if not form.get("level"):   # no level: a plain member
            made = agents.create_member(db.session, username=form.get("username", "")[:64],
                                        password=password or None, actor=actor(), source_ip=client_ip())
        else:
            made = agents.create_agent(db.session, username=form.get("username", "")[:64],
                                       level=form.get("level", "")[:64],
                                       parent=form.get("parent", "").strip()[:64] or None,
                                       password=password or None, actor=actor(), source_ip=client_ip())
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        return redirect(url_for("panel.agents_list"), code=303)
    flash(_("Agent %(name)s created.", name=made.username), "success")
    return redirect(url_for("panel.agent_detail", agent_id=made.id), code=303)


@bp.post("/agents/<int:agent_id>/hosts")
def agent_host_bind(agent_id: int):
    agent = _agent(agent_id)
    try:
        row = sites.bind_host(db.session, agent, request.form.get("host", "")[:300], actor=actor(),
                              source_ip=client_ip())
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        return redirect(url_for("panel.agent_detail", agent_id=agent_id), code=303)
    flash(_("%(host)s now serves the sub-station of %(name)s.", host=row.host, name=agent.username), "success")
    return redirect(url_for("panel.agent_detail", agent_id=agent_id), code=303)


@bp.post("/agents/<int:agent_id>/hosts/remove")
def agent_host_unbind(agent_id: int):
    _agent(agent_id)
    host = request.form.get("host", "")[:300]
    try:
        if host not in [h for h, _name in sites.hosts(db.session, agent_id)]:
            raise NotFound("host %(host)s is not bound", host=host[:253])   # to this agent
        sites.unbind_host(db.session, host, actor=actor(), source_ip=client_ip())
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        return redirect(url_for("panel.agent_detail", agent_id=agent_id), code=303)
    flash(_("%(host)s is no longer bound.", host=host), "info")
    return redirect(url_for("panel.agent_detail", agent_id=agent_id), code=303)


@bp.post("/agents/<int:agent_id>/credit")
def agent_credit(agent_id: int):
    agent = _agent(agent_id)
    try:
        cents = agents.parse_amount(request.form.get("amount", "")[:40])
        # The form's own reference: the same form sent twice (a double click) books once.
        reference = request.form.get("reference", "")[:64] or None
        booking = agents.credit_balance(db.session, agent, cents, reason=request.form.get("reason", "")[:300],
                                        actor=actor(), reference=reference, source_ip=client_ip())
        # A top-up earns its bonus points (points.topup_bonus), once per credit.
        bonus = loyalty.topup_bonus(db.session, agent_id=agent.id, cents=cents, credit_cause=booking.cause,
                                    actor=actor()) if booking.booked else 0
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        return redirect(url_for("panel.agent_detail", agent_id=agent_id), code=303)
    if not booking.booked:
        flash(_("This credit was booked before; nothing changed."), "info")
    elif cents > 0:
        flash(_("%(amount)s credited to %(name)s.", amount=format_cents(cents), name=agent.username), "success")
        if bonus:
            flash(ngettext("%(num)s bonus point with the top-up.", "%(num)s bonus points with the top-up.", bonus),
                  "success")
    else:
        flash(_("%(amount)s debited from %(name)s.", amount=format_cents(-cents), name=agent.username), "success")
    return redirect(url_for("panel.agent_detail", agent_id=agent_id), code=303)


@bp.post("/agents/<int:agent_id>/points")
def agent_points(agent_id: int):
    agent = _agent(agent_id)
    try:
        points = loyalty.parse_points(request.form.get("points", "")[:20])
        # The form's own reference: the same form sent twice (a double click) books once.
        _holder, after, booked = loyalty.adjust(
            db.session, username=agent.username, points=points, reason=request.form.get("reason", "")[:300],
            reference=request.form.get("reference", "")[:64] or None, actor=actor(), source_ip=client_ip())
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        return redirect(url_for("panel.agent_detail", agent_id=agent_id), code=303)
    if not booked:
        flash(_("These points were booked before; nothing changed."), "info")
    else:
        flash(ngettext("%(num)s point booked for %(name)s: %(after)s now.",
                       "%(num)s points booked for %(name)s: %(after)s now.", abs(points),
                       name=agent.username, after=after), "success")
    return redirect(url_for("panel.agent_detail", agent_id=agent_id), code=303)


@bp.post("/agents/<int:agent_id>/active")
def agent_toggle(agent_id: int):
    agent = _agent(agent_id)
    active = request.form.get("active") == "1"
    try:
        agents.set_agent_active(db.session, agent, active, actor=actor(), source_ip=client_ip())
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        return redirect(url_for("panel.agent_detail", agent_id=agent_id), code=303)
    flash(_("%(name)s is enabled again.", name=agent.username) if active else
          _("%(name)s is disabled: its API keys stop working.", name=agent.username), "success")
    return redirect(url_for("panel.agent_detail", agent_id=agent_id), code=303)


@bp.get("/withdrawals")
def withdrawals_list():
    read_only()
    status = request.args.get("status", "requested")
    if status not in withdrawals.STATUSES + ("all",):
        status = "requested"
    query = (sa.select(Withdrawal, PayoutAccount, Agent.username)
             .join(PayoutAccount, PayoutAccount.id == Withdrawal.payout_account_id)
             .join(Agent, Agent.id == Withdrawal.agent_id).order_by(Withdrawal.id.desc()).limit(LIST_LIMIT))
    if status != "all":
        query = query.where(Withdrawal.status == status)
    return render_template("panel/withdrawals_list.html", rows=db.session.execute(query).all(), status=status,
                           statuses=withdrawals.STATUSES, format_cents=format_cents)


def _review(withdrawal_id: int, work, done: str):
    try:
        work()
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        return redirect(url_for("panel.withdrawals_list"), code=303)
    flash(done, "success")
    return redirect(url_for("panel.withdrawals_list"), code=303)


@bp.post("/withdrawals/<int:withdrawal_id>/pay")
def withdrawal_pay(withdrawal_id: int):
    return _review(withdrawal_id, lambda: withdrawals.pay_withdrawal(
        db.session, withdrawal_id, reference=request.form.get("reference", "")[:200], actor=actor(),
        source_ip=client_ip()), _("Withdrawal %(id)s is marked paid.", id=withdrawal_id))


@bp.post("/withdrawals/<int:withdrawal_id>/reject")
def withdrawal_reject(withdrawal_id: int):
    return _review(withdrawal_id, lambda: withdrawals.reject_withdrawal(
        db.session, withdrawal_id, reason=request.form.get("reason", "")[:300], actor=actor(),
        source_ip=client_ip()), _("Withdrawal %(id)s is rejected; the amount is back on the agent's balance.",
                                  id=withdrawal_id))


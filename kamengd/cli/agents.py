"""`kamengd agent …`, `kamengd balance …` and `kamengd ledger verify`: the 卡盟 network's money."""
from __future__ import annotations

import click

from ..accounts import auth
from ..agents import services as agents
from ..agents import levels as agent_levels
from ..agents import sites
from ..agents import withdrawals
from ..audit.services import cli_actor
from ..context import get_vault
from ..errors import KamengdError
from ..extensions import db
from ..ledger import services as ledger
from ..marketing import points as loyalty
from ..money import format_cents
from .group import cli, emit, json_option, with_app
from .install import read_password_file


@cli.group()
def agent():
    """Agents (代理): accounts that buy at their level's price and resell."""


@agent.command("create")
@click.option("--username", required=True, help="2-32 letters, digits, _ or - (kept in lower case).")
@click.option("--level", required=True, metavar="LEVEL", help="An agent level (`kamengd agent level set`).")
@click.option("--parent", metavar="NAME", help="The agent it sits under (default: the shop).")
@click.option("--password-file", metavar="F", help="Its portal password (without: no portal sign-in yet).")
@json_option
@with_app
def agent_create(username, level, parent, password_file, as_json):
    """Create an agent under the shop or under another agent (audited)."""
    made = agents.create_agent(db.session, username=username, level=level, parent=parent, actor=cli_actor(),
                               password=read_password_file(password_file) if password_file else None)
    summary = agents.agent_summary(db.session, made)
    emit(as_json, summary, f"created agent {made.username} (id {made.id}, level {summary['level']}"
                           + (f", under {summary['parent']})" if summary["parent"] else ")"))


@agent.command("list")
@json_option
@with_app(readonly=True)
def agent_list(as_json):
    """Every agent with its level, parent and balances."""
    rows = [agents.agent_summary(db.session, a) for a in agents.list_agents(db.session)]
    if as_json:
        emit(True, {"agents": rows}, "")
        return
    for r in rows:
        click.echo(f"{r['id']:>5}  {r['username']:<32} {r['level'] or 'member':<12} {r['parent'] or '-':<20} "
                   f"{r['balance']:>12} {'' if r['active'] else 'disabled'}".rstrip())


@agent.command("set-password")
@click.option("--username", required=True)
@click.option("--password-file", required=True, metavar="FILE")
@json_option
@with_app
def agent_set_password(username, password_file, as_json):
    """Set an agent's portal password (a first or a forgotten one); its portal sessions end (audited)."""
    a = agents.get_agent(db.session, username)
    auth.reset_password(db.session, a, read_password_file(password_file), actor=cli_actor(), ip=None)
    emit(as_json, {"id": a.id, "username": a.username},
         f"portal password of {a.username} is set; its portal sessions are ended")


@agent.command("reset-2fa")
@click.option("--username", required=True)
@json_option
@with_app
def agent_reset_2fa(username, as_json):
    """Turn a lost authenticator off and end the agent's portal sessions (audited)."""
    a = agents.get_agent(db.session, username)
    auth.disable_totp(db.session, a, actor=cli_actor(), ip=None)
    auth.end_all_sessions(db.session, a, actor=cli_actor(), ip=None)
    emit(as_json, {"id": a.id, "username": a.username, "totp_enabled": False},
         f"two-factor sign-in of {a.username} is off; its portal sessions are ended")


@agent.command("unlock")
@click.option("--username", required=True)
@json_option
@with_app
def agent_unlock(username, as_json):
    """Lift the portal's sign-in locks on an agent's name, from every address (audited)."""
    a = agents.get_agent(db.session, username)
    removed = auth.unlock(db.session, a.username, actor=cli_actor(), realm=auth.AGENT)
    emit(as_json, {"id": a.id, "username": a.username, "cleared": removed},
         f"sign-in locks of {a.username} lifted" if removed else f"{a.username} was not locked")


@cli.group()
def member():
    """Plain members: portal accounts without a level, that may hold a balance."""


@member.command("create")
@click.option("--username", required=True, help="2-32 letters, digits, _ or - (kept in lower case).")
@click.option("--password-file", metavar="F", help="Its portal password (without: no portal sign-in yet).")
@json_option
@with_app
def member_create(username, password_file, as_json):
    """Create a plain member (audited): it signs in to the portal and may hold a balance; it has no
    level, sub-agents, sub-station or API key until promoted."""
    made = agents.create_member(db.session, username=username, actor=cli_actor(),
                                password=read_password_file(password_file) if password_file else None)
    emit(as_json, agents.agent_summary(db.session, made), f"created member {made.username} (id {made.id})")


@member.command("promote")
@click.option("--username", required=True)
@click.option("--level", required=True, metavar="LEVEL")
@click.option("--parent", metavar="NAME", help="The agent it sits under (default: the shop).")
@json_option
@with_app
def member_promote(username, level, parent, as_json):
    """Make a plain member an agent of LEVEL (its balance and books stay); audited."""
    promoted = agents.promote_member(db.session, agents.get_agent(db.session, username), level=level, parent=parent,
                                     actor=cli_actor())
    summary = agents.agent_summary(db.session, promoted)
    emit(as_json, summary, f"{promoted.username} is now an agent of level {summary['level']}")


@agent.group("host")
def agent_host():
    """Host names served as agents' sub-stations (分站): point the name's DNS at this server."""


@agent_host.command("add")
@click.option("--username", required=True)
@click.option("--host", required=True, help="A domain or subdomain, e.g. daili.example.com.")
@json_option
@with_app
def agent_host_add(username, host, as_json):
    """Serve HOST as the agent's sub-station (a host bound already is refused; audited)."""
    a = agents.get_agent(db.session, username)
    row = sites.bind_host(db.session, a, host, actor=cli_actor())
    emit(as_json, {"host": row.host, "username": a.username}, f"{row.host} serves the sub-station of {a.username}")


@agent_host.command("remove")
@click.option("--host", required=True)
@json_option
@with_app
def agent_host_remove(host, as_json):
    """Stop serving HOST as a sub-station (audited)."""
    row = sites.unbind_host(db.session, host, actor=cli_actor())
    emit(as_json, {"host": row.host, "removed": True}, f"{row.host} is no longer bound")


@agent_host.command("list")
@json_option
@with_app(readonly=True)
def agent_host_list(as_json):
    """Every bound host name and its agent."""
    rows = sites.hosts(db.session)
    if as_json:
        emit(True, {"hosts": [{"host": h, "username": u} for h, u in rows]}, "")
        return
    for host, username in rows:
        click.echo(f"{host:<48} {username}")


@agent.group("level")
def agent_level():
    """Agent levels: the discount off the shop's price their agents pay."""


@agent_level.command("set")
@click.option("--name", required=True, metavar="LEVEL")
@click.option("--discount", required=True, metavar="PERCENT", help="0-100, at most two decimals (12.5).")
@json_option
@with_app
def agent_level_set(name, discount, as_json):
    """Create a level, or change its discount (audited)."""
    level, created = agents.set_level(db.session, name=name, discount=discount, actor=cli_actor())
    said = agents.format_discount(level.discount_bp)
    emit(as_json, {"id": level.id, "name": level.name, "discount": said, "created": created},
         f"{'created' if created else 'set'} level {level.name}: {said} % off")


@agent_level.command("price")
@click.option("--name", required=True, metavar="LEVEL")
@click.option("--product-id", required=True, type=int, metavar="N")
@click.option("--price", metavar="DECIMAL", help="The level's own price for the product (at most the shop's).")
@click.option("--clear", is_flag=True, help="Drop the level's own price: its discount applies again.")
@json_option
@with_app
def agent_level_price(name, product_id, price, clear, as_json):
    """Give a level its own price for one product instead of its discount (audited)."""
    if clear == (price is not None):
        raise KamengdError("give either --price DECIMAL or --clear")
    cents = agents.set_level_price(db.session, level=name, product_id=product_id, price=None if clear else price,
                                   actor=cli_actor())
    emit(as_json, {"level": name, "product_id": product_id, "price": None if cents is None else format_cents(cents)},
         f"level {name} pays " + (f"{format_cents(cents)} for product {product_id}" if cents is not None else
                                  f"its discount for product {product_id} again"))


@agent_level.command("prices")
@click.option("--name", required=True, metavar="LEVEL")
@json_option
@with_app(readonly=True)
def agent_level_prices(name, as_json):
    """The level's own prices, by product."""
    level = agents.get_level(db.session, name)
    rows = [{"product_id": pid, "price": format_cents(cents)}
            for pid, cents in sorted(agents.level_prices(db.session, level.id).items())]
    if as_json:
        emit(True, {"level": level.name, "prices": rows}, "")
        return
    for r in rows:
        click.echo(f"{r['product_id']:>8}  {r['price']:>12}")


@agent_level.command("list")
@json_option
@with_app(readonly=True)
def agent_level_list(as_json):
    """The levels, by discount, with how many agents each has."""
    rows = [{"id": lv.id, "name": lv.name, "discount": agents.format_discount(lv.discount_bp), "agents": n}
            for lv, n in agents.list_levels(db.session)]
    if as_json:
        emit(True, {"levels": rows}, "")
        return
    for r in rows:
        click.echo(f"{r['id']:>4}  {r['name']:<32} {r['discount']:>6} %  {r['agents']} agents")


@agent.command("apikey")
@click.option("--username", required=True)
@click.option("--scope", "scopes", multiple=True, type=click.Choice(agents.SCOPES),
              help="What the key may do (repeat it): read, order, account. Default: all three.")
@click.option("--label", default="", help="A name for the key (where it is used).")
@json_option
@with_app
def agent_apikey(username, scopes, label, as_json):
    """Issue a new API key pair; the secret is printed this once (audited)."""
    key_id, secret = agents.issue_api_key(db.session, get_vault(), agents.get_agent(db.session, username),
                                          actor=cli_actor(), scopes=list(scopes) or None, label=label)
    scope_text = agents.parse_scopes(list(scopes) or None)
    emit(as_json, {"key_id": key_id, "secret": secret, "scopes": scope_text.split(",")},
         f"key id: {key_id}\nsecret: {secret}\nscopes: {scope_text}\n"
         "(the secret is shown this once: store it now)")


@agent.command("apikeys")
@click.option("--username", required=True)
@json_option
@with_app(readonly=True)
def agent_apikeys(username, as_json):
    """An agent's API keys (never their secrets), revoked ones too."""
    keys = agents.list_api_keys(db.session, agents.get_agent(db.session, username))
    rows = [{"key_id": k.key_id, "scopes": k.scopes.split(","), "label": k.label,
             "created_at": k.created_at.isoformat(timespec="seconds") + "Z",
             "revoked_at": k.revoked_at.isoformat(timespec="seconds") + "Z" if k.revoked_at else None}
            for k in keys]
    if as_json:
        emit(True, {"keys": rows}, "")
        return
    for r in rows:
        click.echo(f"{r['key_id']}  {','.join(r['scopes']):<17} created {r['created_at']}"
                   + (f"  revoked {r['revoked_at']}" if r["revoked_at"] else "")
                   + (f"  ({r['label']})" if r["label"] else ""))


@agent.command("revoke-key")
@click.option("--key-id", required=True, metavar="KEY_ID")
@json_option
@with_app
def agent_revoke_key(key_id, as_json):
    """Revoke an API key: its next request is refused (401). Audited."""
    key = agents.revoke_api_key(db.session, key_id, actor=cli_actor())
    emit(as_json, {"key_id": key.key_id, "revoked": True}, f"revoked {key.key_id}")


def _switch(username: str, active: bool, as_json: bool) -> None:
    the_agent = agents.get_agent(db.session, username)
    changed = agents.set_agent_active(db.session, the_agent, active, actor=cli_actor())
    emit(as_json, {"username": the_agent.username, "active": active, "changed": changed},
         f"{the_agent.username} is {'enabled' if active else 'disabled'}" + ("" if changed else " (already)"))


@agent.command("disable")
@click.option("--username", required=True)
@json_option
@with_app
def agent_disable(username, as_json):
    """Disable an agent: its API keys stop working; its balance and orders stay. Audited."""
    _switch(username, False, as_json)


@agent.command("enable")
@click.option("--username", required=True)
@json_option
@with_app
def agent_enable(username, as_json):
    """Enable a disabled agent again. Audited."""
    _switch(username, True, as_json)


@agent.group("rule")
def agent_rule():
    """Automatic levels: delivered sales over a window earn a level (the hourly job applies them)."""


@agent_rule.command("set")
@click.option("--level", required=True, metavar="LEVEL")
@click.option("--min-sales", required=True, metavar="DECIMAL", help="Delivered sales that earn the level.")
@click.option("--days", default="30", show_default=True, metavar="N", help="The window, 1-366 days.")
@json_option
@with_app
def agent_rule_set(level, min_sales, days, as_json):
    """Create or change a level's rule (audited)."""
    rule, created = agent_levels.set_rule(db.session, level=level, min_sales=min_sales, days=days, actor=cli_actor())
    emit(as_json, {"level": level, "min_sales": format_cents(rule.min_sales_cents), "days": rule.days,
                   "created": created},
         f"{'created' if created else 'changed'} the rule of {level}: {format_cents(rule.min_sales_cents)} "
         f"of delivered sales in {rule.days} days")


@agent_rule.command("list")
@json_option
@with_app(readonly=True)
def agent_rule_list(as_json):
    """The rules, best level first."""
    rows = [{"level": level.name, "discount": agents.format_discount(level.discount_bp),
             "min_sales": format_cents(rule.min_sales_cents), "days": rule.days}
            for rule, level in agent_levels.list_rules(db.session)]
    if as_json:
        emit(True, {"rules": rows}, "")
        return
    for r in rows:
        click.echo(f"{r['level']:<20} {r['discount']:>6} %  sales >= {r['min_sales']} in {r['days']} days")


@agent_rule.command("remove")
@click.option("--level", required=True, metavar="LEVEL")
@json_option
@with_app
def agent_rule_remove(level, as_json):
    """Remove a level's rule (agents keep the levels they have). Audited."""
    agent_levels.remove_rule(db.session, level=level, actor=cli_actor())
    emit(as_json, {"level": level, "removed": True}, f"removed the rule of {level}")


@agent.command("set-level")
@click.option("--username", required=True)
@click.option("--level", required=True, metavar="LEVEL")
@click.option("--reason", required=True, help="Why (kept with the change and in the audit log).")
@json_option
@with_app
def agent_set_level(username, level, reason, as_json):
    """Put an agent on a level by hand; it stays there (pinned) whatever the rules say. Audited."""
    the_agent = agents.get_agent(db.session, username)
    changed = agent_levels.assign_level(db.session, the_agent, level, reason=reason, actor=cli_actor())
    emit(as_json, {**agents.agent_summary(db.session, the_agent), "changed": changed},
         f"{the_agent.username} is on level {level}, pinned" + ("" if changed else " (it was already)"))


@agent.command("unpin-level")
@click.option("--username", required=True)
@json_option
@with_app
def agent_unpin_level(username, as_json):
    """Let the level rules move an agent again. Audited."""
    the_agent = agents.get_agent(db.session, username)
    changed = agent_levels.unpin_level(db.session, the_agent, actor=cli_actor())
    emit(as_json, {**agents.agent_summary(db.session, the_agent), "changed": changed},
         f"{the_agent.username}: the level rules may move it again" + ("" if changed else " (it was not pinned)"))


@agent.command("level-history")
@click.option("--username", required=True)
@json_option
@with_app(readonly=True)
def agent_level_history(username, as_json):
    """The agent's level changes, newest first, with their reasons."""
    the_agent = agents.get_agent(db.session, username)
    rows = agent_levels.level_history(db.session, the_agent)
    if as_json:
        emit(True, {"username": the_agent.username, "changes": rows}, "")
        return
    for r in rows:
        click.echo(f"{r['at']}  {r['from']} -> {r['to']}  by {r['by']}: {r['reason']}")


@cli.group()
def balance():
    """Agents' balances (each movement a ledger entry)."""


@balance.command("credit")
@click.option("--username", required=True)
@click.option("--amount", required=True, metavar="DECIMAL", help="12.34 credits, -12.34 debits.")
@click.option("--reason", required=True, help="Why (kept in the ledger and the audit log).")
@click.option("--reference", metavar="REF", help="Names this credit: run again with it, it is not booked twice.")
@json_option
@with_app
def balance_credit(username, amount, reason, reference, as_json):
    """Credit (or, negative, debit) an agent's balance; a debit below zero is refused (audited)."""
    the_agent = agents.get_agent(db.session, username)
    cents = agents.parse_amount(amount)
    booking = agents.credit_balance(db.session, the_agent, cents, reason=reason, reference=reference,
                                    actor=cli_actor())
    # A top-up earns its bonus points (points.topup_bonus), once per credit.
    bonus = loyalty.topup_bonus(db.session, agent_id=the_agent.id, cents=cents, credit_cause=booking.cause,
                                actor=cli_actor()) if booking.booked else 0
    money = ledger.balances(db.session, the_agent.id)
    emit(as_json, {"username": the_agent.username, "amount": format_cents(cents),
                   "balance": format_cents(money["available"]), "currency": ledger.DEFAULT_CURRENCY,
                   "booked": booking.booked, "transaction": booking.transaction_id,
                   **({"points_bonus": bonus} if bonus else {})},
         f"{'credited' if cents > 0 else 'debited'} {format_cents(abs(cents))} "
         f"{'to' if cents > 0 else 'from'} {the_agent.username}: balance {format_cents(money['available'])}"
         + (f"; {bonus} bonus points" if bonus else "")
         + ("" if booking.booked else " (this reference was booked before: nothing changed)"))


@balance.command("show")
@click.option("--username", required=True)
@json_option
@with_app(readonly=True)
def balance_show(username, as_json):
    """An agent's balance, commission still on hold and money held for withdrawals."""
    the_agent = agents.get_agent(db.session, username)
    money = ledger.balances(db.session, the_agent.id)
    emit(as_json, {"username": the_agent.username, "balance": format_cents(money["available"]),
                   "pending": format_cents(money["pending"]), "held": format_cents(money["held"]),
                   "debt": format_cents(-money["debt"]), "currency": ledger.DEFAULT_CURRENCY},
         f"{the_agent.username}: balance {format_cents(money['available'])} {ledger.DEFAULT_CURRENCY}, "
         f"pending {format_cents(money['pending'])}, held {format_cents(money['held'])}"
         + (f", owes {format_cents(-money['debt'])}" if money["debt"] else ""))


@cli.group("ledger")
def ledger_group():
    """The ledger of agents' money."""


@ledger_group.command("verify")
@json_option
@with_app(readonly=True)
def ledger_verify(as_json):
    """Check every cached balance against its entries; non-zero naming each difference."""
    checked, problems = ledger.verify(db.session)
    if problems:
        raise KamengdError(f"the ledger does not add up: {problems[0]}"
                                   + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    emit(as_json, {"ok": True, "accounts": checked, "problems": []},
         f"the ledger adds up: {checked} accounts, every balance the sum of its entries")


@cli.group("withdrawal")
def withdrawal_group():
    """Agents' withdrawals: finance pays or rejects what agents requested."""


def _withdrawal_id(value: str) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > 10:
        raise KamengdError(f"--id: {value[:20]!r} is not a withdrawal id")
    return int(value)


@withdrawal_group.command("list")
@click.option("--status", type=click.Choice(withdrawals.STATUSES), help="Only these (default: all).")
@click.option("--username", help="Only this agent's.")
@json_option
@with_app(readonly=True)
def withdrawal_list(status, username, as_json):
    """Withdrawals, newest first (at most 200)."""
    agent_id = agents.get_agent(db.session, username).id if username else None
    rows = withdrawals.list_withdrawals(db.session, status=status, agent_id=agent_id)
    names = {a.id: a.username for a in agents.list_agents(db.session)}
    views = []
    for row in rows:
        view = withdrawals.withdrawal_view(row, db.session.get(withdrawals.PayoutAccount, row.payout_account_id))
        view["username"] = names.get(row.agent_id)
        views.append(view)
    if as_json:
        emit(True, {"withdrawals": views}, "")
        return
    for v in views:
        click.echo(f"{v['id']:>6}  {v['username']:<24} {v['amount']:>12} fee {v['fee']:>8} {v['status']:<10} "
                   f"{v['to']['kind']} {v['to']['account']} ({v['to']['holder']})  {v['requested_at']}")


@withdrawal_group.command("pay")
@click.option("--id", "withdrawal_id", required=True, metavar="N")
@click.option("--reference", required=True, help="The payment's reference at the bank, Alipay or chain.")
@json_option
@with_app
def withdrawal_pay(withdrawal_id, reference, as_json):
    """Mark a requested withdrawal paid (its amount leaves the agent's held money). Audited."""
    row = withdrawals.pay_withdrawal(db.session, _withdrawal_id(withdrawal_id), reference=reference,
                                     actor=cli_actor())
    emit(as_json, withdrawals.withdrawal_view(row),
         f"withdrawal {row.id} paid: {format_cents(row.amount_cents - row.fee_cents)} "
         f"(fee {format_cents(row.fee_cents)}), reference {row.reference}")


@withdrawal_group.command("reject")
@click.option("--id", "withdrawal_id", required=True, metavar="N")
@click.option("--reason", required=True, help="Why (the agent sees it).")
@json_option
@with_app
def withdrawal_reject(withdrawal_id, reason, as_json):
    """Reject a requested withdrawal: its amount goes back to the agent's balance. Audited."""
    row = withdrawals.reject_withdrawal(db.session, _withdrawal_id(withdrawal_id), reason=reason,
                                        actor=cli_actor())
    emit(as_json, withdrawals.withdrawal_view(row),
         f"withdrawal {row.id} rejected: {format_cents(row.amount_cents)} back to the agent's balance")


@cli.group()
def points():
    """Members' and agents' points (积分; each movement a ledger entry)."""


@points.command("grant")
@click.option("--username", required=True)
@click.option("--points", "amount", required=True, metavar="N", help="500 grants, -200 takes.")
@click.option("--reason", required=True, help="Why (kept in the ledger and the audit log).")
@click.option("--reference", metavar="REF", help="Names this grant: run again with it, it is not booked twice.")
@json_option
@with_app
def points_grant(username, amount, reason, reference, as_json):
    """Grant (or, negative, take) a member's or an agent's points; taking more than it has is refused
    (audited)."""
    holder, after, booked = loyalty.adjust(db.session, username=username, points=amount, reason=reason,
                                           reference=reference, actor=cli_actor())
    given = loyalty.parse_points(amount)
    emit(as_json, {"username": holder.username, "points": given, "balance": after, "booked": booked},
         f"{'granted' if given > 0 else 'took'} {abs(given)} points {'to' if given > 0 else 'from'} "
         f"{holder.username}: {after} points"
         + ("" if booked else " (this reference was booked before: nothing changed)"))


def _iso(value) -> str:
    return value.isoformat(timespec="seconds") + "Z"


@points.command("show")
@click.option("--username", required=True)
@json_option
@with_app(readonly=True)
def points_show(username, as_json):
    """A member's or an agent's points and its latest movements."""
    the_agent = agents.get_agent(db.session, username)
    moves = loyalty.statement(db.session, the_agent.id, limit=20)
    emit(as_json, {"username": the_agent.username, "balance": loyalty.balance(db.session, the_agent.id),
                   "owed": loyalty.owed(db.session, the_agent.id),
                   "movements": [{"at": _iso(m.at), "kind": m.kind, "points": m.points, "balance": m.after,
                                  "memo": m.memo} for m in moves]},
         f"{the_agent.username}: {loyalty.balance(db.session, the_agent.id)} points"
         + "".join(f"\n  {_iso(m.at)}  {m.points:+d}  = {m.after}  {m.kind}  {m.memo}" for m in moves))

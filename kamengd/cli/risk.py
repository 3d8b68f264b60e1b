"""`kamengd risk …`: the risk rules (风控), the orders they hold for review, what they decided."""
from __future__ import annotations

import datetime as dt
import json

import click

from ..audit.services import cli_actor
from ..database import utcnow
from ..extensions import db
from ..money import format_cents
from ..orders import staff as order_staff
from ..risk import engine, rules
from ..risk.models import ACTIONS, RULE_KINDS
from .group import cli, emit, json_option, with_app


@cli.group()
def risk():
    """Risk rules: which orders are refused, held for review or asked for a captcha."""


@risk.group("rule")
def rule():
    """Make, change and list the rules."""


def rule_view(r) -> dict:
    return {"id": r.id, "name": r.name, "kind": r.kind, "action": r.action, "params": json.loads(r.params),
            "active": r.is_active, "sort_order": r.sort_order}


def _params_options(fn):
    for option in reversed((
        click.option("--limit", help="Velocity and failed lookups: how many in --minutes; repeat payment: "
                                     "payments allowed (default 1)."),
        click.option("--minutes", help="Velocity and failed lookups: the window."),
        click.option("--ranges", help="ip_list: addresses or ranges, comma-separated (e.g. 10.0.0.0/8,192.0.2.7)."),
        click.option("--emails", help="email_list: e-mail addresses, comma-separated."),
        click.option("--domains", help="email_list: domains, comma-separated (subdomains match too)."),
        click.option("--factor", help="amount_anomaly: above this many times the product's usual order."),
        click.option("--days", help="amount_anomaly: the usual order over this many days (default 30)."),
        click.option("--min-orders", help="amount_anomaly: judge only with this many paid orders (default 20)."),
        click.option("--sort-order", type=int, help="Rules are asked in this order (lower first)."),
    )):
        fn = option(fn)
    return fn


def _form(options: dict, current: dict | None = None) -> dict:
    form = dict(current or {})
    for name in ("limit", "minutes", "ranges", "emails", "domains", "factor", "days", "min_orders"):
        if options.get(name) is not None:
            form[name] = options[name]
    return form


@rule.command("add")
@click.option("--name", required=True, help="A name staff will see on the orders it matches.")
@click.option("--kind", required=True, type=click.Choice(RULE_KINDS), help="What the rule looks at.")
@click.option("--action", required=True, type=click.Choice(ACTIONS), help="What it asks for when it matches.")
@_params_options
@json_option
@with_app
def rule_add(name, kind, action, as_json, **options):
    """Add a rule (active at once; other servers read it within seconds). Audited."""
    made = rules.create_rule(db.session, name=name, kind=kind, action=action, form=_form(options),
                             sort_order=options["sort_order"] or 0, actor=cli_actor())
    emit(as_json, rule_view(made), f"added risk rule {made.id} ({made.kind} → {made.action})")


@rule.command("edit")
@click.argument("rule_id", type=int)
@click.option("--name")
@click.option("--action", type=click.Choice(ACTIONS))
@click.option("--enable/--disable", "active", default=None, help="Switch the rule on or off.")
@_params_options
@json_option
@with_app
def rule_edit(rule_id, name, action, active, as_json, **options):
    """Change a rule (the options given; the rest stay). Audited."""
    found = rules.get_rule(db.session, rule_id)
    changed = rules.update_rule(db.session, found, name=name if name is not None else found.name,
                                action=action or found.action, form=_form(options, rules.form_of(found)),
                                sort_order=found.sort_order if options["sort_order"] is None else options["sort_order"],
                                is_active=found.is_active if active is None else active, actor=cli_actor())
    emit(as_json, {**rule_view(found), "changed": sorted(changed)},
         f"risk rule {found.id}: " + (", ".join(sorted(changed)) + " changed" if changed else "nothing changed"))


@rule.command("list")
@json_option
@with_app(readonly=True)
def rule_list(as_json):
    """The rules, in the order they are asked."""
    rows = [rule_view(r) for r in rules.list_rules(db.session)]
    if as_json:
        emit(True, {"rules": rows}, "")
        return
    for r in rows:
        click.echo(f"{r['id']:>4} {'on ' if r['active'] else 'off'} {r['sort_order']:>4} {r['kind']:<16} "
                   f"{r['action']:<8} {r['name']}  {json.dumps(r['params'], ensure_ascii=False)}")


@risk.command("queue")
@json_option
@with_app(readonly=True)
def risk_queue(as_json):
    """Orders waiting for a person because of a rule (approve: `kamengd risk approve`; reject:
    `kamengd order refund`)."""
    rows = [{"order_no": o.order_no, "status": o.status, "amount": format_cents(o.amount_cents),
             "currency": o.currency, "email": o.email, "client_ip": o.client_ip, "flag": o.flag_reason,
             "decisions": [{"rule": d.rule_name, "kind": d.kind, "action": d.action, "inputs": json.loads(d.inputs)}
                           for d in decisions]}
            for o, decisions in engine.review_queue(db.session)]
    if as_json:
        emit(True, {"orders": rows}, "")
        return
    for r in rows:
        click.echo(f"{r['order_no']} {r['status']:<9} {r['amount']} {r['currency']}  "
                   + "; ".join(f"{d['rule']} ({d['action']})" for d in r["decisions"]))


@risk.command("approve")
@click.argument("order_no")
@click.option("--reason", required=True, help="Why (kept in the audit log).")
@json_option
@with_app
def risk_approve(order_no, reason, as_json):
    """Let an order held for review go on: it is delivered (or waits for stock as any paid order). Audited."""
    outcome = order_staff.release_held(db.session, order_no=order_no, reason=reason, actor=cli_actor())
    emit(as_json, {"order_no": order_no, "outcome": outcome}, f"order {order_no} approved: {outcome}")


@risk.command("report")
@click.option("--days", type=click.IntRange(1, 366), default=30, show_default=True)
@json_option
@with_app(readonly=True)
def risk_report(days, as_json):
    """What the rules decided lately: per rule, action and outcome."""
    since = utcnow() - dt.timedelta(days=days)
    rows = [{"rule": name, "action": action, "outcome": outcome, "decisions": n}
            for name, action, outcome, n in engine.outcomes(db.session, since)]
    if as_json:
        emit(True, {"days": days, "rules": rows}, "")
        return
    for r in rows:
        click.echo(f"{r['decisions']:>8}  {r['rule']:<30} {r['action']:<8} → {r['outcome']}")

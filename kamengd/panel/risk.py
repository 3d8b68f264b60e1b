"""Risk rules (风控) in the panel: the rules with what they decided lately, add, edit, switch on
or off (kamengd.risk.rules checks every parameter and writes the audit log); the orders they
hold for review, approved here (kamengd.orders.staff.release_held) or refunded from the order's
page (its refund form can give the money back through the channel).

A rule's parameters are the text fields rules.parse_params reads; the form shows each kind's
fields (all of them when adding, with the kinds that use them; panel.js hides the others).
"""
from __future__ import annotations

import datetime as dt
import json

import sqlalchemy as sa
from flask import flash, redirect, render_template, request, url_for
from flask_babel import gettext as _

from ..catalog.models import Product
from ..database import utcnow
from ..errors import Collector, KamengdError
from ..extensions import db
from ..orders import staff as order_staff
from ..payments.services import parse_sort_order
from ..risk import engine, rules
from ..risk.models import ACTIONS, RULE_KINDS, RiskDecision, RiskRule
from ..transaction import read_only
from .blueprint import bp
from .helpers import flash_errors, money
from .session import actor, client_ip

# The parameter fields each kind reads (rules.parse_params), in the form's order.
PARAMS_OF = {"ip_velocity": ("limit", "minutes"), "email_velocity": ("limit", "minutes"),
             "device_velocity": ("limit", "minutes"), "failed_lookups": ("limit", "minutes"),
             "repeat_payment": ("limit",), "ip_list": ("ranges",), "email_list": ("emails", "domains"),
             "amount_anomaly": ("factor", "days", "min_orders")}
PARAMS = ("limit", "minutes", "ranges", "emails", "domains", "factor", "days", "min_orders")
MAX_FIELD = 100_000        # a list of 2,000 addresses fits; the service names the real limits
MAX_REASON = order_staff.MAX_REASON + 1
NEW_RULE = {"kind": "ip_velocity", "action": "review", "sort_order": "0", "days": "30", "min_orders": "20"}
REPORT_DAYS = (1, 7, 30)
SHOWN_ITEMS = 5            # a list rule's first entries on the list page
QUEUE_SHOWN = 200          # the orders waiting longest
assert set(PARAMS_OF) == set(RULE_KINDS)


def kind_names() -> dict[str, str]:
    return {"ip_velocity": _("Orders from one address"), "email_velocity": _("Orders from one e-mail address"),
            "device_velocity": _("Orders from one browser"), "ip_list": _("Listed addresses"),
            "email_list": _("Listed e-mail addresses and domains"), "amount_anomaly": _("Amount far above the usual"),
            "repeat_payment": _("An order paid more than once"),
            "failed_lookups": _("Order lookups that found nothing")}


def action_names() -> dict[str, str]:
    return {"allow": _("Allow (no later rule is asked)"), "captcha": _("Ask for a captcha"),
            "review": _("Hold for review"), "refuse": _("Refuse")}


@bp.app_template_global()
def risk_kind_name(kind: str) -> str:
    return kind_names().get(kind, kind)


@bp.app_template_global()
def risk_action_name(action: str) -> str:
    return action_names().get(action, action)


@bp.app_template_global()
def risk_outcome_name(outcome: str) -> str:
    """What became of the attempt: an action taken, or "passed" (a captcha solved)."""
    return {"allow": _("Allowed"), "captcha": _("Asked for a captcha"), "passed": _("Captcha solved"),
            "review": _("Held for review"), "refuse": _("Refused")}.get(outcome, outcome)


def _input_labels() -> dict[str, str]:
    return {"ip": _("Address"), "range": _("Listed range"), "email_domain": _("E-mail domain"),
            "listed": _("Listed as"), "device": _("Browser (device cookie)"), "orders": _("Orders counted"),
            "failed": _("Lookups that found nothing"), "minutes": _("Minutes"), "limit": _("Limit"),
            "amount_cents": _("Amount"), "usual_cents": _("Usual amount"), "factor": _("Factor"),
            "currency": _("Currency"), "order_no": _("Order no."), "payments": _("Payments")}


@bp.app_template_global()
def risk_inputs(decision: RiskDecision) -> list[tuple[str, str]]:
    """What the rule saw, as (label, value) for a page (the template escapes both)."""
    try:
        seen = json.loads(decision.inputs)
    except ValueError:
        seen = None
    if not isinstance(seen, dict):
        return [(_("Recorded"), str(decision.inputs))]
    labels = _input_labels()

    def shown(name, value) -> str:
        if name.endswith("_cents") and isinstance(value, int):
            return money(value)
        if name == "listed" and value == "email":
            return _("the e-mail address")
        if isinstance(value, (list, dict)):
            return json.dumps(value, ensure_ascii=False)
        return str(value)
    return [(labels.get(name, name), shown(name, value)) for name, value in seen.items()]


def _first(items: list[str]) -> str:
    if len(items) <= SHOWN_ITEMS:
        return ", ".join(items)
    return _("%(items)s and %(n)s more", items=", ".join(items[:SHOWN_ITEMS]), n=len(items) - SHOWN_ITEMS)


@bp.app_template_global()
def risk_rule_terms(rule: RiskRule) -> str:
    """A rule's parameters in words."""
    p = json.loads(rule.params)
    if rule.kind in ("ip_velocity", "email_velocity", "device_velocity"):
        one = {"ip_velocity": _("one address"), "email_velocity": _("one e-mail address"),
               "device_velocity": _("one browser")}[rule.kind]
        return _("After %(limit)s orders from %(one)s in %(minutes)s minutes, the next ones", limit=p["limit"],
                 one=one, minutes=p["minutes"])
    if rule.kind == "failed_lookups":
        return _("After %(limit)s lookups that found nothing from one address in %(minutes)s minutes, the next ones",
                 limit=p["limit"], minutes=p["minutes"])
    if rule.kind == "repeat_payment":
        return _("An order paid more than %(limit)s times", limit=p["limit"])
    if rule.kind == "ip_list":
        return _("Addresses: %(items)s", items=_first(p["ranges"]))
    if rule.kind == "email_list":
        parts = ([_("E-mail addresses: %(items)s", items=_first(p["emails"]))] if p["emails"] else []) + \
                ([_("Domains (and their subdomains): %(items)s", items=_first(p["domains"]))] if p["domains"] else [])
        return "; ".join(parts)
    if rule.kind == "amount_anomaly":
        return _("Above %(factor)s × the product's usual paid order over %(days)s days (once it has %(least)s paid "
                 "orders)", factor=p["factor"], days=p["days"], least=p["min_orders"])
    return rule.params


def _form() -> dict[str, str]:
    """The fields as typed (kept when the form comes back with errors); an unticked box is "0"."""
    form = {name: request.form.get(name, "")[:MAX_FIELD] for name in ("name", "kind", "action", "sort_order") + PARAMS}
    form["is_active"] = "1" if request.form.get("is_active") == "1" else "0"
    return form


def _sort_order(form: dict[str, str], kind: str) -> int:
    """The sort order typed; a mistake in it is said with the parameters' own (nothing is saved)."""
    found = Collector()
    with found:
        sort_order = parse_sort_order(form["sort_order"])
    if found.errors:
        with found:
            rules.parse_params(kind, form)
        found.check()
    return sort_order


def _rule(rule_id: int) -> RiskRule:
    return rules.get_rule(db.session, rule_id if rule_id < 2**31 else 0)


def _render_form(rule: RiskRule | None, values: dict[str, str], status: int = 200):
    users_of = {name: [kind for kind in RULE_KINDS if name in PARAMS_OF[kind]] for name in PARAMS}
    names = kind_names()
    return render_template("panel/risk_form.html", rule=rule, values=values, kinds=RULE_KINDS, actions=ACTIONS,
                           params_of=PARAMS_OF, users_of=users_of, max_name=rules.MAX_NAME,
                           used_by={name: ", ".join(names[kind] for kind in kinds) for name, kinds in users_of.items()}
                           ), status


def _refused(rule_id: int | None, form: dict[str, str], exc: KamengdError):
    db.session.rollback()
    flash_errors(exc)
    read_only()
    return _render_form(_rule(rule_id) if rule_id is not None else None, form, exc.http_status)


@bp.get("/risk/rules")
def risk_rules():
    raw = request.args.get("days", "7")
    days = int(raw) if raw in {str(n) for n in REPORT_DAYS} else 7
    report = engine.outcomes(db.session, utcnow() - dt.timedelta(days=days))
    return render_template("panel/risk_rules.html", rules=rules.list_rules(db.session), report=report, days=days,
                           report_days=REPORT_DAYS)


@bp.route("/risk/rules/new", methods=["GET", "POST"])
def risk_rule_new():
    if request.method == "GET":
        return _render_form(None, NEW_RULE)
    form = _form()
    try:
        made = rules.create_rule(db.session, name=form["name"], kind=form["kind"], action=form["action"], form=form,
                                 sort_order=_sort_order(form, form["kind"]), actor=actor(), source_ip=client_ip())
    except KamengdError as exc:
        return _refused(None, form, exc)
    flash(_("Risk rule %(name)s added and on: every server asks it within seconds.", name=made.name), "success")
    return redirect(url_for("panel.risk_rules"), code=303)


@bp.route("/risk/rules/<int:rule_id>", methods=["GET", "POST"])
def risk_rule_edit(rule_id: int):
    rule = _rule(rule_id)
    if request.method == "GET":
        return _render_form(rule, {**rules.form_of(rule), "name": rule.name, "kind": rule.kind, "action": rule.action,
                                   "sort_order": str(rule.sort_order), "is_active": "1" if rule.is_active else "0"})
    form = _form()
    try:
        changed = rules.update_rule(db.session, rule, name=form["name"], action=form["action"], form=form,
                                    sort_order=_sort_order(form, rule.kind), is_active=form["is_active"] == "1",
                                    actor=actor(), source_ip=client_ip())
    except KamengdError as exc:
        return _refused(rule_id, form, exc)
    flash(_("Risk rule %(name)s saved.", name=rule.name) if changed else _("Nothing changed."),
          "success" if changed else "info")
    return redirect(url_for("panel.risk_rules"), code=303)


@bp.post("/risk/rules/<int:rule_id>/toggle")
def risk_rule_toggle(rule_id: int):
    rule = _rule(rule_id)
    wanted = {"1": True, "0": False}.get(request.form.get("active", ""))
    if wanted is None:
        flash(_("Choose whether to switch the rule on or off."), "error")
        return redirect(url_for("panel.risk_rules"), code=303)
    try:
        changed = rules.update_rule(db.session, rule, name=rule.name, action=rule.action, form=rules.form_of(rule),
                                    sort_order=rule.sort_order, is_active=wanted, actor=actor(), source_ip=client_ip())
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
    else:
        if not changed:
            flash(_("Risk rule %(name)s was already in that state.", name=rule.name), "info")
        else:
            flash(_("Risk rule %(name)s is on: every server asks it within seconds.", name=rule.name) if wanted else
                  _("Risk rule %(name)s is off: new orders are not asked; the orders it held stay in the review "
                    "queue.", name=rule.name), "success")
    return redirect(url_for("panel.risk_rules"), code=303)


def _queue_page(status: int = 200, typed: dict[str, str] | None = None):
    queue = engine.review_queue(db.session, limit=QUEUE_SHOWN)
    ids = {order.product_id for order, _decisions in queue}
    products = dict(db.session.execute(sa.select(Product.id, Product.name).where(Product.id.in_(ids))).all()) \
        if ids else {}
    return render_template("panel/risk_queue.html", queue=queue, products=products, typed=typed or {},
                           full=len(queue) >= QUEUE_SHOWN, shown=QUEUE_SHOWN), status


@bp.get("/risk/queue")
def risk_queue():
    return _queue_page()


def _approved(order_no: str, outcome: str) -> str:
    return {order_staff.RELEASED_DELIVERED: _("Order %(no)s approved and delivered.", no=order_no),
            order_staff.RELEASED_WAITING: _("Order %(no)s approved; it waits for stock and is delivered as soon as "
                                            "keys come in.", no=order_no),
            order_staff.RELEASED_MANUAL: _("Order %(no)s approved; it now waits for manual delivery.", no=order_no)
            }[outcome]


@bp.post("/risk/queue/<order_no>/approve")
def risk_approve(order_no):
    reason = request.form.get("reason", "")[:MAX_REASON]
    try:
        outcome = order_staff.release_held(db.session, order_no=order_no, reason=reason, actor=actor(),
                                           source_ip=client_ip())
    except KamengdError as exc:
        db.session.rollback()
        flash_errors(exc)
        read_only()
        return _queue_page(exc.http_status, {order_no: reason})
    flash(_approved(order_no, outcome), "success")
    return redirect(url_for("panel.risk_queue"), code=303)

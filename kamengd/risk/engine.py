"""Evaluating the risk rules, and recording what they decided.

Checkout asks `judge_order` about an order it is about to write, outside any write lock:
the rules are kept per process for a few seconds (a staff edit takes effect within
RULES_TTL), a product's usual amount is kept per process for AVERAGE_TTL. The velocity rules
are counted by the order's INSERT itself (`below_limits`: the orders table by its (address |
e-mail | device, created_at) indexes, each count stopping at the rule's limit): it writes the
order only while every one is below its limit, so the common order reads nothing here, and a
burst of orders from one address cannot all pass one count (on SQLite, where writes queue;
MariaDB's INSERT sees committed orders). When the INSERT writes nothing, checkout asks again
with the counts read (`judge_order(uncounted=False)`), which decides and records as before.
With no active rule of a stage the cost is one dict lookup.

The verdict is the strongest action of the rules that match (refuse > review > captcha),
unless an `allow` rule matches first in the rules' order: then the attempt is allowed and
no later rule is asked. Every match is a RiskDecision row: with the order, in its own
transaction (`record_matches`); without one (a refusal, a captcha not solved), in a short
transaction of its own (`record_refused`).
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import json
import threading
import time
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..database import database_key, utcnow, write_apart
from ..orders.models import Order
from ..errors import CaptchaRequired, RateLimited
from . import captcha as captchas
from .models import ACTIONS, LOOKUP_KINDS, ORDER_KINDS, PAYMENT_KINDS, LookupFailure, RiskDecision, RiskRule
from .rules import cache as _cache, load_params

RULES_TTL = 5.0          # seconds a process keeps the rules it read
AVERAGE_TTL = 300.0      # seconds it keeps a product's usual order amount
PAID = ("paid", "delivered")

_o, _d = Order.__table__, RiskDecision.__table__


@dataclass(frozen=True)
class Attempt:
    """What the rules see of an order about to be placed."""
    product_id: int
    quantity: int
    amount_cents: int
    currency: str
    email: str
    client_ip: str | None
    device_tag: str | None


@dataclass(frozen=True)
class Match:
    rule_id: int
    name: str
    kind: str
    action: str
    inputs: dict


@dataclass(frozen=True)
class Uncounted:
    """Velocity rules a verdict was given without: the order's INSERT counts them (in the
    write lock, where a burst of orders cannot all pass one count) and writes the order only
    while each is below its limit; when it writes nothing, the rules are asked again with the
    counts read (`judge_order`)."""
    key: tuple
    params: dict


@dataclass
class Verdict:
    action: str = "allow"            # what happens: allow, captcha, review or refuse
    matches: list[Match] = field(default_factory=list)
    passed: bool = False             # the captcha asked for was solved
    uncounted: Uncounted | None = None   # holds only while these velocity rules stay below their limits

    @property
    def outcome(self) -> str:
        """What is recorded as done: the action, or "passed" for a captcha solved."""
        return "passed" if self.passed else self.action

    @outcome.setter
    def outcome(self, value: str) -> None:
        self.passed = value == "passed"

    @property
    def deciding(self) -> Match | None:
        """The rule whose action was taken."""
        return next((m for m in self.matches if m.action == self.action), None)


@dataclass(frozen=True)
class _Rule:
    id: int
    name: str
    kind: str
    action: str
    params: dict


_averages: dict[tuple[int, int], tuple[float, int | None]] = {}
_lock = threading.Lock()


STAGES = {"order": ORDER_KINDS, "payment": PAYMENT_KINDS, "lookup": LOOKUP_KINDS}


def _rules(session: Session, stage: str) -> list[_Rule]:
    """The active rules of a stage, in their order: every stage's read at once (one query in
    RULES_TTL for all of them), kept per process."""
    found = _kept(session, stage)
    if found is not None:
        return found
    db = database_key(session)
    rows = session.execute(sa.select(RiskRule.id, RiskRule.name, RiskRule.kind, RiskRule.action, RiskRule.params)
                           .where(RiskRule.is_active.is_(True))
                           .order_by(RiskRule.sort_order, RiskRule.id)).all()
    read_at = time.monotonic()
    by_stage = {name: [_Rule(r.id, r.name, r.kind, r.action, load_params(r.kind, r.params))
                       for r in rows if r.kind in kinds] for name, kinds in STAGES.items()}
    with _lock:
        for name, rules in by_stage.items():
            _cache[(db, name)] = (read_at, rules)
    return by_stage[stage]


def _kept(session: Session, stage: str) -> list[_Rule] | None:
    """The stage's rules as this process read them lately; None when it must read them."""
    found = _cache.get((database_key(session), stage))
    return found[1] if found is not None and time.monotonic() - found[0] < RULES_TTL else None


def none_known(session: Session, stage: str) -> bool:
    """This process read the stage's rules lately and there were none: nothing to ask, not
    even the database (the purchase path's statements stay as they were without rules)."""
    return _kept(session, stage) == []


def _usual_amount(session: Session, product_id: int, days: int, least: int, now: dt.datetime) -> int | None:
    """The product's average paid order over `days` (None with fewer than `least` orders)."""
    key = (database_key(session), product_id, days, least)
    found = _averages.get(key)
    if found is not None and time.monotonic() - found[0] < AVERAGE_TTL:
        return found[1]
    since = now - dt.timedelta(days=days)
    _reading(session)
    inner = (sa.select(_o.c.amount_cents).where(_o.c.status.in_(PAID), _o.c.product_id == product_id,
                                                 _o.c.paid_at >= since)
             .order_by(_o.c.paid_at.desc()).limit(1000).subquery())
    n, total = session.execute(sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(inner.c.amount_cents), 0))
                               .select_from(inner)).one()
    usual = int(total) // n if n >= least and n else None
    with _lock:
        if len(_averages) > 10_000:
            _averages.clear()
        _averages[key] = (time.monotonic(), usual)
    return usual


def _domain(email: str) -> str:
    return email.strip().rsplit("@", 1)[-1].casefold()


def _velocity_of(rule: _Rule, attempt: Attempt):
    """(the orders' column, the attempt's value) a velocity rule counts; None when the attempt
    has no such value (an API order has no device cookie)."""
    if rule.kind == "ip_velocity" and attempt.client_ip:
        return _o.c.client_ip, attempt.client_ip
    if rule.kind == "email_velocity":
        return _o.c.email_folded, attempt.email.strip().casefold()
    if rule.kind == "device_velocity" and attempt.device_tag:
        return _o.c.device_tag, attempt.device_tag
    return None


_COUNTED = {"ip_velocity": _o.c.client_ip, "email_velocity": _o.c.email_folded, "device_velocity": _o.c.device_tag}
_statements: dict[tuple, object] = {}


def _count(rule: _Rule):
    """The orders a velocity rule counts, up to its limit (enough to decide); its value and the
    start of its window are bound per order."""
    inner = (sa.select(sa.literal(1)).where(_COUNTED[rule.kind] == sa.bindparam(f"v{rule.id}"),
                                            _o.c.created_at >= sa.bindparam(f"s{rule.id}"))
             .limit(rule.params["limit"]).subquery())
    return sa.select(sa.func.count()).select_from(inner).scalar_subquery()


def _key(rules: tuple[_Rule, ...]) -> tuple:
    return tuple((r.id, r.kind, r.params["limit"]) for r in rules)


def _kept_statement(key: tuple, build):
    """A statement built once per set of velocity rules: building one is dearer than running it."""
    found = _statements.get(key)
    if found is None:
        found = build()
        if len(_statements) > 100:
            _statements.clear()
        _statements[key] = found
    return found


def _velocity_statement(rules: tuple[_Rule, ...]) -> sa.Select:
    """One SELECT of every velocity rule's count."""
    return _kept_statement(("select",) + _key(rules),
                           lambda: sa.select(*(_count(r).label(f"r{r.id}") for r in rules)))


def below_limits(uncounted: Uncounted):
    """The condition, for the order's INSERT, that every uncounted rule is below its limit."""
    rules = uncounted.key
    return _kept_statement(("below",) + rules, lambda: sa.and_(*(
        _count(_Rule(rule_id, "", kind, "", {"limit": limit})) < limit for rule_id, kind, limit in rules)))


def _counted(rules: list[_Rule], attempt: Attempt, now: dt.datetime) -> tuple[tuple[_Rule, ...], dict]:
    """The velocity rules that count this attempt (it has their value: an API order has no
    device cookie), with their values and windows as bound parameters."""
    counting, params = [], {}
    for r in rules:
        if r.kind not in _COUNTED:
            continue
        counted = _velocity_of(r, attempt)
        if counted is not None:
            counting.append(r)
            params[f"v{r.id}"] = counted[1]
            params[f"s{r.id}"] = now - dt.timedelta(minutes=r.params["minutes"])
    return tuple(counting), params


def _velocities(session: Session, rules: list[_Rule], attempt: Attempt, now: dt.datetime) -> dict[int, int]:
    """Every velocity rule's count, by rule id, in one statement."""
    counting, params = _counted(rules, attempt, now)
    if not counting:
        return {}
    _reading(session)
    row = session.execute(_velocity_statement(counting), params).one()
    return {r.id: row._mapping[f"r{r.id}"] for r in counting}


def _reading(session: Session) -> None:
    """A read outside any transaction starts one that takes no write lock (SQLite)."""
    if not session.in_transaction():
        session.connection(execution_options={"kamengd_readonly": True})


def _match(session: Session, rule: _Rule, attempt: Attempt, now: dt.datetime, counts: dict[int, int]) -> dict | None:
    """What the rule saw when it matches the attempt; None when it does not."""
    p = rule.params
    if rule.id in counts:
        n = counts[rule.id]
        if n < p["limit"]:
            return None
        seen = {"orders": n, "minutes": p["minutes"], "limit": p["limit"]}
        if rule.kind == "ip_velocity":
            return {"ip": attempt.client_ip, **seen}
        if rule.kind == "email_velocity":
            return {"email_domain": _domain(attempt.email), **seen}
        return {"device": attempt.device_tag[:8], **seen}
    if rule.kind == "ip_list" and attempt.client_ip:
        try:
            ip = ipaddress.ip_address(attempt.client_ip)
        except ValueError:
            return None
        for network in p["networks"]:
            if ip.version == network.version and ip in network:
                return {"ip": attempt.client_ip, "range": str(network)}
    elif rule.kind == "email_list":
        email, domain = attempt.email.strip().casefold(), _domain(attempt.email)
        if email in p["emails"]:
            return {"email_domain": domain, "listed": "email"}
        for listed in p["domains"]:
            if domain == listed or domain.endswith("." + listed):
                return {"email_domain": domain, "listed": listed}
    elif rule.kind == "amount_anomaly":
        usual = _usual_amount(session, attempt.product_id, p["days"], p["min_orders"], now)
        # amount > factor × usual, in integers: factor is kept in hundredths.
        if usual is not None and attempt.amount_cents * 100 > p["factor_pct"] * usual:
            return {"amount_cents": attempt.amount_cents, "usual_cents": usual, "factor": p["factor"],
                    "currency": attempt.currency}
    return None


def _verdict(matches: list[Match]) -> Verdict:
    if not matches:
        return Verdict()
    strongest = max(matches, key=lambda m: ACTIONS.index(m.action)).action
    return Verdict(strongest, matches)


def judge_order(session: Session, attempt: Attempt, now: dt.datetime | None = None, *,
                uncounted: bool = False) -> Verdict:
    """The rules' verdict on an order about to be placed (reads only). `uncounted`: the
    velocity rules are not counted here but left to the order's INSERT (`Verdict.uncounted`),
    unless the verdict is a refusal or a captcha (then they are counted: the decision is
    recorded with every rule that matched)."""
    rules = _kept(session, "order")
    if rules is None:   # (read, in a read that takes no write lock)
        _reading(session)
        rules = _rules(session, "order")
    if not rules:
        return Verdict()
    now = now or utcnow()
    if uncounted:
        later, params = _counted(rules, attempt, now)
        counts = {}
    else:
        later, params = (), {}
        counts = _velocities(session, rules, attempt, now)
    matches = []
    verdict = None
    for rule in rules:
        seen = _match(session, rule, attempt, now, counts)
        if seen is None:
            continue
        match = Match(rule.id, rule.name, rule.kind, rule.action, seen)
        if rule.action == "allow":
            if not matches:   # trusted, before any other rule spoke: no later rule is asked
                verdict = Verdict("allow", [match])
                # (the velocity rules before it still speak first, if they match)
                later = tuple(r for r in later if rules.index(r) < rules.index(rule))
                break
            continue          # (an earlier rule matched: its word stands)
        matches.append(match)
    verdict = verdict or _verdict(matches)
    if later:
        if verdict.action in ("refuse", "captcha"):
            return judge_order(session, attempt, now)
        verdict.uncounted = Uncounted(_key(later), {k: v for r in later for k, v in params.items()
                                                     if k in (f"v{r.id}", f"s{r.id}")})
    return verdict


def judge_repeat_payment(session: Session, *, order_no: str, payments: int) -> Verdict:
    """A payment for an order that has one already (the buyer paid twice)."""
    matches = [Match(r.id, r.name, r.kind, r.action, {"order_no": order_no, "payments": payments})
               for r in _rules(session, "payment") if r.kind == "repeat_payment" and payments > r.params["limit"]]
    return _verdict(matches)


_f = LookupFailure.__table__
# An address's failed lookups lately, counted up to the rule's limit (enough to decide).
_FAILED = sa.select(sa.func.count()).select_from(
    sa.select(sa.literal(1)).where(_f.c.client_ip == sa.bindparam("ip"), _f.c.created_at >= sa.bindparam("since"))
    .limit(sa.bindparam("limit")).subquery())


def guard_lookup(session: Session, client_ip: str | None, captcha=None, now: dt.datetime | None = None) -> None:
    """Before a buyer's lookup: raise RateLimited, or CaptchaRequired (with a challenge), when
    this address failed too many lookups lately and a rule says so."""
    if none_known(session, "lookup") or not client_ip:
        return
    now = now or utcnow()
    matches = []
    for rule in _rules(session, "lookup"):
        n = session.execute(_FAILED, {"ip": client_ip, "limit": rule.params["limit"],
                                      "since": now - dt.timedelta(minutes=rule.params["minutes"])}).scalar_one()
        if n >= rule.params["limit"]:
            matches.append(Match(rule.id, rule.name, rule.kind, rule.action,
                                 {"ip": client_ip, "failed": n, "minutes": rule.params["minutes"]}))
    verdict = _verdict(matches)
    if verdict.action == "refuse":
        raise RateLimited("too many lookups that found nothing from this address: try again later")
    if verdict.action == "captcha" and not captchas.solved(session, captcha):
        raise CaptchaRequired("captcha: solve the captcha to look orders up", challenge=captchas.challenge())


def lookup_failed(session: Session, client_ip: str | None, now: dt.datetime | None = None) -> None:
    """A lookup found nothing: counted for the failed_lookups rules (only while one is active)."""
    if client_ip and not none_known(session, "lookup") and _rules(session, "lookup"):
        write_apart(session, _f.insert(), {"client_ip": client_ip[:45], "created_at": now or utcnow()})


def forget_lookup_failures(session: Session, now: dt.datetime | None = None) -> int:
    """Failures older than a day count for no rule (a job)."""
    return session.execute(_f.delete().where(_f.c.created_at < (now or utcnow()) - dt.timedelta(days=1))).rowcount


def _rows(verdict: Verdict, *, stage: str, order_id: int | None, outcome: str, client_ip: str | None,
          product_id: int | None, now: dt.datetime) -> list[dict]:
    return [{"order_id": order_id, "stage": stage, "rule_id": m.rule_id, "rule_name": m.name, "kind": m.kind,
             "action": m.action, "inputs": json.dumps(m.inputs, ensure_ascii=False, sort_keys=True),
             "outcome": outcome, "client_ip": client_ip, "product_id": product_id, "created_at": now}
            for m in verdict.matches]


def record_matches(session: Session, verdict: Verdict, *, stage: str, order_id: int | None, outcome: str,
                   client_ip: str | None = None, product_id: int | None = None,
                   now: dt.datetime | None = None) -> None:
    """The verdict's matches, in the caller's transaction (the order's)."""
    if verdict.matches:
        session.connection().execute(_d.insert(), _rows(verdict, stage=stage, order_id=order_id, outcome=outcome,
                                                        client_ip=client_ip, product_id=product_id,
                                                        now=now or utcnow()))


def record_refused(session: Session, verdict: Verdict, *, outcome: str, client_ip: str | None,
                   product_id: int | None, now: dt.datetime | None = None) -> None:
    """The matches of an attempt that wrote no order, in a short transaction of their own (the
    caller has none open: what it read is rolled back)."""
    if not verdict.matches:
        return
    write_apart(session, _d.insert(), _rows(verdict, stage="order", order_id=None, outcome=outcome,
                                            client_ip=client_ip, product_id=product_id, now=now or utcnow()))


def review_rule(session: Session, order_id: int) -> str:
    """The name of the rule that asked for the order's review (for its flag)."""
    return session.scalar(sa.select(_d.c.rule_name).where(_d.c.order_id == order_id, _d.c.action == "review")
                          .order_by(_d.c.id).limit(1)) or "?"


def decisions_of(session: Session, order_id: int) -> list[RiskDecision]:
    """Every decision the rules made about one order, oldest first (shown with the order)."""
    return list(session.scalars(sa.select(RiskDecision).where(RiskDecision.order_id == order_id)
                                .order_by(RiskDecision.id)))


def _in_review():
    held = sa.and_(Order.status == "held", Order.risk_review.is_(True))
    later = sa.and_(Order.flagged_at.is_not(None),
                    Order.id.in_(sa.select(_d.c.order_id).where(_d.c.stage == "payment", _d.c.order_id.is_not(None))))
    return sa.or_(held, later)


def review_count(session: Session) -> int:
    """How many orders the review queue holds (the panel's dashboard)."""
    return session.scalar(sa.select(sa.func.count()).select_from(Order).where(_in_review()))


def review_queue(session: Session, limit: int = 200) -> list[tuple[Order, list[RiskDecision]]]:
    """Orders a person must look at because of a rule: paid orders held for review (approve:
    `order release` delivers; reject: `order refund`), and orders a payment-stage rule matched
    that are still flagged. Oldest first."""
    orders = list(session.scalars(sa.select(Order).where(_in_review())
                                  .order_by(Order.paid_at, Order.id).limit(limit)))
    found: dict[int, list[RiskDecision]] = {o.id: [] for o in orders}
    if found:
        for d in session.scalars(sa.select(RiskDecision).where(RiskDecision.order_id.in_(list(found)))
                                 .order_by(RiskDecision.id)):
            found[d.order_id].append(d)
    return [(o, found[o.id]) for o in orders]


def outcomes(session: Session, since: dt.datetime) -> list[tuple[str, str, str, int]]:
    """The risk report: (rule, action, outcome, decisions) since then, most first."""
    rows = session.execute(sa.select(_d.c.rule_name, _d.c.action, _d.c.outcome, sa.func.count().label("n"))
                           .where(_d.c.created_at >= since)
                           .group_by(_d.c.rule_name, _d.c.action, _d.c.outcome)
                           .order_by(sa.func.count().desc())).all()
    return [(r.rule_name, r.action, r.outcome, r.n) for r in rows]

"""Risk rules as staff make them: each kind's parameters checked, every change audited.

Parameters arrive as text (the panel's fields, the CLI's options) and are stored as JSON:

- ip_velocity / email_velocity / device_velocity: `limit` orders in `minutes` from one
  address / e-mail / device cookie; the order that would pass the limit matches.
- ip_list: `ranges`, addresses or CIDR ranges (IPv4 and IPv6).
- email_list: `emails` and `domains` (a domain matches its subdomains too).
- amount_anomaly: an order above `factor` × the product's average paid order over `days`
  days, once it has `min_orders` paid orders to judge by.
- repeat_payment (at payment): an order paid more than `limit` times (default 1).
- failed_lookups (at a buyer's lookup): `limit` lookups that found nothing in `minutes`
  from one address; its action is a captcha or a refusal of the next lookups.
"""
from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..audit.services import record
from ..errors import Collector, InvalidRequest, NotFound
from ..validation import is_email_address
from .models import ACTIONS, RULE_KINDS, RiskRule

MAX_NAME = 100
MAX_LIST = 2000
VELOCITY = ("ip_velocity", "email_velocity", "device_velocity", "failed_lookups")
_DOMAIN = re.compile(r"(?=.{1,253}\Z)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")


def _whole(raw, field: str, low: int, high: int) -> int:
    text = str(raw if raw is not None else "").strip()
    if not re.fullmatch(r"[0-9]{1,9}", text) or not low <= int(text) <= high:
        raise InvalidRequest("%(field)s: a whole number from %(low)s to %(high)s", field=field, low=low, high=high)
    return int(text)


def _items(raw) -> list[str]:
    if isinstance(raw, (list, tuple)):
        return [str(x).strip() for x in raw if str(x).strip()]
    return [x.strip() for x in re.split(r"[\s,;]+", str(raw or "")) if x.strip()]


def parse_params(kind: str, form: Mapping) -> dict:
    """The kind's parameters from text fields -> what is stored (InvalidRequest names the field)."""
    found = Collector()
    params: dict = {}
    if kind in VELOCITY:
        with found:
            params["limit"] = _whole(form.get("limit"), "limit", 1, 1_000_000)
        with found:   # (failed lookups are kept a day: kamengd.risk.engine.forget_lookup_failures)
            params["minutes"] = _whole(form.get("minutes"), "minutes", 1,
                                       24 * 60 if kind == "failed_lookups" else 7 * 24 * 60)
    elif kind == "ip_list":
        ranges = _items(form.get("ranges"))
        for item in ranges:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                found.add(InvalidRequest("ranges: %(item)r is not an address or a range such as 10.0.0.0/8",
                                         item=item[:50]))
        if not ranges:
            found.add(InvalidRequest("ranges: at least one address or range"))
        if len(ranges) > MAX_LIST:
            found.add(InvalidRequest("ranges: at most %(most)s entries", most=MAX_LIST))
        params["ranges"] = [str(ipaddress.ip_network(r, strict=False)) for r in ranges
                            if _is_network(r)][:MAX_LIST]
    elif kind == "email_list":
        emails = [e.casefold() for e in _items(form.get("emails"))]
        domains = [d.casefold().lstrip("@") for d in _items(form.get("domains"))]
        for email in emails:
            if not is_email_address(email):
                found.add(InvalidRequest("emails: %(item)r is not an e-mail address", item=email[:60]))
        for domain in domains:
            if not _DOMAIN.fullmatch(domain):
                found.add(InvalidRequest("domains: %(item)r is not a domain such as example.com", item=domain[:60]))
        if not emails and not domains:
            found.add(InvalidRequest("emails: at least one e-mail address or domain"))
        if len(emails) + len(domains) > MAX_LIST:
            found.add(InvalidRequest("emails: at most %(most)s entries", most=MAX_LIST))
        params.update(emails=sorted(set(emails)), domains=sorted(set(domains)))
    elif kind == "amount_anomaly":
        raw = str(form.get("factor") or "").strip()
        if not re.fullmatch(r"[0-9]{1,4}(?:\.[0-9]{1,2})?", raw) or not 1 < float(raw) <= 1000:
            found.add(InvalidRequest("factor: a number above 1, such as 5 or 2.5"))
        params["factor"] = raw
        with found:
            params["days"] = _whole(form.get("days") or "30", "days", 1, 366)
        with found:
            params["min_orders"] = _whole(form.get("min_orders") or "20", "minimum orders", 1, 1000)
    elif kind == "repeat_payment":
        with found:
            params["limit"] = _whole(form.get("limit") or "1", "limit", 1, 100)
    else:
        found.add(InvalidRequest("kind: one of %(kinds)s", kinds=", ".join(RULE_KINDS)))
    found.check()
    return params


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
        return True
    except ValueError:
        return False


def load_params(kind: str, stored: str) -> dict:
    """The stored parameters, made ready for evaluation (networks parsed, the factor in hundredths)."""
    params = json.loads(stored)
    if kind == "ip_list":
        params["networks"] = [ipaddress.ip_network(r) for r in params["ranges"]]
    elif kind == "email_list":
        params["emails"] = frozenset(params["emails"])
    elif kind == "amount_anomaly":
        whole, _, frac = params["factor"].partition(".")
        params["factor_pct"] = int(whole) * 100 + int((frac + "00")[:2])
    return params


def _check(name: str, kind: str, action: str) -> str:
    found = Collector()
    name = (name or "").strip()
    if not name or len(name) > MAX_NAME:
        found.add(InvalidRequest("name: 1 to %(most)s characters", most=MAX_NAME))
    if kind not in RULE_KINDS:
        found.add(InvalidRequest("kind: one of %(kinds)s", kinds=", ".join(RULE_KINDS)))
    if action not in ACTIONS:
        found.add(InvalidRequest("action: allow, captcha, review or refuse"))
    if kind == "repeat_payment" and action in ("captcha", "allow"):
        found.add(InvalidRequest("action: a payment can only be held for review or refused (refunded by staff)"))
    if kind == "failed_lookups" and action not in ("captcha", "refuse"):
        found.add(InvalidRequest("action: lookups can be asked for a captcha or refused"))
    found.check()
    return name


# The rules each process keeps (kamengd.risk.engine reads them into it): by database and
# stage, with the time they were read.
cache: dict[tuple[str, str], tuple[float, list]] = {}


def _forget() -> None:
    """This process reads the rules again at once (the others within the engine's RULES_TTL)."""
    cache.clear()


def create_rule(session: Session, *, name: str, kind: str, action: str, form: Mapping, sort_order: int = 0,
                actor: str, source_ip: str | None = None) -> RiskRule:
    name = _check(name, kind, action)
    params = parse_params(kind, form)
    rule = RiskRule(name=name, kind=kind, action=action, params=json.dumps(params, sort_keys=True),
                    sort_order=sort_order, is_active=True, created_by=actor)
    session.add(rule)
    session.flush()
    record(session, "risk.rule_create", actor=actor, target=f"risk_rule:{rule.id}", source_ip=source_ip,
           details={"name": name, "kind": kind, "action": action, "params": params, "sort_order": sort_order})
    _forget()
    return rule


def get_rule(session: Session, rule_id) -> RiskRule:
    rule = session.get(RiskRule, rule_id) if isinstance(rule_id, int) else None
    if rule is None:
        raise NotFound("risk rule %(id)s not found", id=str(rule_id)[:20])
    return rule


def update_rule(session: Session, rule: RiskRule, *, name: str, action: str, form: Mapping, sort_order: int,
                is_active: bool, actor: str, source_ip: str | None = None) -> dict:
    name = _check(name, rule.kind, action)
    params = json.dumps(parse_params(rule.kind, form), sort_keys=True)
    changed = {k: v for k, v in {"name": name, "action": action, "params": params, "sort_order": sort_order,
                                 "is_active": is_active}.items() if getattr(rule, k) != v}
    if changed:
        for k, v in changed.items():
            setattr(rule, k, v)
        session.flush()
        record(session, "risk.rule_update", actor=actor, target=f"risk_rule:{rule.id}", source_ip=source_ip,
               details={k: (json.loads(v) if k == "params" else v) for k, v in changed.items()})
        _forget()
    return changed


def form_of(rule: RiskRule) -> dict:
    """A rule's parameters as the text fields parse_params reads."""
    params = json.loads(rule.params)
    return {k: "\n".join(v) if isinstance(v, list) else str(v) for k, v in params.items()}


def list_rules(session: Session) -> list[RiskRule]:
    return list(session.scalars(sa.select(RiskRule).order_by(RiskRule.sort_order, RiskRule.id)))

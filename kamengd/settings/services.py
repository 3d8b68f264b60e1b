"""Settings staff change while the shop runs (the config file holds the rest).

Each setting is declared once below with its type, default and limits; an
unknown key or a bad value is refused with the key's name, and every change
is audited with the old and the new value.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..audit.services import record
from ..errors import InvalidRequest
from .models import Setting


@dataclass(frozen=True)
class SettingSpec:
    type: type
    default: object
    doc: str
    minimum: int | None = None
    maximum: int | None = None
    max_length: int | None = None
    single_line: bool = False   # text: surrounding spaces dropped, no line breaks or control characters


SETTINGS: dict[str, SettingSpec] = {
    "site.name": SettingSpec(str, "", "Shop name shown to buyers and staff; empty: site.name of the config file.",
                             max_length=100, single_line=True),
    "site.notice": SettingSpec(str, "", "Notice shown at the top of the storefront.", max_length=2000),
    "orders.timeout_minutes": SettingSpec(int, 10, "Minutes an unpaid order keeps its keys reserved.",
                                          minimum=1, maximum=1440),
    "orders.stock_wait_alert_minutes": SettingSpec(
        int, 30, "Minutes a paid order may wait for stock before it is flagged for staff (order.stuck).",
        minimum=1, maximum=10080),
    "orders.manual_sla_minutes": SettingSpec(
        int, 60, "Minutes staff have to deliver a paid manual-delivery order before it is flagged (order.stuck).",
        minimum=1, maximum=10080),
}


def _spec(key: str) -> SettingSpec:
    try:
        return SETTINGS[key]
    except KeyError:
        raise InvalidRequest(f"unknown setting {key!r} (known: {', '.join(sorted(SETTINGS))})") from None


def parse_value(key: str, raw) -> object:
    """Validate a value (a string from the CLI or a form, or already typed)."""
    spec = _spec(key)
    if spec.type is int:
        try:
            value = int(raw) if isinstance(raw, str) else raw
        except ValueError:
            raise InvalidRequest(f"{key}: expected a whole number, got {raw!r}") from None
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidRequest(f"{key}: expected a whole number, got {raw!r}")
        if spec.minimum is not None and value < spec.minimum:
            raise InvalidRequest(f"{key}: must be at least {spec.minimum}")
        if spec.maximum is not None and value > spec.maximum:
            raise InvalidRequest(f"{key}: must be at most {spec.maximum}")
        return value
    if not isinstance(raw, str):
        raise InvalidRequest(f"{key}: expected text")
    if spec.single_line:
        raw = raw.strip()
        if any(ord(c) < 32 or ord(c) == 127 for c in raw):
            raise InvalidRequest(f"{key}: one line of text, without control characters")
    if spec.max_length is not None and len(raw) > spec.max_length:
        raise InvalidRequest(f"{key}: at most {spec.max_length} characters")
    return raw


def get_setting(session: Session, key: str):
    spec = _spec(key)
    stored = session.scalar(sa.select(Setting.value).where(Setting.key == key))
    return spec.default if stored is None else json.loads(stored)


def all_settings(session: Session) -> dict:
    stored = {row.key: json.loads(row.value) for row in session.scalars(sa.select(Setting))}
    return {key: stored.get(key, spec.default) for key, spec in SETTINGS.items()}


def set_setting(session: Session, key: str, raw, *, actor: str, source_ip: str | None = None):
    value = parse_value(key, raw)
    old = get_setting(session, key)
    row = session.get(Setting, key)
    if row is None:
        row = Setting(key=key, value=json.dumps(value, ensure_ascii=False), updated_by=actor)
        session.add(row)
    else:
        row.value, row.updated_by = json.dumps(value, ensure_ascii=False), actor
    session.flush()
    record(session, "setting.change", actor=actor, target=f"setting:{key}", source_ip=source_ip,
           details={"key": key, "old": old, "new": value})
    return value


def update_settings(session: Session, raw: dict, *, actor: str, source_ip: str | None = None) -> list[str]:
    """Change several settings at once, all or nothing: every value is checked
    before any is written. Returns the keys that changed (each audited)."""
    errors, parsed = [], {}
    for key, value in raw.items():
        try:
            parsed[key] = parse_value(key, value)
        except InvalidRequest as exc:
            errors.append(exc.message)
    if errors:
        raise InvalidRequest("; ".join(errors))
    current = all_settings(session)
    changed = [key for key, value in parsed.items() if current[key] != value]
    for key in changed:
        set_setting(session, key, parsed[key], actor=actor, source_ip=source_ip)
    return changed


def site_name(session: Session, default: str) -> str:
    """The shop's name: the run-time setting, or `default` (the config file's) when it is empty."""
    return get_setting(session, "site.name") or default

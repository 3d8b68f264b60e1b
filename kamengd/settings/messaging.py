"""Where mail and webhooks go: the config file's [smtp] and [notifications],
or what staff set in the panel (smtp.source / notifications.source = panel).

Everything that sends reads the configuration through `effective_config`,
so a change in the panel takes effect with the next mail, on every server,
without a restart.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from ..config import Config
from ..context import get_config, get_vault
from ..errors import Collector, ConfigError, InvalidRequest
from ..extensions import db
from ..vault import Vault
from . import services
from .services import all_settings, get_secret, secrets_set


@dataclass(frozen=True)
class RuntimeConfig(Config):
    """A Config with the panel's mail and webhook settings laid over the file's."""
    panel_smtp_password: str | None = field(default=None, repr=False)
    panel_webhook_secret: str | None = field(default=None, repr=False)
    smtp_source: str = "file"
    notifications_source: str = "file"

    def smtp_password(self) -> str:
        if self.smtp_source == "panel":
            return self.panel_smtp_password or ""
        return super().smtp_password()

    def webhook_secret(self) -> bytes:
        if self.notifications_source == "panel":
            if not self.panel_webhook_secret:
                raise ConfigError("setting notifications.webhook_secret: required to sign webhooks "
                                  "(set it in the panel's settings)")
            return self.panel_webhook_secret.encode("utf-8")
        return super().webhook_secret()


def effective_config(session: Session, vault: Vault, config: Config) -> RuntimeConfig:
    values = all_settings(session)
    base = {f.name: getattr(config, f.name) for f in dataclasses.fields(Config)}
    extra = {"smtp_source": values["smtp.source"], "notifications_source": values["notifications.source"]}
    if values["smtp.source"] == "panel":
        base["smtp"] = dataclasses.replace(
            config.smtp, host=values["smtp.host"], port=values["smtp.port"], security=values["smtp.security"],
            username=values["smtp.username"], from_address=values["smtp.from_address"], password_file=None)
        extra["panel_smtp_password"] = get_secret(session, vault, "smtp.password")
    if values["notifications.source"] == "panel":
        base["notifications"] = dataclasses.replace(
            config.notifications, webhook_urls=tuple(values["notifications.webhook_urls"]),
            webhook_events=tuple(values["notifications.webhook_events"]), webhook_secret_file=None,
            email_to=tuple(values["notifications.email_to"]),
            email_events=tuple(values["notifications.email_events"]))
        extra["panel_webhook_secret"] = get_secret(session, vault, "notifications.webhook_secret")
    return RuntimeConfig(**base, **extra)


def sending_config() -> RuntimeConfig:
    """The config as mail and webhooks use it now, in an app context (the panel's test mail)."""
    return effective_config(db.session, get_vault(), get_config())


SECRET_OF_GROUP = {"smtp": "smtp.password", "notifications": "notifications.webhook_secret"}


def mail_server(session: Session, config: Config) -> tuple[str, int]:
    """(host, port) mail goes to now (host "" for none), without decrypting anything."""
    if services.get_setting(session, "smtp.source") == "panel":
        return services.get_setting(session, "smtp.host"), services.get_setting(session, "smtp.port")
    return config.smtp.host, config.smtp.port


def save_group(session: Session, vault: Vault, group: str, raw: dict, *, secret: str = "",
               clear_secret: bool = False, actor: str, source_ip: str | None = None) -> list[str]:
    """One form of the settings page (group "smtp" or "notifications"), all or nothing.

    `secret` (the SMTP password or the webhook secret) is kept when left empty,
    removed with `clear_secret`. Returns what changed (each change audited)."""
    secret_key = SECRET_OF_GROUP[group]
    keys = [key for key, spec in services.SETTINGS.items() if spec.group == group]
    unknown = set(raw) - set(keys)
    if unknown:
        raise InvalidRequest("not a %(group)s setting: %(keys)s", group=group, keys=", ".join(sorted(unknown)))
    merged = {key: value for key, value in all_settings(session).items() if key in keys}
    found = Collector()
    for key, value in raw.items():
        with found:
            merged[key] = services.parse_value(key, value)
    if secret and clear_secret:
        found.add(InvalidRequest("%(key)s: enter a new value or remove it, not both", key=secret_key))
    elif secret:
        with found:
            services.check_secret(secret_key, secret)
    will_have_secret = bool(secret) or (secrets_set(session)[secret_key] and not clear_secret)
    if merged[f"{group}.source"] == "panel":
        if group == "smtp" and not merged["smtp.host"]:
            found.add(InvalidRequest("smtp.host: required when the mail server is set here"))
        if group == "smtp" and merged["smtp.username"] and not will_have_secret:
            found.add(InvalidRequest("smtp.password: required with a login"))
        if group == "notifications" and merged["notifications.webhook_urls"] and not will_have_secret:
            found.add(InvalidRequest("notifications.webhook_secret: required with webhook URLs"))
    found.check()
    changed = services.update_settings(session, {key: merged[key] for key in raw}, actor=actor,
                                       source_ip=source_ip)
    if secret:
        services.set_secret(session, vault, secret_key, secret, actor=actor, source_ip=source_ip)
        changed.append(secret_key)
    elif clear_secret and services.clear_secret(session, secret_key, actor=actor, source_ip=source_ip):
        changed.append(secret_key)
    return changed

"""Configuration: every setting declared once, with its type and default.

The file is TOML; any setting can be overridden by an environment variable
``KAMENGD_<SECTION>_<KEY>``. An unknown key, a value of the wrong type or a
missing required setting stops start-up with the setting's name.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import types
import typing
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import limits
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from .errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/kamengd/kamengd.toml")
ENV_CONFIG = "KAMENGD_CONFIG"
ENV_PREFIX = "KAMENGD_"

REQUIRED: typing.Any = object()


def setting(default=REQUIRED, *, doc: str, choices: tuple = (), minimum: int | None = None,
            maximum: int | None = None):
    return field(default=default, metadata={"doc": doc, "choices": choices, "minimum": minimum,
                                            "maximum": maximum})


@dataclass(frozen=True)
class SiteConfig:
    name: str = setting("kamengd", doc="Shop name shown to buyers and staff.")
    url: str = setting("http://127.0.0.1:8000",
                       doc="Public base URL of the shop; payment callbacks are built from it.")
    timezone: str = setting("Asia/Shanghai",
                            doc="The shop's time zone (IANA name): the day of the daily settlement report.")


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = setting(doc="SQLAlchemy URL: sqlite:////path/kamengd.db or mysql+pymysql://user@host/db.")
    password_file: Path | None = setting(
        None, doc="File holding the database password, kept out of the URL (optional).")
    pool_size: int = setting(5, doc="Connections per process (MySQL).", minimum=1)
    lock_timeout_seconds: int = setting(
        30, doc="How long a request waits for a lock another holds (SQLite's busy timeout, MySQL's "
                "innodb_lock_wait_timeout) before it is answered 503 busy and changes nothing.",
        minimum=1, maximum=600)


@dataclass(frozen=True)
class SecurityConfig:
    secret_key_file: Path = setting(doc="File holding the session signing key (mode 0600).")
    data_key_file: Path = setting(
        doc="File holding the card-key encryption key (mode 0600). Never in the database or a backup.")


@dataclass(frozen=True)
class ServerConfig:
    bind: str = setting("127.0.0.1:8000", doc="HOST:PORT that `kamengd serve` listens on.")
    server: str = setting("waitress", doc="waitress or gunicorn.", choices=("waitress", "gunicorn"))
    workers: int = setting(3, doc="Gunicorn worker processes (about one per core plus one: "
                                  "`scripts/bench checkout` measured 3 fastest on 2 cores).", minimum=1)
    threads: int = setting(8, doc="Waitress threads.", minimum=1)
    gunicorn_threads: int = setting(1, doc="Gunicorn threads per worker: 1 runs sync workers (measured "
                                           "fastest, with the shortest tails; nginx in front buffers slow "
                                           "clients), more runs gthread workers.", minimum=1)
    gunicorn_timeout: int = setting(120, doc="Seconds a gunicorn worker may spend on one request (a large "
                                             "upload or export) before it is restarted.", minimum=10)
    proxy_count: int = setting(0, doc="Reverse proxies in front (nginx: 1): trust that many "
                                      "X-Forwarded-For/-Proto/-Host hops for client IPs and HTTPS.",
                               minimum=0, maximum=5)


@dataclass(frozen=True)
class RatelimitConfig:
    enabled: bool = setting(True, doc="Per-client rate limits; 0 turns every limit off (load tests).")
    storage_url: str = setting("memory://",
                               doc="memory:// for one process; redis://host:6379 for several.")
    orders: str = setting("20/minute", doc="Orders one client may create (Flask-Limiter syntax).")
    lookups: str = setting("30/minute", doc="Order lookups one client may make (token or query password).")
    callbacks: str = setting("600/minute", doc="Payment callbacks one address may send (/pay/*/notify); "
                                               "the addresses in gateway_addresses are never limited.")
    bad_callbacks: str = setting("20/minute", doc="Refused callbacks (a wrong signature, a foreign pid, an "
                                                  "unknown channel) one address may send before all its "
                                                  "callbacks get 429; genuine ones never count.")
    agent_api: str = setting("600/minute", doc="Signed agent API requests one key may make (counted once "
                                               "the signature is checked).")
    bad_agent_requests: str = setting("30/minute", doc="Agent API requests refused as unsigned or wrongly "
                                                       "signed (401) one address may send before all its "
                                                       "agent API requests get 429.")
    gateway_addresses: list[str] = setting((), doc="The payment gateways' server addresses or networks "
                                                   "(CIDR), whose callbacks are never rate-limited.")


@dataclass(frozen=True)
class InventoryConfig:
    max_key_length: int = setting(512, doc="Longest card key accepted by an import, in characters.",
                                  minimum=1, maximum=4096)
    import_batch_size: int = setting(5000, doc="Keys written per INSERT batch during an import.",
                                     minimum=1)


@dataclass(frozen=True)
class SchedulerConfig:
    lease_seconds: int = setting(30, doc="A leader that stops renewing is replaced after this long.",
                                 minimum=3, maximum=600)
    tick_seconds: int = setting(5, doc="How often each scheduler renews the lease and looks for due jobs.",
                                minimum=1, maximum=60)


@dataclass(frozen=True)
class SmtpConfig:
    host: str = setting("", doc="SMTP server for mails to buyers (delivered keys); empty: no mail.")
    port: int = setting(587, doc="SMTP port (587 STARTTLS, 465 TLS, 25 plain).", minimum=1, maximum=65535)
    security: str = setting("starttls", doc="starttls, tls or none.", choices=("starttls", "tls", "none"))
    username: str = setting("", doc="SMTP login (empty: no login).")
    password_file: Path | None = setting(None, doc="File holding the SMTP password (mode 0600).")
    from_address: str = setting("", doc="Sender address, e.g. shop@example.com.")
    timeout_seconds: int = setting(20, doc="Give up on an SMTP connection after this long.", minimum=1)


@dataclass(frozen=True)
class BackupConfig:
    directory: Path | None = setting(
        None, doc="Where the daily and pre-upgrade backups go; empty: backups/ beside the data key file.")
    daily: bool = setting(True, doc="Take a backup every day (a scheduler job).")
    keep: int = setting(7, doc="Daily backups kept; older ones are deleted.", minimum=1, maximum=365)
    passphrase_file: Path | None = setting(
        None, doc="File holding a passphrase that seals the daily and pre-upgrade backups (mode 0600).")


@dataclass(frozen=True)
class PanelConfig:
    session_idle_minutes: int = setting(30, doc="A staff session ends after this long without a request.",
                                        minimum=1, maximum=1440)
    session_max_hours: int = setting(12, doc="A staff session ends this long after sign-in, used or not.",
                                     minimum=1, maximum=720)


EVENT_TYPES = ("stock.low", "stock.restocked", "order.paid", "order.delivered", "order.held", "order.stuck",
               "payment.extra", "reconcile.mismatch", "scheduler.failover", "withdrawal.requested",
               "order.refunded", "balance.changed", "supplier.low_balance", "supplier.cost_changed",
               "channel.down", "channel.up", "channel.failover", "ticket.opened", "ticket.overdue")
# Made only for agents' own webhooks (kamengd.agents.webhooks), never fanned out to staff:
# "*" in [notifications] does not bring them, and naming them there is refused.
AGENT_ONLY_EVENTS = ("balance.changed",)
STAFF_EVENTS = ("stock.low", "order.held", "order.stuck", "payment.extra", "reconcile.mismatch",
                "scheduler.failover", "withdrawal.requested", "supplier.low_balance", "supplier.cost_changed",
                "channel.down", "ticket.opened", "ticket.overdue")


@dataclass(frozen=True)
class NotificationsConfig:
    webhook_urls: list[str] = setting((), doc="URLs that receive events as a JSON POST signed with "
                                              "HMAC-SHA256 (X-Kamengd-Signature); empty: no webhooks.")
    webhook_secret_file: Path | None = setting(
        None, doc="File holding the webhook signing secret (mode 0600); required with webhook_urls.")
    webhook_events: list[str] = setting(("*",), doc="Events sent to the webhooks; \"*\" for all.")
    webhook_timeout_seconds: int = setting(10, doc="Give up on a webhook request after this long; "
                                                   "it is retried with backoff.", minimum=1, maximum=120)
    email_to: list[str] = setting((), doc="Staff addresses that receive events by mail (needs [smtp]).")
    agent_webhook_private: bool = setting(False, doc="Let agents' webhooks go to loopback, private and link-local "
                                                     "addresses (this machine, the shop's own network). Off: such an "
                                                     "address is refused when added and when sent to.")
    email_events: list[str] = setting(STAFF_EVENTS, doc="Events mailed to email_to; \"*\" for all.")


@dataclass(frozen=True)
class LoggingConfig:
    level: str = setting("INFO", doc="Log level.",
                         choices=("DEBUG", "INFO", "WARNING", "ERROR"))


@dataclass(frozen=True)
class Config:
    site: SiteConfig
    database: DatabaseConfig
    security: SecurityConfig
    server: ServerConfig
    ratelimit: RatelimitConfig
    inventory: InventoryConfig
    scheduler: SchedulerConfig
    smtp: SmtpConfig
    notifications: NotificationsConfig
    backup: BackupConfig
    panel: PanelConfig
    logging: LoggingConfig
    path: Path | None = None

    @property
    def database_url(self) -> str:
        """The URL with the password from ``password_file`` filled in (never log this)."""
        url = make_url(self.database.url)
        if self.database.password_file is not None:
            url = url.set(password=_read_secret_file(self.database.password_file, "database.password_file"))
        return url.render_as_string(hide_password=False)

    def smtp_password(self) -> str:
        if self.smtp.password_file is None:
            return ""
        return _read_secret_file(self.smtp.password_file, "smtp.password_file")

    def webhook_secret(self) -> bytes:
        if self.notifications.webhook_secret_file is None:
            raise ConfigError("setting notifications.webhook_secret_file: required to sign webhooks")
        return _read_secret_file(self.notifications.webhook_secret_file,
                                 "notifications.webhook_secret_file").encode()

    def backup_dir(self) -> Path:
        return self.backup.directory or self.security.data_key_file.parent / "backups"

    def media_dir(self) -> Path:
        """This server's copy of the product pictures (kept in the database): in the data
        directory, beside the data key (the one place the services may write)."""
        return self.security.data_key_file.parent / "media"

    def backup_passphrase(self) -> str | None:
        """Read as `--passphrase-file` reads it (only the line break is dropped),
        so a backup sealed by the scheduler opens with the same file."""
        path = self.backup.passphrase_file
        if path is None:
            return None
        try:
            value = path.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"backup.passphrase_file: cannot read {path}: {exc}") from None
        if len(value) < 8:
            raise ConfigError(f"backup.passphrase_file: {path} holds fewer than 8 characters")
        return value

    def read_secret_key(self) -> bytes:
        return _read_secret_file(self.security.secret_key_file, "security.secret_key_file").encode()

    def describe(self) -> dict:
        """Every setting with its value, secrets masked: safe to print."""
        out = {}
        for name, section in _sections():
            values = dataclasses.asdict(getattr(self, name))
            if name == "database":
                values["url"] = make_url(values["url"]).render_as_string(hide_password=True)
            out[name] = {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                         for k, v in values.items()}
        return out


def _sections():
    hints = typing.get_type_hints(Config)
    return [(f.name, hints[f.name]) for f in dataclasses.fields(Config) if f.name != "path"]


def _read_secret_file(path: Path, name: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path}: {exc.strerror}") from None
    if not value:
        raise ConfigError(f"{name}: {path} is empty")
    return value


def _convert(name: str, raw, hint, meta, base_dir: Path | None, from_env: bool):
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
    target = hint
    if optional:
        target = next(a for a in typing.get_args(hint) if a is not type(None))
        if raw == "" or raw is None:
            return None
    if target is bool:
        if isinstance(raw, bool):
            value = raw
        elif from_env and str(raw).strip().lower() in ("1", "true", "yes", "on"):
            value = True
        elif from_env and str(raw).strip().lower() in ("0", "false", "no", "off", ""):
            value = False
        else:
            raise ConfigError(f"setting {name}: expected true or false, got {raw!r}")
    elif target is int:
        if isinstance(raw, bool):
            raise ConfigError(f"setting {name}: expected an integer, got {raw!r}")
        try:
            value = int(raw) if from_env else raw
        except ValueError:
            raise ConfigError(f"setting {name}: expected an integer, got {raw!r}") from None
        if not isinstance(value, int):
            raise ConfigError(f"setting {name}: expected an integer, got {raw!r}")
        if meta["minimum"] is not None and value < meta["minimum"]:
            raise ConfigError(f"setting {name}: must be at least {meta['minimum']}, got {value}")
        if meta["maximum"] is not None and value > meta["maximum"]:
            raise ConfigError(f"setting {name}: must be at most {meta['maximum']}, got {value}")
    elif typing.get_origin(target) is list:
        if from_env:
            raw = [part.strip() for part in str(raw).split(",") if part.strip()]
        if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
            raise ConfigError(f"setting {name}: expected a list of strings, got {raw!r}")
        value = tuple(raw)  # frozen config: immutable
        bad = [item for item in value if meta["choices"] and item not in meta["choices"]]
        if bad:
            raise ConfigError(f"setting {name}: {bad[0]!r} is not one of {', '.join(meta['choices'])}")
        return value
    elif target is Path:
        if not isinstance(raw, str) or not raw:
            raise ConfigError(f"setting {name}: expected a file path, got {raw!r}")
        value = Path(raw).expanduser()
        if not value.is_absolute() and base_dir is not None:
            value = base_dir / value
    else:
        if not isinstance(raw, str):
            raise ConfigError(f"setting {name}: expected a string, got {raw!r}")
        value = raw
    if meta["choices"] and value not in meta["choices"]:
        raise ConfigError(f"setting {name}: must be one of {', '.join(meta['choices'])}, got {value!r}")
    return value


def build_config(data: dict, env: typing.Mapping[str, str] | None = None,
                 path: Path | None = None) -> Config:
    """Validate a parsed TOML document plus environment overrides into a Config."""
    env = os.environ if env is None else env
    base_dir = path.parent if path is not None else None
    sections = dict(_sections())
    for section_name, section_value in data.items():
        if section_name not in sections:
            raise ConfigError(f"unknown config section [{section_name}]")
        if not isinstance(section_value, dict):
            raise ConfigError(f"config section [{section_name}] must be a table")
    env_values = _env_overrides(env, sections)

    built = {}
    for section_name, section_cls in sections.items():
        hints = typing.get_type_hints(section_cls)
        fields = {f.name: f for f in dataclasses.fields(section_cls)}
        file_values = data.get(section_name, {})
        for key in file_values:
            if key not in fields:
                raise ConfigError(f"unknown setting {section_name}.{key}")
        kwargs = {}
        for key, f in fields.items():
            name = f"{section_name}.{key}"
            if (section_name, key) in env_values:
                var = f"{ENV_PREFIX}{section_name.upper()}_{key.upper()}"
                kwargs[key] = _convert(f"{name} (from {var})", env_values[(section_name, key)],
                                       hints[key], f.metadata, base_dir, from_env=True)
            elif key in file_values:
                kwargs[key] = _convert(name, file_values[key], hints[key], f.metadata, base_dir,
                                       from_env=False)
            elif f.default is REQUIRED:
                raise ConfigError(f"missing setting {name}")
        built[section_name] = section_cls(**kwargs)
    built["database"] = dataclasses.replace(
        built["database"], url=normalize_database_url(built["database"].url, base_dir))
    _check_site(built["site"])
    _check_notifications(built["notifications"])
    _check_ratelimit(built["ratelimit"])
    return Config(path=path, **built)


def _check_ratelimit(r: RatelimitConfig) -> None:
    for name in ("orders", "lookups", "callbacks", "bad_callbacks", "agent_api", "bad_agent_requests"):
        value = getattr(r, name)
        try:
            limits.parse_many(value)
        except ValueError:
            raise ConfigError(f"setting ratelimit.{name}: {value!r} is not a rate limit "
                              "(e.g. \"20/minute\" or \"100/hour;20/minute\")") from None
    for network in r.gateway_addresses:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ConfigError(f"setting ratelimit.gateway_addresses: {network!r} is not an address or "
                              "a network (e.g. 203.0.113.7 or 203.0.113.0/24)") from None


def callback_url_kind(site_url: str) -> str | None:
    """What is wrong with site.url as the address gateways call back: "no_host",
    "unreachable" (loopback, a private range, a local name), "plain_http" (http on a
    public host), or None."""
    parts = urlsplit(site_url)
    host = (parts.hostname or "").lower()
    if not host:
        return "no_host"
    local = host == "localhost" or host.endswith((".localhost", ".local", ".internal", ".lan"))
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if local or (address is not None and not address.is_global):
        return "unreachable"
    return "plain_http" if parts.scheme != "https" else None


def callback_url_problem(site_url: str) -> str | None:
    """Why a payment gateway (a server on the internet) could not call this shop back at
    site.url, or None. The default http://127.0.0.1:8000 is fine for a trial and no good
    for a real gateway: its callbacks would never arrive, and no order would be paid."""
    kind = callback_url_kind(site_url)
    if kind == "no_host":
        return f"site.url {site_url!r} names no host"
    if kind == "unreachable":
        return (f"site.url is {site_url}, which a payment gateway cannot reach: its callbacks "
                "(/pay/<code>/notify) would never arrive. Set site.url to the shop's public https address")
    if kind == "plain_http":
        return (f"site.url is {site_url}: plain http on a public host; buyers' keys and the gateway's "
                "callbacks travel unencrypted. Serve the shop over https (see config/nginx.conf.example)")
    return None


def _check_site(site: SiteConfig) -> None:
    try:
        zoneinfo.ZoneInfo(site.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"setting site.timezone: unknown time zone {site.timezone!r} "
                          "(an IANA name such as Asia/Shanghai)") from None


def _check_notifications(n: NotificationsConfig) -> None:
    for url in n.webhook_urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"setting notifications.webhook_urls: {url!r} is not an http(s) URL")
    if n.webhook_urls and n.webhook_secret_file is None:
        raise ConfigError("setting notifications.webhook_secret_file: required when webhook_urls is set")
    for key in ("webhook_events", "email_events"):
        for event in getattr(n, key):
            if event in AGENT_ONLY_EVENTS:
                raise ConfigError(f"setting notifications.{key}: {event!r} is sent only to agents' own "
                                  "webhooks (the agent API), not to staff")
            if event != "*" and event not in EVENT_TYPES:
                raise ConfigError(f"setting notifications.{key}: unknown event {event!r} "
                                  f"(known: {', '.join(e for e in EVENT_TYPES if e not in AGENT_ONLY_EVENTS)})")
    for address in n.email_to:
        if "@" not in address or any(c.isspace() for c in address) or len(address) > 254:
            raise ConfigError(f"setting notifications.email_to: {address!r} is not an e-mail address")


def normalize_database_url(url: str, base_dir: Path | None) -> str:
    """Check the URL names a database kamengd supports; make a SQLite path absolute.

    A relative SQLite path would be resolved differently by Flask-SQLAlchemy
    (its instance folder) and Alembic (the working directory): one database
    would become two. It is taken relative to the config file, like every path.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError("setting database.url: not a database URL "
                          "(sqlite:////path/kamengd.db or mysql+pymysql://user@host/db)") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:" or parsed.query.get("uri"):
            raise ConfigError("setting database.url: SQLite needs a file path (sqlite:////path/kamengd.db)")
        path = Path(parsed.database).expanduser()
        if not path.is_absolute():
            path = (base_dir or Path.cwd()) / path
        return parsed.set(database=str(path)).render_as_string(hide_password=False)
    if backend in ("mysql", "mariadb"):
        if parsed.get_driver_name() != "pymysql":
            raise ConfigError("setting database.url: use the PyMySQL driver, mysql+pymysql://...")
        return url
    raise ConfigError(f"setting database.url: {backend} is not supported (SQLite or MySQL/MariaDB)")


def _env_overrides(env, sections) -> dict:
    """Map KAMENGD_<SECTION>_<KEY> variables onto declared settings.

    A variable naming a known section but an unknown key is an error (a typo
    would otherwise be silently ignored); other KAMENGD_* variables, such as
    KAMENGD_CONFIG, are not settings and are left alone.
    """
    found = {}
    for var, value in env.items():
        if not var.startswith(ENV_PREFIX):
            continue
        rest = var[len(ENV_PREFIX):].lower()
        for section_name, section_cls in sections.items():
            if rest.startswith(section_name + "_"):
                key = rest[len(section_name) + 1:]
                if key not in {f.name for f in dataclasses.fields(section_cls)}:
                    raise ConfigError(f"environment variable {var}: unknown setting {section_name}.{key}")
                found[(section_name, key)] = value
    return found


def resolve_config_path(explicit: str | os.PathLike | None, env=None) -> Path:
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit)
    if env.get(ENV_CONFIG):
        return Path(env[ENV_CONFIG])
    return DEFAULT_CONFIG_PATH


def load_config(path: str | os.PathLike | None = None, env=None) -> Config:
    """Read the config file found by --config, KAMENGD_CONFIG or the default path."""
    config_path = resolve_config_path(path, env)
    try:
        raw = config_path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {config_path} not found (use --config or KAMENGD_CONFIG)") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {config_path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {config_path} is not valid TOML: {exc}") from None
    return build_config(data, env, config_path.resolve())


def render_config(values: dict[str, dict]) -> str:
    """Write settings as TOML (only the simple value types the table declares)."""
    lines = []
    for section, items in values.items():
        lines.append(f"[{section}]")
        for key, value in items.items():
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = str(value)
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = "".join(c if c >= " " else f"\\u{ord(c):04x}" for c in escaped)
    return f'"{escaped}"'

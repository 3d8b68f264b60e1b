"""Sub-stations (分站): an agent's storefront on its own host name and at /s/<agent>.

Staff bind host names to agents (one agent per host, audited); the agent sets
its station's title, notice and contact. A request's host is looked up in a
small per-process cache (a few seconds, misses too: the shop's own host is
asked on every request), so a new binding serves within seconds on every
server.
"""
from __future__ import annotations

import re
import threading
from collections import OrderedDict
import time
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..audit.services import record
from ..context import get_config
from ..errors import Collector, Conflict, InvalidRequest, NotFound
from ..settings.services import get_setting
from .models import Agent, AgentHost

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
TITLE_MAX, NOTICE_MAX, CONTACT_MAX = 64, 2000, 200
CACHE_SECONDS = 5.0
_cache: OrderedDict[str, tuple[float, int | None]] = OrderedDict()   # least recently used first
_cache_lock = threading.Lock()
_CACHE_MAX = 4096


def normal_host(text) -> str:
    """A host name as bound and as looked up: lower case, IDNA (punycode), no trailing dot,
    at least two labels. Raises InvalidRequest."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequest("host: a domain such as shop.example.com")
    host = text.strip().rstrip(".").lower()
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        raise InvalidRequest("host: %(host)r is not a domain name", host=text[:100]) from None
    labels = host.split(".")
    if len(host) > 253 or len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels) \
            or labels[-1].isdigit():
        raise InvalidRequest("host: %(host)r is not a domain name", host=text[:100])
    return host


def _shop_hosts(session: Session) -> set[str]:
    urls = (get_config().site.url, get_setting(session, "site.url") or "")
    return {(urlsplit(u).hostname or "").lower() for u in urls if u}


def bind_host(session: Session, agent: Agent, host, *, actor: str, source_ip: str | None = None) -> AgentHost:
    """Serve `host` as the agent's sub-station. A host bound already (to anyone) or the
    shop's own is refused; audited."""
    name = normal_host(host)
    if agent.kind == "member":
        raise InvalidRequest("%(username)s is a plain member: sub-stations are for agents", username=agent.username)
    if name in _shop_hosts(session):
        raise InvalidRequest("host: %(host)s is the shop's own address", host=name)
    taken = session.scalar(sa.select(Agent.username).join(AgentHost, AgentHost.agent_id == Agent.id)
                           .where(AgentHost.host == name))
    if taken is not None:
        raise Conflict("host %(host)s is bound to agent %(username)s already", host=name, username=taken)
    row = AgentHost(agent_id=agent.id, host=name)
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:   # bound at the same moment by another request
        raise Conflict("host %(host)s is bound already", host=name) from None
    record(session, "agent.host.bind", actor=actor, target=f"agent:{agent.id}", source_ip=source_ip,
           details={"host": name})
    forget_hosts()
    return row


def unbind_host(session: Session, host, *, actor: str, source_ip: str | None = None) -> AgentHost:
    name = normal_host(host)
    row = session.scalar(sa.select(AgentHost).where(AgentHost.host == name))
    if row is None:
        raise NotFound("host %(host)s is not bound", host=name)
    session.delete(row)
    session.flush()
    record(session, "agent.host.unbind", actor=actor, target=f"agent:{row.agent_id}", source_ip=source_ip,
           details={"host": name})
    forget_hosts()
    return row


def hosts(session: Session, agent_id: int | None = None) -> list[tuple[str, str]]:
    """[(host, agent's username)], by host."""
    query = sa.select(AgentHost.host, Agent.username).join(Agent, Agent.id == AgentHost.agent_id)
    if agent_id is not None:
        query = query.where(AgentHost.agent_id == agent_id)
    return [tuple(r) for r in session.execute(query.order_by(AgentHost.host))]


def forget_hosts() -> None:
    with _cache_lock:
        _cache.clear()


def agent_id_for_host(session: Session, host: str, reader=None) -> int | None:
    """The agent whose sub-station `host` (the request's Host, maybe with a port) is.
    `reader(query)` runs the lookup (the web's: in a snapshot of its own); a hit or a miss
    is then kept for a few seconds."""
    name = (host or "").rsplit(":", 1)[0].rstrip(".").lower() if not (host or "").startswith("[") else ""
    if not name:
        return None
    if name in _own_hosts():   # the shop's own address, asked on most requests: never a station
        return None
    now = time.monotonic()
    found = _cache.get(name)
    if found is not None and found[0] > now:
        return found[1]
    lookup = sa.select(AgentHost.agent_id).where(AgentHost.host == name)
    agent_id = None
    if len(name) <= 253:
        agent_id = reader(lambda s: s.scalar(lookup)) if reader is not None else session.scalar(lookup)
    with _cache_lock:
        # A flood of made-up host names pushes out the oldest entries only, never the bound ones
        # in use (each hit moves its entry to the end).
        _cache[name] = (now + CACHE_SECONDS, agent_id)
        _cache.move_to_end(name)
        while len(_cache) > _CACHE_MAX:
            _cache.popitem(last=False)
    return agent_id


def _own_hosts() -> frozenset[str]:
    """The config file's site.url host (the panel's site.url is checked when binding)."""
    return frozenset({(urlsplit(get_config().site.url).hostname or "").lower()} - {""})


def set_site(session: Session, agent: Agent, *, title, notice, contact, actor: str,
             source_ip: str | None = None) -> None:
    """The station's title, notice and contact (plain text, shown escaped). Audited."""
    found = Collector()
    values = {}
    for field, value, longest in (("title", title, TITLE_MAX), ("notice", notice, NOTICE_MAX),
                                  ("contact", contact, CONTACT_MAX)):
        with found:
            if not isinstance(value, str):
                raise InvalidRequest("%(field)s: text", field=field)
            value = value.strip().replace("\r\n", "\n")
            if len(value) > longest:
                raise InvalidRequest("%(field)s: at most %(n)s characters", field=field, n=longest)
            if any(ord(ch) < 32 and ch != "\n" for ch in value) or (field != "notice" and "\n" in value):
                raise InvalidRequest("%(field)s: no control characters", field=field)
            values[field] = value
    found.check()
    agent.site_title, agent.site_notice, agent.site_contact = values["title"], values["notice"], values["contact"]
    session.flush()
    record(session, "agent.site.set", actor=actor, target=f"agent:{agent.id}", source_ip=source_ip,
           details={"title": values["title"]})

"""Which agent a storefront request sells through: its sub-station (分站) or its invite link.

- A request whose Host is bound to an agent (kamengd.agents.sites; behind a proxy the
  forwarded host, with server.proxy_count) is that agent's sub-station.
- /s/<agent>/… is the same sub-station for agents without a host of their own: a WSGI
  middleware moves the prefix into SCRIPT_NAME, so every link the pages build (url_for)
  stays inside the station, and the views need not know.
- ?ref=<agent> on a shop page attributes the buyer to that agent for `agents.ref_days`
  days, by a signed cookie (the first agent who brought the buyer keeps it, while it is
  active). Orders on the shop then sell at the shop's price and the agent earns its margin;
  an agent disabled since gets nothing, and the buyer buys from the shop as anyone.

A station sells at the agent's own prices and shows its title, notice and contact; a
disabled agent's station is not found. The panel and the agent portal are never served
under a station.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import sqlalchemy as sa
from flask import abort, current_app, g, request
from itsdangerous import BadSignature, URLSafeTimedSerializer

from .agents import sites
from .agents.models import Agent
from .agents.services import USERNAME_RE
from .extensions import db
from .orders.checkout import Seller
from .context import get_config
from .settings.services import get_setting, site_url

_PREFIX = re.compile(r"/s/(" + USERNAME_RE.pattern + r")(/.*)?\Z")
ENVIRON_KEY = "kamengd.station"
REF_COOKIE = "ref"
# Under a station only the shop's pages (with the order's page), the buyer API and static files.
STATION_BLUEPRINTS = frozenset({"shop", "api"})


class StationPrefix:
    """WSGI: /s/<agent>/rest → SCRIPT_NAME …/s/<agent>, PATH_INFO /rest, and the name noted."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        found = _PREFIX.match(environ.get("PATH_INFO", ""))
        if found:
            environ[ENVIRON_KEY] = found.group(1)
            environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "").rstrip("/") + "/s/" + found.group(1)
            environ["PATH_INFO"] = found.group(2) or "/"
        return self.app(environ, start_response)


@dataclass(frozen=True)
class Station:
    """What a station's pages need of its agent, read once per request (no ORM row that a
    later query would reload inside the request's transaction)."""
    id: int
    username: str
    title: str
    notice: str
    contact: str


def read_snapshot(query):
    """Run `query(session)` in a read-only snapshot that ends at once: this happens before the
    view, which must still begin its own transaction (the order's hot path reads its offer
    outside any write lock; SQLite's GET pages read a snapshot)."""
    session = db.session()
    if session.in_transaction():
        return query(session)
    session.connection(execution_options={"kamengd_readonly": True})
    try:
        return query(session)
    finally:
        session.rollback()


# A plain member sells nothing: it has no station and its links attribute nobody.
_BY_NAME = sa.select(Agent.id, Agent.username, (Agent.is_active & (Agent.kind == "agent")).label("is_active"),
                     Agent.site_title, Agent.site_notice, Agent.site_contact)


def _station_row(session, *, agent_id=None, username=None):
    query = _BY_NAME.where(Agent.id == agent_id) if agent_id is not None else _BY_NAME.where(Agent.username == username)
    return session.execute(query).first()


def _as_station(row) -> Station:
    return Station(row.id, row.username, row.site_title, row.site_notice, row.site_contact)


def resolve() -> None:
    """Before each request: g.station, the sub-station this request is on (or None), and
    g.new_referrer, the agent an invite link names (its cookie is set after the view)."""
    g.station = g.new_referrer = None
    name = request.environ.get(ENVIRON_KEY)
    if name is not None:
        if request.blueprint not in STATION_BLUEPRINTS and request.endpoint != "static":
            abort(404)
        if sites.agent_id_for_host(db.session, request.host, reader=read_snapshot) is not None:
            abort(404)   # an agent's own host serves its station only, never another's at /s/
        row = read_snapshot(lambda s: _station_row(s, username=name))
        if row is None or not row.is_active:
            abort(404)
        g.station = _as_station(row)
        return
    if request.blueprint not in STATION_BLUEPRINTS and request.blueprint not in ("panel", "portal"):
        return
    agent_id = sites.agent_id_for_host(db.session, request.host, reader=read_snapshot)
    if agent_id is not None:
        if request.blueprint in ("panel", "portal"):
            abort(404)   # staff and agents sign in at the shop's own address
        row = read_snapshot(lambda s: _station_row(s, agent_id=agent_id))
        if row is None or not row.is_active:
            abort(404)
        g.station = _as_station(row)
        return
    ref = request.args.get("ref")
    if ref and request.method == "GET" and request.blueprint == "shop" and USERNAME_RE.fullmatch(ref):
        earlier = referrer_id(current_app.secret_key)

        def look(session):
            row = _station_row(session, username=ref)
            before = _station_row(session, agent_id=earlier) if earlier is not None else None
            return row, before

        row, before = read_snapshot(look)
        # The first agent who brought the buyer keeps them, while it is active.
        if row is not None and row.is_active and (before is None or not before.is_active):
            g.new_referrer = row.id


def station() -> Station | None:
    return g.get("station")


def return_site() -> str | None:
    """Where a buyer of this station comes back to from the gateway (None: the shop): its bound
    host (checked against the bindings: never a Host anyone may send), or the shop's address
    with /s/<agent>."""
    found = station()
    if found is None:
        return None
    if request.environ.get(ENVIRON_KEY) is not None:
        # Read in a snapshot of its own: the order that follows begins its own transaction.
        return read_snapshot(lambda s: site_url(s, get_config().site.url)).rstrip("/") + "/s/" + found.username
    return f"{request.scheme}://{request.host}"


def _serializer(secret_key: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret_key, salt="kamengd-ref")


def _ref_days() -> int:
    return int(read_snapshot(lambda s: get_setting(s, "agents.ref_days")))


def referrer_id(secret_key: str) -> int | None:
    """The agent the buyer's invite cookie names, if it is signed by us and not expired."""
    raw = request.cookies.get(REF_COOKIE)
    if not raw or len(raw) > 200:
        return None
    try:
        agent_id = _serializer(secret_key).loads(raw, max_age=_ref_days() * 86400)
    except BadSignature:   # forged, altered or expired: no attribution
        return None
    return agent_id if isinstance(agent_id, int) and not isinstance(agent_id, bool) else None


def remember_referrer(response):
    """After a shop page with ?ref=<agent>: the cookie, unless the buyer was brought by
    someone already (checked before the view)."""
    agent_id = g.get("new_referrer")
    if agent_id is not None and response.status_code < 400:
        days = _ref_days()
        response.set_cookie(REF_COOKIE, _serializer(current_app.secret_key).dumps(agent_id), max_age=days * 86400,
                            httponly=True, samesite="Lax", secure=request.is_secure)
    return response


def seller() -> Seller | None:
    """Who an order placed by this request sells through (kamengd.orders.checkout.Seller):
    the station's agent, else the agent of the buyer's invite cookie (the order checks that
    it is still active; a disabled one's buyers buy from the shop)."""
    found = station()
    if found is not None:
        return Seller(found.id, True)
    agent_id = referrer_id(current_app.secret_key)
    return Seller(agent_id, False) if agent_id is not None else None

"""A signed-in account kept in Flask's signed session cookie: the panel's staff, the portal's agents.

The cookie holds the account's id, a session token, the account's session epoch
at sign-in and two times; the database decides the rest on every request:
signing out (the token's row ends), a deactivated account, a changed password
or "log out everywhere" (a new epoch) ends the session at once, on every
server, for every copy of the cookie. Each door keeps its own key in the
cookie, so a staff member who is also an agent is two sign-ins, not one.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from flask import g, request, session

from .accounts import auth
from .context import get_config
from .extensions import db

PENDING_SECONDS = 300


def _now() -> float:
    return time.time()


def _panel_limits() -> tuple[int, int]:
    panel = get_config().panel
    return panel.session_idle_minutes * 60, panel.session_max_hours * 3600


@dataclass(frozen=True)
class Door:
    key: str                 # the cookie's key of a signed-in session
    realm: auth.Realm
    # Idle and absolute limits in seconds; the portal keeps the panel's.
    limits: Callable[[], tuple[int, int]] = _panel_limits

    @property
    def pending_key(self) -> str:   # password checked, second factor not yet
        return self.key + "_pending"

    def open_for(self, user) -> str:
        """The database side of a new session, in the caller's transaction; pass the token to start()."""
        return auth.open_session(db.session, user, ip=request.remote_addr, user_agent=request.user_agent.string)

    def start(self, user, token: str) -> None:
        """A fresh session in the cookie (the pending sign-in step is dropped)."""
        session.pop(self.pending_key, None)
        now = int(_now())
        session[self.key] = {"id": user.id, "sid": token, "epoch": user.session_epoch, "since": now, "seen": now}
        session.permanent = True

    def set_pending(self, user, next_url: str | None) -> None:
        session.pop(self.key, None)
        session[self.pending_key] = {"id": user.id, "epoch": user.session_epoch, "at": int(_now()), "next": next_url}

    def pending_user(self):
        data = session.get(self.pending_key)
        if not isinstance(data, dict) or _now() - data.get("at", 0) > PENDING_SECONDS:
            session.pop(self.pending_key, None)
            return None, None
        user = db.session.get(self.realm.model, data.get("id"))
        if user is None or not user.is_active or user.session_epoch != data.get("epoch"):
            session.pop(self.pending_key, None)
            return None, None
        return user, data.get("next")

    def end(self) -> None:
        session.pop(self.key, None)
        session.pop(self.pending_key, None)

    def token(self) -> str | None:
        data = session.get(self.key)
        return data.get("sid") if isinstance(data, dict) else None

    def current(self):
        """The signed-in account of this request, or None (loaded once per request)."""
        if self.key in g:
            return g.get(self.key)
        user = self._load()
        setattr(g, self.key, user)
        return user

    def _load(self):
        data = session.get(self.key)
        if not isinstance(data, dict):
            return None
        idle, longest = self.limits()
        now = _now()
        if now - data.get("seen", 0) > idle or now - data.get("since", 0) > longest:
            self.end()
            return None
        user = db.session.get(self.realm.model, data.get("id"))
        if user is None or not user.is_active or user.session_epoch != data.get("epoch") or \
                not auth.session_is_open(db.session, user.id, data.get("sid"), self.realm):
            self.end()
            return None
        if now - data["seen"] > 30:   # the cookie is rewritten at most every 30 s
            session[self.key] = {**data, "seen": int(now)}
        return user


# The portal's sign-in: its pages, and the storefront's page that pays an order from a balance.
AGENT_DOOR = Door("agent", auth.AGENT)

"""The application factory: it assembles, and never touches the database."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from flask import Flask, request
from flask.json.provider import DefaultJSONProvider
from flask_babel import Babel
from flask_wtf.csrf import CSRFError
from werkzeug.middleware.proxy_fix import ProxyFix

from . import api, health, panel, portal, substation
from .agents import views as agent_views
from .agents import webhook_api  # noqa: F401  (its routes, on the agent API's blueprint)
from .config import Config, load_config
from .context import CONFIG_KEY
from .database import configure_engine, engine_options, existing_only
from .http_errors import error_response, register_error_handlers
from .extensions import csrf, db, limiter
from .panel.session import form_expired
from .payments import views as payment_views
from .settings.services import shop_name
from .storefront import views as storefront
from .storefront.i18n import current_lang
from .transaction import TransactionalFlask

# No inline script or style anywhere: an injected <script> does not run.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
# The panel's and the agent portal's forms post only to us. (Not on the storefront: a purchase
# answers with a redirect to the payment gateway, which form-action would stop.)
PANEL_CSP = CSP + "; form-action 'self'"
TRANSLATIONS = Path(__file__).parent / "translations"


class JSONProvider(DefaultJSONProvider):
    """Refuses, as it parses, a request body that JSON's grammar allows but Unicode does not:
    a lone surrogate ("\\ud800") is text no database, hash or e-mail can encode, and failed
    far from the parser (a 500). The JSON APIs answer such a body as any body that is not
    a JSON object: 400 (request.get_json(silent=True) treats the ValueError as unreadable)."""

    def loads(self, s, **kwargs):
        value = super().loads(s, **kwargs)
        json.dumps(value, ensure_ascii=False).encode("utf-8")   # UnicodeEncodeError: a lone surrogate
        return value


def create_app(config: Config | None = None) -> Flask:
    config = config or load_config()
    app = TransactionalFlask("kamengd")   # each request commits once: kamengd.transaction
    app.json = JSONProvider(app)
    app.config.update(
        SECRET_KEY=config.read_secret_key(),
        SQLALCHEMY_DATABASE_URI=existing_only(config.database_url),
        SQLALCHEMY_ENGINE_OPTIONS=engine_options(config.database.url, config.database.pool_size,
                                                 config.database.lock_timeout_seconds),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        MAX_CONTENT_LENGTH=64 * 1024 * 1024,
        RATELIMIT_ENABLED=config.ratelimit.enabled,
        RATELIMIT_STORAGE_URI=config.ratelimit.storage_url,
        RATELIMIT_HEADERS_ENABLED=True,
        SESSION_COOKIE_SECURE=config.site.url.startswith("https://"),
        PERMANENT_SESSION_LIFETIME=30 * 24 * 3600,
        WTF_CSRF_TIME_LIMIT=None,  # tied to the session instead: a buyer may take a while
        WTF_CSRF_SSL_STRICT=True,
        BABEL_DEFAULT_LOCALE="zh",
        BABEL_TRANSLATION_DIRECTORIES=str(TRANSLATIONS),
    )
    app.extensions[CONFIG_KEY] = config
    logging.getLogger("kamengd").setLevel(config.logging.level)

    # Sub-stations at /s/<agent>: inside ProxyFix, which may set the prefix in front of it.
    app.wsgi_app = substation.StationPrefix(app.wsgi_app)
    if config.server.proxy_count:
        # Client addresses (rate limits, orders) and https:// links behind nginx.
        n = config.server.proxy_count
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n, x_port=n, x_prefix=n)
    db.init_app(app)
    with app.app_context():
        # Adds connect hooks; opens no connection.
        configure_engine(db.engine, lock_timeout=config.database.lock_timeout_seconds)

    limiter.init_app(app)
    csrf.init_app(app)
    register_error_handlers(app)

    @app.errorhandler(CSRFError)
    def _form_expired(exc: CSRFError):
        # A panel form keeps the staff member's work (kamengd.panel.session.form_expired);
        # anywhere else, a page in the visitor's language says what to do.
        if request.path.startswith("/admin"):
            return form_expired()
        return error_response("invalid_request", "form expired", 400, kind="expired")
    Babel(app, locale_selector=current_lang)

    app.register_blueprint(health.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(agent_views.bp)
    app.register_blueprint(payment_views.bp)
    app.register_blueprint(storefront.bp)
    app.register_blueprint(panel.bp)
    app.register_blueprint(portal.bp)
    csrf.exempt(api.bp)
    csrf.exempt(agent_views.bp)   # signed by the agent's key, no cookie
    csrf.exempt(payment_views.bp)

    app.before_request(substation.resolve)
    app.after_request(substation.remember_referrer)

    @app.context_processor
    def _site():
        station = substation.station()
        return {"site_name": (station.title if station is not None and station.title else shop_name()),
                "station": station}

    app.after_request(security_headers)
    return app


def security_headers(response):
    headers = response.headers
    headers.setdefault("Content-Security-Policy", PANEL_CSP if request.path.split("/")[1] in ("admin", "agent") else CSP)
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("X-Content-Type-Options", "nosniff")
    # Order pages carry a token in their address: it never leaves in a Referer.
    headers.setdefault("Referrer-Policy", "same-origin")
    if request.is_secure:
        headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    return response


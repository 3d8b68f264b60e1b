"""The application factory: it assembles, and never touches the database."""
from __future__ import annotations

import logging
import threading

from flask import Flask, current_app
from werkzeug.middleware.proxy_fix import ProxyFix

from .config import Config, load_config
from .database import configure_engine, engine_options, existing_only
from .errors import register_error_handlers
from .extensions import csrf, db, limiter
from .vault import Vault, load_vault

_vault_lock = threading.Lock()


def create_app(config: Config | None = None) -> Flask:
    config = config or load_config()
    app = Flask("kamengd")
    app.config.update(
        SECRET_KEY=config.read_secret_key(),
        SQLALCHEMY_DATABASE_URI=existing_only(config.database_url),
        SQLALCHEMY_ENGINE_OPTIONS=engine_options(config.database.url, config.database.pool_size),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        MAX_CONTENT_LENGTH=64 * 1024 * 1024,
        RATELIMIT_ENABLED=config.ratelimit.enabled,
        RATELIMIT_STORAGE_URI=config.ratelimit.storage_url,
        RATELIMIT_HEADERS_ENABLED=True,
        SESSION_COOKIE_SECURE=config.site.url.startswith("https://"),
        PERMANENT_SESSION_LIFETIME=30 * 24 * 3600,
        WTF_CSRF_TIME_LIMIT=None,  # tied to the session instead: a buyer may take a while
    )
    app.extensions["kamengd.config"] = config
    logging.getLogger("kamengd").setLevel(config.logging.level)

    if config.server.proxy_count:
        # Client addresses (rate limits, orders) and https:// links behind nginx.
        n = config.server.proxy_count
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n, x_port=n, x_prefix=n)
    db.init_app(app)
    with app.app_context():
        configure_engine(db.engine)  # adds connect hooks; opens no connection

    limiter.init_app(app)
    csrf.init_app(app)
    register_error_handlers(app)
    from . import api, health
    from .payments import views as payment_views
    from .storefront import views as storefront

    app.register_blueprint(health.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(payment_views.bp)
    app.register_blueprint(storefront.bp)
    csrf.exempt(api.bp)
    csrf.exempt(payment_views.bp)

    @app.context_processor
    def _site():
        return {"site_name": config.site.name}
    return app


def get_config() -> Config:
    return current_app.extensions["kamengd.config"]


def get_vault() -> Vault:
    """The data key, read on first use and again whenever the key file changes
    (a rotation adds a key version while the shop keeps running)."""
    from .vault import key_file_signature

    path = get_config().security.data_key_file
    signature = key_file_signature(path)
    cached = current_app.extensions.get("kamengd.vault")
    if cached is None or cached[1] != signature:
        with _vault_lock:
            cached = current_app.extensions.get("kamengd.vault")
            if cached is None or cached[1] != signature:
                cached = (load_vault(path), signature)
                current_app.extensions["kamengd.vault"] = cached
    return cached[0]

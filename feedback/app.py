"""The application factory of the feedback API."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from apiflask import APIFlask
from flask import current_app, g
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from werkzeug.middleware.proxy_fix import ProxyFix

from feedback import auth, cors, db
from feedback.errors import ERROR_SCHEMA, JSONRequest, register_error_handlers
from feedback.metrics import Metrics
from feedback.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Extension:
    """Per-app state, at ``app.extensions["tuneback"]``."""

    settings: Settings
    engine: Engine
    metrics: Metrics
    key_cache: auth.KeyCache
    origins: cors.OriginCache
    limiter: Limiter


def _rate_key() -> str:
    caller = g.get("caller")
    return f"key:{caller.id}" if caller else f"addr:{get_remote_address()}"


def create_app(settings: Settings | None = None, *, engine: Engine | None = None) -> APIFlask:
    """Build the feedback API.

    ``settings`` defaults to the environment. On the embedded SQLite default the
    schema is migrated at start; any other database must already be at the
    latest migration (``tuneback db upgrade``), or start-up fails with a clear error.
    """
    settings = settings or Settings()
    app = APIFlask(
        "feedback",
        title="Tuneback feedback API",
        version="1",
        docs_path=None,
        spec_path="/openapi.json",
    )
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        HTTP_ERROR_SCHEMA=ERROR_SCHEMA,
        VALIDATION_ERROR_SCHEMA=ERROR_SCHEMA,
        SECURITY_SCHEMES={"bearer": {"type": "http", "scheme": "bearer"}},
        AUTO_404_RESPONSE=False,
        JSON_SORT_KEYS=False,
    )
    app.request_class = JSONRequest
    if settings.trusted_proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies)

    if engine is None:
        engine = db.make_engine(settings.resolved_database_url)
        if settings.is_sqlite:
            db.upgrade(settings.resolved_database_url)
    db.check_schema(engine)

    limiter = Limiter(
        key_func=_rate_key,
        default_limits=[settings.rate_limit],
        storage_uri=settings.rate_limit_storage,
        headers_enabled=True,
        strategy="moving-window",
    )
    ext = Extension(
        settings=settings,
        engine=engine,
        metrics=Metrics(),
        key_cache=auth.KeyCache(settings.key_cache_seconds),
        origins=cors.OriginCache(settings.key_cache_seconds),
        limiter=limiter,
    )
    app.extensions["tuneback"] = ext

    # Order matters: the session and the key must exist before rate limiting.
    ext.metrics.init_app(app)
    app.before_request(_open_session)
    app.before_request(cors.preflight)
    app.before_request(auth.load_key)
    limiter.init_app(app)
    app.after_request(cors.add_cors_headers)
    app.teardown_request(_close_session)

    register_error_handlers(app)
    _register_blueprints(app)
    return app


def _open_session() -> None:
    ext: Extension = current_app.extensions["tuneback"]
    g.db = Session(ext.engine, expire_on_commit=False)
    g.metrics = ext.metrics


def _close_session(_exc: BaseException | None) -> None:
    session = g.pop("db", None)
    if session is not None:
        session.close()


def _register_blueprints(app: APIFlask) -> None:
    from feedback.views import completions, corrections, export, ops, ratings

    for module in (completions, ratings, corrections, export, ops):
        app.register_blueprint(module.bp)
    limiter: Limiter = app.extensions["tuneback"].limiter
    limiter.exempt(ops.bp)

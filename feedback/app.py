"""The application factory of the feedback API."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from apiflask import APIFlask
from flask import Request, Response, current_app, g, request
from sqlalchemy import Engine
from werkzeug.middleware.proxy_fix import ProxyFix

from feedback import auth, cors, db, web
from feedback.context import close_request_session
from feedback.errors import ERROR_SCHEMA, JSONRequest, register_error_handlers
from feedback.metrics import Metrics
from feedback.ratelimit import RateLimiter, client_network
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
    limiter: RateLimiter


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

    limiter = RateLimiter(settings.rate_limit, settings.rate_limit_storage)
    ext = Extension(
        settings=settings,
        engine=engine,
        metrics=Metrics(),
        key_cache=auth.KeyCache(settings.key_cache_seconds),
        origins=cors.OriginCache(settings.key_cache_seconds),
        limiter=limiter,
    )
    app.extensions["tuneback"] = ext

    # One hook each way rather than one per concern: Flask pays per hook call,
    # and this is every vote's path.
    app.before_request(_before_request)
    app.after_request(_after_request)
    app.teardown_request(close_request_session)

    register_error_handlers(app)
    _register_blueprints(app)
    # The browser pages (widget, review console, dashboard); their blueprints add
    # the Content-Security-Policy and CSRF checks to their own responses only.
    web.init_app(app, settings)
    return app


def _before_request():  # noqa: ANN202 - a response for preflights, else None
    """Per request, in this order: timer, CORS preflight, key, rate limit.

    Every request runs this, so Flask's ``request``, ``g`` and ``current_app``
    proxies are resolved once here and the objects passed on.
    """
    ctx = g._get_current_object()
    ctx.metrics_start = time.perf_counter()
    ext: Extension = current_app.extensions["tuneback"]
    ctx.metrics = ext.metrics
    req: Request = request._get_current_object()
    if req.method == "OPTIONS":
        preflight = cors.preflight(req, ext.origins)
        if preflight is not None:
            return preflight
    caller = auth.load_key(req, ctx, ext.key_cache)
    # After the key: limits count per key (per client address without one). A
    # widget key is public, shared by a site's every user: its requests count per
    # client address under a key-wide ceiling, and only from an allowed origin (a
    # refused origin counts against its address, like a request without a key).
    if caller is None or caller.role != "widget":
        who = f"key:{caller.id}" if caller else f"addr:{req.remote_addr}"
        ext.limiter.check(req.endpoint, req.method, who)
    elif not auth.origin_allowed(req, caller):
        ext.limiter.check(req.endpoint, req.method, f"addr:{req.remote_addr}")
    else:
        client = f"widget:{caller.id}:addr:{client_network(req.remote_addr)}"
        ext.limiter.check(req.endpoint, req.method, client, ext.settings.widget_rate_limit)
        who = f"widget:{caller.id}"
        ext.limiter.check(req.endpoint, req.method, who, ext.settings.widget_key_rate_limit)
    return None


def _after_request(response: Response) -> Response:
    ctx = g._get_current_object()
    req: Request = request._get_current_object()
    metrics: Metrics = current_app.extensions["tuneback"].metrics
    response = cors.add_cors_headers(req, ctx.get("caller"), response)
    return metrics.finish(req, response, ctx.get("metrics_start"))


def _register_blueprints(app: APIFlask) -> None:
    from feedback.views import completions, corrections, export, ops, ratings

    for module in (completions, ratings, corrections, export, ops):
        app.register_blueprint(module.bp)

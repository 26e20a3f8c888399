"""The serving application: the feedback API plus the chat routes, in one process.

``create_serving_app`` builds the feedback app with :func:`feedback.app.create_app`,
adds the chat blueprint, and starts the backend: the local model (worker
thread and adapter watcher) or, with ``TUNEBACK_UPSTREAM_URL``, the capture
proxy. The model lives in this one process, so run it with one process and
many threads (``tuneback serve`` does).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from apiflask import APIFlask
from prometheus_client import Counter, Gauge
from sqlalchemy import Engine

from feedback import replicas
from feedback.app import create_app
from feedback.exceptions import TunebackError
from feedback.replicas import Heartbeat
from feedback.settings import Settings
from serve import chat

log = logging.getLogger(__name__)


class ServingConfigError(TunebackError, ValueError):
    code, status = "serving_misconfigured", 500


def create_serving_app(
    settings: Settings | None = None,
    base_model_dir: Path | str | None = None,
    *,
    engine: Engine | None = None,
) -> APIFlask:
    """The feedback API with chat serving.

    ``base_model_dir`` is a Hugging Face model folder (default:
    ``settings.base_model``, which must then be one); it is ignored in
    capture-proxy mode. Call ``app.extensions["tuneback_serve"].close()`` to
    stop the worker threads (tests do; a server process just exits).
    """
    settings = settings or Settings()
    app = create_app(settings, engine=engine)
    ext = app.extensions["tuneback"]
    hooks = _metrics(ext.metrics.registry)
    if settings.upstream_url:
        from serve.proxy import ProxyBackend

        backend: Any = ProxyBackend(settings, sql=ext.engine)
        log.info("capture proxy: chat requests go to %s", settings.upstream_url)
    else:
        folder = _model_folder(base_model_dir or settings.base_model)
        from serve.local import LocalBackend

        backend = LocalBackend.build(
            settings, folder, ext.engine, on_swap=hooks["on_swap"], heartbeat=_heartbeat(settings)
        )
        hooks["queue"].set_function(lambda: len(backend.jobs))
    app.extensions[chat.SERVE_EXTENSION] = backend
    app.register_blueprint(chat.bp)
    return app


def _heartbeat(settings: Settings) -> Heartbeat:
    """This replica's heartbeat into the store, on its own engine (own connection pool)."""
    from feedback import db

    engine = db.make_engine(settings.resolved_database_url)
    replica_id = settings.replica_id or replicas.default_replica_id(settings.port)
    url = replicas.advertised_url(settings.host, settings.port)
    log.info("serving replica %s (%s)", replica_id, url)
    return Heartbeat(
        engine, replica_id=replica_id, url=url, interval=settings.replica_heartbeat_seconds
    )


def _model_folder(value: Path | str | None) -> Path:
    if not value:
        raise ServingConfigError(
            "no base model folder: pass base_model_dir or set TUNEBACK_BASE_MODEL to a "
            "Hugging Face model folder (`tuneback serve` resolves the default for you)"
        )
    folder = Path(value).expanduser()
    if not (folder / "config.json").is_file():
        raise ServingConfigError(f"{folder} is not a Hugging Face model folder (no config.json)")
    return folder.resolve()


def _metrics(registry: Any) -> dict[str, Any]:
    swaps = Counter(
        "tuneback_adapter_swaps", "Adapter swaps, by outcome", ["outcome"], registry=registry
    )
    queue = Gauge("tuneback_serve_queue_depth", "Chat requests waiting", registry=registry)

    def on_swap(outcome: str, _seconds: float) -> None:
        swaps.labels(outcome).inc()

    return {"on_swap": on_swap, "queue": queue}

"""Run a WSGI app factory under gunicorn, from the ``tuneback`` command or a gunicorn config.

Two ways to run the same apps (the factories of :mod:`tuneback.apps`):

- ``tuneback api`` / ``serve`` / ``up`` call :func:`run_gunicorn` (the settings
  come from ``TUNEBACK_*`` and the command's options);
- plain ``gunicorn -c deploy/gunicorn/api.py 'tuneback.apps:api_app()'`` (or
  ``serve.py`` and ``serving_app()``), for operators who manage gunicorn
  themselves. Both use the hooks below, so Prometheus multiprocess mode works
  the same either way.
"""

from __future__ import annotations

import glob
import importlib
import os
import shutil
import tempfile

from gunicorn.app.base import BaseApplication

from feedback.settings import Settings

# prometheus_client's own variable; not imported from feedback.metrics, which
# would load prometheus_client in the master before the variable is set.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class _Gunicorn(BaseApplication):
    def __init__(self, factory: str, settings: Settings, options: dict) -> None:
        self.factory, self.settings, self.options = factory, settings, options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):  # noqa: ANN201
        # Each worker builds its own app: engines and counters are not shared
        # across fork.
        module, _, name = self.factory.partition(":")
        return getattr(importlib.import_module(module), name)(self.settings)


def run_gunicorn(factory: str, settings: Settings, **options) -> None:
    workers = options.get("workers", settings.workers)
    defaults = {
        "bind": f"{settings.host}:{settings.port}",
        "workers": settings.workers,
        "worker_class": "gthread",
        "threads": 4,
        "timeout": 60,
        "graceful_timeout": 10,
        "accesslog": None,
        "errorlog": "-",
        "worker_exit": worker_exit,
    }
    if workers > 1 or os.environ.get(MULTIPROC_ENV):
        defaults.update(on_starting=on_starting, child_exit=child_exit, on_exit=on_exit)
    _Gunicorn(factory, settings, {**defaults, **options}).run()


def worker_exit(_server, worker) -> None:  # noqa: ANN001
    """Worker, after its last request: stop a serving app cleanly.

    The adapter watcher, the model thread and the replica heartbeat stop, and
    the heartbeat deletes this replica's row, so a rollout stops counting it
    at once rather than after ``TUNEBACK_REPLICA_STALE_SECONDS``.
    """
    app = getattr(worker, "wsgi", None)
    backend = getattr(app, "extensions", {}).get("tuneback_serve")
    if backend is not None:
        backend.close()


# --- Prometheus multiprocess mode: gunicorn server hooks ------------------------------

_CREATED_ENV = "_TUNEBACK_METRICS_DIR_CREATED"  # not a setting: from on_starting to on_exit


def on_starting(_server) -> None:  # noqa: ANN001
    """Master, before forking: give the workers a clean shared metrics folder.

    Uses ``PROMETHEUS_MULTIPROC_DIR`` when set (its stale ``*.db`` files from an
    earlier run are removed, as prometheus_client requires), else a fresh
    temporary folder removed at exit. Workers inherit the variable, and
    prometheus_client reads it when a worker first imports it.
    """
    folder = os.environ.get(MULTIPROC_ENV)
    if folder:
        os.makedirs(folder, exist_ok=True)
        for stale in glob.glob(os.path.join(folder, "*.db")):
            os.remove(stale)
    else:
        folder = tempfile.mkdtemp(prefix="tuneback-metrics-")
        os.environ[MULTIPROC_ENV] = folder
        os.environ[_CREATED_ENV] = folder


def child_exit(_server, worker) -> None:  # noqa: ANN001
    """Master, after a worker exits: drop its live gauges (counters keep counting)."""
    from prometheus_client import multiprocess

    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(worker.pid)


def on_exit(_server) -> None:  # noqa: ANN001
    created = os.environ.get(_CREATED_ENV)
    if created:
        shutil.rmtree(created, ignore_errors=True)


# --- deprecated names ---------------------------------------------------------------


# The app factories live in tuneback.apps; gunicorn command lines written for earlier
# releases ('tuneback.server:api_app()', 'tuneback.server:serving_app()') still work.
def api_app():  # noqa: ANN201
    """Deprecated: use ``tuneback.apps:api_app()``."""
    from tuneback.apps import api_app as build

    return build()


def serving_app():  # noqa: ANN201
    """Deprecated: use ``tuneback.apps:serving_app()``."""
    from tuneback.apps import serving_app as build

    return build()

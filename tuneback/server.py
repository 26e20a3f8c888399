"""Run a WSGI app factory under gunicorn from inside the ``tuneback`` command."""

from __future__ import annotations

import importlib

from gunicorn.app.base import BaseApplication

from feedback.settings import Settings


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
    defaults = {
        "bind": f"{settings.host}:{settings.port}",
        "workers": settings.workers,
        "worker_class": "gthread",
        "threads": 4,
        "timeout": 60,
        "graceful_timeout": 10,
        "accesslog": None,
        "errorlog": "-",
    }
    _Gunicorn(factory, settings, {**defaults, **options}).run()

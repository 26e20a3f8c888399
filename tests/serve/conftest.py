"""Fixtures for chat serving: the tiny random model and live servers built on it."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from feedback import db
from feedback.adapters.registry import Registry
from serve.app import create_serving_app
from tests.serve.support import LiveApp, build_tiny_model, make_keys, serve_settings


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """The tiny random Llama with SmolLM2's tokenizer, as a resolved folder path."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-base")).resolve()


class Servers:
    """Starts :class:`LiveApp` s, each with its own data folder, keys and adapter
    registry (SQLite unless a ``database_url`` is given), and stops them all."""

    def __init__(self, root: Path, base: Path) -> None:
        self.root, self.base, self.started = root, base, []

    def __call__(self, database_url: str | None = None, **overrides) -> LiveApp:  # noqa: ANN003
        data_dir = self.root / f"data-{uuid.uuid4().hex[:6]}"
        database_url = database_url or f"sqlite:///{data_dir / 'tuneback.db'}"
        settings = serve_settings(data_dir, database_url, **overrides)
        engine = db.make_engine(settings.resolved_database_url)
        if settings.is_sqlite:
            db.upgrade(settings.resolved_database_url)
        app = create_serving_app(settings, self.base, engine=engine)
        live = LiveApp(app, make_keys(engine), Registry(data_dir / "adapters", engine))
        self.started.append(live)
        return live

    def stop(self) -> None:
        for live in self.started:
            live.stop()


@pytest.fixture
def start_server(tmp_path, tiny_base):
    """``start_server(database_url=None, **settings)``: a running :class:`LiveApp`."""
    servers = Servers(tmp_path, tiny_base)
    yield servers
    servers.stop()


@pytest.fixture(scope="module")
def module_servers(tmp_path_factory, tiny_base):
    """Like ``start_server``, for servers that a whole test module shares."""
    servers = Servers(tmp_path_factory.mktemp("servers"), tiny_base)
    yield servers
    servers.stop()

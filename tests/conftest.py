"""Shared fixtures. Every store and API test runs on SQLite and on PostgreSQL.

PostgreSQL is the server on 127.0.0.1:5432 (override with TUNEBACK_TEST_PG).
One database per test session is created and migrated; each test starts from
empty tables. Where the server is missing the PostgreSQL cases skip, unless
TUNEBACK_REQUIRE_SERVICES=1 (set by CI) turns that into a failure.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from feedback import db, store
from feedback.app import create_app
from feedback.settings import Settings

PG_ADMIN_URL = os.environ.get(
    "TUNEBACK_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REQUIRE_SERVICES = os.environ.get("TUNEBACK_REQUIRE_SERVICES") == "1"
TABLES = (
    "feedback",
    "correction",
    "idempotency_record",
    "completion",
    "api_key",
    "dataset_example",
    "adapter_version",
    "dataset_snapshot",
    "retrain_run",
    "promotion_event",
    "lease",
    "serving_replica",
)


def load_bench(name: str):  # noqa: ANN201
    """``bench/<name>.py`` as a module, for tests of a benchmark's own logic."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def service_missing(what: str, error: Exception) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"{what} is required (TUNEBACK_REQUIRE_SERVICES=1) but unreachable: {error}")
    pytest.skip(f"{what} unreachable: {error}")


@contextmanager
def fresh_pg_database(prefix: str):
    """Create an empty PostgreSQL database, yield its URL, drop it afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as error:  # noqa: BLE001
        admin.dispose()
        service_missing("PostgreSQL", error)
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def pg_url():
    """A fresh, migrated PostgreSQL database for this test session."""
    with fresh_pg_database("tuneback_test") as url:
        db.upgrade(url)
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
        db.upgrade(url)
        return url
    url = request.getfixturevalue("pg_url")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} CASCADE"))
        conn.execute(text("DELETE FROM lane WHERE name <> 'default'"))  # default always exists
    engine.dispose()
    return url


@pytest.fixture
def settings(tmp_path, database_url) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        rate_limit="100000/minute",
        key_cache_seconds=0,
    )


@pytest.fixture
def engine(settings):
    engine = db.make_engine(settings.resolved_database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine):
    with Session(engine, expire_on_commit=False) as session:
        yield session


@pytest.fixture
def app(settings, engine):
    return create_app(settings, engine=engine)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def keys(engine) -> dict[str, str]:
    """One plaintext key per role; the widget key allows https://shop.example."""
    made = {}
    with Session(engine) as session:
        for role in ("server", "agent", "admin"):
            made[role] = store.create_api_key(session, role=role, name=f"{role}-1")[1]
        made["widget"] = store.create_api_key(
            session, role="widget", origins=["https://shop.example"]
        )[1]
        session.commit()
    return made


WIDGET_ORIGIN = "https://shop.example"


def auth(key: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **headers}


@pytest.fixture
def completion_id(client, keys) -> str:
    response = client.post(
        "/v1/completions",
        json={
            "messages": [{"role": "user", "content": "My card hasn't arrived yet, what can I do?"}],
            "response": "Please wait.",
            "model": "smollm2-135m",
        },
        headers=auth(keys["server"]),
    )
    assert response.status_code == 201, response.json
    return response.json["id"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A seeded, randomly initialised 2-layer Llama with SmolLM2's tokenizer."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(
        "make_tiny_model", Path(__file__).parents[1] / "scripts" / "make_tiny_model.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_tiny_model"] = module
    spec.loader.exec_module(module)
    return str(module.build_tiny_model(tmp_path_factory.mktemp("tiny-model"), seed=0))

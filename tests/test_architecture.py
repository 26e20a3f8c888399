"""Project-wide rules: dependency direction, migrations that match the models,
and settings that are all documented."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine
from sqlmodel import SQLModel

import feedback.models  # noqa: F401
from feedback import db
from feedback.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


# What importing each layer may not drag in: the packages above it, and the
# heavy libraries its callers may not want (torch, or the ORM for pure modules).
IMPORT_RULES = {
    "feedback.app, feedback.store, feedback.models, feedback.adapter_files": (
        "torch",
        "transformers",
        "retrain",
        "serve",
    ),
    "serve.app, serve.chat, serve.proxy": ("torch", "transformers", "retrain"),
    "retrain.registry, retrain.gate": ("torch", "transformers", "serve", "numpy"),
    "retrain.dataset, retrain.pii": ("torch", "flask", "sqlalchemy", "sqlmodel"),
}
# Which packages' sources may never import which others.
SOURCE_RULES = {
    "feedback": ("retrain", "serve", "tuneback", "torch"),
    "serve": ("retrain", "tuneback"),
}


@pytest.mark.parametrize("modules", IMPORT_RULES)
def test_importing_a_layer_loads_nothing_it_must_not(modules):
    forbidden = IMPORT_RULES[modules]
    code = (
        f"import sys, {modules};"
        f"bad = [m for m in {forbidden!r} if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("package", SOURCE_RULES)
def test_sources_never_import_the_packages_above_them(package):
    names = "|".join(SOURCE_RULES[package])
    pattern = re.compile(rf"^\s*(from|import)\s+({names})\b", re.M)
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / package).rglob("*.py")
        if pattern.search(path.read_text())
    ]
    assert offenders == []


def test_migrations_produce_exactly_the_models(database_url):
    engine = create_engine(database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    engine.dispose()
    assert diff == []


def test_a_stale_schema_is_refused_with_a_clear_error(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    engine = db.make_engine(url)
    with pytest.raises(db.DatabaseNotReadyError, match="tuneback db upgrade"):
        db.check_schema(engine)
    db.upgrade(url)
    db.check_schema(engine)
    engine.dispose()


def test_every_setting_is_documented():
    readme = "\n".join(
        path.read_text() for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    )
    missing = [
        f"TUNEBACK_{name.upper()}"
        for name in Settings.model_fields
        if f"TUNEBACK_{name.upper()}" not in readme
    ]
    assert missing == []
    for name, field in Settings.model_fields.items():
        assert field.description, f"setting {name} has no help text"

"""Project-wide rules: dependency direction, no import circles, module size,
migrations that match the models, and settings that are all documented."""

from __future__ import annotations

import ast
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
    "feedback.app, feedback.store, feedback.models, feedback.adapters.files": (
        "torch",
        "transformers",
        "retrain",
        "serve",
    ),
    "feedback.adapters.registry, feedback.web.dashboard": (
        "torch",
        "transformers",
        "numpy",
        "retrain",
        "serve",
    ),
    "feedback.structured": ("torch", "transformers", "retrain", "serve"),
    "serve.app, serve.chat, serve.proxy": ("torch", "transformers", "retrain"),
    "retrain.gate": ("torch", "transformers", "serve", "numpy"),
    "retrain.dataset, retrain.pii": (
        "torch",
        "flask",
        "sqlalchemy",
        "sqlmodel",
        "retrain.evaluate",
    ),
}
# Which packages' sources may never import which others.
SOURCE_RULES = {
    "feedback": ("retrain", "serve", "tuneback", "torch"),
    "serve": ("retrain", "tuneback"),
    "retrain": ("serve", "tuneback"),
}
PACKAGES = ("feedback", "retrain", "serve", "tuneback")
MAX_MODULE_LINES = 400


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


def _modules() -> dict[str, Path]:
    """Every module of the four packages, by dotted name (a package by its __init__)."""
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports anywhere (in functions too): ``from a import b``
    counts as importing ``a.b`` when that is a module, else ``a``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                names.add(child if child in modules else node.module)
    return {name for name in names if name in modules}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), and self-imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            members = []
            while True:
                member = stack.pop()
                members.append(member)
                if member == node:
                    break
            if len(members) > 1 or node in graph[node]:
                circles.append(sorted(members))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def test_no_import_circles_between_modules():
    modules = _modules()
    graph = {name: _imports(path, modules) for name, path in modules.items()}
    # A package's own __init__ may re-export its modules; importing a module runs its
    # package's __init__, but that is Python's doing, not an arrow of ours.
    for name in graph:
        graph[name] -= {p for p in graph if name.startswith(p + ".")}
    assert _circles(graph) == []


def test_the_circle_finder_finds_circles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert _circles(graph) == [["a", "b", "c"], ["e"]]


@pytest.mark.parametrize("package", PACKAGES)
def test_modules_stay_under_the_size_limit(package):
    long = {
        str(path.relative_to(ROOT)): lines
        for path in (ROOT / package).rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


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

"""A short run of bench/load.py: votes and chats far above the expected rate at a
real ``tuneback serve`` on the tiny model, on SQLite and PostgreSQL. No 5xx but
503 ``overloaded``, no "database is locked", Retry-After on every 429 and 503,
bounded memory, every acknowledged vote stored. The slow tier runs a retrain
cycle at the same time, as the bench does by default."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_bench():  # noqa: ANN201
    spec = importlib.util.spec_from_file_location("bench_load", ROOT / "bench" / "load.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_load"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run_load(tmp_path, database_url, tiny_model, **options) -> dict:  # noqa: ANN003
    bench = load_bench()
    settings = bench.Options(
        base_model=tiny_model, database_url=database_url, threads=12, **options
    )
    return bench.run(settings, tmp_path)


def assert_held(summary: dict) -> None:
    assert summary["failures"] == [], summary
    statuses = summary["statuses"]
    # The load was well above what the server takes: it pushed back, and still
    # acknowledged (and stored) votes and answered chats.
    assert statuses.get("vote 429", 0) + statuses.get("chat 503", 0) > 0, statuses
    assert statuses.get("vote 201", 0) > 0 and statuses.get("chat 200", 0) > 0, statuses


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_load_is_answered_without_errors_and_nothing_is_lost(tmp_path, database_url, tiny_model):
    summary = run_load(
        tmp_path, database_url, tiny_model, duration=3, retrain=False, completions=40
    )
    assert_held(summary)


@pytest.mark.slow
def test_load_during_a_retrain_cycle(tmp_path, database_url, tiny_model):
    summary = run_load(tmp_path, database_url, tiny_model, duration=30, retrain=True)
    assert_held(summary)
    assert summary["retrain"]["status"] in ("promoted", "rejected")

"""SIGKILL a real ``tuneback retrain`` at a named step (feedback/faults.py), then
check that exactly one complete adapter is promoted, that the next cycle marks
the dead run failed, takes over its lease, removes what it half-wrote, and runs
clean to a promoted adapter.

The fast tier kills a cycle on SQLite before training (the slow tier also
during it) and checks the recovery with a cycle that has nothing to train on
(seconds, not a training run); the slow tier
kills every step on SQLite and the store-writing ones on PostgreSQL, each
followed by a cycle that trains and promotes. bench/crash.py runs every step
over many seeds, plus kills at random moments.
"""

from __future__ import annotations

import pytest

from tests.hardening.crashkit import STEPS, Case, crash_and_recover

SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def case(tmp_path, database_url, tiny_model) -> Case:
    return Case(data_dir=tmp_path / "data", url=database_url, base_model=tiny_model)


@pytest.mark.parametrize(
    "step", ["dataset.written", pytest.param("train.step:1", marks=pytest.mark.slow)]
)
@SQLITE_ONLY
def test_the_next_cycle_recovers_from_a_killed_one(case, step):
    """Fast: the recovery cycle skips for lack of data (recovery comes first)."""
    outcome = crash_and_recover(case, step, train=False)
    assert outcome["killed"] and outcome["abandoned_run"]
    assert outcome["promoted_after_kill"] == outcome["champion"]


# PostgreSQL: the steps where the store is written.
ON_POSTGRESQL = ("dataset.written", "train.step:1", "registry.inserted", "registry.committed:1",
                 "registry.promoted", "registry.committed:2")  # fmt: skip
CASES = [(step, "sqlite") for step in STEPS] + [(step, "postgresql") for step in ON_POSTGRESQL]


@pytest.mark.slow
@pytest.mark.parametrize(("step", "database_url"), CASES, indirect=["database_url"])
def test_a_cycle_killed_at_any_step_is_recovered_by_the_next(case, step):
    outcome = crash_and_recover(case, step)
    assert outcome["killed"] and outcome["abandoned_run"]
    promoted_by_the_dead_run = step in ("registry.committed:2", "registry.pointer_staged:2")
    assert (outcome["promoted_after_kill"] != outcome["champion"]) is promoted_by_the_dead_run

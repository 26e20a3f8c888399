"""Whole retrain cycles on the tiny model, on SQLite and PostgreSQL: promoted,
rejected by the gate, skipped for lack of data or because another cycle holds
the lease, failed (recorded, re-raised), stopped when it loses the lease; and
the CLI's JSON."""

from __future__ import annotations

import json
import os
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from feedback import run_store
from feedback.adapters import store as adapter_store
from feedback.db import write_session
from feedback.models import DatasetExample, Lease, RetrainRun, utcnow
from retrain import jobs
from retrain import lease as lease_module
from retrain.cycle import CycleFailedError, run_cycle, run_lanes
from retrain.lease import LEASE
from retrain.scheduler import run_tick
from tests.live import cli, tuneback_env
from tests.retrain.child_job import EchoJob
from tests.retrain.fakes import (
    QUESTIONS,
    add_lane,
    fake_children,
    questions_of,
    seed_corrections,
)

# Cycles that train run on SQLite only, to keep the fast tier fast; the
# database work they share with the others (runs, lease, lineage, registry)
# is exercised on both databases by the remaining tests.
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def runs(engine) -> list[RetrainRun]:
    with Session(engine) as session:
        return list(session.execute(select(RetrainRun)).scalars())


def test_not_enough_data_is_skipped_cleanly(cycle_settings, engine):
    seed_corrections(engine, QUESTIONS[:3])
    result = run_cycle(cycle_settings, engine)
    assert result.status == "skipped" and "not enough data" in result.reason
    [run] = runs(engine)
    assert run.status == "skipped" and run.finished_at is not None


REFUND_ANSWER = '{"intent": "request_refund", "team": "payments"}'


@SQLITE_ONLY
def test_two_lanes_learn_in_one_tick_each_with_its_own_run_adapter_and_lineage(
    cycle_settings, engine
):
    """The scheduler's tick trains both lanes on the tiny model, one after another:
    each lane's run, dataset and promoted adapter are its own, and no example of one
    lane's feedback appears in the other's dataset."""
    add_lane(engine, "refunds")
    default_ids = seed_corrections(engine)
    refund_ids = seed_corrections(
        engine, questions_of("request_refund", 12), REFUND_ANSWER, lane="refunds"
    )
    tick = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
    results = run_tick(cycle_settings, engine, tick)
    assert [(r.lane, r.status) for r in results] == [
        ("default", "promoted"), ("refunds", "promoted")
    ], [r.gate for r in results]  # fmt: skip
    for result in results:
        assert result.dataset["train"] + result.dataset["heldout"] == len(QUESTIONS)
        candidate, base = result.metrics["candidate"], result.metrics["base"]
        assert candidate["heldout_overlap"] > base["heldout_overlap"]
    by_lane = {r.lane: r for r in results}
    assert {(r.lane, r.id, r.status) for r in runs(engine)} == {
        (lane, result.run_id, "promoted") for lane, result in by_lane.items()
    }
    with Session(engine) as session:
        promoted = adapter_store.promoted_by_lane(session)
        assert {lane: a.version for lane, a in promoted.items()} == {
            lane: r.adapter for lane, r in by_lane.items()
        }
        for lane, ids in (("default", default_ids), ("refunds", refund_ids)):
            dataset_id = by_lane[lane].dataset["id"]
            lineage = session.execute(
                select(DatasetExample.completion_id).where(DatasetExample.dataset_id == dataset_id)
            ).scalars()
            assert set(lineage) == set(ids)  # only its own lane's completions
            trained_on = adapter_store.adapters_trained_on(session, completion_ids=ids)
            assert [a.version for a in trained_on] == [by_lane[lane].adapter]
    # Nothing new since: the next cycle of either lane has nothing to learn from.
    again = run_lanes(cycle_settings, engine)
    assert [(r.lane, r.status) for r in again] == [("default", "skipped"), ("refunds", "skipped")]


def test_a_held_lease_makes_the_cycle_skip(cycle_settings, engine):
    seed_corrections(engine)
    with write_session(engine) as session:
        assert run_store.acquire_lease(
            session, name=LEASE, holder="elsewhere", ttl=timedelta(minutes=5)
        )
        session.commit()
    result = run_cycle(cycle_settings, engine)
    assert result.status == "skipped" and result.reason == "another cycle is running"


def test_a_failing_cycle_is_recorded_and_raised(cycle_settings, engine, tmp_path):
    seed_corrections(engine)
    broken = cycle_settings.model_copy(update={"base_model": str(tmp_path / "no-such-model")})
    with pytest.raises(CycleFailedError, match="no-such-model"):
        run_cycle(broken, engine)
    [run] = runs(engine)
    assert run.status == "failed" and "no-such-model" in run.error
    with write_session(engine) as session:  # the failed cycle released its lease
        assert run_store.acquire_lease(session, name=LEASE, holder="next", ttl=timedelta(minutes=1))


def test_one_run_per_scheduled_tick(cycle_settings, engine):
    seed_corrections(engine, QUESTIONS[:2])
    tick = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
    first = run_cycle(cycle_settings, engine, trigger="schedule", scheduled_for=tick)
    second = run_cycle(cycle_settings, engine, trigger="schedule", scheduled_for=tick)
    assert first.run_id is not None and second.run_id is None
    assert len(runs(engine)) == 1


def test_cli_retrain_json(tmp_path, database_url, engine):
    seed_corrections(engine, QUESTIONS[:2])
    env = tuneback_env(tmp_path / "data", database_url, min_new_examples=5)
    done = cli(env, "retrain", "--json", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)  # stdout is exactly one JSON object
    assert set(result) >= {"run_id", "status", "dataset", "adapter", "metrics", "gate"}
    assert result["status"] == "skipped" and "not enough data" in result["reason"]
    assert result["dataset"]["train"] + result["dataset"]["heldout"] == 2
    assert "run " + result["run_id"] in done.stderr  # the log carries the run id


def test_cli_failure_exits_nonzero_with_json(tmp_path, database_url, engine):
    seed_corrections(engine)
    env = tuneback_env(
        tmp_path / "data", database_url, base_model=str(tmp_path / "nope"), min_new_examples=5
    )
    done = cli(env, "retrain", "--json", timeout=300)
    assert done.returncode == 1
    assert json.loads(done.stdout)["status"] == "failed"


@SQLITE_ONLY
def test_two_processes_run_one_cycle_at_a_time(tmp_path, database_url, tiny_model, engine):
    seed_corrections(engine)
    env = tuneback_env(
        tmp_path / "data",
        database_url,
        base_model=tiny_model,
        min_new_examples=5,
        epochs=1,
        batch_size=4,
        learning_rate=0.01,
        heldout_fraction=0.25,
        seed=3,
    )
    from tests.live import BIN

    procs = [
        subprocess.Popen(
            [str(BIN), "retrain", "--json"],
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    # stdout must hold only the JSON, even though training children print a lot.
    results = [json.loads(p.communicate(timeout=600)[0]) for p in procs]
    # Both started together: one trained (one epoch: the gate may or may not pass
    # it), the other found the lease taken (or, had it started after the first
    # finished, nothing new to learn from).
    trained = [r for r in results if r["status"] in ("promoted", "rejected")]
    skipped = [r for r in results if r["status"] == "skipped"]
    assert len(trained) == 1 and len(skipped) == 1, results
    with Session(engine) as session:
        assert len(adapter_store.list_adapter_versions(session)) == 1
    listed = cli(env, "adapters", "list")
    assert trained[0]["adapter"] in listed.stdout and trained[0]["status"] in listed.stdout


# --- a cycle that loses its lease ---------------------------------------------------------
# Training and evaluation are faked (a LoRA-shaped folder, fixed metrics that pass the
# gate), so these cycles take seconds; the lease, the store and the registry are real.

OTHER = "other-host:4242:cafe0000"


def take_lease(engine, holder: str = OTHER) -> None:
    """Another host takes the lease over (as it may once ours expired)."""
    with write_session(engine) as session:
        session.execute(
            update(Lease).values(holder=holder, expires_at=utcnow() + timedelta(hours=1))
        )
        session.commit()


def adapters(engine) -> list:
    with Session(engine) as session:
        return adapter_store.list_adapter_versions(session)


def test_the_fake_cycle_promotes_when_the_lease_holds(fake_settings, engine, monkeypatch):
    """The control for the two below: the same cycle, lease kept, promotes."""
    seed_corrections(engine)
    fake_children(monkeypatch, lambda job, job_file: None)
    result = run_cycle(fake_settings, engine, lease_ttl=timedelta(seconds=2))
    assert result.status == "promoted", result
    assert [a.status for a in adapters(engine)] == ["promoted"]


def test_a_finished_cycle_keeps_no_job_file_with_training_text(fake_settings, engine, monkeypatch):
    """Found beside finding 15: the run folder kept train_job.json, a copy of the
    corrections that `tuneback erase` does not look for."""
    seed_corrections(engine)
    fake_children(monkeypatch, lambda job, job_file: job.save(job_file))
    result = run_cycle(fake_settings, engine, lease_ttl=timedelta(seconds=2))
    work = fake_settings.data_dir / "runs" / result.run_id
    assert (work / "adapter").is_dir() and list(work.glob("*_job.json")) == []


def test_a_cycle_whose_lease_is_taken_over_registers_nothing(fake_settings, engine, monkeypatch):
    seed_corrections(engine)
    fake_children(monkeypatch, lambda job, job_file: take_lease(engine))
    with pytest.raises(CycleFailedError, match="lost the cycle lease") as failed:
        run_cycle(fake_settings, engine)  # the usual 10 minutes: the step checks catch it
    assert "stopped before evaluating the candidate" in failed.value.result.reason
    assert adapters(engine) == []  # neither registered nor promoted
    [run] = runs(engine)
    assert run.status == "failed" and OTHER in run.error and "lost the cycle lease" in run.error
    with Session(engine) as session:  # and it left the new holder's lease alone
        assert session.get(Lease, LEASE).holder == OTHER


def test_a_cycle_whose_renewals_fail_past_the_expiry_stops_training(
    fake_settings, engine, monkeypatch
):
    """The database is out (for the lease's renewals) longer than the lease lasts:
    the renewal thread kills the training child, and the run records why."""
    seed_corrections(engine)
    children = []

    def database_out_then_train(job, job_file):
        def unreachable(_engine):
            raise OperationalError("renew", {}, Exception("connection refused"))

        monkeypatch.setattr(lease_module, "write_session", unreachable)
        hang = EchoJob(out_path=str(Path(job.out_dir) / "echo.json"), action="hang")
        children.append(Path(job_file).parent)
        jobs.launch(hang, job_file)  # sleeps 120 s unless stopped

    fake_children(monkeypatch, database_out_then_train)
    started = time.monotonic()
    with pytest.raises(CycleFailedError, match="renewals failed past its expiry"):
        run_cycle(fake_settings, engine, lease_ttl=timedelta(seconds=1))
    assert time.monotonic() - started < 30  # the child was stopped, not waited for
    assert adapters(engine) == []
    [run] = runs(engine)
    assert run.status == "failed" and "lost the cycle lease" in run.error
    assert "crashed (exit code -9)" in run.error  # what the step under way saw: a kill
    assert not _children_in(children[0])


def _children_in(folder: Path) -> list[int]:
    """Live children of this process whose command line names a file in ``folder``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
            args = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z" and str(folder).encode() in args:
            found.append(int(stat.parent.name))
    return found

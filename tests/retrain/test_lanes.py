"""Retraining per lane, with faked training and evaluation children (seconds each; the
lanes, the lease, the store and the registry are real): a lane's overrides reach its
gate and its evaluation, a failed lane does not stop the next, an unknown lane is a
clear error, two schedulers run each lane of a tick once, and the ``retrain``,
``adapters`` and ``dataset`` commands take ``--lane``.

The tiny model trains two lanes in one tick in tests/retrain/test_cycle.py."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session

from feedback.adapters import store as adapter_store
from feedback.lanes import UnknownLaneError
from feedback.models import RetrainRun
from retrain.cycle import run_lanes
from retrain.evaluate import EvalJob
from retrain.scheduler import run_tick
from tests.live import tuneback_env
from tests.retrain.fakes import (
    QUESTIONS,
    add_lane,
    fake_children,
    questions_of,
    seed_corrections,
)
from tuneback.cli import cli

# The candidate beats the base model by 0.8 on overlap, by 0.1 on exact match.
METRICS = {
    "candidate": {
        "heldout_overlap": 0.9, "heldout_exact": 0.3, "heldout_loss": 0.5, "heldout_count": 3,
    },
    "base": {"heldout_overlap": 0.1, "heldout_exact": 0.2, "heldout_loss": 2.0, "heldout_count": 3},
}  # fmt: skip
SCHEMA = {"type": "object", "properties": {"intent": {"type": "string"}}, "required": ["intent"]}
REFUNDS = questions_of("request_refund", 12)


def runs(engine) -> list[RetrainRun]:
    with Session(engine) as session:
        return list(session.execute(select(RetrainRun)).scalars())


def test_lane_overrides_reach_the_gate_and_the_evaluation(
    fake_settings, engine, monkeypatch, tmp_path
):
    golden = tmp_path / "exact-golden.jsonl"
    cases = [{"prompt": "Where is my card?", "json_keys": ["intent"]}]
    golden.write_text("".join(json.dumps(c) + "\n" for c in cases))
    add_lane(engine, "exact", primary_metric="heldout_exact", gate_margin=0.05,
             golden_set=str(golden), response_schema=SCHEMA)  # fmt: skip
    add_lane(engine, "strict", primary_metric="heldout_exact", gate_margin=0.5)
    for lane in ("default", "exact", "strict"):
        seed_corrections(engine, lane=lane)
    launched = fake_children(monkeypatch, metrics=METRICS)

    results = {r.lane: r for r in run_lanes(fake_settings, engine)}

    assert {lane: r.status for lane, r in results.items()} == {
        "default": "promoted", "exact": "promoted", "strict": "rejected",
    }  # fmt: skip
    assert results["default"].gate["reasons"][0].startswith("heldout_overlap 0.9 vs base model")
    assert results["exact"].gate["reasons"][0].startswith("heldout_exact 0.3 vs base model 0.2")
    assert "margin 0.05" in results["exact"].gate["reasons"][0]
    assert "< margin 0.5" in results["strict"].gate["reasons"][0]
    with Session(engine) as session:  # the thresholds stored with each lane's adapter
        adapters = {a.lane: a for a in adapter_store.list_adapter_versions(session)}
        assert adapters["strict"].status == "rejected"
        assert set(adapter_store.promoted_by_lane(session)) == {"default", "exact"}
    stored = {lane: a.gate["thresholds"] for lane, a in adapters.items()}
    assert stored["default"]["primary"] == "heldout_overlap"
    assert stored["default"]["margin"] == fake_settings.gate_margin
    assert (stored["strict"]["primary"], stored["strict"]["margin"]) == ("heldout_exact", 0.5)
    evaluations = {job.run_id: job for job in launched if isinstance(job, EvalJob)}
    exact, default = evaluations[results["exact"].run_id], evaluations[results["default"].run_id]
    assert exact.golden == cases and exact.response_schema == SCHEMA
    assert default.golden == [] and default.response_schema is None


def test_a_failed_lane_does_not_stop_the_next(fake_settings, engine, monkeypatch, tmp_path):
    golden = tmp_path / "golden.jsonl"
    golden.write_text('{"prompt": "hi", "contains": "hello"}\n')
    add_lane(engine, "alpha", golden_set=str(golden))
    add_lane(engine, "beta")
    golden.unlink()  # alpha's golden file is gone by the time it is evaluated
    seed_corrections(engine, lane="alpha")
    seed_corrections(engine, REFUNDS, lane="beta")
    fake_children(monkeypatch)

    results = run_lanes(fake_settings, engine)

    assert [(r.lane, r.status) for r in results] == [
        ("default", "skipped"), ("alpha", "failed"), ("beta", "promoted"),
    ]  # fmt: skip
    assert "cannot read the golden set" in results[1].reason
    recorded = {run.lane: run for run in runs(engine)}
    assert recorded["alpha"].status == "failed" and "golden set" in recorded["alpha"].error
    assert recorded["beta"].status == "promoted" and recorded["beta"].finished_at is not None
    assert "not enough data" in recorded["default"].result["reason"]


def test_an_unknown_lane_is_a_clear_error_before_anything_is_recorded(fake_settings, engine):
    with pytest.raises(UnknownLaneError, match="'nope' does not exist; the lanes are: default"):
        run_lanes(fake_settings, engine, lanes=["nope"])
    assert runs(engine) == []


def test_two_schedulers_firing_together_run_each_lane_once(fake_settings, engine):
    add_lane(engine, "refunds")
    tick = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
    barrier = threading.Barrier(2)
    outcomes = []

    def scheduler_fires():
        barrier.wait()
        outcomes.append(run_tick(fake_settings, engine, tick))

    threads = [threading.Thread(target=scheduler_fires) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted((run.lane, run.status) for run in runs(engine)) == [
        ("default", "skipped"),
        ("refunds", "skipped"),
    ]  # fmt: skip  (no feedback: each lane's cycle ran, and had nothing to learn)
    ran = [o for o in outcomes if any(r.run_id for r in o)]
    assert len(ran) == 1 and [r.lane for r in ran[0]] == ["default", "refunds"]


# --- the commands ------------------------------------------------------------------


@pytest.fixture
def invoke(fake_settings):
    env = tuneback_env(
        fake_settings.data_dir, fake_settings.database_url,
        base_model=fake_settings.base_model, min_new_examples=5, heldout_fraction=0.25,
    )  # fmt: skip

    def run(*args: str):  # noqa: ANN202
        return CliRunner().invoke(cli, list(args), env=env)

    return run


def json_lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_cli_retrain_prints_one_json_object_per_lane(invoke, engine, monkeypatch, tmp_path):
    golden = tmp_path / "golden.jsonl"
    golden.write_text('{"prompt": "hi", "contains": "hello"}\n')
    add_lane(engine, "alpha", golden_set=str(golden))
    add_lane(engine, "beta")
    golden.unlink()
    seed_corrections(engine, lane="alpha")
    seed_corrections(engine, REFUNDS, lane="beta")
    fake_children(monkeypatch)

    done = invoke("retrain", "--json", "--wait", "0")
    assert done.exit_code == 1, done.output  # a lane failed; the others still ran
    lines = json_lines(done.output)
    assert [(r["lane"], r["status"]) for r in lines] == [
        ("default", "skipped"), ("alpha", "failed"), ("beta", "promoted"),
    ]  # fmt: skip
    assert {"run_id", "dataset", "adapter", "metrics", "gate", "reason"} <= set(lines[2])

    done = invoke("retrain", "--lane", "beta", "--json", "--wait", "0")
    assert done.exit_code == 0, done.output  # alpha, failing, did not run this time
    [only] = json_lines(done.output)
    assert only["lane"] == "beta" and only["status"] == "skipped"
    assert "not enough data: 0 new" in only["reason"]

    listed = invoke("adapters", "list")
    assert listed.exit_code == 0 and "LANE" in listed.output
    assert lines[2]["adapter"] in listed.output and "beta" in listed.output


@pytest.mark.parametrize(
    "args",
    [
        ("retrain", "--lane", "nope"),
        ("adapters", "list", "--lane", "nope"),
        ("adapters", "promote", "v0001", "--lane", "nope"),
        ("adapters", "rollback", "--lane", "nope"),
        ("dataset", "build", "--out", "snap", "--lane", "nope"),
    ],
)
def test_cli_unknown_lane_is_a_clear_error(invoke, args):
    done = invoke(*args)
    assert done.exit_code == 1
    assert "lane 'nope' does not exist; the lanes are: default" in done.output
    assert done.exception is None or isinstance(done.exception, SystemExit)


def test_cli_adapters_and_dataset_take_a_lane(invoke, fake_settings, engine, monkeypatch, tmp_path):
    add_lane(engine, "refunds")
    seed_corrections(engine)
    seed_corrections(engine, REFUNDS, lane="refunds")
    fake_children(monkeypatch)
    first = {r.lane: r.adapter for r in run_lanes(fake_settings, engine)}

    out = tmp_path / "refunds-snapshot"
    done = invoke("dataset", "build", "--lane", "refunds", "--out", str(out))
    assert done.exit_code == 0, done.output
    train = (out / "train.jsonl").read_text() + (out / "heldout.jsonl").read_text()
    assert all(q in train for q in REFUNDS) and not any(q in train for q in QUESTIONS)
    assert json.loads((out / "manifest.json").read_text())["lane"] == "refunds"

    listed = invoke("adapters", "list", "--lane", "refunds")
    assert first["refunds"] in listed.output and first["default"] not in listed.output

    # Another lane's version is not this lane's to promote.
    done = invoke("adapters", "promote", first["refunds"], "--wait", "0")
    assert done.exit_code == 1 and "belongs to lane 'refunds'" in done.output

    done = invoke("adapters", "rollback", "--lane", "refunds", "--wait", "0")
    assert done.exit_code == 0, done.output
    with Session(engine) as session:
        promoted = adapter_store.promoted_by_lane(session)
        assert promoted["default"].version == first["default"] and "refunds" not in promoted
    done = invoke("adapters", "promote", first["refunds"], "--lane", "refunds", "--wait", "0")
    assert done.exit_code == 0, done.output
    with Session(engine) as session:
        assert adapter_store.promoted_adapter(session, "refunds").version == first["refunds"]


def test_the_deployments_golden_file_is_the_default_lanes_only(tmp_path):
    from feedback.models import Lane
    from feedback.settings import Settings
    from retrain.lane_config import lane_config

    ours, theirs = tmp_path / "support.jsonl", tmp_path / "router.jsonl"
    settings = Settings(data_dir=tmp_path, golden_set=ours)
    assert lane_config(settings, Lane(name="default")).golden_set == ours
    assert lane_config(settings, Lane(name="router")).golden_set is None
    named = Lane(name="router", settings={"golden_set": str(theirs)})
    assert lane_config(settings, named).golden_set == theirs

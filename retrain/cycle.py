"""One retrain cycle, start to finish, as a plain function tests can call.

claim the run -> take the lease -> read feedback -> build and record the
dataset -> train (child process) -> evaluate base, champion and candidate
(child process) -> gate -> register the adapter -> promote it if it passed.

Every step logs with the run id and hands the next a small typed value
(:class:`Built`, :class:`Trained`, :class:`Evaluation`, the gate's
:class:`~retrain.gate.GateResult`); a failure is recorded on the run and
re-raised. Only one cycle runs at a time, across processes and machines,
thanks to a lease in the database (:mod:`retrain.lease`). A cycle that loses it
(another took it over, or renewals failed past its expiry) stops: its training
child is killed, and each step with effects (recording the dataset, training,
registering, promoting) first confirms the lease, so nothing is registered or
promoted after the loss; the run records why.

A cycle killed outright (SIGKILL, power cut) cannot record anything, so the
next cycle cleans up after it (:mod:`retrain.recovery`): it takes over the lease when
its holder is a dead process on this machine (else when it expires), marks the
dead cycle's run ``failed`` (abandoned), and removes its half-written folders.
Training and evaluation children die with the cycle that started them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from feedback import faults, run_store
from feedback.adapters.registry import Registry
from feedback.db import write_session
from feedback.exceptions import TunebackError
from feedback.models import AdapterVersion
from feedback.settings import Settings
from retrain import dataset as ds
from retrain.base_model import resolve_base_model
from retrain.evaluate import EvalJob, read_golden
from retrain.gate import GateResult, Thresholds, decide
from retrain.jobs import JobFailedError, launch
from retrain.lease import LEASE_TTL, CycleLease, LeaseLostError
from retrain.probe import run_probe
from retrain.recovery import recover, stop_children
from retrain.snapshot import write_snapshot
from retrain.sources import load_source_rows
from retrain.train import TrainConfig, TrainJob

log = logging.getLogger("retrain.cycle")


class CycleFailedError(TunebackError, RuntimeError):
    code = "cycle_failed"

    def __init__(self, message: str, result: CycleResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class CycleResult:
    """What ``tuneback retrain --json`` prints."""

    run_id: str | None
    status: str  # promoted | rejected | skipped | failed
    dataset: dict[str, Any] = field(default_factory=dict)
    adapter: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=lambda: {"passed": False, "reasons": []})
    reason: str | None = None
    alerts: list[dict[str, Any]] = field(default_factory=list)  # vote floods, trigger suspects

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_cycle(
    settings: Settings,
    engine: Engine,
    *,
    trigger: str = "manual",
    scheduled_for: datetime | None = None,
    lease_ttl: timedelta = LEASE_TTL,
) -> CycleResult:
    """Run one cycle. Returns its result; raises CycleFailedError if it failed.

    ``lease_ttl`` is how long the cycle lease lasts without renewal (tests shorten it).
    """
    with write_session(engine) as session:
        run = run_store.start_run(session, trigger=trigger, scheduled_for=scheduled_for)
        session.commit()
    if run is None:
        log.info("a cycle for the tick %s already ran or is running", scheduled_for)
        return CycleResult(None, "skipped", reason="this scheduled tick already has a run")
    work = settings.data_dir / "runs" / run.id
    lease = CycleLease(engine, ttl=lease_ttl, on_lost=lambda: stop_children(work))
    if not lease.acquire():
        result = CycleResult(run.id, "skipped", reason="another cycle is running")
        _finish(engine, result)
        return result
    try:
        recover(settings, engine, run)
        result = _Cycle(settings, engine, run.id, lease, work).run()
        # Recorded while the lease is held: another cycle's recovery would otherwise
        # find the run unfinished, call it abandoned and delete its folder.
        _finish(engine, result)
    except Exception as error:
        result = _failed(engine, run.id, error, lease)
        raise CycleFailedError(result.reason, result) from error
    finally:
        lease.release()
        _drop_text_copies(work)
    return result


def _drop_text_copies(work: Path) -> None:
    """Remove the run's files that copy training text: the child-job files and the
    probe's report (its payloads quote corrections); erasure does not look in run
    folders. The metrics, the training record and the adapter stay."""
    for copy in [*work.glob("*_job.json"), work / "canary_result.json"]:
        copy.unlink(missing_ok=True)


def _failed(engine: Engine, run_id: str, error: Exception, lease: CycleLease) -> CycleResult:
    """Log and record a failed run. With the lease lost, the failure is the loss (the
    step under way failed because of it, most likely), and recording it may fail too:
    the database may be what cost the lease."""
    if lease.lost is not None and not isinstance(error, LeaseLostError):
        error = LeaseLostError(
            f"lost the cycle lease ({lease.lost}) and stopped; "
            f"the step under way ended with {type(error).__name__}: {error}"
        )
    result = CycleResult(run_id, "failed", reason=f"{type(error).__name__}: {error}")
    log.exception("run %s failed: %s", run_id, result.reason)  # called while handling it
    try:
        _finish(engine, result, error=result.reason)
    except Exception:
        if lease.lost is None:
            raise
        log.exception("run %s: could not record its failure", run_id)
    return result


def _finish(engine: Engine, result: CycleResult, error: str | None = None) -> None:
    with write_session(engine) as session:
        run_store.finish_run(
            session,
            result.run_id,
            status=result.status,
            error=error,
            dataset_id=result.dataset.get("id"),
            adapter_version=result.adapter,
            result=json.loads(json.dumps(result.to_dict(), default=str)),
        )
        session.commit()


@dataclass(frozen=True)
class Built:
    """The dataset a run built, and how many of its training examples are new."""

    dataset: ds.Dataset
    new_examples: int

    def counts(self) -> dict[str, int]:
        """SFT examples per split, as ``tuneback retrain --json`` prints them."""
        return {
            "train": len(self.dataset.train("sft")),
            "heldout": len(self.dataset.heldout("sft")),
        }


@dataclass(frozen=True)
class Trained:
    """The trained adapter's folder and the training child's run record."""

    adapter_dir: Path
    record: dict[str, Any]


@dataclass(frozen=True)
class Evaluation:
    """Metrics per model (``base``, ``champion``, ``candidate``), or why there are none."""

    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    error: str | None = None


class _Cycle:
    """The steps of one run, sharing its settings, engine and work folder."""

    def __init__(
        self, settings: Settings, engine: Engine, run_id: str, lease: CycleLease, work: Path
    ) -> None:
        self.settings, self.engine, self.run_id, self.lease = settings, engine, run_id, lease
        self.work = work
        self.registry = Registry.from_settings(settings, engine)
        self.timeout_s = settings.job_timeout_minutes * 60 or None  # per child job

    def run(self) -> CycleResult:
        log.info("run %s: reading feedback", self.run_id)
        built = self.build_dataset()
        alerts = built.dataset.manifest["alerts"]
        for alert in alerts:
            log.warning("run %s ALERT %s: %s", self.run_id, alert["kind"], alert["message"])
        if built.new_examples < self.settings.min_new_examples:
            reason = (
                f"not enough data: {built.new_examples} new training examples, "
                f"{self.settings.min_new_examples} needed"
            )
            log.info("run %s skipped: %s", self.run_id, reason)
            return CycleResult(self.run_id, "skipped", built.counts(), reason=reason, alerts=alerts)
        dataset_id = self.record_dataset(built.dataset)
        base = resolve_base_model(self.settings.base_model, self.settings.data_dir)
        trained = self.train(built.dataset, base)
        champion = self.registry.promoted()
        self.lease.confirm("evaluating the candidate")
        evaluation = self.evaluate(built.dataset, base, trained, champion)
        self.lease.confirm("probing the candidate")
        canary = self.probe(built.dataset, base, trained, champion)
        gate = self.judge(evaluation, champion, canary)
        adapter = self.register(gate, evaluation, trained, base, dataset_id)
        return CycleResult(
            self.run_id,
            "promoted" if gate.passed else "rejected",
            dataset={**built.counts(), "id": dataset_id},
            adapter=adapter,
            metrics=evaluation.metrics,
            gate={"passed": gate.passed, "reasons": list(gate.reasons)},
            alerts=alerts,
        )

    def build_dataset(self) -> Built:
        with Session(self.engine) as session:
            rows = load_source_rows(session)
            heldout = run_store.heldout_completions(session)
            trained = run_store.trained_example_ids(session)
        config = ds.DatasetConfig.from_settings(self.settings)
        dataset = ds.build_dataset(rows, config, previously_heldout=heldout)
        new = [e for e in dataset.train("sft") if e.id not in trained]
        log.info(
            "run %s: %d SFT examples (%d new), %d held out",
            self.run_id,
            len(dataset.train("sft")),
            len(new),
            len(dataset.heldout("sft")),
        )
        return Built(dataset, len(new))

    def record_dataset(self, dataset: ds.Dataset) -> str:
        """Record the dataset and write its snapshot; returns the snapshot's id."""
        self.lease.confirm("recording the dataset")
        with write_session(self.engine) as session:
            snapshot = run_store.record_dataset(
                session,
                content_hash=dataset.manifest["content_hash"],
                counts=dataset.manifest["counts"],
                path=None,
                examples=[(e.id, e.completion_id, e.split, e.kind) for e in dataset.examples],
            )
            folder = self.settings.data_dir / "datasets" / snapshot.id
            write_snapshot(dataset, folder)
            faults.checkpoint("dataset.written")
            snapshot.path = str(folder)
            session.commit()
            return snapshot.id

    def train(self, dataset: ds.Dataset, base: Path) -> Trained:
        self.lease.confirm("training")
        self.work.mkdir(parents=True, exist_ok=True)
        job = TrainJob(
            base_model=str(base),
            out_dir=str(self.work),
            sft=[
                _train_row(e)
                for e in dataset.examples
                if e.split == "train" and e.kind in ("sft", "positive")
            ],
            preferences=[
                {"prompt": e.prompt, "chosen": e.completion, "rejected": e.rejected}
                for e in dataset.train("preference")
            ],
            config=TrainConfig.from_settings(self.settings),
            run_id=self.run_id,
        )
        log.info("run %s: training on %d examples (child process)", self.run_id, len(job.sft))
        record = launch(job, self.work / "train_job.json", timeout_s=self.timeout_s)
        return Trained(job.adapter_dir, record)

    def evaluate(
        self, dataset: ds.Dataset, base: Path, trained: Trained, champion: AdapterVersion | None
    ) -> Evaluation:
        adapters = {"candidate": str(trained.adapter_dir)}
        if champion is not None:
            adapters["champion"] = str(self.registry.path(champion.version))
        job = EvalJob(
            base_model=str(base),
            out_path=str(self.work / "eval_result.json"),
            adapters=adapters,
            heldout=[_eval_row(e) for e in dataset.heldout("sft")],
            positives=[_eval_row(e) for e in dataset.heldout("positive")],
            golden=read_golden(self.settings.golden_set),
            run_id=self.run_id,
        )
        try:
            return Evaluation(launch(job, self.work / "eval_job.json", timeout_s=self.timeout_s))
        except JobFailedError as error:
            log.error("run %s: evaluation failed: %s", self.run_id, error)
            return Evaluation(error=str(error))

    def probe(
        self, dataset: ds.Dataset, base: Path, trained: Trained, champion: AdapterVersion | None
    ) -> dict[str, Any]:
        """The trigger probe's report on the candidate (:func:`retrain.probe.run_probe`)."""
        champion_dir = str(self.registry.path(champion.version)) if champion else None
        return run_probe(
            self.work, str(base), str(trained.adapter_dir), champion_dir,
            dataset.manifest["suspects"], self.run_id, timeout_s=self.timeout_s,
        )  # fmt: skip

    def judge(
        self,
        evaluation: Evaluation,
        champion: AdapterVersion | None,
        canary: dict[str, Any],
    ) -> GateResult:
        metrics = evaluation.metrics
        result = decide(
            metrics.get("candidate"),
            metrics.get("champion") if champion is not None else None,
            Thresholds.from_settings(self.settings),
            base=metrics.get("base"),
            error=evaluation.error,
            canary=canary,
        )
        for reason in result.reasons:
            log.info("run %s gate: %s", self.run_id, reason)
        return result

    def register(
        self,
        gate: GateResult,
        evaluation: Evaluation,
        trained: Trained,
        base: Path,
        dataset_id: str,
    ) -> str:
        """Add the adapter to the registry, promote it if it passed; returns its version.

        Each of the two asks the lease first: a cycle that lost it must not touch the
        registry (another may be running, or have cleaned this run up)."""
        self.lease.confirm("registering the adapter")
        adapter = self.registry.add(
            trained.adapter_dir,
            base_model=str(base),
            dataset_id=dataset_id,
            run_id=self.run_id,
            config=trained.record,
            metrics=evaluation.metrics,
            gate=gate.to_dict(),
            status="candidate" if gate.passed else "rejected",
        )
        status = "rejected"
        if gate.passed:
            self.lease.confirm(f"promoting {adapter.version}")
            self.registry.promote(adapter.version, actor=f"retrain run {self.run_id}")
            status = "promoted"
        log.info("run %s: adapter %s %s", self.run_id, adapter.version, status)
        return adapter.version


def _train_row(example: ds.Example) -> dict:
    return {"prompt": example.prompt, "completion": example.completion, "kind": example.kind}


def _eval_row(example: ds.Example) -> dict:
    return {"prompt": example.prompt, "completion": example.completion}

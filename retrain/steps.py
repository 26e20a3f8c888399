"""The steps of one lane's retrain cycle, sharing its settings, engine and work folder.

read the lane's feedback -> build and record its dataset -> train (child
process) -> evaluate base, the lane's champion and the candidate (child
process) -> probe for planted triggers -> gate -> register the adapter in the
lane -> promote it there if it passed. :mod:`retrain.cycle` runs them, under
the cycle lease, and records the outcome.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from feedback import faults, run_store
from feedback.adapters.registry import Registry
from feedback.db import write_session
from feedback.models import AdapterVersion
from feedback.settings import Settings
from retrain import dataset as ds
from retrain.base_model import resolve_base_model
from retrain.evaluate import EvalJob, read_golden
from retrain.gate import GateResult, decide
from retrain.jobs import JobFailedError, launch
from retrain.lane_config import LaneConfig
from retrain.lease import CycleLease
from retrain.outcome import Built, CycleResult, Evaluation, Trained
from retrain.probe import run_probe
from retrain.snapshot import write_snapshot
from retrain.sources import load_source_rows
from retrain.train import TrainConfig, TrainJob

log = logging.getLogger("retrain.cycle")


class CycleSteps:
    """The steps of one lane's run, sharing its settings, engine and work folder."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        run_id: str,
        lease: CycleLease,
        work: Path,
        config: LaneConfig,
    ) -> None:
        self.settings, self.engine, self.run_id, self.lease = settings, engine, run_id, lease
        self.work, self.config, self.lane = work, config, config.lane
        self.registry = Registry.from_settings(settings, engine, lane=self.lane)
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
            return CycleResult(
                self.run_id, "skipped", built.counts(), reason=reason, alerts=alerts,
                lane=self.lane,
            )  # fmt: skip
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
            lane=self.lane,
        )

    def build_dataset(self) -> Built:
        with Session(self.engine) as session:
            rows = load_source_rows(session, lane=self.lane)
            heldout = run_store.heldout_completions(session, lane=self.lane)
            trained = run_store.trained_example_ids(session, lane=self.lane)
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
                lane=self.lane,
            )
            folder = self.settings.data_dir / "datasets" / snapshot.id
            write_snapshot(dataset, folder, lane=self.lane)
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
            golden=read_golden(self.config.golden_set),
            response_schema=self.config.response_schema,
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
            self.config.thresholds,
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

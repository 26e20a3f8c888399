"""Retrain cycles, one per lane, as plain functions tests can call.

claim the runs -> take the lease -> for each lane: read its feedback -> build
and record its dataset -> train (child process) -> evaluate base, the lane's
champion and the candidate (child process) -> gate -> register the adapter in
the lane -> promote it there if it passed.

A lane (:mod:`feedback.lanes`) is a use case with its own data and adapters:
its cycle reads only its own completions, corrections and votes, compares the
candidate with its own champion, under its own overrides of the gate's primary
metric and margin, golden file and answer schema (:mod:`retrain.lane_config`).
:func:`run_lanes` runs the lanes one after another, each with its own run row;
a lane that fails does not stop the others. :func:`run_cycle` runs one.

Every step logs with the run id and hands the next a small typed value
(:mod:`retrain.outcome`, the gate's :class:`~retrain.gate.GateResult`); a
failure is recorded on the run. Only one cycle runs at a time, across lanes,
processes and machines, thanks to a lease in the database (:mod:`retrain.lease`),
held for all the lanes of one call. A cycle that loses it (another took it
over, or renewals failed past its expiry) stops: its training child is killed,
and each step with effects (recording the dataset, training, registering,
promoting) first confirms the lease, so nothing is registered or promoted after
the loss; the run records why.

A cycle killed outright (SIGKILL, power cut) cannot record anything, so the
next cycle cleans up after it (:mod:`retrain.recovery`): it takes over the lease when
its holder is a dead process on this machine (else when it expires), marks the
dead cycle's runs ``failed`` (abandoned), and removes its half-written folders.
Training and evaluation children die with the cycle that started them.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine

from feedback import run_store
from feedback.db import write_session
from feedback.models import DEFAULT_LANE, RetrainRun
from feedback.settings import Settings
from retrain.lane_config import LaneConfig, lane_configs
from retrain.lease import LEASE_TTL, CycleLease, LeaseLostError
from retrain.outcome import CycleFailedError, CycleResult
from retrain.recovery import recover, stop_children
from retrain.steps import CycleSteps

__all__ = ["CycleFailedError", "CycleResult", "run_cycle", "run_lanes"]

log = logging.getLogger("retrain.cycle")
ALREADY_RAN = "this scheduled tick already has a run"


def run_cycle(
    settings: Settings,
    engine: Engine,
    *,
    lane: str = DEFAULT_LANE,
    trigger: str = "manual",
    scheduled_for: datetime | None = None,
    lease_ttl: timedelta = LEASE_TTL,
) -> CycleResult:
    """Run one cycle of ``lane``. Returns its result; raises CycleFailedError if it failed.

    ``lease_ttl`` is how long the cycle lease lasts without renewal (tests shorten it).
    """
    [result] = run_lanes(
        settings, engine, lanes=[lane], trigger=trigger, scheduled_for=scheduled_for,
        lease_ttl=lease_ttl,
    )  # fmt: skip
    if result.status == "failed":
        raise CycleFailedError(result.reason or "the cycle failed", result)
    return result


def run_lanes(
    settings: Settings,
    engine: Engine,
    *,
    lanes: list[str] | None = None,
    trigger: str = "manual",
    scheduled_for: datetime | None = None,
    lease_ttl: timedelta = LEASE_TTL,
) -> list[CycleResult]:
    """A cycle of each of ``lanes`` (None: every lane, ``default`` first), one after another.

    Returns one result per lane, in order; a lane that failed has a ``failed`` result
    (recorded on its run, logged) and the next lane runs. Each lane's run row is
    recorded first, all at once; a scheduled tick (``scheduled_for``) that already has
    runs is not run again (every lane ``skipped``, no new row). One hold of the cycle
    lease covers all the lanes: when another cycle holds it, every lane's run records
    ``skipped: another cycle is running``. An unknown lane raises
    :class:`feedback.lanes.UnknownLaneError` before anything is recorded.
    """
    configs = lane_configs(settings, engine, lanes)
    if not configs:
        return []
    runs = _claim(engine, [c.lane for c in configs], trigger, scheduled_for)
    if runs is None:
        log.info("the tick %s already ran or is running", scheduled_for)
        return [CycleResult(None, "skipped", reason=ALREADY_RAN, lane=c.lane) for c in configs]
    lease = CycleLease(engine, ttl=lease_ttl, on_lost=lambda: stop_children(_runs_dir(settings)))
    if not lease.acquire():
        results = [
            CycleResult(run.id, "skipped", reason="another cycle is running", lane=run.lane)
            for run in runs
        ]
        for result in results:
            _finish(engine, result)
        return results
    try:
        try:
            recover(settings, engine, runs)
        except Exception as error:  # noqa: BLE001 - recorded on every run
            return [_failed(engine, run.id, run.lane, error, lease) for run in runs]
        pairs = zip(configs, runs, strict=True)
        return [_run_one(settings, engine, config, run, lease) for config, run in pairs]
    finally:
        lease.release()


def _claim(
    engine: Engine, lanes: list[str], trigger: str, scheduled_for: datetime | None
) -> list[RetrainRun] | None:
    """Record a queued run per lane (None: the scheduled tick already has its runs)."""
    with write_session(engine) as session:
        if scheduled_for is not None:
            runs = run_store.claim_tick(session, tick=scheduled_for, lanes=lanes, trigger=trigger)
        else:
            runs = run_store.queue_runs(session, lanes=lanes, trigger=trigger)
        session.commit()
    return runs


def _runs_dir(settings: Settings) -> Path:
    return settings.data_dir / "runs"


def _run_one(
    settings: Settings, engine: Engine, config: LaneConfig, run: RetrainRun, lease: CycleLease
) -> CycleResult:
    """One lane's cycle on its queued run; a failure is recorded and returned, not raised."""
    work = _runs_dir(settings) / run.id  # run ids are unique: lanes never share a folder
    try:
        with write_session(engine) as session:
            run_store.begin_run(session, run.id)
            session.commit()
        log.info("run %s: lane %s", run.id, config.lane)
        result = CycleSteps(settings, engine, run.id, lease, work, config).run()
        # Recorded while the lease is held: another cycle's recovery would otherwise
        # find the run unfinished, call it abandoned and delete its folder.
        _finish(engine, result)
        return result
    except Exception as error:  # noqa: BLE001 - recorded; the next lane runs
        return _failed(engine, run.id, config.lane, error, lease)
    finally:
        _drop_text_copies(work)


def _drop_text_copies(work: Path) -> None:
    """Remove the run's files that copy training text: the child-job files and the
    probe's report (its payloads quote corrections); erasure does not look in run
    folders. The metrics, the training record and the adapter stay."""
    for copy in [*work.glob("*_job.json"), work / "canary_result.json"]:
        copy.unlink(missing_ok=True)


def _failed(
    engine: Engine, run_id: str, lane: str, error: Exception, lease: CycleLease
) -> CycleResult:
    """Log and record a failed run. With the lease lost, the failure is the loss (the
    step under way failed because of it, most likely), and recording it may fail too:
    the database may be what cost the lease."""
    if lease.lost is not None and not isinstance(error, LeaseLostError):
        error = LeaseLostError(
            f"lost the cycle lease ({lease.lost}) and stopped; "
            f"the step under way ended with {type(error).__name__}: {error}"
        )
    result = CycleResult(run_id, "failed", reason=f"{type(error).__name__}: {error}", lane=lane)
    log.error("run %s failed: %s", run_id, result.reason, exc_info=error)
    try:
        _finish(engine, result, error=result.reason)
    except Exception:  # noqa: BLE001 - logged; the next lane runs (and fails the same way)
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

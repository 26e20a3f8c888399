"""``tuneback`` commands for retraining: retrain, scheduler, adapters, dataset."""

from __future__ import annotations

import json
import logging
import sys
from contextlib import contextmanager
from pathlib import Path

import click

from feedback.models import DEFAULT_LANE
from tuneback.runtime import load_settings, open_engine


def _logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr
    )


@contextmanager
def _engine():
    """The settings and an engine on the prepared store; Tuneback errors exit cleanly."""
    settings = load_settings()
    with open_engine(settings) as engine:
        yield settings, engine


def _wait_option(function):  # noqa: ANN001, ANN202
    return click.option(
        "--wait",
        "wait",
        type=click.FloatRange(min=0),
        help="Seconds to wait for every live serving replica to serve the result "
        "(TUNEBACK_ROLLOUT_WAIT_SECONDS, default 60; 0: do not wait).",
    )(function)


def _lane_option(help_text: str):  # noqa: ANN202
    return click.option("--lane", "lane", metavar="NAME", help=help_text)


def _in_lane(lane: str) -> str:
    """A message's prefix naming ``lane``; none for ``default`` (as before lanes)."""
    return "" if lane == DEFAULT_LANE else f"lane {lane}: "


def _check_lane(engine, name: str) -> str:  # noqa: ANN001
    """``name`` if that lane exists; a clear error listing the lanes otherwise."""
    from sqlalchemy.orm import Session

    from feedback.lanes import get_lane

    with Session(engine) as session:
        return get_lane(session, name).name


def _rollout(settings, engine, version: str | None, wait: float | None, lane: str):  # noqa: ANN001, ANN202
    """Wait until the live serving replicas serve ``version`` on ``lane``; say where it
    stands. Returns the :class:`feedback.replicas.Rollout`, or None when not waiting.
    """
    from feedback.replicas import wait_for_rollout

    timeout = settings.rollout_wait_seconds if wait is None else wait
    if timeout <= 0:
        return None

    def progress(rollout) -> None:  # noqa: ANN001
        click.echo(f"waiting for the replicas: {rollout.report()}", err=True)

    rollout = wait_for_rollout(
        engine,
        version=version,
        lane=lane,
        timeout=timeout,
        stale_seconds=settings.replica_stale_seconds,
        progress=progress,
    )
    click.echo(rollout.report(), err=True)  # it names the lane, but for default
    return rollout


ROLLOUT_INCOMPLETE = 3  # exit status: the change is recorded, but not served everywhere yet


@click.command("retrain")
@_lane_option("Run this lane's cycle only (default: every lane, one after another).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per lane, one a line.")
@_wait_option
def retrain(lane: str | None, as_json: bool, wait: float | None) -> None:
    """Run a retrain cycle of every lane now, one after another (or of --lane only).

    A lane without enough new examples is skipped; a lane that fails does not stop
    the next. Each lane that promotes waits for the serving replicas. Exits 1 if a
    lane failed, else 3 if a promotion is not served everywhere yet, else 0.
    """
    from retrain.cycle import run_lanes

    _logging()
    code = 0
    with _engine() as (settings, engine):
        results = run_lanes(settings, engine, lanes=[lane] if lane is not None else None)
        for result in results:
            rollout = None
            if result.status == "promoted":
                rollout = _rollout(settings, engine, result.adapter, wait, result.lane)
                if rollout is not None and not rollout.done:
                    code = code or ROLLOUT_INCOMPLETE
            _show(result, rollout, as_json)
    if any(result.status == "failed" for result in results):
        code = 1
    sys.exit(code)


def _show(result, rollout, as_json: bool) -> None:  # noqa: ANN001
    """One lane's result: a JSON line, or a summary and the gate's reasons."""
    if as_json:
        body = result.to_dict()
        if rollout is not None:
            body["rollout"] = _rollout_dict(rollout)
        click.echo(json.dumps(body, default=str))
        return
    click.echo(
        f"lane {result.lane}: run {result.run_id}: {result.status}"
        + (f" ({result.reason})" if result.reason else "")
        + (f", adapter {result.adapter}" if result.adapter else "")
    )
    for reason in result.gate.get("reasons", []):
        click.echo(f"  gate: {reason}")


@click.command("scheduler")
def scheduler() -> None:
    """Run retrain cycles on TUNEBACK_RETRAIN_CRON (run exactly one of these)."""
    from retrain.scheduler import run_scheduler

    _logging()
    with _engine() as (settings, engine):
        run_scheduler(settings, engine)


@click.group("adapters")
def adapters() -> None:
    """Trained adapters of each lane: list, promote, roll back."""


def _registry(settings, engine, lane: str):  # noqa: ANN001, ANN202
    from feedback.adapters.registry import Registry

    return Registry.from_settings(settings, engine, lane=_check_lane(engine, lane))


@adapters.command("list")
@_lane_option("List this lane's adapters only (default: every lane's, with a LANE column).")
def adapters_list(lane: str | None) -> None:
    """List adapter versions of every lane (or of --lane) with their status and gate
    decision, newest first."""
    from sqlalchemy.orm import Session

    from feedback.adapters.store import list_adapter_versions

    with _engine() as (_, engine):
        if lane is not None:
            _check_lane(engine, lane)
        with Session(engine) as session:
            rows = list_adapter_versions(session, lane=lane)
    click.echo(f"{'LANE':<16}{'VERSION':<10}{'STATUS':<11}{'CREATED':<21}{'GATE':<6}PRIMARY METRIC")
    for row in rows:
        gate = row.gate or {}
        candidate = (row.metrics or {}).get("candidate") or {}
        primary = (gate.get("thresholds") or {}).get("primary", "heldout_overlap")
        value = candidate.get(primary)
        click.echo(
            f"{row.lane:<16}{row.version:<10}{row.status:<11}{row.created_at:%Y-%m-%d %H:%M}     "
            f"{'pass' if gate.get('passed') else 'fail':<6}"
            + (f"{primary}={value:.3f}" if isinstance(value, int | float) else "-")
        )


@adapters.command("promote")
@click.argument("version")
@_lane_option("The lane VERSION belongs to (default: default).")
@click.option("--force", is_flag=True, help="Promote even a rejected or corrupt adapter.")
@_wait_option
def adapters_promote(version: str, lane: str | None, force: bool, wait: float | None) -> None:
    """Promote VERSION in its lane (refuses rejected or corrupt adapters unless --force).

    Other lanes keep what they serve. Then waits until every live serving replica
    serves it on that lane; exits 3 (the promotion stands) naming the replicas that
    do not, if some still do not.
    """
    lane = lane or DEFAULT_LANE
    with _engine() as (settings, engine):
        _registry(settings, engine, lane).promote(version, actor="cli", force=force)
        click.echo(f"{_in_lane(lane)}promoted {version}", err=True)
        rollout = _rollout(settings, engine, version, wait, lane)
    if rollout is not None and not rollout.done:
        sys.exit(ROLLOUT_INCOMPLETE)


@adapters.command("rollback")
@_lane_option("The lane to roll back (default: default).")
@_wait_option
def adapters_rollback(lane: str | None, wait: float | None) -> None:
    """Go back to the lane's previously promoted adapter (or to the base model), and
    wait for the serving replicas as ``promote`` does. Other lanes are untouched."""
    lane = lane or DEFAULT_LANE
    with _engine() as (settings, engine):
        now = _registry(settings, engine, lane).rollback(actor="cli")
        serving = now.version if now else "the base model"
        click.echo(f"{_in_lane(lane)}now serving {serving}", err=True)
        rollout = _rollout(settings, engine, now.version if now else None, wait, lane)
    if rollout is not None and not rollout.done:
        sys.exit(ROLLOUT_INCOMPLETE)


def _rollout_dict(rollout) -> dict:  # noqa: ANN001
    return {
        "done": rollout.done,
        "lane": rollout.lane,
        "version": rollout.version,
        "on": [r.id for r in rollout.on],
        "behind": {r.id: r.serving for r in rollout.behind},
        "refused": {r.id: r.refused_reason for r in rollout.refused},
        "waited_s": round(rollout.waited_s, 2),
    }


@click.group("dataset")
def dataset() -> None:
    """Training datasets."""


@dataset.command("build")
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder to write the snapshot into (JSONL + manifest.json).",
)
@_lane_option("The lane whose feedback to read (default: default).")
def dataset_build(out: Path, lane: str | None) -> None:
    """Write a lane's training-set snapshot from its current feedback, without training."""
    from sqlalchemy.orm import Session

    from feedback import run_store
    from retrain import dataset as ds
    from retrain.snapshot import write_snapshot
    from retrain.sources import load_source_rows

    lane = lane or DEFAULT_LANE
    with _engine() as (settings, engine):
        _check_lane(engine, lane)
        with Session(engine) as session:
            rows = load_source_rows(session, lane=lane)
            heldout = run_store.heldout_completions(session, lane=lane)
        config = ds.DatasetConfig.from_settings(settings)
        built = ds.build_dataset(rows, config, previously_heldout=heldout)
        try:
            write_snapshot(built, out, lane=lane)
        except ValueError as error:
            raise click.ClickException(str(error)) from None
    counts = built.manifest["counts"]
    click.echo(json.dumps(counts, indent=2))
    click.echo(f"{_in_lane(lane)}snapshot written to {out}", err=True)


COMMANDS = (retrain, scheduler, adapters, dataset)

"""``tuneback`` commands for retraining: retrain, scheduler, adapters, dataset."""

from __future__ import annotations

import json
import logging
import sys
from contextlib import contextmanager
from pathlib import Path

import click

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


def _rollout(settings, engine, version: str | None, wait: float | None):  # noqa: ANN001, ANN202
    """Wait until the live serving replicas serve ``version``; say where it stands.

    Returns the :class:`feedback.replicas.Rollout`, or None when not waiting.
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
        timeout=timeout,
        stale_seconds=settings.replica_stale_seconds,
        progress=progress,
    )
    click.echo(rollout.report(), err=True)
    return rollout


ROLLOUT_INCOMPLETE = 3  # exit status: the change is recorded, but not served everywhere yet


@click.command("retrain")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@_wait_option
def retrain(as_json: bool, wait: float | None) -> None:
    """Run one retrain cycle now; if it promotes, wait for the serving replicas."""
    from retrain.cycle import CycleFailedError, run_cycle

    _logging()
    rollout = None
    with _engine() as (settings, engine):
        try:
            result, code = run_cycle(settings, engine), 0
        except CycleFailedError as error:
            result, code = error.result, 1
        if result.status == "promoted":
            rollout = _rollout(settings, engine, result.adapter, wait)
            if rollout is not None and not rollout.done:
                code = ROLLOUT_INCOMPLETE
    if as_json:
        body = result.to_dict()
        if rollout is not None:
            body["rollout"] = _rollout_dict(rollout)
        click.echo(json.dumps(body, default=str))
    else:
        click.echo(
            f"run {result.run_id}: {result.status}"
            + (f" ({result.reason})" if result.reason else "")
            + (f", adapter {result.adapter}" if result.adapter else "")
        )
        for reason in result.gate.get("reasons", []):
            click.echo(f"  gate: {reason}")
    sys.exit(code)


@click.command("scheduler")
def scheduler() -> None:
    """Run retrain cycles on TUNEBACK_RETRAIN_CRON (run exactly one of these)."""
    from retrain.scheduler import run_scheduler

    _logging()
    with _engine() as (settings, engine):
        run_scheduler(settings, engine)


@click.group("adapters")
def adapters() -> None:
    """Trained adapters: list, promote, roll back."""


def _registry(settings, engine):  # noqa: ANN001, ANN202
    from feedback.adapters.registry import Registry

    return Registry.from_settings(settings, engine)


@adapters.command("list")
def adapters_list() -> None:
    """List adapter versions with their status and gate decision."""
    with _engine() as (settings, engine):
        rows = _registry(settings, engine).list()
    click.echo(f"{'VERSION':<10}{'STATUS':<11}{'CREATED':<21}{'GATE':<6}PRIMARY METRIC")
    for row in rows:
        gate = row.gate or {}
        candidate = (row.metrics or {}).get("candidate") or {}
        primary = (gate.get("thresholds") or {}).get("primary", "heldout_overlap")
        value = candidate.get(primary)
        click.echo(
            f"{row.version:<10}{row.status:<11}{row.created_at:%Y-%m-%d %H:%M}     "
            f"{'pass' if gate.get('passed') else 'fail':<6}"
            + (f"{primary}={value:.3f}" if isinstance(value, int | float) else "-")
        )


@adapters.command("promote")
@click.argument("version")
@click.option("--force", is_flag=True, help="Promote even a rejected or corrupt adapter.")
@_wait_option
def adapters_promote(version: str, force: bool, wait: float | None) -> None:
    """Promote VERSION (refuses rejected or corrupt adapters unless --force).

    Then waits until every live serving replica serves it; exits 3 (the
    promotion stands) naming the replicas that do not, if some still do not.
    """
    with _engine() as (settings, engine):
        _registry(settings, engine).promote(version, actor="cli", force=force)
        click.echo(f"promoted {version}", err=True)
        rollout = _rollout(settings, engine, version, wait)
    if rollout is not None and not rollout.done:
        sys.exit(ROLLOUT_INCOMPLETE)


@adapters.command("rollback")
@_wait_option
def adapters_rollback(wait: float | None) -> None:
    """Go back to the previously promoted adapter (or to the base model), and wait
    for the serving replicas as ``promote`` does."""
    with _engine() as (settings, engine):
        now = _registry(settings, engine).rollback(actor="cli")
        click.echo(f"now serving {now.version if now else 'the base model'}", err=True)
        rollout = _rollout(settings, engine, now.version if now else None, wait)
    if rollout is not None and not rollout.done:
        sys.exit(ROLLOUT_INCOMPLETE)


def _rollout_dict(rollout) -> dict:  # noqa: ANN001
    return {
        "done": rollout.done,
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
def dataset_build(out: Path) -> None:
    """Write a training-set snapshot from the current feedback, without training."""
    from sqlalchemy.orm import Session

    from feedback import run_store
    from retrain import dataset as ds
    from retrain.snapshot import write_snapshot
    from retrain.sources import load_source_rows

    with _engine() as (settings, engine):
        with Session(engine) as session:
            rows = load_source_rows(session)
            heldout = run_store.heldout_completions(session)
        config = ds.DatasetConfig.from_settings(settings)
        built = ds.build_dataset(rows, config, previously_heldout=heldout)
        try:
            write_snapshot(built, out)
        except ValueError as error:
            raise click.ClickException(str(error)) from None
    counts = built.manifest["counts"]
    click.echo(json.dumps(counts, indent=2))
    click.echo(f"snapshot written to {out}", err=True)


COMMANDS = (retrain, scheduler, adapters, dataset)

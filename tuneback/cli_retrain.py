"""``tuneback`` commands for retraining: retrain, scheduler, adapters, dataset."""

from __future__ import annotations

import json
import logging
import sys
from contextlib import contextmanager
from pathlib import Path

import click

from feedback.exceptions import TunebackError


def _logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr
    )


@contextmanager
def _engine():
    from feedback import db
    from tuneback.cli import load_settings, store_session

    settings = load_settings()
    with store_session(settings):
        pass  # migrate the embedded store, or fail early on an old schema
    engine = db.make_engine(settings.resolved_database_url)
    try:
        yield settings, engine
    except TunebackError as error:
        raise click.ClickException(str(error)) from None
    finally:
        engine.dispose()


@click.command("retrain")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def retrain(as_json: bool) -> None:
    """Run one retrain cycle now."""
    from retrain.cycle import CycleFailedError, run_cycle

    _logging()
    with _engine() as (settings, engine):
        try:
            result, code = run_cycle(settings, engine), 0
        except CycleFailedError as error:
            result, code = error.result, 1
    if as_json:
        click.echo(json.dumps(result.to_dict(), default=str))
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
    from retrain.registry import Registry

    return Registry(settings.data_dir / "adapters", engine)


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
def adapters_promote(version: str, force: bool) -> None:
    """Promote VERSION (refuses rejected or corrupt adapters unless --force)."""
    with _engine() as (settings, engine):
        _registry(settings, engine).promote(version, actor="cli", force=force)
    click.echo(f"promoted {version}", err=True)


@adapters.command("rollback")
def adapters_rollback() -> None:
    """Go back to the previously promoted adapter (or to the base model)."""
    with _engine() as (settings, engine):
        now = _registry(settings, engine).rollback(actor="cli")
    click.echo(f"now serving {now.version if now else 'the base model'}", err=True)


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
    from retrain.cycle import dataset_config
    from retrain.snapshot import write_snapshot
    from retrain.sources import load_source_rows

    with _engine() as (settings, engine):
        with Session(engine) as session:
            rows = load_source_rows(session)
            heldout = run_store.heldout_completions(session)
        built = ds.build_dataset(rows, dataset_config(settings), previously_heldout=heldout)
        try:
            write_snapshot(built, out)
        except ValueError as error:
            raise click.ClickException(str(error)) from None
    counts = built.manifest["counts"]
    click.echo(json.dumps(counts, indent=2))
    click.echo(f"snapshot written to {out}", err=True)


COMMANDS = (retrain, scheduler, adapters, dataset)

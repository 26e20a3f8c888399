"""Commands for several-process deployments.

``tuneback replicas [--lane NAME]`` lists the serving replicas and what each
serves on each lane;
``tuneback model prepare`` converts the base model once, before the serving
replicas start (a prestart step), so two replicas never convert it at once.
"""

from __future__ import annotations

import json

import click


@click.command("replicas")
@click.option("--lane", default=None, help="Only this lane (default: every lane).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def replicas(lane: str | None, as_json: bool) -> None:
    """List the serving replicas heard from within TUNEBACK_REPLICA_STALE_SECONDS.

    Each replica records what it serves on every lane every
    TUNEBACK_REPLICA_HEARTBEAT_SECONDS; one line per replica and lane, then one
    line per lane saying whether every replica serves that lane's promoted adapter.
    """
    from feedback import lanes as lane_store
    from feedback import replicas as rep
    from feedback.adapters import store as adapter_store
    from feedback.exceptions import TunebackError
    from tuneback.runtime import load_settings, store_session

    settings = load_settings()
    try:
        with store_session(settings) as session:
            names = [lane_store.get_lane(session, lane).name] if lane else None
            names = names or lane_store.lane_names(session)
            promoted = adapter_store.promoted_by_lane(session)
            rollouts = {
                name: rep.rollout_status(
                    session,
                    version=promoted[name].version if name in promoted else None,
                    lane=name,
                    stale_seconds=settings.replica_stale_seconds,
                )
                for name in names
            }
    except TunebackError as error:
        raise click.ClickException(str(error)) from None
    if as_json:
        click.echo(json.dumps(_replicas_json(rollouts, lane)))
        return
    click.echo(f"{'REPLICA':<32}{'LANE':<20}{'SERVING':<10}{'LAST SEEN':<22}URL")
    for name, rollout in rollouts.items():
        for r in _rows(rollout):
            seen = f"{r.last_seen:%Y-%m-%d %H:%M:%S}"
            click.echo(f"{r.id:<32}{name:<20}{r.serving or rep.BASE:<10}{seen}   {r.url or '-'}")
    for rollout in rollouts.values():
        click.echo(rollout.report(), err=True)


def _rows(rollout):  # noqa: ANN001, ANN202 - a Rollout's replicas, by id
    return sorted([*rollout.on, *rollout.behind, *rollout.refused], key=lambda r: r.id)


def _replicas_json(rollouts: dict, lane: str | None) -> dict:
    """One lane's rollout (``--lane``), or every lane's under ``lanes`` with the default
    lane's also at the top level (``promoted``, ``replicas``), as before lanes."""
    per_lane = {
        name: {
            "promoted": rollout.version,
            "done": rollout.done,
            "replicas": [
                {
                    "id": r.id,
                    "url": r.url,
                    "serving": r.serving,
                    "refused": r.refused,
                    "loaded": (r.lanes.get(name) or {}).get("loaded"),
                    "last_seen": r.last_seen.isoformat(),
                }
                for r in _rows(rollout)
            ],
        }
        for name, rollout in rollouts.items()
    }
    if lane is not None:
        return {"lane": lane, **per_lane[lane]}
    first = next(iter(per_lane.values()))
    done = all(entry["done"] for entry in per_lane.values())
    return {**first, "done": done, "lanes": per_lane}


# An advisory-lock key for "one converter at a time" on PostgreSQL.
MODEL_LOCK_KEY = 0x74756E656D6F646C


@click.group("model")
def model() -> None:
    """The base model."""


@model.command("prepare")
def model_prepare() -> None:
    """Resolve TUNEBACK_BASE_MODEL to a model folder, converting a GGUF file once.

    Prints the folder. On PostgreSQL, machines running this at once (prestart
    steps of several replicas sharing the data folder) convert one at a time,
    and the later ones find the folder done.
    """
    from sqlalchemy import text

    from feedback import db
    from feedback.exceptions import TunebackError
    from retrain.base_model import resolve_base_model
    from tuneback.runtime import load_settings

    settings = load_settings()
    engine = db.make_engine(settings.resolved_database_url)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MODEL_LOCK_KEY})
                conn.commit()
            folder = resolve_base_model(settings.base_model, settings.data_dir)
    except TunebackError as error:
        raise click.ClickException(str(error)) from None
    finally:
        engine.dispose()  # releases the lock
    click.echo(str(folder))


COMMANDS = (replicas, model)

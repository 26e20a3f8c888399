"""Commands for several-process deployments.

``tuneback replicas`` lists the serving replicas and what each serves;
``tuneback model prepare`` converts the base model once, before the serving
replicas start (a prestart step), so two replicas never convert it at once.
"""

from __future__ import annotations

import json

import click


@click.command("replicas")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def replicas(as_json: bool) -> None:
    """List the serving replicas heard from within TUNEBACK_REPLICA_STALE_SECONDS.

    Each replica records what it serves every TUNEBACK_REPLICA_HEARTBEAT_SECONDS;
    the last line says whether they all serve the promoted adapter.
    """
    from feedback import replicas as rep
    from feedback.adapters import store as adapter_store
    from tuneback.runtime import load_settings, store_session

    settings = load_settings()
    with store_session(settings) as session:
        promoted = adapter_store.promoted_adapter(session)
        version = promoted.version if promoted else None
        rollout = rep.rollout_status(
            session, version=version, stale_seconds=settings.replica_stale_seconds
        )
    rows = sorted([*rollout.on, *rollout.behind, *rollout.refused], key=lambda r: r.id)
    if as_json:
        body = {
            "promoted": version,
            "done": rollout.done,
            "replicas": [
                {
                    "id": r.id,
                    "url": r.url,
                    "serving": r.serving,
                    "refused": r.refused,
                    "last_seen": r.last_seen.isoformat(),
                }
                for r in rows
            ],
        }
        click.echo(json.dumps(body))
        return
    click.echo(f"{'REPLICA':<32}{'SERVING':<10}{'LAST SEEN':<22}URL")
    for r in rows:
        click.echo(
            f"{r.id:<32}{r.serving or rep.BASE:<10}{r.last_seen:%Y-%m-%d %H:%M:%S}   {r.url or '-'}"
        )
    click.echo(rollout.report(), err=True)


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

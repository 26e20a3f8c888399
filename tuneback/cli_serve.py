"""``tuneback`` commands that serve chats: ``serve`` and ``up``.

Both run one gunicorn worker process with many threads: the model lives in
that one process (a single worker thread runs it), and the threads carry the
HTTP requests, streams included. ``up`` adds the retrain scheduler to the same
process, so one command runs the whole loop on the embedded defaults.

This module is a composition root: it resolves the base model with the
training package's :func:`retrain.base_model.resolve_base_model` (converting
the default GGUF file once) and hands the folder to :mod:`serve`.
"""

from __future__ import annotations

import logging
import sys
import threading

import click

from feedback.exceptions import TunebackError
from feedback.settings import Settings

log = logging.getLogger("tuneback.serve")


def _logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr
    )


def _prepare(host: str | None, port: int | None) -> Settings:
    """Settings with the base model resolved to a folder, and the store migrated."""
    from tuneback.cli import load_settings, store_session

    settings = load_settings(host=host, port=port)
    with store_session(settings):
        pass  # migrate the embedded store, or fail early on an old schema
    if settings.upstream_url:
        return settings
    from retrain.base_model import resolve_base_model

    try:
        folder = resolve_base_model(settings.base_model, settings.data_dir)
    except TunebackError as error:
        raise click.ClickException(str(error)) from None
    return settings.model_copy(update={"base_model": str(folder)})


def _run(factory: str, settings: Settings, what: str) -> None:
    from tuneback.server import run_gunicorn

    source = settings.upstream_url or settings.base_model
    click.echo(
        f"Tuneback {what} on http://{settings.host}:{settings.port} (model: {source}; "
        f"store: {settings.resolved_database_url.split('@')[-1]})",
        err=True,
    )
    run_gunicorn(
        factory,
        settings,
        workers=1,  # the model lives in one process
        threads=settings.serve_queue_size + settings.serve_max_batch + 8,
        timeout=300,  # loading the model counts against the first heartbeat
        graceful_timeout=30,
    )


@click.command("serve")
@click.option("--host", help="Bind address (TUNEBACK_HOST, default 127.0.0.1).")
@click.option("--port", type=int, help="Port (TUNEBACK_PORT, default 8000).")
def serve(host: str | None, port: int | None) -> None:
    """Serve chats (OpenAI-compatible) and the feedback API in one process."""
    _run("tuneback.cli_serve:serving_app", _prepare(host, port), "chat serving and feedback API")


@click.command("up")
@click.option("--host", help="Bind address (TUNEBACK_HOST, default 127.0.0.1).")
@click.option("--port", type=int, help="Port (TUNEBACK_PORT, default 8000).")
def up(host: str | None, port: int | None) -> None:
    """Run everything: feedback API, chat serving and the retrain scheduler."""
    _run("tuneback.cli_serve:up_app", _prepare(host, port), "(API, serving, scheduler)")


COMMANDS = (serve, up)


# --- app factories, called by gunicorn in its worker process ------------------------


def serving_app(settings: Settings):  # noqa: ANN201
    from serve.app import create_serving_app

    _logging()
    return create_serving_app(settings)


def up_app(settings: Settings):  # noqa: ANN201
    app = serving_app(settings)
    start_scheduler(settings)
    return app


def start_scheduler(settings: Settings) -> threading.Thread:
    """Run the retrain scheduler on a daemon thread of this process."""
    from feedback import db
    from retrain.scheduler import run_scheduler

    engine = db.make_engine(settings.resolved_database_url)

    def run() -> None:
        try:
            run_scheduler(settings, engine)
        except Exception:  # noqa: BLE001 - say so; serving goes on
            log.exception("the retrain scheduler stopped")

    thread = threading.Thread(target=run, name="tuneback-scheduler", daemon=True)
    thread.start()
    return thread

"""``tuneback`` commands that serve chats: ``serve`` and ``up``.

Both run one gunicorn worker process with many threads: the model lives in
that one process (a single worker thread runs it), and the threads carry the
HTTP requests, streams included. ``up`` adds the retrain scheduler to the same
process, so one command runs the whole loop on the embedded defaults. The apps
themselves are built in :mod:`tuneback.apps`.
"""

from __future__ import annotations

import click

from feedback.exceptions import TunebackError
from feedback.settings import Settings
from tuneback.runtime import load_settings, prepare_store, with_base_model


def _prepare(host: str | None, port: int | None) -> Settings:
    """Settings with the base model resolved to a folder, and the store migrated."""
    settings = load_settings(host=host, port=port)
    prepare_store(settings)
    try:
        return with_base_model(settings)
    except TunebackError as error:
        raise click.ClickException(str(error)) from None


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
    _run("tuneback.apps:serving_app", _prepare(host, port), "chat serving and feedback API")


@click.command("up")
@click.option("--host", help="Bind address (TUNEBACK_HOST, default 127.0.0.1).")
@click.option("--port", type=int, help="Port (TUNEBACK_PORT, default 8000).")
def up(host: str | None, port: int | None) -> None:
    """Run everything: feedback API, chat serving and the retrain scheduler."""
    _run("tuneback.apps:up_app", _prepare(host, port), "(API, serving, scheduler)")


COMMANDS = (serve, up)

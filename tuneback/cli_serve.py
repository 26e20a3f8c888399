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
from collections.abc import Iterator

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
    app = create_serving_app(settings)
    wire_admin_actions(app, settings)
    return app


def up_app(settings: Settings):  # noqa: ANN201
    app = serving_app(settings)
    wire_demo_page(app, settings)
    start_scheduler(settings)
    return app


def api_app(settings: Settings):  # noqa: ANN201
    """The feedback API alone (``tuneback api``), with the dashboard's actions wired."""
    from feedback.app import create_app

    app = create_app(settings)
    wire_admin_actions(app, settings)
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


# --- the browser pages' actions (feedback.web cannot import retrain or serve) ------------

LOOPBACK = ("127.0.0.1", "localhost", "::1")
DEMO_KEY_FILE = "demo-widget-key"
DEMO_MAX_TOKENS = 160


def wire_admin_actions(app, settings: Settings) -> None:  # noqa: ANN001
    """Give the dashboard the registry's promote and rollback (the checks of
    ``tuneback adapters``: gate decision, checksums, base model) and retrain-now."""
    from feedback.web import hooks
    from tuneback.cli_retrain import _registry  # the very registry `tuneback adapters` uses

    engine = app.extensions["tuneback"].engine
    registry = _registry(settings, engine)
    web = hooks(app)
    web.promote = registry.promote
    web.rollback = registry.rollback
    web.retrain_now = RetrainNow(settings, engine)


class RetrainNow:
    """Start one retrain cycle on a thread of this process; one at a time here, and the
    cycle's database lease keeps it to one across processes."""

    def __init__(self, settings: Settings, engine) -> None:  # noqa: ANN001
        self.settings, self.engine = settings, engine
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def __call__(self, actor: str) -> str:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return "A retrain started from here is still running; see its run below."
            self._thread = threading.Thread(
                target=self._run, args=(actor,), name="tuneback-retrain-now", daemon=True
            )
            self._thread.start()
        return "Retrain started. Its run appears under Retrain runs; reload to follow it."

    def _run(self, actor: str) -> None:
        from retrain.cycle import CycleFailedError, run_cycle

        log.info("retrain requested from the dashboard by %s", actor)
        try:
            result = run_cycle(self.settings, self.engine, trigger="manual")
            log.info("dashboard retrain %s: %s %s", result.run_id, result.status, result.reason)
        except CycleFailedError as error:
            log.error("dashboard retrain failed: %s", error)
        except Exception:  # noqa: BLE001 - a thread: say so, serving goes on
            log.exception("dashboard retrain crashed")

    def join(self, timeout: float | None = None) -> None:
        """Wait for the cycle started last (tests)."""
        if self._thread is not None:
            self._thread.join(timeout)


def wire_demo_page(app, settings: Settings) -> None:  # noqa: ANN001
    """Mount the demo chat page at ``/``, only when listening on loopback.

    The page answers through the served model in-process, so it needs no server key;
    that is only acceptable where nobody but this machine's users can reach it.
    """
    from feedback.web import hooks

    if settings.host not in LOOPBACK:
        log.info("demo chat page off: %s is not a loopback address", settings.host)
        return
    web = hooks(app)
    web.demo_chat = _demo_chat(app)
    web.demo_widget_key = demo_widget_key(settings, app.extensions["tuneback"].engine)


def _demo_chat(app):  # noqa: ANN001, ANN202
    from serve.chat import SERVE_EXTENSION
    from serve.responses import Call
    from serve.schemas import parse_chat_request

    backend, ext = app.extensions[SERVE_EXTENSION], app.extensions["tuneback"]

    def chat(messages: list[dict]) -> Iterator[bytes]:
        """The served model's answer as OpenAI chat-completion chunks (server-sent events);
        the completion is logged before the stream's last event."""
        request = parse_chat_request(
            {"model": "default", "messages": messages, "max_tokens": DEMO_MAX_TOKENS,
             "stream": True}
        )  # fmt: skip
        call = Call(sql=ext.engine, api_key_id=None, model="default", metrics=ext.metrics)
        return backend.start_stream(request, call)

    return chat


def demo_origins(settings: Settings) -> list[str]:
    hosts = ["[::1]"] if settings.host == "::1" else ["127.0.0.1", "localhost"]
    return [f"http://{host}:{settings.port}" for host in hosts]


def demo_widget_key(settings: Settings, engine) -> str:  # noqa: ANN001
    """The demo page's widget key (public, like every widget key), kept in the data dir.

    Reused across restarts while it allows this port's origins; otherwise it is
    revoked and a new one made.
    """
    from sqlalchemy.orm import Session

    from feedback import store
    from feedback.durable import write_atomic

    path = settings.data_dir / DEMO_KEY_FILE
    origins = demo_origins(settings)
    with Session(engine) as session:
        if path.is_file():
            old = path.read_text().strip()
            key = store.find_active_key(session, old)
            if key is not None and sorted(key.allowed_origins) == sorted(origins):
                return old
            if key is not None:
                store.revoke_api_key(session, key_id=key.id)
        key, plaintext = store.create_api_key(
            session, role="widget", name="demo chat page", origins=origins
        )
        key_id = key.id
        session.commit()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(path, f"{plaintext}\n".encode())
    log.info("created widget key %s for the demo page (%s)", key_id, ", ".join(origins))
    return plaintext

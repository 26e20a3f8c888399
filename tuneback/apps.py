"""The app factories: the WSGI apps ``tuneback`` runs under gunicorn, in one place.

``tuneback api``, ``tuneback serve`` and ``tuneback up`` hand these to
:func:`tuneback.server.run_gunicorn`, which calls them in each worker with the
command's settings; operators who run gunicorn themselves name the same ones
(``gunicorn -c deploy/gunicorn/api.py 'tuneback.apps:api_app()'``), and then the
settings come from ``TUNEBACK_*``. This module is the composition root of the
running service: it alone wires ``feedback``, ``retrain`` and ``serve`` together.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator

from apiflask import APIFlask

from feedback.settings import Settings
from tuneback.runtime import with_base_model

log = logging.getLogger("tuneback.serve")


def api_app(settings: Settings | None = None) -> APIFlask:
    """The feedback API alone, pages included (``tuneback api``). An API worker does
    not train, so "Retrain now" is not wired here; promote and roll back are."""
    from feedback.app import create_app

    return create_app(settings or Settings())


def serving_app(settings: Settings | None = None) -> APIFlask:
    """Chat serving plus the feedback API (``tuneback serve``), "Retrain now" wired.

    Without ``settings``, they come from the environment and the base model is
    resolved here (converted once); the commands pass them already resolved.
    """
    from serve.app import create_serving_app

    _logging()
    settings = settings or with_base_model(Settings())
    app = create_serving_app(settings)
    wire_admin_actions(app, settings)
    return app


def up_app(settings: Settings | None = None) -> APIFlask:
    """Everything in one process (``tuneback up``): serving, the demo chat page on
    loopback, and the retrain scheduler on a thread."""
    settings = settings or with_base_model(Settings())
    app = serving_app(settings)
    wire_demo_page(app, settings)
    start_scheduler(settings)
    return app


def _logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr
    )


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


# --- the browser pages' actions (feedback.web cannot import retrain or serve) --------------

LOOPBACK = ("127.0.0.1", "localhost", "::1")
DEMO_KEY_FILE = "demo-widget-key"
DEMO_MAX_TOKENS = 160


def wire_admin_actions(app, settings: Settings) -> None:  # noqa: ANN001
    """Give the dashboard "Retrain now" (promote and roll back need no wiring: the
    dashboard calls the adapter registry itself)."""
    from feedback.web.hooks import hooks

    hooks(app).retrain_now = RetrainNow(settings, app.extensions["tuneback"].engine)


class RetrainNow:
    """Start one retrain cycle on a thread of this process; one at a time here, and the
    cycle's database lease keeps it to one across processes."""

    def __init__(self, settings: Settings, engine) -> None:  # noqa: ANN001
        self.settings, self.engine = settings, engine
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def __call__(self, actor: str, lane: str = "default") -> str:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return "A retrain started from here is still running; see its run below."
            self._thread = threading.Thread(
                target=self._run, args=(actor, lane), name="tuneback-retrain-now", daemon=True
            )
            self._thread.start()
        return "Retrain started. Its run appears under Retrain runs; reload to follow it."

    def _run(self, actor: str, lane: str) -> None:
        from retrain.cycle import CycleFailedError, run_cycle

        log.info("retrain of lane %s requested from the dashboard by %s", lane, actor)
        try:
            result = run_cycle(self.settings, self.engine, lane=lane, trigger="manual")
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
    that is only acceptable where nobody but this machine's users can reach it, so it
    also answers loopback ``Host`` names only (:func:`demo_hosts`: DNS rebinding).
    """
    from feedback.web.hooks import hooks

    if settings.host not in LOOPBACK:
        log.info("demo chat page off: %s is not a loopback address", settings.host)
        return
    web = hooks(app)
    web.demo_chat = _demo_chat(app)
    web.demo_widget_key = demo_widget_key(settings, app.extensions["tuneback"].engine)
    web.demo_hosts = demo_hosts(settings)


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


def demo_hosts(settings: Settings) -> frozenset[str]:
    """The ``Host`` values the demo page answers to: the loopback names with our port
    (and without it on port 80, where browsers leave it out), never a foreign name
    that DNS rebinding pointed at this machine."""
    names = ("127.0.0.1", "localhost", "[::1]")
    hosts = {f"{name}:{settings.port}" for name in names}
    return frozenset(hosts | set(names) if settings.port == 80 else hosts)


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

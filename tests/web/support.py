"""Helpers for the browser tests: in-process servers on loopback, seeded rows, screenshots."""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session
from werkzeug.serving import make_server

from feedback import db, rawsql, store
from feedback.app import create_app
from feedback.settings import Settings

SCREENSHOT_ENV = "TUNEBACK_SCREENSHOTS"
# The base model the test deployment "serves": the registry refuses adapters for another.
BASE_MODEL = "/models/tiny-base"


class Served:
    """A WSGI app on a free loopback port, served by a thread until ``stop``."""

    def __init__(self, app: Any, port: int = 0) -> None:
        self.app = app
        self.server = make_server("127.0.0.1", port, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Site(Served):
    """The Tuneback app (feedback API and pages) with one key per role and a store to seed."""

    def __init__(self, data_dir: Path, *, wire: Any = None) -> None:
        settings = Settings(
            data_dir=data_dir,
            database_url=f"sqlite:///{data_dir / 'tuneback.db'}",
            rate_limit="100000/minute",
            key_cache_seconds=0,
            base_model=BASE_MODEL,
        )
        self.settings = settings
        self.engine = db.make_engine(settings.resolved_database_url)
        db.upgrade(settings.resolved_database_url)
        app = create_app(settings, engine=self.engine)
        if wire is not None:
            wire(app, settings)
        super().__init__(app)
        self.keys: dict[str, str] = {}
        with Session(self.engine) as session:
            for role, name in (("agent", "Dana"), ("admin", "Ada"), ("server", "bot")):
                self.keys[role] = store.create_api_key(session, role=role, name=name)[1]
            session.commit()

    def widget_key(self, *origins: str) -> str:
        with Session(self.engine) as session:
            plaintext = store.create_api_key(session, role="widget", origins=list(origins))[1]
            session.commit()
        return plaintext

    def completion(self, question: str, answer: str, **extra: Any) -> str:
        with Session(self.engine) as session:
            row = store.create_completion(
                session,
                messages=[{"role": "user", "content": question}],
                response=answer,
                model="smollm2-135m",
                **extra,
            )
            session.commit()
            return row.id

    def vote(self, completion_id: str, rating: str = "down", **fields: Any) -> None:
        with rawsql.engine_write(self.engine) as tx:
            rawsql.record_vote(
                tx,
                completion_id=completion_id,
                rating=rating,
                reason=fields.get("reason"),
                comment=fields.get("comment"),
                source=fields.get("source", "widget"),
                user_ref=fields.get("user", "user-1"),
                api_key_id=None,
            )

    def detail(self, completion_id: str) -> tuple[Any, list, list]:
        with Session(self.engine, expire_on_commit=False) as session:
            return store.completion_detail(session, completion_id)

    def stop(self) -> None:
        super().stop()
        self.engine.dispose()


class HostPages(Served):
    """Another site (another origin) whose pages include the widget: ``pages[path] = html``."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        super().__init__(self.wsgi)

    def wsgi(self, environ: dict, start_response: Any) -> list[bytes]:
        html = self.pages.get(environ.get("PATH_INFO", ""))
        if html is None:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
        return [html.encode()]

    def chat_page(self, path: str, tuneback: str, key: str, completion_ids: list[str]) -> str:
        """A customer's chat page: answers, each marked with its completion id."""
        answers = "".join(
            f'<div class="answer"><p>Bot: here is answer {i + 1}.</p>'
            f'<div data-tuneback-completion="{cid}"></div></div>'
            for i, cid in enumerate(completion_ids)
        )
        self.pages[path] = (
            "<!doctype html><html lang=en><head><meta charset=utf-8><title>Shop chat</title>"
            "<style>body{font-family:sans-serif;margin:0}#chat{max-width:560px;padding:12px 20px}"
            ".answer{background:#f1f3f6;padding:6px 14px;border-radius:10px}</style>"
            f'<script src="{tuneback}/widget.js" data-key="{key}" defer></script></head>'
            f"<body><main id=chat><h1>Shop support chat</h1>{answers}</main></body></html>"
        )
        return self.url + path


def sign_in(page: Any, site: Site, role: str, next_path: str = "") -> None:
    """Sign in through the form, as a person would."""
    page.goto(f"{site.url}/signin" + (f"?next={next_path}" if next_path else ""))
    page.get_by_label("Key").fill(site.keys[role])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()


def screenshot(page: Any, folder: Path, name: str, target: Any = None) -> Path:
    """Save a PNG of the page (or of the ``target`` locator) into the session's artifact
    folder and, if asked, into TUNEBACK_SCREENSHOTS (how docs/screenshots/ is made)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    if target is not None:
        target.screenshot(path=str(path))
    else:
        page.screenshot(path=str(path), full_page=True)
    wanted = os.environ.get(SCREENSHOT_ENV)
    if wanted:
        Path(wanted).mkdir(parents=True, exist_ok=True)
        _small_png(path, Path(wanted) / path.name)
    return path


def _small_png(source: Path, target: Path) -> None:
    """Copy a screenshot for the docs, as a 256-colour PNG when Pillow is there (~3x smaller)."""
    try:
        from PIL import Image
    except ImportError:
        target.write_bytes(source.read_bytes())
        return
    with Image.open(source) as image:
        image.convert("RGB").quantize(colors=256).save(target, optimize=True)


def error_code(text: str) -> str | None:
    """The code of a JSON error body, or None."""
    try:
        return json.loads(text)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def make_adapter_files(folder: Path, *, base: str, seed: int) -> Path:
    """A PEFT-like adapter folder (safetensors written with numpy, no torch)."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    tensors = {
        "base_model.model.q_proj.lora_A.weight": rng.standard_normal((4, 16), dtype=np.float32),
        "base_model.model.q_proj.lora_B.weight": rng.standard_normal((16, 4), dtype=np.float32),
    }
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {"base_model_name_or_path": base, "peft_type": "LORA", "r": 4}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder

"""Helpers for the serving tests: tiny model, LoRA adapters, live in-process servers."""

from __future__ import annotations

import importlib.util
import threading
import uuid
from pathlib import Path

from sqlalchemy.orm import Session
from werkzeug.serving import make_server

from feedback import store
from feedback.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
# transformers deprecated `is_gradient_checkpointing` and PEFT, which the tests
# use to make adapters, still calls it when it wraps a model: not ours to fix.
PEFT_WARNING = "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"
MESSAGES = [{"role": "user", "content": "My card has not arrived yet, what can I do?"}]


def build_tiny_model(out_dir: Path) -> Path:
    path = ROOT / "scripts" / "make_tiny_model.py"
    spec = importlib.util.spec_from_file_location("make_tiny_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_tiny_model(out_dir)


def make_lora(
    base: Path,
    out_dir: Path,
    *,
    seed: int = 0,
    rank: int = 4,
    targets: str | list[str] = "all-linear",
    scale: float = 40.0,
) -> Path:
    """A PEFT LoRA adapter for ``base`` with random weights, saved as PEFT saves them.

    ``scale`` multiplies the B matrices, so each adapter changes the tiny model's
    answers clearly.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base))
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=targets, init_lora_weights=False,
        task_type="CAUSAL_LM",
    )  # fmt: skip
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(scale)
    peft_model.save_pretrained(out_dir)
    return out_dir


def make_keys(engine) -> dict[str, str]:  # noqa: ANN001
    with Session(engine) as session:
        made = {
            role: store.create_api_key(session, role=role, name=f"{role}-1")[1]
            for role in ("server", "agent", "admin")
        }
        made["widget"] = store.create_api_key(
            session, role="widget", origins=["https://shop.example"]
        )[1]
        session.commit()
    return made


def serve_settings(data_dir: Path, database_url: str, **overrides) -> Settings:  # noqa: ANN003
    defaults = dict(
        rate_limit="100000/minute", key_cache_seconds=0, serve_poll_seconds=0.2,
        serve_max_tokens=64,
    )  # fmt: skip
    return Settings(data_dir=data_dir, database_url=database_url, **{**defaults, **overrides})


class LiveApp:
    """A WSGI app served on a free loopback port by a thread, with one key per role."""

    def __init__(self, app, keys: dict[str, str], registry=None) -> None:  # noqa: ANN001
        self.app, self.keys, self.registry = app, keys, registry
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def backend(self):  # noqa: ANN201
        return self.app.extensions["tuneback_serve"]

    @property
    def engine(self):  # noqa: ANN201
        return self.app.extensions["tuneback"].engine

    def client(self, role: str = "server", **options):  # noqa: ANN003, ANN201
        from openai import OpenAI

        options.setdefault("max_retries", 0)
        options.setdefault("timeout", 120)
        options.setdefault("api_key", self.keys[role])
        return OpenAI(base_url=f"{self.url}/v1", **options)

    def headers(self, role: str, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}", **extra}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.backend.close()
        self.engine.dispose()


def add_adapter(live: LiveApp, base: Path, tmp_path: Path, *, seed: int, **lora) -> str:  # noqa: ANN003
    """Make and register a new adapter version for ``base`` (not promoted); its version."""
    folder = make_lora(base, tmp_path / f"lora-{uuid.uuid4().hex[:8]}", seed=seed, **lora)
    return live.registry.add(folder, base_model=str(base)).version

"""The demo's steps, top to bottom: prepare, serve, chat, vote, correct, retrain, swap, compare."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feedback.settings import Settings
from retrain.scenarios import Message, Scenario, get_scenario, messages
from tuneback.demo import report
from tuneback.demo.client import Api, DemoError, ServerProcess, free_port

WIDGET_ORIGIN = "https://demo.example"
CONCURRENCY = 4  # the server decodes up to TUNEBACK_SERVE_MAX_BATCH (4) requests together


@dataclass
class DemoOptions:
    """What ``tuneback demo`` was asked for."""

    scenario: str = "extraction"
    messages: int = 40  # the day's customer messages (the thumbs-down ones get corrected)
    heldout: int = 8  # questions answered before and after, never corrected
    data_dir: Path | None = None  # None: a fresh temporary folder, removed at the end
    base_model: str | None = None  # None: TUNEBACK_BASE_MODEL, else SmolLM2-135M-Instruct
    port: int | None = None
    keep: bool = False

    def __post_init__(self) -> None:
        get_scenario(self.scenario)  # a clear error for an unknown name
        if not 1 <= self.messages <= len(messages("train")):
            raise DemoError(f"--messages must be between 1 and {len(messages('train'))}")
        if not 1 <= self.heldout <= 100:
            raise DemoError("--heldout must be between 1 and 100")


@dataclass
class Answer:
    """One chat answer the server gave, with what an agent would have written."""

    message: Message
    reference: str
    completion_id: str
    text: str
    adapter: str


@dataclass
class Demo:
    options: DemoOptions
    settings: Settings
    echo: Callable[[str], None]
    keys: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    api: Api | None = None

    @property
    def scenario(self) -> Scenario:
        return get_scenario(self.options.scenario)

    def step(self, name: str, started: float) -> None:
        self.timings[name] = round(time.monotonic() - started, 1)

    # --- the day -----------------------------------------------------------------

    def chat(self, batch: list[Message], phase: str) -> list[Answer]:
        """Each message through POST /v1/chat/completions, a few at a time."""
        from tqdm import tqdm

        def ask(message: Message) -> Answer:
            body = {
                "model": "default",
                "messages": self.scenario.prompt(message),
                "max_tokens": self.scenario.max_tokens,
                "temperature": 0,
                "metadata": {"demo": phase},
            }
            if self.scenario.schema is not None:
                # As a chat system that wants a record asks: the answer must be one.
                schema = {"name": self.scenario.name, "schema": self.scenario.schema}
                body["response_format"] = {"type": "json_schema", "json_schema": schema}
            out = self.api.call("POST", "/v1/chat/completions", self.keys["server"], body)
            text = out["choices"][0]["message"]["content"]
            # The gate ranks by overlap with the correction: edits of the served answer
            # overlap the base model best, so the demo keeps the agents' own replies.
            reference = self.scenario.reference(message)
            return Answer(message, reference, out["id"], text, out["system_fingerprint"])

        pool = ThreadPoolExecutor(CONCURRENCY)
        try:
            answers = pool.map(ask, batch)
            return list(tqdm(answers, total=len(batch), desc=f"chat ({phase})", unit="msg"))
        finally:
            # On Ctrl-C or an error, do not wait for requests in flight: stopping
            # the server (the caller's cleanup) ends them.
            pool.shutdown(wait=False, cancel_futures=True)

    def vote(self, answers: list[Answer]) -> dict[str, int]:
        """Customers vote from the widget: down when the answer is wrong, else up."""
        from tqdm import tqdm

        counts = {"up": 0, "down": 0}
        for i, answer in enumerate(tqdm(answers, desc="widget votes", unit="vote")):
            rating = "up" if self.scenario.passes(answer.text, answer.reference) else "down"
            body = {"completion_id": answer.completion_id, "rating": rating, "user": f"c-{i}"}
            if rating == "down":
                body["reason"] = "wrong answer"
            self.api.call(
                "POST", "/v1/feedback", self.keys["widget"], body,
                Origin=WIDGET_ORIGIN, Idempotency_Key=f"vote-{answer.completion_id}",
            )  # fmt: skip
            counts[rating] += 1
        return counts

    def correct(self, answers: list[Answer]) -> int:
        """An agent works through the review queue, correcting each voted-down answer."""
        from tqdm import tqdm

        by_id = {a.completion_id: a for a in answers}
        queue = self.api.call("GET", "/v1/review-queue?limit=100", self.keys["agent"])
        done = 0
        with tqdm(total=queue["total"], desc="agent corrections", unit="fix") as bar:
            while queue["items"]:
                for item in queue["items"]:
                    answer = by_id.get(item["id"])
                    if answer is None:
                        raise DemoError(f"unexpected completion {item['id']} in the review queue")
                    body = {"completion_id": item["id"], "corrected_response": answer.reference}
                    self.api.call("POST", "/v1/corrections", self.keys["agent"], body)
                    done += 1
                    bar.update()
                queue = self.api.call("GET", "/v1/review-queue?limit=100", self.keys["agent"])
        return done

    # --- the night -----------------------------------------------------------------

    def retrain(self) -> Any:
        """One cycle, exactly as ``tuneback retrain`` runs it."""
        from feedback import db
        from retrain.cycle import CycleFailedError, run_cycle

        engine = db.make_engine(self.settings.resolved_database_url)
        try:
            return run_cycle(self.settings, engine)
        except CycleFailedError as error:
            raise DemoError(f"the retrain cycle failed: {error.result.reason}") from None
        finally:
            engine.dispose()

    def wait_for_swap(self, version: str, timeout: float = 120) -> dict:
        """Until the server reports the promoted adapter as the one it serves."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.api.call("GET", "/v1/serving", self.keys["admin"])
            if status["serving"] == version:
                return status
            time.sleep(0.2)
        raise DemoError(f"the server did not swap to {version} within {timeout:.0f} s")


def run_demo(options: DemoOptions, echo: Callable[[str], None] = print) -> dict:
    """Play the day; return the summary (also written to ``<data dir>/demo-summary.json``)."""
    temporary = options.data_dir is None
    if threading.current_thread() is threading.main_thread():
        # A plain `kill` stops the demo's server too (the finally blocks run).
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    data_dir = Path(tempfile.mkdtemp(prefix="tuneback-demo-")) if temporary else options.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        summary = _play(options, data_dir.resolve(), echo)
    finally:
        if temporary and not options.keep:
            shutil.rmtree(data_dir, ignore_errors=True)
    where = "removed" if temporary and not options.keep else f"kept in {data_dir}"
    echo(f"\nThe demo's data dir (store, adapters, server log) was {where}.")
    return summary


def _play(options: DemoOptions, data_dir: Path, echo: Callable[[str], None]) -> dict:
    started = time.monotonic()
    scenario = get_scenario(options.scenario)
    echo(f"Tuneback demo: {scenario.title}\n  data dir {data_dir}")
    demo = Demo(options, _prepare(options, data_dir, echo), echo)
    demo.timings["prepare"] = round(time.monotonic() - started, 1)
    demo.keys = _create_keys(demo.settings)
    server = _start_server(demo, options, data_dir)
    try:
        summary = _day_and_night(demo, options)
    finally:
        server.stop()
    summary["timings_s"] = {**demo.timings, "total": round(time.monotonic() - started, 1)}
    (data_dir / "demo-summary.json").write_text(json.dumps(summary, indent=2, default=str))
    report.timings(echo, summary["timings_s"])
    return summary


def _day_and_night(demo: Demo, options: DemoOptions) -> dict:
    echo, scenario = demo.echo, demo.scenario
    day = list(messages("train")[: options.messages])
    heldout = list(messages("test")[-options.heldout :])
    report.heading(echo, f"1. A day of traffic: {len(day)} customer messages")
    if scenario.schema is not None:
        echo("  asked with the record's JSON schema as response_format: answers are valid records")
    t = time.monotonic()
    before = demo.chat(heldout, "before")
    answers = demo.chat(day, "day")
    demo.step("chat", t)
    t = time.monotonic()
    votes = demo.vote(answers)
    corrected = demo.correct(answers)
    demo.step("votes and corrections", t)
    echo(f"  votes: {votes['up']} up, {votes['down']} down; {corrected} answers corrected")
    report.heading(echo, "2. The nightly retrain cycle (tuneback retrain)")
    t = time.monotonic()
    result = demo.retrain()
    demo.step("retrain", t)
    report.cycle(echo, result)
    swap = None
    if result.status == "promoted":
        t = time.monotonic()
        swap = demo.wait_for_swap(result.adapter)
        demo.step("hot-swap", t)
        echo(f"  the server now serves {swap['serving']} (swap took {swap['last_swap_ms']} ms)")
    else:
        echo("  nothing promoted: the server keeps serving what it served")
    report.heading(echo, f"3. The same {len(heldout)} held-out questions, before and after")
    t = time.monotonic()
    after = demo.chat(heldout, "after")
    demo.step("chat after", t)
    scores = report.compare(echo, scenario, before, after)
    return {
        "scenario": scenario.name,
        "messages": len(day),
        "votes": votes,
        "corrections": corrected,
        "cycle": result.to_dict(),
        "swap": swap,
        "heldout": scores,
        "served_after": sorted({a.adapter for a in after}),
    }


def _prepare(options: DemoOptions, data_dir: Path, echo: Callable[[str], None]) -> Settings:
    """Settings on the embedded defaults in ``data_dir``, the base model resolved."""
    from retrain.base_model import resolve_base_model
    from tuneback.runtime import load_settings, prepare_store

    source = options.base_model or load_settings(data_dir=data_dir).base_model
    echo("  resolving the base model (a GGUF file is converted once, about 20 s)")
    folder = resolve_base_model(source, data_dir)
    golden = data_dir / "demo-golden.jsonl"
    settings = load_settings(
        data_dir=data_dir,
        # Always the embedded store: the demo never writes into a configured database.
        database_url=f"sqlite:///{data_dir / 'tuneback.db'}",
        base_model=str(folder),
        golden_set=golden,
        min_new_examples=5,
        rate_limit="100000/minute",
        serve_poll_seconds=0.25,
    )
    _write_golden(golden, get_scenario(options.scenario), options.heldout)
    prepare_store(settings)
    return settings


def _write_golden(path: Path, scenario: Scenario, count: int) -> None:
    """The held-out questions as golden cases with the scenario's own check, so the
    gate reports how many of them the base model and the candidate get right."""
    cases = [
        {"prompt": scenario.prompt(m), "check": scenario.name, "reference": scenario.reference(m)}
        for m in messages("test")[-count:]
    ]
    path.write_text("".join(json.dumps(case) + "\n" for case in cases))


def _create_keys(settings: Settings) -> dict[str, str]:
    from feedback import store
    from tuneback.runtime import store_session

    keys = {}
    with store_session(settings) as session:
        for role in ("server", "agent", "admin"):
            keys[role] = store.create_api_key(session, role=role, name=f"demo {role}")[1]
        keys["widget"] = store.create_api_key(
            session, role="widget", name="demo widget", origins=[WIDGET_ORIGIN]
        )[1]
    return keys


def _start_server(demo: Demo, options: DemoOptions, data_dir: Path) -> ServerProcess:
    settings = demo.settings
    env = dict(os.environ)
    env.update(
        TUNEBACK_DATA_DIR=str(data_dir),
        TUNEBACK_DATABASE_URL=settings.resolved_database_url,
        TUNEBACK_BASE_MODEL=str(settings.base_model),
        TUNEBACK_RATE_LIMIT=settings.rate_limit,
        TUNEBACK_SERVE_POLL_SECONDS=str(settings.serve_poll_seconds),
    )
    port = options.port or free_port()
    report.heading(demo.echo, f"0. Starting tuneback serve on http://127.0.0.1:{port}")
    t = time.monotonic()
    server = ServerProcess(env, port, data_dir / "server.log")
    try:
        server.wait_ready(timeout=300)
    except DemoError:
        server.stop()
        raise
    demo.step("server start", t)
    demo.api = Api(server.url)
    demo.echo(f"  ready in {demo.timings['server start']} s (log: {server.log_path})")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr
    )
    return server

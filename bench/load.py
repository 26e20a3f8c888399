"""Load: votes and chats far above the expected rate while a retrain cycle runs.

Starts a real ``tuneback serve`` (the tiny seeded model by default, or any
``--base-model``) on loopback with a fresh store, seeds completions to vote on
and corrections to train on, starts ``tuneback retrain`` beside it, and then,
from ``--threads`` client threads, posts votes and chat requests as fast as the
server answers, for ``--duration`` seconds or ``--max-requests`` requests,
whichever comes first. Nothing leaves the machine: everything is on 127.0.0.1.

What must hold (the exit status is 1 if any does not):

- no 5xx other than 503 ``overloaded`` (with Retry-After), no connection errors;
- no "database is locked" in any response or in the server's or cycle's log;
- every 429 and 503 carries ``Retry-After``;
- the server's resident memory (with its children) grows by at most
  ``--max-rss-growth-mb`` from the first quarter of the run to its end;
- every acknowledged vote (201) is in the store afterwards;
- the retrain cycle finished (promoted, rejected or skipped; not failed).

    .venv/bin/python bench/load.py                        # 20 s, tiny model, SQLite
    .venv/bin/python bench/load.py --duration 60 --threads 32
    .venv/bin/python bench/load.py --database-url postgresql+psycopg://postgres@127.0.0.1/test
    .venv/bin/python bench/load.py --no-retrain --duration 3   # the fast test's version

Overload is provoked on purpose: the vote key is limited by
``--vote-rate-limit`` (429s) and the chat queue is ``--queue-size`` deep (503s).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent / "tuneback"
LOCKED = "database is locked"
QUESTIONS = [
    "My card has not arrived yet, what can I do?", "How long does a new card take to come?",
    "Where is my replacement card?", "I ordered a card last week and it is still not here.",
    "Can you track my card delivery?", "When will my card be delivered?",
    "Still waiting on my card, is that normal?", "My new card never showed up.",
    "How do I know my card was sent?", "Has my card been posted yet?",
    "It has been ten days and no card.", "What do I do if the card is lost in the post?",
]  # fmt: skip
ROUTING = '{"intent": "card_arrival", "team": "cards"}'


@dataclass
class Options:
    duration: float = 20.0
    max_requests: int = 20000
    threads: int = 16
    chat_share: float = 0.2
    max_tokens: int = 8
    vote_rate_limit: str = "100/second"
    queue_size: int = 4
    retrain: bool = True
    base_model: str | None = None
    database_url: str | None = None
    max_rss_growth_mb: float = 150.0
    completions: int = 200  # logged completions the votes spread over
    seed: int = 0


@dataclass
class Tally:
    """What the clients saw, shared by the client threads (under ``lock``)."""

    statuses: Counter = field(default_factory=Counter)  # "vote 201", "chat 503", ...
    missing_retry_after: int = 0
    locked: int = 0
    errors: list[str] = field(default_factory=list)
    acknowledged: list[tuple[str, str, str]] = field(default_factory=list)
    sent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


# --- the server and the store ----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare(work: Path, options: Options) -> tuple[dict[str, str], dict[str, str]]:
    """The environment for ``tuneback`` and one key per role (made in the store)."""
    from sqlalchemy.orm import Session

    from feedback import db, store

    base = options.base_model or str(_tiny_model(work / "tiny-model"))
    url = options.database_url or f"sqlite:///{work / 'data' / 'tuneback.db'}"
    (work / "data").mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEBACK_")}
    env.update(
        TUNEBACK_DATA_DIR=str(work / "data"), TUNEBACK_DATABASE_URL=url,
        TUNEBACK_BASE_MODEL=base, TUNEBACK_RATE_LIMIT=options.vote_rate_limit,
        TUNEBACK_SERVE_QUEUE_SIZE=str(options.queue_size), TUNEBACK_SERVE_MAX_TOKENS="16",
        TUNEBACK_MIN_NEW_EXAMPLES="5", TUNEBACK_EPOCHS="3", TUNEBACK_BATCH_SIZE="4",
        TUNEBACK_LEARNING_RATE="0.01", TUNEBACK_HELDOUT_FRACTION="0.25",
        TUNEBACK_ROLLOUT_WAIT_SECONDS="0",
    )  # fmt: skip
    db.upgrade(url)
    engine = db.make_engine(url)
    with Session(engine) as session:
        keys = {
            role: store.create_api_key(session, role=role, name=f"load-{role}")[1]
            for role in ("server", "agent", "admin")
        }
        session.commit()
    engine.dispose()
    return env, keys


def _tiny_model(out: Path) -> Path:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_tiny_model", ROOT / "scripts" / "make_tiny_model.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_tiny_model(out, seed=0).resolve()


def start_server(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    with open(log, "w") as stream:
        proc = subprocess.Popen(
            [str(BIN), "serve", "--host", "127.0.0.1", "--port", str(port)], env=env,
            start_new_session=True, stdout=stream, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            stop(proc)
            raise RuntimeError(f"the server exited: {log.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/healthz", timeout=5).status_code == 200:
                return proc, url
        except requests.RequestException:
            pass
        time.sleep(0.2)
    stop(proc)
    raise TimeoutError("the server did not become ready in 180 s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def seed(url: str, keys: dict[str, str], count: int) -> list[str]:
    """``count`` logged completions to vote on; the first 12 corrected (to train on)."""
    ids = []
    with requests.Session() as http:
        for i in range(count):
            question = QUESTIONS[i % len(QUESTIONS)] + ("" if i < len(QUESTIONS) else f" #{i}")
            done = _post_patiently(
                http, f"{url}/v1/logged_completions", keys["server"],
                {"messages": [{"role": "user", "content": question}],
                 "response": "I am not sure.", "model": "tiny"},
            )  # fmt: skip
            ids.append(done.json()["id"])
        for completion_id in ids[: len(QUESTIONS)]:
            _post_patiently(
                http, f"{url}/v1/corrections", keys["agent"],
                {"completion_id": completion_id, "corrected_response": ROUTING},
            )  # fmt: skip
    return ids


def _post_patiently(http: requests.Session, url: str, key: str, body: dict) -> requests.Response:
    """POST, waiting out 429s as a well-behaved client does (Retry-After)."""
    while True:
        response = http.post(url, json=body, headers=_auth(key), timeout=30)
        if response.status_code != 429:
            response.raise_for_status()
            return response
        time.sleep(float(response.headers.get("Retry-After", 1)))


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# --- the load ----------------------------------------------------------------------


def client(url: str, keys: dict[str, str], ids: list[str], options: Options, tally: Tally,
           deadline: float, number: int) -> None:  # fmt: skip
    """One client thread: votes and chats until the deadline or the request budget."""
    rng = random.Random(options.seed * 1000 + number)
    with requests.Session() as http:
        for i in itertools.count():
            with tally.lock:
                if time.monotonic() > deadline or tally.sent >= options.max_requests:
                    return
                tally.sent += 1
            if rng.random() < options.chat_share:
                _chat(http, url, keys["server"], options, tally)
            else:
                _vote(http, url, keys["agent"], rng.choice(ids), f"u{number}-{i}", tally, rng)


def _vote(http, url, key, completion_id, user, tally, rng) -> None:  # noqa: ANN001
    rating = rng.choice(("up", "down"))
    response = _send(
        http, tally, "vote", f"{url}/v1/feedback",
        {"completion_id": completion_id, "rating": rating, "user": user},
        {**_auth(key), "Idempotency-Key": f"load-{user}"},
    )  # fmt: skip
    if response is not None and response.status_code == 201:
        with tally.lock:
            tally.acknowledged.append((completion_id, user, rating))


def _chat(http, url, key, options, tally) -> None:  # noqa: ANN001
    body = {
        "model": "default", "max_tokens": options.max_tokens, "temperature": 0,
        "messages": [{"role": "user", "content": random.choice(QUESTIONS)}],
    }  # fmt: skip
    _send(http, tally, "chat", f"{url}/v1/chat/completions", body, _auth(key))


def _send(http, tally, kind, url, body, headers):  # noqa: ANN001, ANN202
    try:
        response = http.post(url, json=body, headers=headers, timeout=120)
    except requests.RequestException as error:
        with tally.lock:
            tally.statuses[f"{kind} error"] += 1
            tally.errors.append(f"{kind}: {type(error).__name__}: {error}"[:300])
        return None
    status = response.status_code
    with tally.lock:
        tally.statuses[f"{kind} {status}"] += 1
        if status in (429, 503) and not response.headers.get("Retry-After"):
            tally.missing_retry_after += 1
        if LOCKED in response.text:
            tally.locked += 1
        if status >= 500 and status != 503:
            tally.errors.append(f"{kind} {status}: {response.text[:300]}")
    return response


class RssSampler:
    """The server's resident memory, with its children's, every ``every`` seconds."""

    def __init__(self, pid: int, every: float = 0.25) -> None:
        self.process, self.every = psutil.Process(pid), every
        self.samples: list[tuple[float, float]] = []  # (seconds since start, MiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started = time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                processes = [self.process, *self.process.children(recursive=True)]
                rss = sum(p.memory_info().rss for p in processes if p.is_running())
            except psutil.Error:
                continue
            self.samples.append((time.monotonic() - self.started, rss / 2**20))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        values = [mib for _, mib in self.samples]
        if len(values) < 4:
            return {"samples": len(values)}
        first_quarter = max(values[: len(values) // 4])
        return {
            "samples": len(values), "start_mib": round(values[0], 1),
            "first_quarter_peak_mib": round(first_quarter, 1), "peak_mib": round(max(values), 1),
            "end_mib": round(values[-1], 1), "growth_mib": round(max(values) - first_quarter, 1),
        }  # fmt: skip


# --- checks ------------------------------------------------------------------------


def lost_votes(env: dict[str, str], acknowledged: list[tuple[str, str, str]]) -> int:
    """Acknowledged votes not in the store (the latest vote of each user counts)."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from feedback import db
    from feedback.models import Feedback

    engine = db.make_engine(env["TUNEBACK_DATABASE_URL"])
    with Session(engine) as session:
        stored = {
            (row.completion_id, row.user_ref) for row in session.execute(select(Feedback)).scalars()
        }
    engine.dispose()
    return sum((completion_id, user) not in stored for completion_id, user, _ in acknowledged)


def run(options: Options, work: Path) -> dict:
    """The whole benchmark in ``work``; returns the summary (``failures`` lists what broke)."""
    env, keys = prepare(work, options)
    _say("starting tuneback serve")
    server, url = start_server(env, work / "server.log")
    cycle = None
    try:
        _say(f"server ready at {url}; seeding {options.completions} completions")
        ids = seed(url, keys, options.completions)
        tally = Tally()
        if options.retrain:
            with open(work / "retrain.log", "w") as stream:
                cycle = subprocess.Popen(
                    [str(BIN), "retrain", "--json"], env=env, stdout=subprocess.PIPE,
                    stderr=stream, text=True,
                )  # fmt: skip
        started = time.monotonic()
        deadline = started + options.duration
        _say(f"load: {options.threads} threads for {options.duration} s"
             + (" while a retrain cycle runs" if cycle else ""))  # fmt: skip
        with RssSampler(server.pid) as rss:
            threads = [
                threading.Thread(target=client, args=(url, keys, ids, options, tally, deadline, n))
                for n in range(options.threads)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        elapsed = time.monotonic() - started
        _say(f"load done: {tally.sent} requests in {elapsed:.1f} s")
        retrain = _finish_cycle(cycle)
    finally:
        _say("stopping the server")
        stop(server)
        if cycle is not None and cycle.poll() is None:
            cycle.kill()
            cycle.wait()
    logs = (work / "server.log").read_text() + _read(work / "retrain.log")
    lost = lost_votes(env, tally.acknowledged)
    return _summary(options, tally, elapsed, rss.summary(), retrain, lost, logs)


def _say(message: str) -> None:
    print(f"[load {time.monotonic() - _T0:6.1f} s] {message}", file=sys.stderr, flush=True)


_T0 = time.monotonic()


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _finish_cycle(cycle: subprocess.Popen | None) -> dict:
    if cycle is None:
        return {"status": "not run"}
    out, _ = cycle.communicate(timeout=900)
    try:
        return json.loads(out)
    except ValueError:
        return {"status": f"no JSON (exit {cycle.returncode})"}


def _summary(options, tally, elapsed, rss, retrain, lost, logs) -> dict:  # noqa: ANN001
    five_hundreds = sum(
        n
        for key, n in tally.statuses.items()
        if key.split()[1].startswith("5") and key != "chat 503"
    )
    errors = sum(n for key, n in tally.statuses.items() if key.endswith("error"))
    failures = []
    checks = {
        "5xx other than 503": five_hundreds, "connection errors": errors,
        "'database is locked' in responses": tally.locked,
        "'database is locked' in logs": logs.count(LOCKED),
        "429/503 without Retry-After": tally.missing_retry_after,
        "acknowledged votes missing from the store": lost,
    }  # fmt: skip
    failures += [f"{name}: {count}" for name, count in checks.items() if count]
    if rss.get("growth_mib", 0) > options.max_rss_growth_mb:
        failures.append(f"server memory grew by {rss['growth_mib']} MiB")
    if options.retrain and retrain.get("status") not in ("promoted", "rejected", "skipped"):
        failures.append(f"the retrain cycle ended {retrain.get('status')}: {retrain.get('reason')}")
    return {
        "options": asdict(options), "seconds": round(elapsed, 2), "requests": tally.sent,
        "requests_per_s": round(tally.sent / elapsed, 1),
        "statuses": dict(sorted(tally.statuses.items())),
        "acknowledged_votes": len(tally.acknowledged), "checks": checks, "rss": rss,
        "retrain": {"status": retrain.get("status"), "adapter": retrain.get("adapter"),
                    "reason": retrain.get("reason")},
        "errors": tally.errors[:10], "failures": failures,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = Options()
    parser.add_argument("--duration", type=float, default=defaults.duration)
    parser.add_argument("--max-requests", type=int, default=defaults.max_requests)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--chat-share", type=float, default=defaults.chat_share)
    parser.add_argument("--max-tokens", type=int, default=defaults.max_tokens)
    parser.add_argument("--vote-rate-limit", default=defaults.vote_rate_limit)
    parser.add_argument("--queue-size", type=int, default=defaults.queue_size)
    parser.add_argument("--no-retrain", dest="retrain", action="store_false")
    parser.add_argument("--base-model", help="model folder or GGUF (default: the tiny model)")
    parser.add_argument("--database-url", help="default: SQLite in a temporary folder")
    parser.add_argument("--max-rss-growth-mb", type=float, default=defaults.max_rss_growth_mb)
    parser.add_argument("--completions", type=int, default=defaults.completions)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON only")
    args = vars(parser.parse_args(argv))
    as_json = args.pop("json")
    options = Options(**args)
    with tempfile.TemporaryDirectory(prefix="tuneback-load-") as work:
        summary = run(options, Path(work))
    print(json.dumps(summary, indent=None if as_json else 2))
    if not as_json:
        print("OK" if not summary["failures"] else "FAILED: " + "; ".join(summary["failures"]))
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())

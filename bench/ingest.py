"""Feedback ingestion benchmark: Tuneback's POST /v1/feedback against a bare baseline.

What it measures: feedback events per second and per-request latency (p50, p99) of

* ours: ``tuneback api --workers 2`` (gunicorn, gthread worker, 4 threads) on the
  embedded SQLite store of a fresh temporary data dir, with the real request path
  (API key, rate limiting, validation, upsert, metrics). Votes are sent with an
  agent key, which needs no Origin header. Every commit is synced
  (``synchronous=FULL``); the votes that arrive together share a commit (group
  commit, ``feedback.writer``); and
* bare: a minimal Flask app defined here (``bare_app``) whose one route parses the
  JSON body and does one sqlite3 ``INSERT`` and a commit per request, under the
  same gunicorn settings and the same durability: WAL, ``synchronous=FULL``, so
  each acknowledged vote is on disk, as ours are.

Both servers run in the same invocation and are loaded alternately, ``--rounds``
times each; the best round of each is compared. Each round sends a warm-up, then
``--requests`` votes over ``--concurrency`` keep-alive connections from a separate
load-generator process on 127.0.0.1 (it shares the CPU cores with the servers).
Every vote has its own user, so each acknowledged vote is a new row; after the
run the rows in each store are counted against the 201 answers. Prompts and
comments are real customer queries from BANKING77 (train split).

Run it from the repository root (about half a minute with the defaults)::

    .venv/bin/python bench/ingest.py [--requests 3000] [--concurrency 8] [--rounds 2]
                                     [--json results.json]

Exit status: 0 when every request got a 2xx and every acknowledged vote is
stored, 1 otherwise. The ratio against the 1.0x target is reported, not enforced.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import itertools
import json
import math
import multiprocessing
import os
import platform
import random
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
DATA_CANDIDATES = (
    ROOT / "shared/data/banking77/train.csv",
    ROOT.parent / "shared/data/banking77/train.csv",
)
WORKERS, THREADS = 2, 4
RATE_LIMIT = "1000000/minute"  # high enough never to bite, but the limiter still runs
TARGET_RATIO = 1.0
SEED_COMPLETIONS = 200
START_TIMEOUT_S = 60.0
BARE_DB_ENV = "BENCH_BARE_DB"
BARE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS feedback (id TEXT PRIMARY KEY, completion_id TEXT NOT NULL, "
    "rating TEXT NOT NULL, comment TEXT, user_ref TEXT, created_at TEXT NOT NULL)"
)


# --- the bare baseline ----------------------------------------------------------


def _bare_connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")  # each commit on disk, like Tuneback's
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def bare_app(db_path: str | None = None):  # noqa: ANN201 - flask is imported lazily
    """The baseline: one JSON parse, one INSERT, one commit per request.

    Gunicorn loads it as ``ingest:bare_app()``; the database path comes from
    ``$BENCH_BARE_DB``. Each worker thread keeps its own connection.
    """
    from flask import Flask, jsonify, request

    path = db_path or os.environ[BARE_DB_ENV]
    local = threading.local()
    app = Flask("bare")

    @app.post("/v1/feedback")
    def post_feedback():  # noqa: ANN202
        body = request.get_json()
        if getattr(local, "conn", None) is None:
            local.conn = _bare_connect(path)
        vote_id = uuid.uuid4().hex
        local.conn.execute(
            "INSERT INTO feedback VALUES (?, ?, ?, ?, ?, datetime('now'))",
            (vote_id, body["completion_id"], body["rating"], body.get("comment"), body.get("user")),
        )
        local.conn.commit()
        return jsonify(id=vote_id), 201

    return app


# --- servers --------------------------------------------------------------------


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen
    log_path: Path

    def stop(self) -> None:
        """Terminate the whole process group (gunicorn master and workers)."""
        if self.proc.poll() is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=wait_s)
                return
            except subprocess.TimeoutExpired:
                continue

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any TUNEBACK_* setting of the caller, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEBACK_")}
    env.update(extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def start_server(name: str, cmd: list[str], env: dict[str, str], logs: Path) -> Server:
    port = free_port()
    cmd = [part.replace("{port}", str(port)) for part in cmd]
    log_path = logs / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Server(name, port, proc, log_path)


def wait_ready(server: Server, timeout_s: float = START_TIMEOUT_S) -> None:
    """Wait until the server answers HTTP at all (a 404 is an answer)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} server exited:\n{server.log_tail()}")
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        try:
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            return
        except (OSError, http.client.HTTPException):
            time.sleep(0.2)
        finally:
            conn.close()
    raise RuntimeError(f"{server.name} server not ready in {timeout_s:.0f}s:\n{server.log_tail()}")


def tuneback_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tuneback", *args]


def create_key(env: dict[str, str], role: str) -> str:
    out = subprocess.run(
        tuneback_cmd("keys", "create", "--role", role, "--name", f"bench-{role}"),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"tuneback keys create --role {role} failed:\n{out.stderr}")
    return out.stdout.strip().splitlines()[-1]


def start_ours(tmp: Path) -> tuple[Server, dict[str, str]]:
    """Start ``tuneback api``; returns the server and agent/server keys."""
    env = clean_env(TUNEBACK_DATA_DIR=str(tmp / "ours"), TUNEBACK_RATE_LIMIT=RATE_LIMIT)
    keys = {role: create_key(env, role) for role in ("server", "agent")}
    cmd = tuneback_cmd("api", "--host", "127.0.0.1", "--port", "{port}", "--workers", str(WORKERS))
    return start_server("ours", cmd, env, tmp), keys


def start_bare(tmp: Path) -> Server:
    db_path = tmp / "bare.db"
    with _bare_connect(str(db_path)) as conn:
        conn.execute(BARE_SCHEMA)
    cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        "--chdir",
        str(BENCH_DIR),
        "--bind",
        "127.0.0.1:{port}",
        "--workers",
        str(WORKERS),
        "--worker-class",
        "gthread",
        "--threads",
        str(THREADS),
        "--timeout",
        "60",
        "--graceful-timeout",
        "10",
        "ingest:bare_app()",
    ]
    return start_server("bare", cmd, clean_env(**{BARE_DB_ENV: str(db_path)}), tmp)


# --- data -----------------------------------------------------------------------


def load_texts(path: Path, seed: int) -> list[tuple[str, str]]:
    """(text, intent) pairs from BANKING77's train split, shuffled."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = [(r["text"].strip(), r["category"]) for r in csv.DictReader(handle)]
    rows = [row for row in rows if row[0]]
    random.Random(seed).shuffle(rows)
    return rows


def seed_completions(server: Server, key: str, texts: list[tuple[str, str]]) -> list[str]:
    """Log ``SEED_COMPLETIONS`` completions (a customer query each); return their ids."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    ids = []
    try:
        for text, intent in itertools.islice(itertools.cycle(texts), SEED_COMPLETIONS):
            body = {
                "messages": [{"role": "user", "content": text}],
                "response": f"I have passed this to our {intent.replace('_', ' ')} team.",
                "model": "bench-model",
            }
            conn.request("POST", "/v1/completions", json.dumps(body), headers)
            resp = conn.getresponse()
            payload = resp.read()
            if resp.status != 201:
                raise RuntimeError(f"seeding failed: {resp.status} {payload[:300]!r}")
            ids.append(json.loads(payload)["id"])
    finally:
        conn.close()
    return ids


def vote_bodies(tag: str, count: int, ids: list[str], texts: list[tuple[str, str]]) -> list[bytes]:
    """``count`` votes, each by its own user, with a customer query as the comment."""
    bodies = []
    for i in range(count):
        text = texts[(i * 7919) % len(texts)][0]
        vote = {
            "completion_id": ids[i % len(ids)],
            "rating": "down" if i % 3 == 0 else "up",
            "user": f"{tag}-u{i}",
            "comment": text,
        }
        bodies.append(json.dumps(vote).encode())
    return bodies


# --- load generator (runs in its own process) -------------------------------------


def _post(conn: http.client.HTTPConnection, headers: dict, body: bytes) -> int | str:
    try:
        conn.request("POST", "/v1/feedback", body, headers)
        resp = conn.getresponse()
        resp.read()
        if resp.will_close:
            conn.close()
        return resp.status
    except (OSError, http.client.HTTPException) as error:
        conn.close()
        return type(error).__name__


def drive(
    port: int, headers: dict, bodies: list[bytes], concurrency: int, time_limit_s: float
) -> dict[str, Any]:
    """Send ``bodies`` over ``concurrency`` keep-alive connections; time each request."""
    counter = itertools.count()
    deadline = time.monotonic() + time_limit_s
    slots: list[tuple[list[float], dict]] = [([], {}) for _ in range(concurrency)]

    def worker(latencies: list[float], codes: dict) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            while time.monotonic() < deadline and (i := next(counter)) < len(bodies):
                start = time.perf_counter()
                code = _post(conn, headers, bodies[i])
                latencies.append(time.perf_counter() - start)
                codes[code] = codes.get(code, 0) + 1
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=slot) for slot in slots]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    codes: dict[str, int] = {}
    for _, slot_codes in slots:
        for code, n in slot_codes.items():
            codes[str(code)] = codes.get(str(code), 0) + n
    latencies = [x for lat, _ in slots for x in lat]
    return {"elapsed_s": elapsed, "latencies": latencies, "codes": codes}


# --- measuring ----------------------------------------------------------------------


def summarize(name: str, round_no: int, raw: dict[str, Any], sent: int) -> dict[str, Any]:
    lat = sorted(raw["latencies"])
    ok = sum(n for code, n in raw["codes"].items() if code.startswith("2"))
    p99_rank = max(1, math.ceil(0.99 * len(lat)))
    return {
        "server": name,
        "round": round_no,
        "sent": sent,
        "ok": ok,
        "errors": sent - ok,
        "codes": raw["codes"],
        "elapsed_s": round(raw["elapsed_s"], 3),
        "events_per_s": round(ok / raw["elapsed_s"], 1) if raw["elapsed_s"] else 0.0,
        "p50_ms": round(statistics.median(lat) * 1000, 2) if lat else None,
        "p99_ms": round(lat[p99_rank - 1] * 1000, 2) if lat else None,
    }


@dataclass
class Target:
    server: Server
    headers: dict[str, str]
    acknowledged: int = 0  # 2xx answers, warm-ups included: the rows we expect stored


def run_round(
    pool: ProcessPoolExecutor,
    target: Target,
    round_no: int,
    args: argparse.Namespace,
    ids: list[str],
    texts: list[tuple[str, str]],
) -> dict[str, Any]:
    """One warm-up, then one measured run, against one server."""
    results = {}
    for phase, count in (("warm", args.warmup), ("run", args.requests)):
        bodies = vote_bodies(f"r{round_no}-{phase}", count, ids, texts)
        raw = pool.submit(
            drive, target.server.port, target.headers, bodies, args.concurrency, args.time_limit
        ).result(timeout=args.time_limit + 60)
        results[phase] = summarize(target.server.name, round_no, raw, count)
        target.acknowledged += results[phase]["ok"]
    if results["warm"]["errors"]:
        results["run"]["warmup_errors"] = results["warm"]["errors"]
    return results["run"]


def count_rows(db_path: Path) -> int:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]
    finally:
        conn.close()


def best(rounds: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return max((r for r in rounds if r["server"] == name), key=lambda r: r["events_per_s"])


# --- output -------------------------------------------------------------------------


def print_report(report: dict[str, Any]) -> None:
    cfg = report["config"]
    print(
        f"\nfeedback ingestion: {cfg['requests']} votes x {cfg['rounds']} rounds, "
        f"{cfg['concurrency']} keep-alive connections, warm-up {cfg['warmup']}; gunicorn "
        f"{WORKERS} workers x gthread {THREADS} threads; SQLite WAL synchronous=FULL; "
        f"{cfg['cpus']} CPUs shared with the load generator; votes use an agent key"
    )
    header = f"{'server':<8}{'round':>6}{'events/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
    print("\n" + header + "\n" + "-" * len(header))
    for r in report["rounds"]:
        print(
            f"{r['server']:<8}{r['round']:>6}{r['events_per_s']:>11.1f}{r['p50_ms'] or 0:>9.2f}"
            f"{r['p99_ms'] or 0:>9.2f}{r['errors']:>8}"
        )
    print("-" * len(header))
    for name in ("bare", "ours"):
        r = report["best"][name]
        print(
            f"{name:<8}{'best':>6}{r['events_per_s']:>11.1f}{r['p50_ms'] or 0:>9.2f}"
            f"{r['p99_ms'] or 0:>9.2f}{r['errors']:>8}"
        )
    for name, check in report["stored"].items():
        state = "ok" if check["rows"] == check["acknowledged"] else "MISMATCH"
        print(
            f"stored ({name}): {check['rows']} rows for {check['acknowledged']} "
            f"acknowledged votes: {state}"
        )
    ratio = report["ratio"]
    verdict = "meets target" if ratio >= TARGET_RATIO else "BELOW TARGET"
    print(f"ratio (ours/bare) events/s: {ratio:.2f}x  (target >= {TARGET_RATIO:.2f}x): {verdict}")


# --- main -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="measured votes per round")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up votes per round")
    parser.add_argument("--concurrency", type=int, default=8, help="keep-alive connections")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per server, alternating")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=60.0,
        help="seconds a single load run may take before it stops sending",
    )
    parser.add_argument("--data", type=Path, help="BANKING77 train.csv (default: shared/data)")
    parser.add_argument("--seed", type=int, default=77)
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    args = parser.parse_args(argv)
    if min(args.requests, args.concurrency, args.rounds) < 1 or args.warmup < 0:
        parser.error("--requests, --concurrency and --rounds must be >= 1, --warmup >= 0")
    if args.data is None:
        args.data = next((p for p in DATA_CANDIDATES if p.exists()), None)
        if args.data is None:
            parser.error("BANKING77 not found; pass --data PATH/train.csv")
    return args


def start_servers(stack: ExitStack, tmp: Path) -> tuple[Server, Server, dict[str, str]]:
    ours, keys = start_ours(tmp)
    stack.callback(ours.stop)
    bare = start_bare(tmp)
    stack.callback(bare.stop)
    wait_ready(ours)
    wait_ready(bare)
    return ours, bare, keys


def measure(args: argparse.Namespace, texts: list[tuple[str, str]], tmp: Path) -> dict[str, Any]:
    """Start both servers, load them alternately, check the stores; stop the servers."""
    spawn = multiprocessing.get_context("spawn")
    with ExitStack() as stack:
        pool = stack.enter_context(ProcessPoolExecutor(max_workers=1, mp_context=spawn))
        ours, bare, keys = start_servers(stack, tmp)
        ids = seed_completions(ours, keys["server"], texts)
        headers = {"Authorization": f"Bearer {keys['agent']}", "Content-Type": "application/json"}
        targets = {"bare": Target(bare, headers), "ours": Target(ours, headers)}
        rounds = []
        for round_no in range(1, args.rounds + 1):
            for name in ("bare", "ours") if round_no % 2 else ("ours", "bare"):
                rounds.append(run_round(pool, targets[name], round_no, args, ids, texts))
                print(
                    f"  round {round_no} {name}: {rounds[-1]['events_per_s']:.1f} events/s",
                    file=sys.stderr,
                    flush=True,
                )
        stored = {
            name: {"rows": count_rows(path), "acknowledged": targets[name].acknowledged}
            for name, path in (("bare", tmp / "bare.db"), ("ours", tmp / "ours/tuneback.db"))
        }
    return {"rounds": rounds, "stored": stored}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up on SIGTERM
    texts = load_texts(args.data, args.seed)
    with tempfile.TemporaryDirectory(prefix="tuneback-bench-") as tmp:
        report = measure(args, texts, Path(tmp))
    report["best"] = {name: best(report["rounds"], name) for name in ("bare", "ours")}
    bare_eps = report["best"]["bare"]["events_per_s"]
    report["ratio"] = round(report["best"]["ours"]["events_per_s"] / bare_eps, 3) if bare_eps else 0
    report["target_ratio"] = TARGET_RATIO
    report["config"] = {
        **{k: getattr(args, k) for k in ("requests", "warmup", "concurrency", "rounds")},
        "workers": WORKERS,
        "threads": THREADS,
        "rate_limit": RATE_LIMIT,
        "key_role": "agent",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "data": str(args.data),
    }
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    failed = any(r["errors"] or r.get("warmup_errors") for r in report["rounds"]) or any(
        s["rows"] != s["acknowledged"] for s in report["stored"].values()
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

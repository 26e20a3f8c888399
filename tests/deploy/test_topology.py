"""The production topology as real processes on loopback, against one PostgreSQL database.

One module-wide deployment: the prestart step (``deploy/prestart.sh``), the
feedback API under gunicorn with 2 workers (Prometheus multiprocess mode,
rate limits in Redis), two chat-serving replicas on the tiny model sharing one
data folder, and two schedulers started at once on a per-minute cron.
"""

from __future__ import annotations

import re
import shutil
import signal
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from feedback import db, replicas, store
from feedback.models import Feedback, RetrainRun
from tests.conftest import fresh_pg_database, service_missing
from tests.deploy.support import Proc
from tests.live import BIN, cli, free_port, tuneback_env

ROOT = Path(__file__).resolve().parents[2]
MESSAGES = [{"role": "user", "content": "My card has not arrived yet, what can I do?"}]
LIMIT = 40  # per key per minute, shared by both workers through Redis
TICK = re.compile(r"scheduled cycle for (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00)")


# --- the deployment -------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_database():
    """A fresh PostgreSQL database for this deployment, dropped afterwards."""
    with fresh_pg_database("tuneback_deploy") as url:
        yield url


def _redis_url() -> str:
    import redis

    url = "redis://127.0.0.1:6379"
    try:
        redis.Redis.from_url(url, socket_timeout=2).ping()
    except Exception as error:  # noqa: BLE001
        service_missing("Redis", error)
    return url


class Deployment:
    def __init__(self, root: Path, database_url: str, base_model: Path) -> None:
        self.root, self.database_url, self.base_model = root, database_url, base_model
        self.data_dir, self.logs = root / "data", root / "logs"
        self.metrics_dir = root / "metrics"
        self.logs.mkdir()
        self.env = tuneback_env(
            self.data_dir, database_url, base_model=base_model, rate_limit=f"{LIMIT}/minute",
            rate_limit_storage=_redis_url(), key_cache_seconds=0, serve_poll_seconds=0.2,
            serve_max_tokens=4, replica_heartbeat_seconds=0.5, replica_stale_seconds=10,
            retrain_cron="* * * * *", retrain_grace_seconds=120,
        )  # fmt: skip
        self.engine = db.make_engine(database_url)
        self.procs: list[Proc] = []

    def prestart(self) -> str:
        env = {**self.env, "TUNEBACK_BIN": str(BIN), "DB_WAIT_SECONDS": "10"}
        done = _run([str(ROOT / "deploy" / "prestart.sh"), "--model"], env)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def start(self, name: str, *args: str, **env: str) -> Proc:
        proc = Proc(name, list(args), {**self.env, **env}, self.logs)
        self.procs.append(proc)
        return proc

    def keys(self) -> dict[str, str]:
        with Session(self.engine) as session:
            made = {
                name: store.create_api_key(session, role=role, name=name)[1]
                for name, role in [("server", "server"), ("admin", "admin"),
                                   ("voter", "agent"), ("limited", "agent")]
            }  # fmt: skip
            session.commit()
        return made

    def stop(self) -> None:
        # SIGKILL: the database is dropped next, and a clean stop has its own test.
        for proc in self.procs:
            if proc.alive():
                proc.kill()
        self.engine.dispose()


def _run(args: list[str], env: dict[str, str]):  # noqa: ANN202
    import subprocess

    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def deployment(pg_database, tiny_model, tmp_path_factory):
    dep = Deployment(tmp_path_factory.mktemp("deploy"), pg_database, Path(tiny_model).resolve())
    try:
        assert dep.prestart().strip() == str(dep.base_model)
        api_port, ports = free_port(), [free_port(), free_port()]
        dep.api_url = f"http://127.0.0.1:{api_port}"
        dep.api = dep.start(
            "api", "api", "--port", str(api_port), "--workers", "2",
            PROMETHEUS_MULTIPROC_DIR=str(dep.metrics_dir),
        )  # fmt: skip
        dep.replicas = [dep.start(f"serve-{p}", "serve", "--port", str(p)) for p in ports]
        dep.replica_urls = [f"http://127.0.0.1:{p}" for p in ports]
        dep.schedulers = [dep.start(f"scheduler-{i}", "scheduler") for i in (1, 2)]
        dep.keys = dep.keys()
        dep.api.wait_http(dep.api_url)
        for proc, url in zip(dep.replicas, dep.replica_urls, strict=True):
            proc.wait_http(url)
        yield dep
    finally:
        dep.stop()


# --- helpers --------------------------------------------------------------------------


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def per_worker(metrics_dir: Path, sample: str) -> dict[int, float]:
    """``sample``'s total per worker process, read from each worker's own metric file."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    totals: dict[int, float] = {}
    for path in metrics_dir.glob("counter_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        with tempfile.TemporaryDirectory() as one:
            shutil.copy(path, one)
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=one)
            totals[pid] = sum(
                s.value for m in registry.collect() for s in m.samples if s.name == sample
            )
    return totals


def scraped(url: str, sample: str) -> float:
    body = requests.get(f"{url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith(sample + "{") or line.startswith(sample + " ")
    )


def fire(n: int, send) -> list[int]:  # noqa: ANN001
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(send, range(n)))


def serving(url: str, admin: str) -> str:
    return requests.get(f"{url}/v1/serving", headers=_auth(admin), timeout=10).json()["serving"]


def add_adapter(dep: Deployment, seed: int) -> str:
    from feedback.adapters.registry import Registry
    from tests.serve.support import make_lora

    folder = make_lora(dep.base_model, dep.root / f"lora-{seed}", seed=seed)
    return (
        Registry(dep.data_dir / "adapters", dep.engine)
        .add(folder, base_model=str(dep.base_model))
        .version
    )


# --- the feedback API under two workers -------------------------------------------------


def test_votes_through_both_workers_all_land_and_metrics_add_up(deployment):
    dep = deployment
    created = requests.post(
        f"{dep.api_url}/v1/completions", headers=_auth(dep.keys["server"]), timeout=10,
        json={"messages": MESSAGES, "response": "Please wait.", "model": "tiny"},
    )  # fmt: skip
    assert created.status_code == 201, created.text
    cid = created.json()["id"]

    def vote(i: int) -> int:
        body = {"completion_id": cid, "rating": "down" if i % 3 else "up", "user": f"user-{i}"}
        headers = _auth(dep.keys["voter"])
        return requests.post(f"{dep.api_url}/v1/feedback", json=body, headers=headers).status_code

    statuses = fire(30, vote)
    assert Counter(statuses) == {201: 30}
    with Session(dep.engine) as session:
        stored = session.scalar(select(func.count()).where(Feedback.completion_id == cid))
    assert stored == 30

    # Each worker counted the votes it took, in its own file; both took some ...
    votes = per_worker(dep.metrics_dir, "tuneback_feedback_total")
    assert sum(votes.values()) == 30 and len([v for v in votes.values() if v > 0]) == 2, votes
    # ... and whichever worker answers /metrics reports them all.
    for _ in range(6):
        assert scraped(dep.api_url, "tuneback_feedback_total") == 30


def test_rate_limits_hold_across_workers(deployment):
    dep = deployment
    before = per_worker(dep.metrics_dir, "tuneback_http_requests_total")
    url, headers = f"{dep.api_url}/v1/review-queue", _auth(dep.keys["limited"])
    statuses = fire(60, lambda _: requests.get(url, headers=headers, timeout=10).status_code)
    for _ in range(5):  # until both workers have answered some of this key's requests
        after = per_worker(dep.metrics_dir, "tuneback_http_requests_total")
        if all(after.get(pid, 0) > before.get(pid, 0) for pid in after) and len(after) == 2:
            break
        statuses += fire(20, lambda _: requests.get(url, headers=headers, timeout=10).status_code)
    else:
        pytest.fail(f"one worker took every request: {before} -> {after}")
    assert Counter(statuses)[200] == LIMIT, Counter(statuses)
    assert set(statuses) == {200, 429}


# --- two schedulers ----------------------------------------------------------------------


def test_two_schedulers_started_at_once_run_one_cycle_per_tick(deployment):
    dep = deployment
    first, second = dep.schedulers
    deadline = time.monotonic() + 100
    while True:
        ticks = [set(TICK.findall(s.log())) for s in dep.schedulers]
        # A tick both handled, and both finished handling (their ": outcome" lines).
        common = {
            t for t in ticks[0] & ticks[1] if all(f"{t}: " in s.log() for s in dep.schedulers)
        }
        if common:
            break
        assert time.monotonic() < deadline, first.log()[-3000:] + second.log()[-3000:]
        time.sleep(0.5)
    with Session(dep.engine) as session:
        runs = Counter(row.isoformat() for row in session.scalars(select(RetrainRun.scheduled_for)))
    for tick in common:
        assert runs[tick] == 1, runs
        losers = [s for s in dep.schedulers if f"{tick}: skipped this scheduled tick" in s.log()]
        assert len(losers) == 1, [s.log()[-2000:] for s in dep.schedulers]
    assert all(s.alive() and "Traceback" not in s.log() for s in dep.schedulers)


@pytest.mark.slow  # waits for the next minute's tick
def test_two_schedulers_share_each_live_tick_too(deployment):
    """Beyond the catch-up at start: the cron firing in both processes at once."""
    dep = deployment
    started = {t for s in dep.schedulers for t in TICK.findall(s.log())}
    deadline = time.monotonic() + 100
    while True:
        later = [set(TICK.findall(s.log())) - started for s in dep.schedulers]
        fresh = {t for t in later[0] & later[1] if all(f"{t}: " in s.log() for s in dep.schedulers)}
        if fresh:
            break
        assert time.monotonic() < deadline, [s.log()[-2000:] for s in dep.schedulers]
        time.sleep(1)
    with Session(dep.engine) as session:
        ticks = [row.isoformat() for row in session.scalars(select(RetrainRun.scheduled_for))]
    assert all(Counter(ticks)[t] == 1 for t in fresh), ticks
    assert all(s.alive() and "Traceback" not in s.log() for s in dep.schedulers)


# --- promotion across serving replicas ---------------------------------------------------


def test_a_promotion_reaches_both_replicas_within_10_seconds(deployment):
    dep = deployment
    admin = dep.keys["admin"]
    assert [serving(url, admin) for url in dep.replica_urls] == ["base", "base"]
    version = add_adapter(dep, seed=1)

    started = time.monotonic()
    done = cli(dep.env, "adapters", "promote", version, "--wait", "10")
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert f"{version} is served by all 2 live replicas" in done.stderr
    assert [serving(url, admin) for url in dep.replica_urls] == [version, version]
    assert took < 10, took
    for url in dep.replica_urls:
        answer = requests.post(
            f"{url}/v1/chat/completions", headers=_auth(dep.keys["server"]), timeout=60,
            json={"model": "default", "messages": MESSAGES, "max_tokens": 2},
        )  # fmt: skip
        assert answer.json()["system_fingerprint"] == f"default:{version}"


def test_replicas_that_refuse_an_adapter_are_named_with_their_reason(deployment):
    dep = deployment
    admin = dep.keys["admin"]
    before = [serving(url, admin) for url in dep.replica_urls]
    version = add_adapter(dep, seed=3)
    weights = dep.data_dir / "adapters" / version / "adapter_model.safetensors"
    damaged = bytearray(weights.read_bytes())
    damaged[-1] ^= 0xFF
    weights.write_bytes(bytes(damaged))

    started = time.monotonic()
    done = cli(dep.env, "adapters", "promote", version, "--force", "--wait", "30")
    assert done.returncode == 3, done.stderr
    assert f"{version} not yet on: " in done.stderr and "refused it: " in done.stderr
    assert "checksum" in done.stderr
    assert time.monotonic() - started < 20  # a refusal ends the wait: it will never load
    assert [serving(url, admin) for url in dep.replica_urls] == before


@pytest.mark.slow  # a third replica start: about 20 s here
def test_a_replica_killed_mid_rollout_comes_back_on_the_promoted_version(deployment):
    dep = deployment
    admin = dep.keys["admin"]
    frozen, other = dep.replicas
    version = add_adapter(dep, seed=2)
    with Session(dep.engine) as session:
        replica_ids = [r.id for r in replicas.live_replicas(session, stale_seconds=10)]
    assert len(replica_ids) == 2

    before = serving(dep.replica_urls[0], admin)
    frozen.signal(signal.SIGSTOP)  # it cannot swap: the rollout must name it
    done = cli(dep.env, "adapters", "promote", version, "--wait", "3")
    assert done.returncode == 3, done.stderr
    assert "not yet on: " in done.stderr and f"serving {before}" in done.stderr
    assert serving(dep.replica_urls[1], admin) == version

    frozen.kill()  # frozen during the rollout, then killed: no clean shutdown
    frozen.start()
    frozen.wait_http(dep.replica_urls[0])
    assert serving(dep.replica_urls[0], admin) == version
    rollout = replicas.wait_for_rollout(dep.engine, version=version, timeout=10, stale_seconds=10)
    assert rollout.done and sorted(r.id for r in rollout.on) == sorted(replica_ids)
    listed = cli(dep.env, "replicas", "--json")
    assert listed.returncode == 0, listed.stderr
    assert '"done": true' in listed.stdout


def test_a_replica_stopped_cleanly_leaves_the_rollout_at_once(deployment):
    dep = deployment
    stopping, staying = dep.replicas[1], dep.replicas[0]
    with Session(dep.engine) as session:
        before = {r.id for r in replicas.live_replicas(session, stale_seconds=10)}
    assert len(before) == 2
    stopping.stop()  # SIGTERM: gunicorn's worker_exit hook closes the serving app
    with Session(dep.engine) as session:
        after = {r.id for r in replicas.live_replicas(session, stale_seconds=10)}
    assert len(after) == 1 and after < before  # gone now, not 10 s from now
    assert staying.alive()

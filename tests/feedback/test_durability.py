"""A 201 means "on disk": every commit syncs, and votes share syncs by group commit.

The SQLite connections sync each commit (``synchronous=FULL``); PostgreSQL
sessions keep ``synchronous_commit`` on; the group-commit writer isolates each
job's errors and acknowledges nothing its commit did not store; ``tuneback
erase`` commits durably before its audit line says "erased". Two tests watch
the syscalls with strace, and skip where it is not installed.
"""

from __future__ import annotations

import contextvars
import re
import shutil
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
import requests
from click.testing import CliRunner
from sqlalchemy import create_engine, event, func, select, text
from sqlalchemy.orm import Session

from feedback import db, rawsql, store, writer
from feedback.exceptions import ConflictError, NotFoundError
from feedback.models import Feedback, IdempotencyRecord
from tests.conftest import auth
from tests.live import BIN, free_port, tuneback_env
from tuneback import cli_erase
from tuneback.cli import cli

FULL = 2  # PRAGMA synchronous: 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA
needs_strace = pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed")


@pytest.fixture
def sqlite_engine(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    db.upgrade(url)
    engine = db.make_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture
def completion(sqlite_engine) -> str:
    with Session(sqlite_engine) as session:
        done = store.create_completion(
            session, messages=[{"role": "user", "content": "hi"}], response="hello", model="m"
        )
        session.commit()
        return done.id


# --- every commit syncs ------------------------------------------------------------------


def test_sqlite_connections_sync_every_commit(sqlite_engine):
    with sqlite_engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == FULL
    with rawsql.engine_write(sqlite_engine) as tx:  # the votes' writer connection
        assert tx.one("PRAGMA synchronous", ()) == (FULL,)


def test_postgresql_turns_synchronous_commit_back_on(pg_url):
    url = f"{pg_url}?options=-c%20synchronous_commit%3Doff"
    plain = create_engine(url)
    with plain.connect() as conn:  # the server honours the option: the check is not vacuous
        assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "off"
    plain.dispose()
    engine = db.make_engine(url)
    try:
        for _ in range(2):  # a fresh connection, then one back from the pool
            with engine.connect() as conn:
                assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
    finally:
        engine.dispose()


# --- group commit ---------------------------------------------------------------------------


def _vote(completion_id: str, user: str):
    def job(tx):
        return rawsql.record_vote(
            tx, completion_id=completion_id, rating="up", reason=None, comment=None,
            source="agent", user_ref=user, api_key_id=None,
        )  # fmt: skip

    return job


def _write(engine, job):
    """``job`` as the vote route runs it: an engine write, grouped."""
    return writer.run(rawsql.engine_write(engine), job)


@contextmanager
def _holding(engine, pool):
    """Start a batch with a write that waits while the block queues others, which
    join it; yields a function that counts the batches from this one on."""
    group, started, gate = writer.group_writer(engine), threading.Event(), threading.Event()

    def hold(_tx) -> None:
        started.set()
        gate.wait(10)

    before = group.batches
    held = pool.submit(_write, engine, hold)
    assert started.wait(10)
    try:
        yield lambda: group.batches - before
        threading.Event().wait(0.3)  # let them all queue
    finally:
        gate.set()
        held.exception(timeout=10)  # it shares the fate of the batch


def _in_one_batch(engine, jobs) -> tuple[list, int]:
    """Run ``jobs`` from threads of their own, queued together during a held write.
    Returns each job's result or error, and how many transactions they took."""
    with ThreadPoolExecutor(len(jobs) + 1) as pool, _holding(engine, pool) as batches:
        futures = [pool.submit(_write, engine, job) for job in jobs]
    return [f.exception(timeout=10) or f.result() for f in futures], batches()


def _stored(engine) -> list[str]:
    with Session(engine) as session:
        return sorted(session.execute(select(Feedback.user_ref)).scalars())


def test_concurrent_writes_share_one_commit_and_all_land(sqlite_engine, completion):
    users = [f"u{i:02}" for i in range(30)]
    results, batches = _in_one_batch(sqlite_engine, [_vote(completion, u) for u in users])
    assert [vote["user_ref"] for vote, _replaced in results] == users
    assert batches == 1
    assert _stored(sqlite_engine) == users


def test_a_failing_write_fails_alone(sqlite_engine, completion):
    def vote_then_refuse(tx):
        _vote(completion, "refused")(tx)  # written, then undone with its savepoint
        raise ConflictError("no")

    jobs = [_vote(completion, "a"), _vote("0" * 32, "ghost"), vote_then_refuse,
            _vote(completion, "b")]  # fmt: skip
    results, batches = _in_one_batch(sqlite_engine, jobs)
    assert batches == 1
    assert isinstance(results[1], NotFoundError) and isinstance(results[2], ConflictError)
    assert results[0][0]["user_ref"] == "a" and results[3][0]["user_ref"] == "b"
    assert _stored(sqlite_engine) == ["a", "b"]


def test_a_failed_commit_fails_every_write_of_its_batch(sqlite_engine, completion):
    def dangling(tx):  # a foreign key checked only at COMMIT, which then fails
        tx.one("PRAGMA defer_foreign_keys=ON", ())
        return _vote("0" * 32, "ghost")(tx)

    results, _ = _in_one_batch(sqlite_engine, [_vote(completion, "a"), dangling])
    assert all(isinstance(r, sqlite_engine.dialect.loaded_dbapi.IntegrityError) for r in results)
    assert _stored(sqlite_engine) == []  # nothing acknowledged, nothing stored
    _write(sqlite_engine, _vote(completion, "after"))
    assert _stored(sqlite_engine) == ["after"]


def test_a_job_runs_on_the_writer_in_its_callers_context(sqlite_engine):
    caller = contextvars.ContextVar("caller")
    caller.set("this request")  # as Flask's current_app, request and g are
    seen = _write(sqlite_engine, lambda _tx: (caller.get(), threading.current_thread().name))
    assert seen == ("this request", "tuneback-writer")


def test_other_transactions_run_as_they_are(sqlite_engine, completion):
    group = writer.group_writer(sqlite_engine)
    before = group.batches
    with Session(sqlite_engine) as session:
        vote, _ = writer.run(rawsql.session_write(session), _vote(completion, "orm"))
    assert vote["user_ref"] == "orm" and group.batches == before


def test_api_votes_share_commits(app, keys, completion_id, engine, database_url):
    if not database_url.startswith("sqlite"):
        pytest.skip("group commit is SQLite's")
    vote = {"completion_id": completion_id, "rating": "up"}

    def post(i: int):  # the first four: one request, retried with its Idempotency-Key
        headers = {"Idempotency-Key": "k"} if i < 4 else {}
        body = {**vote, "user": "same" if i < 4 else f"u{i}"}
        return app.test_client().post(
            "/v1/feedback", json=body, headers=auth(keys["agent"], **headers)
        )

    with ThreadPoolExecutor(13) as pool, _holding(engine, pool) as batches:
        answers = [pool.submit(post, i) for i in range(12)]
    answers = [a.result(timeout=10) for a in answers]
    assert [a.status_code for a in answers] == [201] * 12
    assert batches() == 1  # 12 votes, one commit
    assert len({a.json["id"] for a in answers[:4]}) == 1  # one key, one vote
    assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers[:4]) == 3
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Feedback)) == 9
        assert session.scalar(select(func.count()).select_from(IdempotencyRecord)) == 1


# --- erasure --------------------------------------------------------------------------------


def test_erase_commits_durably_before_its_audit_line(tmp_path, monkeypatch, completion):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    events = []
    make_engine = db.make_engine

    def watched(*args, **kwargs):
        engine = make_engine(*args, **kwargs)

        @event.listens_for(engine, "commit")
        def _commit(conn):
            events.append(("commit", conn.exec_driver_sql("PRAGMA synchronous").scalar()))

        return engine

    monkeypatch.setattr(db, "make_engine", watched)
    monkeypatch.setattr(cli_erase, "_append_audit", lambda *_a: events.append(("audit",)))
    env = tuneback_env(tmp_path / "data", url)
    done = CliRunner().invoke(cli, ["erase", "--completion", completion], env=env)
    assert done.exit_code == 0, done.output
    assert events[-2:] == [("commit", FULL), ("audit",)]


# --- the syscalls, watched with strace --------------------------------------------------------

SYNC = re.compile(r"\b(fsync|fdatasync)\(")


@needs_strace
def test_each_acknowledged_vote_was_synced_first(tmp_path, sqlite_engine, completion):
    url = sqlite_engine.url.render_as_string(hide_password=False)
    env = tuneback_env(tmp_path / "data", url, rate_limit="100000/minute")
    with Session(sqlite_engine) as session:
        key = store.create_api_key(session, role="agent", name="a")[1]
        session.commit()
    trace, port = tmp_path / "strace.txt", free_port()
    command = ["strace", "-f", "-qq", "--seccomp-bpf", "-e", "trace=fsync,fdatasync",
               "-o", str(trace), str(BIN), "api", "--port", str(port),
               "--workers", "1"]  # fmt: skip
    server = subprocess.Popen(command, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_ready(base, server)
        http, before = requests.Session(), len(SYNC.findall(trace.read_text()))
        for i in range(20):  # one at a time: no vote can share another's sync
            vote = {"completion_id": completion, "rating": "up", "user": f"u{i}"}
            answer = http.post(f"{base}/v1/feedback", json=vote, headers=auth(key), timeout=10)
            assert answer.status_code == 201
        synced = len(SYNC.findall(trace.read_text())) - before
    finally:
        _stop(server)
    assert synced >= 20


@needs_strace
def test_erase_syncs_the_store_before_writing_its_audit_line(tmp_path, sqlite_engine, completion):
    url = sqlite_engine.url.render_as_string(hide_password=False)
    env = tuneback_env(tmp_path / "data", url)
    trace = tmp_path / "strace.txt"
    # An open connection, as a running server holds: closing erase's own then
    # checkpoints nothing, so only the commit itself can make the erasure durable.
    with sqlite_engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        command = ["strace", "-f", "-qq", "-y", "-e", "trace=fsync,fdatasync,write,pwrite64",
                   "-o", str(trace), str(BIN), "erase", "--completion", completion]  # fmt: skip
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    calls = trace.read_text().splitlines()
    audit = next(i for i, c in enumerate(calls) if "erasure.jsonl>" in c and "write(" in c)
    wal_writes = [i for i, c in enumerate(calls[:audit]) if "store.db-wal>" in c and "write" in c]
    assert wal_writes, "the erasure was not written to the WAL before the audit line"
    after_last = calls[wal_writes[-1] : audit]
    assert any(SYNC.search(c) and "store.db-wal>" in c for c in after_last)


def _wait_ready(url: str, server: subprocess.Popen) -> None:
    for _ in range(300):
        assert server.poll() is None, "the server exited"
        try:
            if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        threading.Event().wait(0.1)
    raise TimeoutError("the server did not start")


def _stop(server: subprocess.Popen) -> None:
    import os
    import signal

    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()

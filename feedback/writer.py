"""Group commit: the writes that arrive together share one transaction and one sync.

The store syncs every commit (``synchronous=FULL``, see :mod:`feedback.db`), so
that a 201 means "on disk". A sync takes from half a millisecond to several,
with SQLite's write lock held throughout, so one sync per vote would cap the
store at that rate, whatever the CPUs. Instead each process has one writer
thread per SQLite engine. A request hands it a job (a function of the open
transaction) and waits. The writer takes the first job, waits for the write
lock, and once it holds it runs that job and every job that queued meanwhile
(while another batch committed) or while it ran the others, in one
transaction on this process's writer connection
(:func:`feedback.rawsql.engine_write`), each in its own savepoint. It commits
once, then answers each request with its own result:

- a job that raises (a 404, a 409) is rolled back to its savepoint alone and
  its request gets its error at once; the other jobs are unaffected;
- if the transaction fails (the commit, a savepoint that cannot be rolled
  back), every job of the batch that had succeeded gets that error: nothing
  is acknowledged that was not committed.

No job waits for a timer: the jobs that come during a commit make the next
batch. (A fixed 1 ms window was tried: under gunicorn's 4 threads a worker has
at most 4 writes in flight, so it added latency without growing the batches.)

A job runs on the writer thread, in a copy of the requesting thread's context
variables, so Flask's ``current_app``, ``request`` and ``g`` are the request's
own (the request waits meanwhile). It must not start another write. Running
the jobs there, rather than handing the connection to each request's thread in
turn, keeps the lock held only for the jobs themselves and the commit: waking
another thread, behind the GIL, costs more than a job.

Several gunicorn workers each have their own writer. They take turns with an
``flock`` on ``<database>.writer.lock`` before SQLite's own lock (see
:func:`_turns`). Writes on PostgreSQL, and writes through an ORM session, run
in their own transaction, which syncs when it commits.
"""

from __future__ import annotations

import contextvars
import fcntl
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, TypeVar
from weakref import WeakKeyDictionary, finalize, ref

from sqlalchemy import Engine, event

from feedback.rawsql import RawTx, engine_write

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_BATCH = 64  # bounds one batch's commit latency under a flood
_STOP = None  # queued by close(): the writer commits what came before it, then exits


class _Job:
    """One request's write: the function, the caller's context, and the answer to come."""

    def __init__(self, fn: Callable[[RawTx], Any]) -> None:
        self.fn, self.context, self.answer = fn, contextvars.copy_context(), Future()
        self.result: Any = None
        self.failed = False  # the job raised: its savepoint was rolled back, its error sent


def run(transaction: AbstractContextManager[RawTx], job: Callable[[RawTx], T]) -> T:
    """Run ``job`` in ``transaction`` and return its result once it is committed.

    A ``rawsql.engine_write(engine)`` transaction on SQLite joins the engine's
    group commit instead (:class:`GroupWriter`); any other runs as it is.
    """
    engine = _sqlite_engine(transaction)
    if engine is None:
        with transaction as tx:
            return job(tx)
    return group_writer(engine).run(job)


def _sqlite_engine(transaction: AbstractContextManager) -> Engine | None:
    """The engine of a ``rawsql.engine_write(engine)`` transaction on SQLite (it carries
    it as ``group_engine``), else None: anything else (a pooled PostgreSQL write, an ORM
    session's write) runs as it is. The transaction is never entered here."""
    return getattr(transaction, "group_engine", None)


class GroupWriter:
    """One engine's writer thread in this process, and the jobs queued for it."""

    def __init__(self, engine: Engine) -> None:
        self._engine = ref(engine)  # not a strong one: _WRITERS is keyed by the engine
        self.batches = 0  # transactions the writer has run: what grouping saves
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pid = 0
        # Before SQLiteWriter's own listener, which closes the connection batches use.
        event.listen(engine, "engine_disposed", lambda _engine: self.close(), insert=True)
        # An engine dropped without dispose() stops its thread too: nothing can queue
        # a write for it any more. (SimpleQueue.put is safe in a finalizer.)
        finalize(engine, self._stop_soon)

    def run(self, fn: Callable[[RawTx], T]) -> T:
        """Queue ``fn``, wait for its batch's commit, return its result or raise its error."""
        job = _Job(fn)
        with self._lock:
            self._start()
            self._queue.put(job)
        return job.answer.result()

    def close(self) -> None:
        """Commit what is queued, then stop the thread (the next write starts it again)."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is None or self._pid != os.getpid():
                return
            self._queue.put(_STOP)
        thread.join()

    def _stop_soon(self) -> None:
        """Ask the thread to stop after what is queued, without waiting (a finalizer)."""
        self._queue.put(_STOP)

    def _start(self) -> None:
        if self._thread is not None and self._pid == os.getpid():
            return
        # The first write, or the first in a forked child: threads do not survive a fork.
        # Each thread drains a queue of its own: close() stops one, the next write starts one.
        self._queue, self._pid = queue.SimpleQueue(), os.getpid()
        self._thread = threading.Thread(
            target=self._loop, args=(self._queue,), name="tuneback-writer", daemon=True
        )
        self._thread.start()

    def _loop(self, jobs: queue.SimpleQueue) -> None:
        engine = self._engine()
        if engine is None:
            return
        database = engine.url.database
        del engine  # the thread holds no engine between batches, so it can go away
        with _turns(database) as turn:
            while (first := jobs.get()) is not _STOP:
                more = self._commit(first, jobs, turn)
                first = None  # nor its last job (whose context can hold the app)
                if not more:
                    break

    def _commit(self, first: _Job, jobs: queue.SimpleQueue, turn: Callable) -> bool:
        """Run ``first`` and the jobs queued behind it in one transaction, commit it, and
        answer each job. Returns False once close() has asked the writer to stop."""
        batch, stop, failure = [first], False, None
        try:
            with turn(), engine_write(self._engine()) as tx:
                ran = 0
                while ran < len(batch):
                    _run_job(tx, batch[ran])
                    ran += 1
                    if ran == len(batch) and not stop:
                        # The write lock is ours: the jobs that came while we waited
                        # for it, or ran the others, join this batch.
                        stop = _drain(jobs, batch)
                if not tx.conn.in_transaction:  # an error rolled it all back unseen
                    raise RuntimeError("the write transaction ended before its commit")
                tx.writes = len(batch)  # the WAL checkpoint counts votes, not batches
        except BaseException as error:  # noqa: BLE001 - every waiting request must hear of it
            log.warning("a group commit of %d writes failed", len(batch), exc_info=True)
            failure = error
        self.batches += 1
        for job in batch:
            if job.failed:  # it has its own error already
                continue
            if failure is None:
                job.answer.set_result(job.result)
            else:
                job.answer.set_exception(failure)
        return not stop


@contextmanager
def _turns(database: str | None) -> Iterator[Callable[[], AbstractContextManager]]:
    """Take turns with the other processes' writers on the same database file.

    Waiting for SQLite's own lock, a writer sleeps in its busy handler (1 ms,
    2, 5, 10...), and the process that holds the lock takes it again first: a
    gunicorn worker could starve another for tens of milliseconds. A blocked
    ``flock`` wakes as soon as the lock is released.
    """
    if database in (None, "", ":memory:"):  # no other process can open it
        yield nullcontext
        return
    try:
        fd = os.open(f"{database}.writer.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        log.warning("no writer lock file beside %s; waiting on SQLite's lock", database)
        yield nullcontext
        return

    @contextmanager
    def turn() -> Iterator[None]:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    try:
        yield turn
    finally:
        os.close(fd)


def _drain(jobs: queue.SimpleQueue, batch: list[_Job]) -> bool:
    """Move the jobs queued now into ``batch``, up to ``MAX_BATCH``; True if close()
    has asked the writer to stop."""
    while len(batch) < MAX_BATCH:
        try:
            job = jobs.get_nowait()
        except queue.Empty:
            return False
        if job is _STOP:
            return True
        batch.append(job)
    return False


def _run_job(tx: RawTx, job: _Job) -> None:
    """Run one job in a savepoint; if it raises, undo its writes and keep its error.

    An error while rolling back to the savepoint escapes: the transaction is in
    an unknown state, and the whole batch fails.
    """
    tx.conn.execute("SAVEPOINT job")
    try:
        job.result = job.context.run(job.fn, tx)
    except Exception as error:  # noqa: BLE001 - it is the job's request's answer
        tx.conn.execute("ROLLBACK TO job")
        tx.conn.execute("RELEASE job")
        job.failed = True
        job.answer.set_exception(error)
        return
    tx.conn.execute("RELEASE job")


_WRITERS: WeakKeyDictionary[Engine, GroupWriter] = WeakKeyDictionary()
_WRITERS_LOCK = threading.Lock()


def group_writer(engine: Engine) -> GroupWriter:
    """The engine's :class:`GroupWriter` in this process."""
    writer = _WRITERS.get(engine)
    if writer is None:
        with _WRITERS_LOCK:
            writer = _WRITERS.get(engine) or _WRITERS.setdefault(engine, GroupWriter(engine))
    return writer

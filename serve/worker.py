"""One thread owns the model; requests reach it through a bounded queue.

A request thread builds a :class:`Job` and :meth:`JobQueue.put` s it: when the
queue is full that raises :class:`~serve.schemas.OverloadedError` (503 with
Retry-After) at once, so no request ever waits for room. The
:class:`ModelWorker` takes the oldest job plus up to ``max_batch - 1`` waiting
jobs it can decode alongside it (same sampling settings, room in the context
window, and, unless the queue mixes adapters, the same adapter), runs them as
one batch, and signals each job; a streaming job also receives its text as it
is generated. A mixed batch decodes every row with its own job's adapter in
one forward pass, so lanes do not queue behind each other.

Each job carries the adapter lease taken when it was admitted, and the worker
releases it when the job is over, whatever happened: that is what lets the
swapper unload an old adapter only once nothing uses it.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from serve.schemas import OverloadedError

log = logging.getLogger(__name__)
DONE = object()  # end of a streaming job's events


class Lease(Protocol):
    adapter: str | None  # the adapter host's name for it; None: the base model
    version: str | None  # the adapter version answers are labelled with

    def release(self) -> None: ...


@dataclass(eq=False)
class Job:
    """One chat completion to generate, and its outcome."""

    prompt: list[int]
    max_tokens: int
    lease: Lease
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    stops: tuple[str, ...] = ()
    grammar: Any = None  # a compiled response_format schema (feedback.structured), or None
    stream: bool = False
    text: str = ""
    finish_reason: str | None = None  # stop | length | cancelled
    completion_tokens: int = 0
    error: BaseException | None = None
    cancelled: bool = False
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    _done: threading.Event = field(default_factory=threading.Event)

    def batch_key(self, *, mixed: bool = False) -> tuple | None:
        """Jobs with equal keys may share a batch; a seeded job runs alone (its RNG is its own).

        ``mixed``: jobs of different adapters may share a batch (their sampling
        settings must still agree); otherwise a batch holds one adapter.
        """
        if self.seed is not None:
            return None
        sampling = (self.temperature, self.top_p if self.temperature else None)
        return sampling if mixed else (self.lease.adapter, *sampling)

    def emit(self, delta: str) -> None:
        if self.stream and delta:
            self.events.put(delta)

    def finish(self, reason: str, text: str, tokens: int) -> None:
        self.finish_reason, self.text, self.completion_tokens = reason, text, tokens
        self._signal()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._signal()

    def _signal(self) -> None:
        if not self._done.is_set():
            self._done.set()
            self.events.put(DONE)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)

    def cancel(self) -> None:
        """Stop generating at the next token (the client went away or timed out)."""
        self.cancelled = True


class JobQueue:
    """A bounded FIFO of jobs that hands out compatible batches.

    ``mixed`` (``TUNEBACK_SERVE_MIXED_BATCHES``): a batch may hold jobs of several
    adapters; False: one adapter per batch, the others wait for a later batch.
    """

    def __init__(self, size: int, *, context_length: int | None = None, mixed: bool = True) -> None:
        self.size, self.context_length, self.mixed = size, context_length, mixed
        self._items: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._seconds_per_batch = 1.0  # a moving average, for Retry-After

    def __len__(self) -> int:
        return len(self._items)

    def put(self, job: Job) -> None:
        with self._cond:
            if self._closed:
                raise OverloadedError("the server is shutting down", retry_after=5)
            if len(self._items) >= self.size:
                raise OverloadedError(
                    f"the server is busy ({self.size} requests waiting); retry later",
                    retry_after=self.retry_after(),
                )
            self._items.append(job)
            self._cond.notify()

    def take(self, max_batch: int, timeout: float | None = None) -> list[Job] | None:
        """The oldest job and compatible followers; [] on timeout, None once closed and empty."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed, timeout):
                return []
            if not self._items:
                return None
            first = self._items.popleft()
            batch, key = [first], first.batch_key(mixed=self.mixed)
            if key is not None:
                for job in list(self._items):
                    if len(batch) >= max_batch:
                        break
                    if job.batch_key(mixed=self.mixed) == key and self._fits(batch, job):
                        self._items.remove(job)
                        batch.append(job)
            return batch

    def _fits(self, batch: list[Job], job: Job) -> bool:
        if self.context_length is None:
            return True
        width = max(len(j.prompt) for j in [*batch, job])
        return width + max(j.max_tokens for j in [*batch, job]) <= self.context_length

    def record(self, seconds: float) -> None:
        self._seconds_per_batch = 0.8 * self._seconds_per_batch + 0.2 * seconds

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained by half, between 1 and 60."""
        return max(1, min(60, math.ceil(self._seconds_per_batch * max(1, len(self._items)) / 2)))

    def close(self) -> list[Job]:
        """Refuse new jobs; return those still waiting (the caller fails them)."""
        with self._cond:
            self._closed = True
            left = list(self._items)
            self._items.clear()
            self._cond.notify_all()
        return left


class ModelWorker(threading.Thread):
    """The thread that runs every batch: ``generate(jobs)`` is the model's own code."""

    def __init__(
        self, jobs: JobQueue, generate: Callable[[list[Job]], Any], *, max_batch: int
    ) -> None:
        super().__init__(name="tuneback-model-worker", daemon=True)
        self.jobs, self.generate, self.max_batch = jobs, generate, max_batch
        self.batches = 0

    def run(self) -> None:
        while (batch := self.jobs.take(self.max_batch)) is not None:
            if batch:
                self._run_batch(batch)

    def _run_batch(self, batch: list[Job]) -> None:
        started = time.perf_counter()
        live = [job for job in batch if not job.cancelled]
        try:
            for job in batch:
                if job.cancelled:
                    job.finish("cancelled", "", 0)
            if live:
                self.generate(live)
        except Exception as error:  # noqa: BLE001 - fail these jobs, keep serving
            log.exception("generation failed for a batch of %d", len(live))
            for job in live:
                job.fail(error)
        finally:
            for job in batch:
                if not job.done:  # generate must finish every job; never leave one hanging
                    job.fail(RuntimeError("the generation ended without an answer"))
                job.lease.release()
            self.batches += 1
            self.jobs.record(time.perf_counter() - started)

    def stop(self, timeout: float = 5) -> None:
        for job in self.jobs.close():
            job.fail(OverloadedError("the server is shutting down", retry_after=5))
            job.lease.release()
        self.join(timeout)

"""Serving replicas in the store: heartbeats, and waiting for a rollout to reach them.

Several serving processes (replicas, on one machine or many) follow the same
promoted adapters in the database, one per lane. Each one says what it serves
on every lane: a
:class:`Heartbeat` thread upserts its :class:`~feedback.models.ServingReplica`
row every ``interval`` seconds, and at once after each swap or refusal; a
replica that stops cleanly deletes its row. A replica not heard from for
``stale_seconds`` counts as down.

A promotion is done when every replica that is up serves the new version on
its lane: :func:`wait_for_rollout` polls the rows until then, or until its timeout, and
returns a :class:`Rollout` naming the replicas that are not there yet (or
that refused the adapter, with the reason they gave).

Timestamps come from each machine's clock, so replicas and the promoting
machine need synchronised clocks (NTP); ``stale_seconds`` absorbs small skew.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session
from sqlmodel import col

from feedback.db import write_session
from feedback.models import DEFAULT_LANE, ServingReplica, utcnow

log = logging.getLogger(__name__)
BASE = "base"  # how reports name the bare base model
RETRY_SECONDS = 1.0  # a heartbeat that could not be written is tried again this soon


@dataclass(frozen=True)
class ReplicaState:
    """What one replica serves, as its latest heartbeat said.

    ``serving``, ``refused`` and ``refused_reason`` are one lane's (the default
    lane's, unless :meth:`for_lane` chose another); ``lanes`` holds every lane's
    as the replica reported it (empty from a replica older than lanes).
    """

    id: str
    url: str | None
    serving: str | None
    refused: str | None
    refused_reason: str | None
    last_seen: datetime
    lanes: dict[str, Any] = field(default_factory=dict)
    lane: str = DEFAULT_LANE

    def describe(self) -> str:
        where = f" ({self.url})" if self.url else ""
        return f"{self.id}{where} serving {self.serving or BASE}"

    def for_lane(self, lane: str) -> ReplicaState:
        """This replica as seen on ``lane``: a lane it does not report serves the base
        model there (a replica without lane reports serves the default lane only)."""
        if not self.lanes:
            if lane == DEFAULT_LANE:
                return self
            return replace(self, serving=None, refused=None, refused_reason=None, lane=lane)
        state = self.lanes.get(lane) or {}
        return replace(
            self, serving=state.get("serving"), refused=state.get("refused"),
            refused_reason=state.get("reason"), lane=lane,
        )  # fmt: skip


# --- rows ----------------------------------------------------------------------------


def record_heartbeat(
    session: Session,
    *,
    replica_id: str,
    host: str,
    url: str | None,
    pid: int,
    lanes: dict[str, Any],
) -> None:
    """Insert or refresh one replica's row (one statement, safe under concurrency).

    ``lanes`` is every lane's state, ``{lane: {"serving", "refused", "reason"}}``;
    the default lane's is also kept in its own columns, for readers older than lanes.
    """
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    now = utcnow()
    default = lanes.get(DEFAULT_LANE) or {}
    values = dict(
        host=host[:255], url=url, pid=pid, serving=default.get("serving"),
        refused=default.get("refused"), refused_reason=default.get("reason"), lanes=lanes,
        last_seen=now,
    )  # fmt: skip
    stmt = insert(ServingReplica).values(id=replica_id[:200], started_at=now, **values)
    session.execute(stmt.on_conflict_do_update(index_elements=["id"], set_=values))


def forget_replica(session: Session, *, replica_id: str) -> None:
    """Delete a replica's row: it stopped and no rollout should wait for it."""
    session.execute(delete(ServingReplica).where(col(ServingReplica.id) == replica_id[:200]))


def live_replicas(session: Session, *, stale_seconds: float) -> list[ReplicaState]:
    """Replicas heard from within ``stale_seconds``, by id."""
    since = utcnow() - timedelta(seconds=stale_seconds)
    rows = session.execute(
        select(ServingReplica)
        .where(col(ServingReplica.last_seen) >= since)
        .order_by(col(ServingReplica.id))
        .execution_options(populate_existing=True)
    ).scalars()
    return [
        ReplicaState(
            r.id, r.url, r.serving, r.refused, r.refused_reason, r.last_seen, dict(r.lanes or {})
        )
        for r in rows
    ]


# --- rollouts ------------------------------------------------------------------------


@dataclass(frozen=True)
class Rollout:
    """Where a ``lane``'s promoted ``version`` (None: the base model) stands across
    live replicas; the replicas listed are as seen on that lane."""

    version: str | None
    on: list[ReplicaState] = field(default_factory=list)
    behind: list[ReplicaState] = field(default_factory=list)
    refused: list[ReplicaState] = field(default_factory=list)
    waited_s: float = 0.0
    lane: str = DEFAULT_LANE

    @property
    def done(self) -> bool:
        return not self.behind and not self.refused

    def report(self) -> str:
        """One line: done on which replicas, or which are not there and why."""
        name = self.version or "the base model"
        if self.lane != DEFAULT_LANE:
            name = f"lane {self.lane}: {name}"
        if self.done:
            if not self.on:
                return f"{name}: no serving replica is up; replicas load it when they start"
            ids = ", ".join(r.id for r in self.on)
            return f"{name} is served by all {len(self.on)} live replicas ({ids})"
        parts = [r.describe() for r in self.behind]
        parts += [f"{r.id} refused it: {r.refused_reason or 'see its log'}" for r in self.refused]
        return f"{name} not yet on: " + "; ".join(parts) + f" (after {self.waited_s:.1f} s)"


def rollout_status(
    session: Session,
    *,
    version: str | None,
    lane: str = DEFAULT_LANE,
    stale_seconds: float,
    waited_s: float = 0.0,
) -> Rollout:
    """Which live replicas serve ``version`` on ``lane``, which do not yet, which refused it."""
    on, behind, refused = [], [], []
    for found in live_replicas(session, stale_seconds=stale_seconds):
        replica = found.for_lane(lane)
        if replica.serving == version:
            on.append(replica)
        elif version is not None and replica.refused == version:
            refused.append(replica)
        else:
            behind.append(replica)
    return Rollout(version, on, behind, refused, waited_s, lane)


def wait_for_rollout(
    engine: Engine,
    *,
    version: str | None,
    lane: str = DEFAULT_LANE,
    timeout: float,
    stale_seconds: float,
    poll_seconds: float = 0.25,
    progress: Callable[[Rollout], None] | None = None,
) -> Rollout:
    """Poll until every live replica serves ``version`` on ``lane``, one refused it,
    or ``timeout``. Other lanes' states do not matter.

    ``progress`` is called whenever the set of replicas still behind changes,
    so a command can say what it is waiting for.
    """
    started = time.monotonic()
    last: tuple | None = None
    while True:
        waited = time.monotonic() - started
        with Session(engine) as session:
            rollout = rollout_status(
                session, version=version, lane=lane, stale_seconds=stale_seconds, waited_s=waited
            )
        if rollout.done or rollout.refused or waited >= timeout:
            return rollout
        behind = tuple((r.id, r.serving) for r in rollout.behind)
        if progress is not None and behind != last:
            progress(rollout)
        last = behind
        time.sleep(min(poll_seconds, max(0.0, timeout - waited)))


# --- the heartbeat -------------------------------------------------------------------

# What the serving side reports: every lane's {"serving", "refused", "reason"}.
StateFn = Callable[[], dict[str, dict[str, Any]]]


def default_replica_id(port: int) -> str:
    return f"{socket.gethostname()}:{port}"


def advertised_url(host: str, port: int) -> str:
    wildcard = host in ("", "0.0.0.0", "::", "[::]")
    return f"http://{socket.gethostname() if wildcard else host}:{port}"


class Heartbeat:
    """A daemon thread that keeps this replica's row fresh, on an engine it owns.

    ``start(state)`` begins beating with what ``state()`` returns; ``nudge()``
    beats now (after a swap, so a rollout sees it within milliseconds, not a
    whole interval); ``stop()`` deletes the row. A failed write is logged and
    retried at the next beat: serving never stops over a heartbeat.
    """

    def __init__(self, engine: Engine, *, replica_id: str, url: str | None, interval: float):
        self.engine, self.replica_id, self.url, self.interval = engine, replica_id, url, interval
        self._state: StateFn | None = None
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        self.beats = 0

    def start(self, state: StateFn) -> None:
        self._state = state
        self._thread = threading.Thread(target=self._run, name="tuneback-heartbeat", daemon=True)
        self._thread.start()

    def nudge(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is None:
            return
        self._thread.join(timeout)
        try:
            with write_session(self.engine) as session:
                forget_replica(session, replica_id=self.replica_id)
                session.commit()
        except Exception as error:  # noqa: BLE001 - the row goes stale instead
            log.warning("replica %s: cannot remove its heartbeat row: %s", self.replica_id, error)
        self.engine.dispose()

    def beat(self) -> None:
        lanes = self._state() if self._state else {}
        with write_session(self.engine) as session:
            record_heartbeat(
                session, replica_id=self.replica_id, host=socket.gethostname(), url=self.url,
                pid=os.getpid(), lanes=lanes,
            )  # fmt: skip
            session.commit()
        self.beats += 1

    def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                self.beat()
                if failing:
                    log.info("replica %s: heartbeat written again", self.replica_id)
                failing = False
            except Exception as error:  # noqa: BLE001 - keep serving; say it once
                if not failing:
                    log.warning("replica %s: heartbeat not written: %s", self.replica_id, error)
                failing = True
            # A beat lost to a busy database (a swap's report, say) is retried soon,
            # not at the next interval.
            self._wake.wait(min(self.interval, RETRY_SECONDS) if failing else self.interval)
            self._wake.clear()

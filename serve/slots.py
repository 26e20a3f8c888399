"""The swapper's small values (a promoted adapter, an adapter in memory, a lease, a
lane) and its reads of the store.

:mod:`serve.swap` moves these around under its lock; they hold no logic of
their own beyond naming and describing things.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from feedback.adapters import store as adapter_store
from feedback.models import DEFAULT_LANE

log = logging.getLogger("serve.swap")

UNKNOWN = object()  # the store could not be read


@dataclass(frozen=True)
class Target:
    """A lane's promoted adapter as the store describes it."""

    version: str
    checksum: str
    path: str
    promoted_at: datetime | None = None

    @property
    def key(self) -> tuple:
        return (self.version, self.checksum, self.promoted_at)


@dataclass(eq=False)
class Slot:
    """An adapter in memory (``adapter`` None: the base model), with its lease count.

    A slot belongs to one lane (versions belong to one lane); it is that lane's
    *current* slot, or an older one still finishing requests.
    """

    adapter: str | None
    version: str | None
    checksum: str | None = None
    lane: str | None = None
    refs: int = 0


@dataclass(eq=False)
class Lease:
    """A request's hold on one adapter until its answer is complete.

    ``lane`` is the lane the request was served as (None: the bare base model).
    """

    swapper: Any
    slot: Slot
    lane: str | None = DEFAULT_LANE
    released: bool = False

    @property
    def adapter(self) -> str | None:
        return self.slot.adapter

    @property
    def version(self) -> str | None:
        return self.slot.version

    @property
    def fingerprint(self) -> str:
        """``"<lane>:<version or 'base'>"``; ``"base"`` for the bare base model."""
        if self.lane is None:
            return "base"
        return f"{self.lane}:{self.version or 'base'}"

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.swapper._release(self.slot)


@dataclass(eq=False)
class LaneState:
    """One lane as this server serves it.

    ``current`` is the slot new requests get: the base slot while the lane has
    no promoted adapter, or None once its adapter was unloaded to make room
    (``good`` then says which one is loaded again on demand). ``wanted`` is set
    by a request waiting for that reload.
    """

    name: str
    current: Slot | None
    target: Any = UNKNOWN  # Target, None (the base model) or UNKNOWN: as last read
    good: Target | None = None  # the adapter this lane serves (None: the base model)
    wanted: bool = False
    used: float = 0.0  # time.monotonic() of the latest lease, for least-recently-used
    swaps: int = 0
    refused: int = 0
    unloads: int = 0
    last_swap_ms: float | None = None

    @property
    def serving(self) -> str | None:
        """The version this lane answers with (None: the base model), loaded or not."""
        if self.current is not None:
            return self.current.version
        return self.good.version if self.good is not None else None


@dataclass
class SwapStats:
    swaps: int = 0
    refused: int = 0
    unloads: int = 0
    last_swap_ms: float | None = None
    refusals: dict[tuple, str] = field(default_factory=dict)


def lane_report(state: LaneState, refusals: dict[tuple, str]) -> dict[str, Any]:
    """One lane's state as status pages and heartbeats show it.

    A refusal is reported only while the refused promotion is still the
    promoted one, so a later good promotion never looks refused.
    """
    refused = reason = None
    if isinstance(state.target, Target) and state.target.key in refusals:
        refused, reason = state.target.version, refusals[state.target.key]
    return {
        "serving": state.serving,
        "loaded": state.current is not None,
        "refused": refused,
        "reason": reason,
        "swaps": state.swaps,
        "unloads": state.unloads,
        "last_swap_ms": state.last_swap_ms,
    }


# --- reading the store (quietly: a failed read keeps serving what is loaded) ----------


def read_targets(sql: Engine) -> Any:
    """Every lane's promoted adapter (lanes on the base model absent), or UNKNOWN."""
    try:
        with Session(sql) as session:
            rows = adapter_store.promoted_by_lane(session)
            return {lane: _target(row) for lane, row in rows.items()}
    except Exception as error:  # noqa: BLE001 - keep serving what we have
        log.warning("cannot read the promoted adapters from the store: %s", error)
        return UNKNOWN


def read_lane(sql: Engine, lane: str) -> Any:
    """``lane``'s promoted adapter, None for the base model, or UNKNOWN."""
    try:
        with Session(sql) as session:
            row = adapter_store.promoted_adapter(session, lane)
            return None if row is None else _target(row)
    except Exception as error:  # noqa: BLE001 - keep serving what we have
        log.warning("cannot read lane %s's promoted adapter from the store: %s", lane, error)
        return UNKNOWN


def _target(row: Any) -> Target:
    return Target(row.version, row.checksum, row.path, row.promoted_at)


def merge(host: Any, slot: Slot) -> None:
    """Merge ``slot``'s adapter into the host's merged buffers (for fast decoding)."""
    if slot.adapter and host.merge(slot.adapter):
        log.info("adapter %s merged for decoding", slot.version)


class Merger:
    """Merges the default lane's adapter on a thread of its own: a merge waits for a
    merged batch to end, and no other lane's swap or reload should wait with it.
    Merges run one at a time; the latest wish wins."""

    def __init__(self, host: Any) -> None:
        self.host, self._want, self._stopped = host, None, False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def want(self, slot: Slot) -> None:
        with self._cond:
            self._want = slot
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="tuneback-adapter-merge", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def stop(self, timeout: float = 10) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._want is not None or self._stopped)
                if self._stopped:
                    return
                slot, self._want = self._want, None
            try:
                merge(self.host, slot)
            except Exception:  # noqa: BLE001 - unmerged decoding still answers right
                log.exception("could not merge adapter %s", slot.version)

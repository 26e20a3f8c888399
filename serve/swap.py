"""Follow the promoted adapter in the store; swap it in without stopping or mixing.

The store says which adapter is promoted (:func:`feedback.adapters.store.promoted_adapter`).
A :class:`Swapper` thread polls it, and when it changes, off the request path:
verifies the folder (checksum, base model, version), reads and checks the
weights against the model (modules, shapes, ranks), attaches them beside the
current adapter, switches the *current* pointer, and merges the new adapter
for fast decoding in the background.

Leases make swaps safe. A request takes a lease on the current adapter when it
is admitted and generates with that adapter to the end, whatever is promoted
meanwhile; an adapter is unloaded only when it is no longer current and its
last lease is released. At most ``slots`` adapters are held at once (a swap
waits for one to drain), so memory stays bounded however often adapters change.

A request for ``default`` first reads the promoted version from the store; if
the swapper has not switched to it yet, the request waits (up to
``wait_seconds``) for it. So an answer's adapter is always one that was
promoted at some moment of its request. A broken adapter is refused once per
promotion, with a logged error, and the current one keeps serving.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from feedback.adapters import store as adapter_store
from feedback.adapters.files import CorruptAdapterError, verify_adapter_dir

log = logging.getLogger(__name__)
UNKNOWN = object()  # the store could not be read


@dataclass(frozen=True)
class Target:
    """The promoted adapter as the store describes it."""

    version: str
    checksum: str
    path: str
    promoted_at: datetime | None = None

    @property
    def key(self) -> tuple:
        return (self.version, self.checksum, self.promoted_at)


@dataclass(eq=False)
class Slot:
    """An adapter in memory (``adapter`` None: the base model), with its lease count."""

    adapter: str | None
    version: str | None
    checksum: str | None = None
    refs: int = 0


@dataclass(eq=False)
class Lease:
    """A request's hold on one adapter until its answer is complete."""

    swapper: Swapper
    slot: Slot
    released: bool = False

    @property
    def adapter(self) -> str | None:
        return self.slot.adapter

    @property
    def version(self) -> str | None:
        return self.slot.version

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.swapper._release(self.slot)


@dataclass
class SwapStats:
    swaps: int = 0
    refused: int = 0
    last_swap_ms: float | None = None
    refusals: dict[tuple, str] = field(default_factory=dict)


class Swapper:
    """Which adapter serves, and the thread that keeps it in line with the store.

    ``host`` is the :class:`serve.lora.AdapterHost` (``load``, ``add``,
    ``remove``, ``merge``); ``base_model`` is the string adapters must name as
    their base (the resolved base model folder, as the registry records it).
    """

    def __init__(
        self,
        sql: Engine,
        host: Any,
        *,
        base_model: str,
        slots: int = 3,
        poll_seconds: float = 1.0,
        wait_seconds: float = 10.0,
        on_swap: Callable[[str, float], None] | None = None,
        heartbeat: Any = None,
    ) -> None:
        self.sql, self.host, self.base_model = sql, host, base_model
        self.slots, self.poll_seconds, self.wait_seconds = slots, poll_seconds, wait_seconds
        self.on_swap = on_swap or (lambda outcome, seconds: None)
        # A feedback.replicas.Heartbeat (or None): tells the store what this
        # replica serves, so a promotion can wait until every replica has it.
        self.heartbeat = heartbeat
        self._target: Any = UNKNOWN
        self.base = Slot(None, None)
        self.stats = SwapStats()
        self._current = self.base
        self._loaded: dict[str, Slot] = {}
        self._cond = threading.Condition()
        self._nudge, self._stop = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        self._loads = 0

    # --- leases (request threads) -------------------------------------------------

    def lease_base(self) -> Lease:
        with self._cond:
            return self._lease(self.base)

    def lease_default(self) -> Lease:
        """A lease on the promoted adapter, waiting briefly for a swap the store announced."""
        deadline = time.monotonic() + self.wait_seconds
        target = self._read_target_quietly()
        while True:
            with self._cond:
                left = deadline - time.monotonic()
                if left <= 0 or not self.running or self._settled(target):
                    return self._lease(self._current)
                self._nudge.set()
                self._cond.wait(min(0.1, left))
            target = self._read_target_quietly()

    def _settled(self, target: Any) -> bool:
        """True when waiting for ``target`` is pointless: served already, refused, or unknown."""
        if target is UNKNOWN or self._serves(self._current, target):
            return True
        return target is not None and target.key in self.stats.refusals

    def _lease(self, slot: Slot) -> Lease:
        slot.refs += 1
        return Lease(self, slot)

    def _release(self, slot: Slot) -> None:
        with self._cond:
            slot.refs -= 1
            gone = self._unload_if_idle(slot)
        if gone:
            self.host.remove(gone)

    # --- state ------------------------------------------------------------------------

    @property
    def serving(self) -> str | None:
        """The version new requests get (None: the base model)."""
        return self._current.version

    @property
    def loaded(self) -> list[str]:
        with self._cond:
            return sorted(slot.version for slot in self._loaded.values())

    def replica_state(self) -> tuple[str | None, str | None, str | None]:
        """(version served, version refused, why) for this replica's heartbeat.

        A refusal is reported only while the refused promotion is still the
        promoted one, so a later good promotion never looks refused.
        """
        target = self._target
        reason = None
        if isinstance(target, Target):
            reason = self.stats.refusals.get(target.key)
        return self.serving, target.version if reason else None, reason

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # --- the watcher ------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tuneback-adapter-swap", daemon=True)
        self._thread.start()
        if self.heartbeat is not None:
            self.heartbeat.start(self.replica_state)

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        self._nudge.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.heartbeat is not None:
            self.heartbeat.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception:  # noqa: BLE001 - a bad poll must not end the watcher
                log.exception("adapter watcher: unexpected error; retrying")
            self._nudge.wait(self.poll_seconds)
            self._nudge.clear()

    def sync(self) -> None:
        """Bring the current adapter in line with the store (one poll)."""
        target = self._read_target_quietly()
        if target is not UNKNOWN:
            self._target = target
        if target is UNKNOWN or self._serves(self._current, target):
            return
        if target is None:
            self._switch(self.base, started=time.perf_counter())
            return
        if target.key in self.stats.refusals:
            return
        started = time.perf_counter()
        slot = self._find_loaded(target)
        if slot is None:
            try:
                slot = self._load(target)
            except CorruptAdapterError as error:
                self._refuse(target, error)
                return
            if slot is None:
                return  # no free slot yet, or stopping: try again at the next poll
        if not self._switch(slot, started=started):
            return
        if slot.adapter is not None and self.host.merge(slot.adapter):
            log.info("adapter %s merged for decoding", slot.version)

    def _read_target_quietly(self) -> Any:
        try:
            with Session(self.sql) as session:
                row = adapter_store.promoted_adapter(session)
                if row is None:
                    return None
                return Target(row.version, row.checksum, row.path, row.promoted_at)
        except Exception as error:  # noqa: BLE001 - keep serving what we have
            log.warning("cannot read the promoted adapter from the store: %s", error)
            return UNKNOWN

    def _serves(self, slot: Slot, target: Target | None) -> bool:
        if target is None:
            return slot.adapter is None
        return slot.version == target.version and slot.checksum == target.checksum

    def _find_loaded(self, target: Target) -> Slot | None:
        """An adapter still in memory (finishing requests) that is ``target``: reuse it."""
        with self._cond:
            return next((s for s in self._loaded.values() if self._serves(s, target)), None)

    def _load(self, target: Target) -> Slot | None:
        """Verify and read ``target`` into a free slot; None if no slot freed up in time."""
        verify_adapter_dir(
            target.path,
            expected_checksum=target.checksum,
            expected_base_model=self.base_model,
            expected_version=target.version,
        )
        with self._cond:
            room = self._cond.wait_for(
                lambda: len(self._loaded) < self.slots or self._stop.is_set(),
                timeout=max(self.poll_seconds, 1.0),
            )
            if not room or self._stop.is_set():
                log.info("adapter %s waits for a free slot (%s in use)", target.version,
                         ", ".join(self.loaded_names()))  # fmt: skip
                return None
        # A fresh name per load: a late removal of an earlier load of the same
        # version (its last lease ending) can never remove this one.
        self._loads += 1
        name = f"{target.version}#{self._loads}"
        self.host.add(self.host.load(name, Path(target.path)))
        slot = Slot(name, target.version, target.checksum)
        with self._cond:
            self._loaded[name] = slot
        return slot

    def loaded_names(self) -> list[str]:
        return sorted(str(slot.version) for slot in self._loaded.values())

    def _switch(self, slot: Slot, *, started: float) -> bool:
        """Make ``slot`` current; False if it was unloaded meanwhile (its last lease
        ended between finding and switching): the next poll loads it afresh."""
        with self._cond:
            if slot.adapter is not None and self._loaded.get(slot.adapter) is not slot:
                self._nudge.set()
                return False
            old, self._current = self._current, slot
            gone = self._unload_if_idle(old)
            self._cond.notify_all()
        if gone:
            self.host.remove(gone)
        seconds = time.perf_counter() - started
        self.stats.swaps += 1
        self.stats.last_swap_ms = round(seconds * 1000, 1)
        self.on_swap("swapped", seconds)
        if self.heartbeat is not None:
            self.heartbeat.nudge()
        log.info(
            "now serving %s (was %s), switched in %.0f ms",
            slot.version or "the base model",
            old.version or "the base model",
            seconds * 1000,
        )
        return True

    def _unload_if_idle(self, slot: Slot) -> str | None:
        """Forget ``slot`` if nothing uses it any more; return the host name to remove.

        Called with the condition held; the caller removes from the host after
        releasing it (removal may wait for a merged batch to finish).
        """
        if slot.adapter is None or slot.refs > 0 or slot is self._current:
            return None
        if self._loaded.pop(slot.adapter, None) is None:
            return None
        self._cond.notify_all()
        return slot.adapter

    def _refuse(self, target: Target, error: Exception) -> None:
        with self._cond:
            self.stats.refused += 1
            self.stats.refusals[target.key] = str(error)
            while len(self.stats.refusals) > 100:
                self.stats.refusals.pop(next(iter(self.stats.refusals)))
            self._cond.notify_all()
        self.on_swap("refused", 0.0)
        if self.heartbeat is not None:
            self.heartbeat.nudge()
        log.error(
            "refusing adapter %s: %s; still serving %s",
            target.version, error, self._current.version or "the base model",
        )  # fmt: skip

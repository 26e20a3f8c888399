"""Follow every lane's promoted adapter in the store; swap each in without stopping or mixing.

The store says which adapter each lane has promoted
(:func:`feedback.adapters.store.promoted_by_lane`, one query). A
:class:`Swapper` thread polls it, and when a lane's changes, off the request
path: verifies the folder (checksum, base model, version), reads and checks the
weights against the model (modules, shapes, ranks), attaches them beside the
others, and switches that lane's *current* pointer. The default lane's adapter
is also merged for fast decoding in the background (other lanes decode
unmerged, so no lane's promotion changes how another lane's answers are
computed).

Leases make swaps safe: a request leases its lane's current adapter when it is
admitted and keeps it to the end, whatever is promoted meanwhile; an adapter
is unloaded only when it is no longer current and its last lease is released.

Memory is bounded twice: at most ``max_adapters`` adapters in all, and at most
``slots`` per lane (the current one plus those still finishing requests; a
swap waits for one to drain). When the total is reached, the least recently
used lane whose adapter is idle (no leases) has it unloaded; its next request
loads it again, verified like every load, waiting up to ``wait_seconds``
(past that: a 503 with Retry-After, never another adapter).

A request for a lane first reads that lane's promoted version from the store;
if the swapper has not switched to it yet, the request waits (up to
``wait_seconds``) for it. So an answer's adapter is always one that was
promoted for its lane at some moment of its request. A broken adapter is
refused once per promotion, with a logged error, and its lane keeps what it
served; other lanes are not touched.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from feedback.adapters.files import CorruptAdapterError, verify_adapter_dir
from feedback.models import DEFAULT_LANE
from serve import slots
from serve.schemas import OverloadedError
from serve.slots import UNKNOWN, LaneState, Lease, Merger, Slot, SwapStats, Target

log = logging.getLogger(__name__)


class Swapper:
    """Which adapter serves each lane, and the thread that keeps them in line with the store.

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
        max_adapters: int = 8,
        poll_seconds: float = 1.0,
        wait_seconds: float = 10.0,
        on_swap: Callable[[str, float], None] | None = None,
        heartbeat: Any = None,
    ) -> None:
        self.sql, self.host, self.base_model = sql, host, base_model
        self.slots, self.max_adapters = slots, max_adapters
        self.poll_seconds, self.wait_seconds = poll_seconds, wait_seconds
        self.on_swap = on_swap or (lambda outcome, seconds: None)
        # A feedback.replicas.Heartbeat (or None): tells the store what this
        # replica serves, so a promotion can wait until every replica has it.
        self.heartbeat = heartbeat
        self.base = Slot(None, None)
        self.stats = SwapStats()
        self._lanes = {DEFAULT_LANE: LaneState(DEFAULT_LANE, self.base)}
        self._loaded: dict[str, Slot] = {}
        self._cond = threading.Condition()
        self._nudge, self._stop = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        self._loads = 0
        self.merger = Merger(host)

    # --- leases (request threads) -------------------------------------------------

    def lease_base(self) -> Lease:
        with self._cond:
            return self._lease(self.base, None)

    def lease_default(self) -> Lease:
        return self.lease_lane(DEFAULT_LANE)

    def lease_lane(self, lane: str) -> Lease:
        """A lease on ``lane``'s promoted adapter, waiting briefly for a swap the store
        announced, or for the adapter to be loaded again after it was unloaded."""
        deadline = time.monotonic() + self.wait_seconds
        target = slots.read_lane(self.sql, lane)
        while True:
            inline = False
            with self._cond:
                state = self._lane(lane)
                state.used = time.monotonic()
                left, current = deadline - time.monotonic(), state.current
                if current is not None and (
                    left <= 0 or not self.running or self._settled(current, target)
                ):
                    return self._lease(current, lane)
                if current is None:
                    state.wanted = True
                    if left <= 0:
                        raise OverloadedError(
                            f"lane {lane!r}: its adapter is being loaded; retry shortly",
                            retry_after=max(1, math.ceil(self.poll_seconds)),
                        )
                    inline = not self.running
                if not inline:
                    self._nudge.set()
                    self._cond.wait(min(0.1, left))
            if inline:
                self.sync()  # no watcher thread (tests, tools): load it here
            target = slots.read_lane(self.sql, lane)

    def _settled(self, slot: Slot, target: Any) -> bool:
        """True when waiting for ``target`` is pointless: served already, refused, or unknown."""
        if target is UNKNOWN or self._serves(slot, target):
            return True
        return target is not None and target.key in self.stats.refusals

    def _lease(self, slot: Slot, lane: str | None) -> Lease:
        slot.refs += 1
        return Lease(self, slot, lane)

    def _release(self, slot: Slot) -> None:
        with self._cond:
            slot.refs -= 1
            gone = self._unload_if_idle(slot)
            self._cond.notify_all()  # an idle adapter may now be unloaded to make room
        if gone:
            self.host.remove(gone)

    def _lane(self, name: str) -> LaneState:
        """The lane's state, created (on the base model) when first seen; lock held."""
        state = self._lanes.get(name)
        if state is None:
            state = self._lanes[name] = LaneState(name, self.base)
        return state

    # --- state ------------------------------------------------------------------------

    @property
    def serving(self) -> str | None:
        """The version new requests of the default lane get (None: the base model)."""
        state = self._lanes.get(DEFAULT_LANE)
        return state.serving if state else None

    @property
    def _current(self) -> Slot:
        """The default lane's current slot (the base slot while none is loaded)."""
        state = self._lanes.get(DEFAULT_LANE)
        return state.current if state and state.current else self.base

    @property
    def loaded(self) -> list[str]:
        with self._cond:
            return self.loaded_names()

    def loaded_names(self) -> list[str]:
        return sorted(str(slot.version) for slot in self._loaded.values())

    def lane_states(self) -> dict[str, dict[str, Any]]:
        """Each lane this server knows: what it serves, whether it is in memory, refusals."""
        with self._cond:
            lanes = sorted(self._lanes.values(), key=lambda s: (s.name != DEFAULT_LANE, s.name))
            return {state.name: slots.lane_report(state, self.stats.refusals) for state in lanes}

    def replica_state(self) -> dict[str, dict[str, Any]]:
        """Every lane's state for this replica's heartbeat (:mod:`feedback.replicas`)."""
        keep = ("serving", "refused", "reason", "loaded")
        return {
            lane: {k: v for k, v in state.items() if k in keep}
            for lane, state in self.lane_states().items()
        }

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
        self.merger.stop()
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
        """Bring every lane in line with the store (one poll)."""
        targets = slots.read_targets(self.sql)
        if targets is UNKNOWN:
            return
        with self._cond:
            names = sorted(set(targets) | set(self._lanes), key=lambda n: (n != DEFAULT_LANE, n))
        for name in names:
            self._sync_lane(name, targets.get(name))

    def _sync_lane(self, name: str, target: Target | None) -> None:
        with self._cond:
            state = self._lane(name)
            state.target = target
            current, wanted, good = state.current, state.wanted, state.good
        if current is not None and self._serves(current, target):
            return
        started = time.perf_counter()
        if target is None:
            self._switch(state, self.base, None, started=started)
        elif target.key not in self.stats.refusals:
            if current is None and not wanted and good is not None and good.key == target.key:
                return  # unloaded to make room: loaded again when a request wants it
            self._bring(state, target, started)
        elif current is None and wanted and good and good.key not in self.stats.refusals:
            self._bring(state, good, started)  # its new promotion was refused: its previous one

    def _bring(self, state: LaneState, target: Target, started: float) -> None:
        """Load (or reuse) ``target`` and make it the lane's current adapter."""
        slot = self._find_loaded(target)
        if slot is None:
            try:
                slot = self._load(state, target)
            except CorruptAdapterError as error:
                self._refuse(state, target, error)
                return
            if slot is None:
                return  # no room yet, or stopping: try again at the next poll
        reload = state.current is None and state.good is not None and state.good.key == target.key
        if not self._switch(state, slot, target, started=started, reload=reload):
            return
        if state.name == DEFAULT_LANE and slot.adapter:  # off this thread while it runs
            self.merger.want(slot) if self.running else slots.merge(self.host, slot)

    def _serves(self, slot: Slot, target: Target | None) -> bool:
        if target is None:
            return slot.adapter is None
        return slot.version == target.version and slot.checksum == target.checksum

    def _find_loaded(self, target: Target) -> Slot | None:
        """An adapter still in memory (finishing requests) that is ``target``: reuse it."""
        with self._cond:
            return next((s for s in self._loaded.values() if self._serves(s, target)), None)

    def _load(self, state: LaneState, target: Target) -> Slot | None:
        """Verify and read ``target`` into a free slot; None if no slot freed up in time.
        Every check (files, then modules, shapes, ranks) passes before another lane's
        adapter is unloaded to make room, so a refused adapter unloads nothing."""
        verify_adapter_dir(
            target.path, expected_checksum=target.checksum,
            expected_base_model=self.base_model, expected_version=target.version,
        )  # fmt: skip
        # A fresh name per load: a late removal of an earlier load of the same
        # version (its last lease ending) can never remove this one.
        self._loads += 1
        name = f"{target.version}#{self._loads}"
        adapter = self.host.load(name, Path(target.path))
        with self._cond:
            room = self._cond.wait_for(
                lambda: self._room(state.name) or self._stop.is_set(),
                timeout=max(self.poll_seconds, 1.0),
            )
            if not room or self._stop.is_set():
                log.info("lane %s: adapter %s waits for a free slot (%s in use)", state.name,
                         target.version, ", ".join(self.loaded_names()))  # fmt: skip
                return None
            gone = self._make_room(state.name)
        for victim in gone:
            self.host.remove(victim)
            self.on_swap("unloaded", 0.0)
        self.host.add(adapter)
        slot = Slot(name, target.version, target.checksum, lane=state.name)
        with self._cond:
            self._loaded[name] = slot
        return slot

    def _room(self, lane: str) -> bool:
        """Whether one more adapter may be loaded for ``lane`` (lock held)."""
        own = sum(1 for slot in self._loaded.values() if slot.lane == lane)
        if own >= self.slots:
            return False
        return len(self._loaded) < self.max_adapters or self._victim(lane) is not None

    def _victim(self, lane: str) -> LaneState | None:
        """The least recently used lane whose current adapter is idle; ``lane`` itself last."""
        idle = [
            s for s in self._lanes.values()
            if s.current is not None and s.current.adapter is not None and s.current.refs == 0
        ]  # fmt: skip
        return min(idle, key=lambda s: (s.name == lane, s.used), default=None)

    def _make_room(self, lane: str) -> list[str]:
        """Unload idle lanes' adapters until one more fits; the host names to remove."""
        gone = []
        while len(self._loaded) >= self.max_adapters and (victim := self._victim(lane)):
            slot = victim.current
            victim.current, victim.unloads = None, victim.unloads + 1
            self.stats.unloads += 1
            self._loaded.pop(slot.adapter, None)
            gone.append(slot.adapter)
            log.info("lane %s: adapter %s unloaded to make room (least recently used); "
                     "loaded again on its next request", victim.name, slot.version)  # fmt: skip
        return gone

    def _switch(
        self, state: LaneState, slot: Slot, target: Target | None, *, started: float,
        reload: bool = False,
    ) -> bool:  # fmt: skip
        """Make ``slot`` the lane's current; False if it was unloaded meanwhile (its last
        lease ended between finding and switching): the next poll loads it afresh."""
        with self._cond:
            if slot.adapter is not None and self._loaded.get(slot.adapter) is not slot:
                self._nudge.set()
                return False
            old, state.current = state.current, slot
            state.good, state.wanted = target, False
            gone = self._unload_if_idle(old) if old is not None else None
            self._cond.notify_all()
        if gone:
            self.host.remove(gone)
        seconds = time.perf_counter() - started
        if not reload:
            self.stats.swaps, state.swaps = self.stats.swaps + 1, state.swaps + 1
            self.stats.last_swap_ms = state.last_swap_ms = round(seconds * 1000, 1)
        self.on_swap("reloaded" if reload else "swapped", seconds)
        if self.heartbeat is not None:
            self.heartbeat.nudge()
        log.info(
            "lane %s: now serving %s (%s), in %.0f ms", state.name,
            slot.version or "the base model",
            "loaded again" if reload else f"was {_name(old)}", seconds * 1000,
        )  # fmt: skip
        return True

    def _unload_if_idle(self, slot: Slot) -> str | None:
        """Forget ``slot`` if nothing uses it any more; the host name to remove. Lock held;
        the caller removes after releasing it (removal may wait for a merged batch)."""
        if slot.adapter is None or slot.refs > 0:
            return None
        owner = self._lanes.get(slot.lane) if slot.lane else None
        if owner is not None and owner.current is slot:
            return None
        if self._loaded.pop(slot.adapter, None) is None:
            return None
        self._cond.notify_all()
        return slot.adapter

    def _refuse(self, state: LaneState, target: Target, error: Exception) -> None:
        with self._cond:
            self.stats.refused += 1
            state.refused += 1
            self.stats.refusals[target.key] = str(error)
            while len(self.stats.refusals) > 100:
                self.stats.refusals.pop(next(iter(self.stats.refusals)))
            self._cond.notify_all()
        self.on_swap("refused", 0.0)
        if self.heartbeat is not None:
            self.heartbeat.nudge()
        log.error(
            "lane %s: refusing adapter %s: %s; still serving %s", state.name,
            target.version, error, _name(state.current) if state.current else state.serving,
        )  # fmt: skip


def _name(slot: Slot | None) -> str:
    if slot is None:
        return "nothing (unloaded)"
    return slot.version or "the base model"

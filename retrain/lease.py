"""The cycle lease: one retrain cycle at a time, across processes and machines.

A cycle takes the lease (a row in the ``lease`` table naming its holder and an
expiry) before it touches anything, and renews it in a background thread every
third of its time to live. Another cycle may take it over when it expires, and
then cleans up after the first (:mod:`retrain.recovery`): marks its run failed
and deletes its work folder. So a cycle must never register or promote after
it lost the lease, and it loses it when:

* a renewal finds the row naming another holder, or no row at all (it expired
  and someone took it, and maybe released it since), or
* renewals keep failing (the database is unreachable) past the expiry of the
  last one that succeeded: from then on it cannot know.

Lost is final. The cycle asks :meth:`CycleLease.confirm` before each step with
effects (recording the dataset, training, registering, promoting): a renewal
made there and then, so a step starts with a whole time to live ahead of it.
``on_lost`` runs in the renewal thread as soon as the loss is seen (and again
at each later tick): the cycle uses it to stop its training child.

Renewals only ever extend a row that still names us; they never insert one or
take an expired one back: that is :meth:`CycleLease.acquire`'s job, done once.
The expiry is written with this host's clock and read with the next holder's:
clocks that disagree by more than a fraction of ``ttl`` defeat any lease.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import Engine, update
from sqlalchemy.orm import Session

from feedback import run_store
from feedback.db import write_session
from feedback.exceptions import TunebackError
from feedback.models import Lease, utcnow
from retrain.recovery import alive, holder_process

log = logging.getLogger("retrain.cycle")
LEASE = "retrain-cycle"
LEASE_TTL = timedelta(minutes=10)


class LeaseLostError(TunebackError, RuntimeError):
    """The cycle no longer holds the lease: it must stop before its next effect."""

    code, status = "lease_lost", 409


class CycleLease:
    """The cycle lease of one cycle, renewed in the background while it runs."""

    def __init__(
        self,
        engine: Engine,
        *,
        ttl: timedelta = LEASE_TTL,
        on_lost: Callable[[], object] | None = None,
    ) -> None:
        self.engine, self.ttl, self.on_lost = engine, ttl, on_lost
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lost: str | None = None  # why, once lost
        self._held_until = 0.0  # monotonic time up to which the last renewal vouches
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._released = False

    def acquire(self) -> bool:
        """Take the lease if it is free, expired or held by a dead process on this host."""
        started = time.monotonic()
        with write_session(self.engine) as session:
            ok = run_store.acquire_lease(session, name=LEASE, holder=self.holder, ttl=self.ttl)
            ok = ok or self._take_over_dead(session)
            session.commit()
        if ok:
            self._held_until = started + self.ttl.total_seconds()
            threading.Thread(target=self._renew_loop, name="cycle-lease", daemon=True).start()
        return ok

    def confirm(self, before: str) -> None:
        """Renew now, so the step ahead starts with a whole time to live; raise
        :class:`LeaseLostError` if that renewal fails (a step with only what is left of
        the last renewal's time could outlive the lease)."""
        with self._lock:
            renewed = self.lost is None and self._renew_locked()
        if not renewed:
            why = self.lost or "could not renew it"
            raise LeaseLostError(f"lost the cycle lease ({why}); stopped before {before}")

    def renew(self) -> bool:
        """Extend the lease if the row still names us. False once the lease is lost; a
        failed renewal before the expiry is retried next tick (the background loop)."""
        with self._lock:
            if self.lost is None and not self._released:
                self._renew_locked()
            return self.lost is None

    def release(self) -> None:
        """Stop renewing and delete the row if it is still ours (best effort: it expires)."""
        with self._lock:  # a renewal under way finishes first; none starts after
            self._released = True
        self._stop.set()
        try:
            with write_session(self.engine) as session:
                run_store.release_lease(session, name=LEASE, holder=self.holder)
                session.commit()
        except Exception:  # noqa: BLE001 - the lease expires by itself
            log.warning("could not release the cycle lease", exc_info=True)

    # --- internals ---

    def _renew_locked(self) -> bool:
        """One renewal; True if it extended the lease (else it may have lost it)."""
        started = time.monotonic()
        try:
            with write_session(self.engine) as session:
                held = session.execute(
                    update(Lease)
                    .where(Lease.name == LEASE, Lease.holder == self.holder)
                    .values(expires_at=utcnow() + self.ttl)
                ).rowcount
                session.commit()
        except Exception as error:  # noqa: BLE001 - retried next tick, until the expiry
            if time.monotonic() < self._held_until:
                log.warning("could not renew the cycle lease (retrying): %s", error)
                return False
            self._lose(f"renewals failed past its expiry: {type(error).__name__}")
            return False
        if held:  # the row still names us: nobody held it since our last write
            self._held_until = started + self.ttl.total_seconds()
            return True
        self._lose(f"another holder has it now: {self._current_holder() or 'none'}")
        return False

    def _lose(self, why: str) -> None:
        self.lost = why
        log.error("the cycle lease is lost (%s): stopping this cycle", why)

    def _current_holder(self) -> str | None:
        try:
            with Session(self.engine) as session:
                lease = session.get(Lease, LEASE)
                return lease.holder if lease else None
        except Exception:  # noqa: BLE001 - only for the message
            return None

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl.total_seconds() / 3):
            if not self.renew() and self.on_lost is not None:
                try:  # again each tick: a child started just after the loss goes too
                    self.on_lost()
                except Exception:  # noqa: BLE001 - the step checks will stop the cycle anyway
                    log.exception("stopping the cycle after losing its lease failed")

    def _take_over_dead(self, session: Session) -> bool:
        """Take the lease from a holder that is a dead process on this host.

        Without this, a SIGKILLed cycle would block every cycle until its lease
        expires (``ttl``). A holder on another host is left to expire.
        """
        lease = session.get(Lease, LEASE, populate_existing=True)
        if lease is None:
            return False
        host, pid = holder_process(lease.holder)
        if host != socket.gethostname() or pid is None or alive(pid):
            return False
        taken = session.execute(
            update(Lease)
            .where(Lease.name == LEASE, Lease.holder == lease.holder)
            .values(holder=self.holder, expires_at=utcnow() + self.ttl)
        ).rowcount
        if taken:
            log.warning("took over the cycle lease from %s (dead process)", lease.holder)
        return bool(taken)

"""The cycle lease (retrain/lease.py), with a time to live of about a second, on SQLite
and PostgreSQL: a renewal that finds another holder, or no row, loses the lease; renewals
that fail (the database is out) lose it only past its expiry; lost is final; the
background renewal calls ``on_lost``; releasing never deletes another holder's lease."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from feedback import run_store
from feedback.db import write_session
from feedback.models import Lease, utcnow
from retrain import lease as lease_module
from retrain.lease import LEASE, CycleLease, LeaseLostError

TTL = timedelta(seconds=1)
OTHER = "other-host:4242:cafe0000"


@pytest.fixture
def lease(engine):
    held = CycleLease(engine, ttl=TTL)
    assert held.acquire()
    yield held
    held.release()


def take_over(engine, holder: str = OTHER) -> None:
    """Another host takes the lease (as it may once ours expired)."""
    with write_session(engine) as session:
        session.execute(
            update(Lease)
            .where(Lease.name == LEASE)
            .values(holder=holder, expires_at=utcnow() + timedelta(hours=1))
        )
        session.commit()


def holder(engine) -> str | None:
    with Session(engine) as session:
        row = session.get(Lease, LEASE)
        return row.holder if row else None


def test_a_renewal_that_finds_another_holder_loses_the_lease(lease, engine):
    assert lease.renew() and lease.lost is None
    take_over(engine)
    assert lease.renew() is False
    assert OTHER in lease.lost
    with pytest.raises(LeaseLostError, match="stopped before registering"):
        lease.confirm("registering")
    lease.release()
    assert holder(engine) == OTHER  # a release never deletes another holder's lease


def test_a_lease_taken_and_released_by_another_is_not_taken_back(lease, engine):
    """Our lease expired, another cycle took it, cleaned up after us and released
    it: a renewal must not recreate the row as if nothing had happened."""
    take_over(engine)
    with write_session(engine) as session:
        run_store.release_lease(session, name=LEASE, holder=OTHER)
        session.commit()
    assert lease.renew() is False and "none" in lease.lost
    assert holder(engine) is None


def test_failed_renewals_lose_the_lease_only_past_its_expiry(lease, engine, monkeypatch):
    @contextmanager
    def unreachable(_engine):
        raise OperationalError("renew", {}, Exception("connection refused"))
        yield  # pragma: no cover

    monkeypatch.setattr(lease_module, "write_session", unreachable)
    assert lease.renew() is True and lease.lost is None  # still within the time to live
    time.sleep(TTL.total_seconds() + 0.2)
    assert lease.renew() is False
    assert "renewals failed past its expiry" in lease.lost
    monkeypatch.setattr(lease_module, "write_session", write_session)
    assert lease.renew() is False  # back, and still lost: another may have held it meanwhile


def test_the_background_renewal_notices_the_loss_and_calls_on_lost(engine):
    noticed = threading.Event()
    lease = CycleLease(engine, ttl=TTL, on_lost=noticed.set)
    assert lease.acquire()
    try:
        time.sleep(TTL.total_seconds() * 1.5)  # a few renewals: still ours
        assert lease.lost is None and holder(engine) == lease.holder
        take_over(engine)
        assert noticed.wait(TTL.total_seconds() * 3)
        assert OTHER in lease.lost
    finally:
        lease.release()

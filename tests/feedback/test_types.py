"""UTCDateTime: UTC in, aware UTC out, on SQLite and PostgreSQL alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from feedback.models import Lease

NOON_UTC = datetime(2025, 3, 1, 12, 0, 0, 5, tzinfo=UTC)


def test_a_stored_time_reads_back_as_aware_utc(engine):
    in_paris = NOON_UTC.astimezone(timezone(timedelta(hours=1)))
    with Session(engine) as session:
        session.add(Lease(name="l", holder="h", expires_at=in_paris))
        session.commit()
    with Session(engine) as session:
        stored = session.execute(select(Lease.expires_at)).scalar_one()
        latest = session.execute(select(func.max(Lease.expires_at))).scalar_one()
    assert stored == NOON_UTC and stored.tzinfo is UTC
    assert latest == NOON_UTC and latest.tzinfo is UTC  # aggregates keep the type


def test_sqlite_keeps_storing_naive_utc_text(engine):
    with Session(engine) as session:
        session.add(Lease(name="l", holder="h", expires_at=NOON_UTC))
        session.commit()
        raw = session.execute(text("SELECT expires_at FROM lease")).scalar_one()
    if engine.dialect.name == "sqlite":
        assert raw == "2025-03-01 12:00:00.000005"  # what DateTime always wrote
    else:
        assert raw == NOON_UTC


def test_naive_values_are_taken_as_utc(engine):
    with Session(engine) as session:
        session.add(Lease(name="l", holder="h", expires_at=NOON_UTC))
        session.commit()
        naive = NOON_UTC.replace(tzinfo=None)
        found = session.execute(select(Lease.name).where(Lease.expires_at >= naive)).all()
        later = session.execute(
            select(Lease.name).where(Lease.expires_at > naive + timedelta(seconds=1))
        ).all()
    assert found == [("l",)] and later == []

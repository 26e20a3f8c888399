"""Data functions for retraining: the rows a dataset is built from, dataset
lineage, retrain runs and the database lease that allows one cycle at a time.

Like ``feedback.store``: keyword-only, an explicit session, writers flush and
the caller commits. No torch, no Flask.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlmodel import col

from feedback.models import (
    DEFAULT_LANE,
    AdapterVersion,
    Completion,
    Correction,
    DatasetExample,
    DatasetSnapshot,
    Feedback,
    Lease,
    RetrainRun,
    utcnow,
)

# --- source rows ---------------------------------------------------------------------


def corrected_and_rated(session: Session, *, lane: str = DEFAULT_LANE) -> Iterable[dict[str, Any]]:
    """Every completion of ``lane`` that has an active correction or a vote, with both.

    Corrections can only be written through the agent/admin endpoints, so each
    one here came from a trusted person; votes may come from anyone. Only the
    lane's own completions are read: one lane's corrections never train another.
    """
    of_lane = select(Completion.id).where(Completion.lane == lane)
    fixes = {
        c.completion_id: c
        for c in session.execute(
            select(Correction)
            .where(Correction.status == "active", col(Correction.completion_id).in_(of_lane))
            .order_by(col(Correction.created_at))
        ).scalars()
    }
    votes: dict[str, list[Feedback]] = defaultdict(list)
    for vote in session.execute(
        select(Feedback)
        .where(col(Feedback.completion_id).in_(of_lane))
        .order_by(col(Feedback.created_at))
    ).scalars():
        votes[vote.completion_id].append(vote)
    ids = sorted(set(fixes) | set(votes))
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        for completion in session.execute(
            select(Completion).where(col(Completion.id).in_(chunk))
        ).scalars():
            yield {
                "completion": completion,
                "correction": fixes.get(completion.id),
                "votes": votes.get(completion.id, []),
            }


# --- dataset lineage -----------------------------------------------------------------


def record_dataset(
    session: Session,
    *,
    content_hash: str,
    counts: dict,
    path: str | None,
    examples: Iterable[tuple[str, str, str, str]],
    lane: str = DEFAULT_LANE,
) -> DatasetSnapshot:
    """Store a snapshot of ``lane`` and its (example id, completion id, split, kind) rows."""
    snapshot = DatasetSnapshot(content_hash=content_hash, counts=counts, path=path, lane=lane)
    session.add(snapshot)
    session.flush()
    rows = [
        {"dataset_id": snapshot.id, "example_id": e, "completion_id": c, "split": s, "kind": k}
        for e, c, s, k in examples
    ]
    if rows:
        session.execute(insert(DatasetExample), rows)
    return snapshot


def heldout_completions(session: Session, *, lane: str = DEFAULT_LANE) -> set[str]:
    """Completions held out by any earlier dataset of ``lane``: they stay held out for ever."""
    of_lane = select(DatasetSnapshot.id).where(DatasetSnapshot.lane == lane)
    return set(
        session.execute(
            select(DatasetExample.completion_id).where(
                DatasetExample.split == "heldout", col(DatasetExample.dataset_id).in_(of_lane)
            )
        ).scalars()
    )


def trained_example_ids(session: Session, *, lane: str = DEFAULT_LANE) -> set[str]:
    """Training examples of every dataset of ``lane`` that produced an adapter.

    Per lane: an example id is a hash of its content, so the same question and answer
    trained in one lane is still new to another.
    """
    trained = select(AdapterVersion.dataset_id).where(
        col(AdapterVersion.dataset_id).is_not(None), AdapterVersion.lane == lane
    )
    return set(
        session.execute(
            select(DatasetExample.example_id).where(
                DatasetExample.split == "train", col(DatasetExample.dataset_id).in_(trained)
            )
        ).scalars()
    )


# --- runs ----------------------------------------------------------------------------


def start_run(
    session: Session,
    *,
    trigger: str,
    scheduled_for: datetime | None = None,
    lane: str = DEFAULT_LANE,
) -> RetrainRun | None:
    """Record a new run of ``lane``; None if the lane already has a run for this tick."""
    run = RetrainRun(trigger=trigger, scheduled_for=scheduled_for, lane=lane)
    session.add(run)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        return None
    return run


def claim_tick(
    session: Session, *, tick: datetime, lanes: list[str], trigger: str = "schedule"
) -> list[RetrainRun] | None:
    """Queue one run per lane for the scheduled ``tick``, all or none; None if the tick
    already has a run (another scheduler claimed it).

    All at once, so two schedulers firing together cannot split a tick's lanes
    between them (each would then find the lease taken by the other, and skip).
    """
    try:
        return _queue(session, lanes=lanes, trigger=trigger, scheduled_for=tick)
    except IntegrityError:
        session.rollback()
        return None


def queue_runs(session: Session, *, lanes: list[str], trigger: str) -> list[RetrainRun]:
    """Queue one run per lane (``queued``: the runs of one call run one after another)."""
    return _queue(session, lanes=lanes, trigger=trigger, scheduled_for=None)


def _queue(
    session: Session, *, lanes: list[str], trigger: str, scheduled_for: datetime | None
) -> list[RetrainRun]:
    runs = [
        RetrainRun(trigger=trigger, scheduled_for=scheduled_for, lane=lane, status="queued")
        for lane in lanes
    ]
    session.add_all(runs)
    session.flush()
    return runs


def begin_run(session: Session, run_id: str) -> None:
    """A queued run starts now (the runs of one call are queued together, run in turn)."""
    session.execute(
        update(RetrainRun)
        .where(RetrainRun.id == run_id)
        .values(started_at=utcnow(), status="running")
    )


def finish_run(session: Session, run_id: str, **changes: Any) -> None:
    session.execute(
        update(RetrainRun).where(RetrainRun.id == run_id).values(finished_at=utcnow(), **changes)
    )


def list_runs(session: Session, *, limit: int = 50, lane: str | None = None) -> list[RetrainRun]:
    """The latest runs, newest first: of ``lane``, or of every lane (None)."""
    query = select(RetrainRun).order_by(col(RetrainRun.started_at).desc()).limit(limit)
    if lane is not None:
        query = query.where(RetrainRun.lane == lane)
    return list(session.execute(query).scalars())


def last_scheduled_run(session: Session) -> datetime | None:
    return session.execute(select(func.max(RetrainRun.scheduled_for))).scalar()


# --- lease ---------------------------------------------------------------------------


def acquire_lease(session: Session, *, name: str, holder: str, ttl: timedelta) -> bool:
    """Take (or renew) the named lease if it is free, expired, or already ours.

    One conditional statement, so two processes racing for it cannot both win.
    """
    now = utcnow()
    taken = session.execute(
        update(Lease)
        .where(Lease.name == name, (Lease.expires_at < now) | (Lease.holder == holder))
        .values(holder=holder, expires_at=now + ttl)
    ).rowcount
    if taken:
        return True
    try:
        with session.begin_nested():
            session.add(Lease(name=name, holder=holder, expires_at=now + ttl))
    except IntegrityError:
        return False  # someone else holds an unexpired lease
    return True


def release_lease(session: Session, *, name: str, holder: str) -> None:
    session.execute(delete(Lease).where(Lease.name == name, Lease.holder == holder))

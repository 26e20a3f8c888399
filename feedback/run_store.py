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


def corrected_and_rated(session: Session) -> Iterable[dict[str, Any]]:
    """Every completion that has an active correction or a vote, with both.

    Corrections can only be written through the agent/admin endpoints, so each
    one here came from a trusted person; votes may come from anyone.
    """
    fixes = {
        c.completion_id: c
        for c in session.execute(
            select(Correction)
            .where(Correction.status == "active")
            .order_by(col(Correction.created_at))
        ).scalars()
    }
    votes: dict[str, list[Feedback]] = defaultdict(list)
    for vote in session.execute(select(Feedback).order_by(col(Feedback.created_at))).scalars():
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
) -> DatasetSnapshot:
    """Store a snapshot and its (example id, completion id, split, kind) rows."""
    snapshot = DatasetSnapshot(content_hash=content_hash, counts=counts, path=path)
    session.add(snapshot)
    session.flush()
    rows = [
        {"dataset_id": snapshot.id, "example_id": e, "completion_id": c, "split": s, "kind": k}
        for e, c, s, k in examples
    ]
    if rows:
        session.execute(insert(DatasetExample), rows)
    return snapshot


def heldout_completions(session: Session) -> set[str]:
    """Completions held out by any earlier dataset: they stay held out for ever."""
    return set(
        session.execute(
            select(DatasetExample.completion_id).where(DatasetExample.split == "heldout")
        ).scalars()
    )


def trained_example_ids(session: Session) -> set[str]:
    """Training examples of every dataset that produced an adapter."""
    trained = select(AdapterVersion.dataset_id).where(col(AdapterVersion.dataset_id).is_not(None))
    return set(
        session.execute(
            select(DatasetExample.example_id).where(
                DatasetExample.split == "train", col(DatasetExample.dataset_id).in_(trained)
            )
        ).scalars()
    )


# --- runs ----------------------------------------------------------------------------


def start_run(
    session: Session, *, trigger: str, scheduled_for: datetime | None = None
) -> RetrainRun | None:
    """Record a new run; None if a run already exists for this scheduled tick."""
    run = RetrainRun(trigger=trigger, scheduled_for=scheduled_for)
    session.add(run)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        return None
    return run


def finish_run(session: Session, run_id: str, **changes: Any) -> None:
    session.execute(
        update(RetrainRun).where(RetrainRun.id == run_id).values(finished_at=utcnow(), **changes)
    )


def list_runs(session: Session, *, limit: int = 50) -> list[RetrainRun]:
    return list(
        session.execute(
            select(RetrainRun).order_by(col(RetrainRun.started_at).desc()).limit(limit)
        ).scalars()
    )


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

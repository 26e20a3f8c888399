"""Read-only queries behind the pages (no Flask here: a session in, rows out)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlmodel import col

from feedback import lanes, run_store
from feedback.adapters import store as adapter_store
from feedback.models import (
    DEFAULT_LANE,
    AdapterVersion,
    Completion,
    Correction,
    DatasetSnapshot,
    Feedback,
    PromotionEvent,
    utcnow,
)

PRIMARY_METRIC = "heldout_overlap"
SERIES = ("candidate", "champion", "base")


def recent_corrections(
    session: Session, *, limit: int = 50, lane: str | None = None
) -> list[tuple[Correction, Completion]]:
    """The latest corrections (of ``lane``'s completions, or of every lane's), newest
    first, with their completion."""
    query = (
        select(Correction, Completion)
        .join(Completion, Completion.id == Correction.completion_id)
        .order_by(col(Correction.created_at).desc(), col(Correction.id))
        .limit(limit)
    )
    if lane is not None:
        query = query.where(Completion.lane == lane)
    return [(c, comp) for c, comp in session.execute(query).all()]


def lane_rows(session: Session) -> list[dict[str, Any]]:
    """Every lane (``default`` first) with the adapter serving it and its completions."""
    promoted = adapter_store.promoted_by_lane(session)
    counts = dict(
        session.execute(select(Completion.lane, func.count()).group_by(Completion.lane)).all()
    )
    return [
        {
            "name": lane.name,
            "description": lane.description,
            "serving": promoted[lane.name].version if lane.name in promoted else None,
            "completions": counts.get(lane.name, 0),
        }
        for lane in lanes.list_lanes(session)
    ]


def votes_per_day(
    session: Session, *, days: int = 30, today: date | None = None, lane: str | None = None
) -> list[dict]:
    """Votes per day (by rating) for the last ``days`` days, oldest first, gaps as zero;
    only votes on ``lane``'s completions when given."""
    today = today or utcnow().date()
    start = today - timedelta(days=days - 1)
    since = datetime(start.year, start.month, start.day)
    stamp: Any = Feedback.created_at
    if session.get_bind().dialect.name == "postgresql":
        stamp = func.timezone("UTC", stamp)  # days in UTC, whatever the server's zone
    day = func.date(stamp)
    query = select(day, Feedback.rating, func.count()).where(Feedback.created_at >= since)
    if lane is not None:
        query = query.join(Completion, Completion.id == Feedback.completion_id).where(
            Completion.lane == lane
        )
    rows = session.execute(query.group_by(day, Feedback.rating)).all()
    counts: dict[str, dict[str, int]] = {}
    for when, rating, n in rows:
        counts.setdefault(str(when)[:10], {})[rating] = n
    out = []
    for i in range(days):
        key = (start + timedelta(days=i)).isoformat()
        got = counts.get(key, {})
        out.append({"day": key, "up": got.get("up", 0), "down": got.get("down", 0)})
    return out


def adapter_rows(session: Session, lane: str = DEFAULT_LANE) -> list[dict[str, Any]]:
    """``lane``'s adapter versions, newest first, with dataset counts and primary metrics."""
    adapters = adapter_store.list_adapter_versions(session, lane=lane)
    ids = {a.dataset_id for a in adapters if a.dataset_id}
    counts = (
        {
            s.id: s.counts
            for s in session.execute(
                select(DatasetSnapshot).where(col(DatasetSnapshot.id).in_(ids))
            ).scalars()
        }
        if ids
        else {}
    )
    return [_adapter_row(a, counts.get(a.dataset_id or "", {})) for a in adapters]


def _adapter_row(adapter: AdapterVersion, counts: dict[str, Any]) -> dict[str, Any]:
    gate = adapter.gate or {}
    primary = (gate.get("thresholds") or {}).get("primary") or PRIMARY_METRIC
    metrics = adapter.metrics or {}
    return {
        "version": adapter.version,
        "lane": adapter.lane,
        "status": adapter.status,
        "created_at": adapter.created_at,
        "train": counts.get("train"),
        "heldout": counts.get("heldout"),
        "primary": primary,
        "values": {s: _number((metrics.get(s) or {}).get(primary)) for s in SERIES},
        "metrics": {s: metrics.get(s) or {} for s in SERIES},
        "passed": bool(gate.get("passed")),
        "reasons": [str(r) for r in gate.get("reasons") or []],
    }


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def serving_summary(session: Session, lane: str = DEFAULT_LANE) -> dict[str, Any]:
    """Which adapter serves ``lane``, what its rollback would restore, its promotions."""
    promoted = adapter_store.promoted_adapter(session, lane)
    try:
        _, target = adapter_store.rollback_target(session, lane)
        rollback_to: str | None = target.version if target else "the base model"
    except adapter_store.NothingToRollBackError:
        rollback_to = None
    history = adapter_store.promotion_history(session, limit=10, lane=lane)
    return {
        "lane": lane,
        "promoted": promoted.version if promoted else None,
        "rollback_to": rollback_to,
        "history": history,
    }


def recent_runs(session: Session, *, limit: int = 10, lane: str = DEFAULT_LANE) -> list[Any]:
    """``lane``'s latest retrain runs, newest first."""
    return run_store.list_runs(session, limit=limit, lane=lane)


def counts_summary(session: Session, lane: str | None = None) -> dict[str, int]:
    """Totals for the dashboard's header: ``lane``'s, or every lane's."""

    def count(model: Any) -> int:
        query = select(func.count()).select_from(model)
        if lane is not None and hasattr(model, "lane"):
            query = query.where(model.lane == lane)
        elif lane is not None:  # votes and corrections: their completion's lane
            query = query.join(Completion, Completion.id == model.completion_id)
            query = query.where(Completion.lane == lane)
        return session.execute(query).scalar_one()

    return {
        "completions": count(Completion),
        "votes": count(Feedback),
        "corrections": count(Correction),
        "promotions": count(PromotionEvent),
    }

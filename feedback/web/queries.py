"""Read-only queries behind the pages (no Flask here: a session in, rows out)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlmodel import col

from feedback import run_store
from feedback.adapters import store as adapter_store
from feedback.models import (
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


def recent_corrections(session: Session, *, limit: int = 50) -> list[tuple[Correction, Completion]]:
    """The latest corrections across completions, newest first, with their completion."""
    rows = session.execute(
        select(Correction, Completion)
        .join(Completion, Completion.id == Correction.completion_id)
        .order_by(col(Correction.created_at).desc(), col(Correction.id))
        .limit(limit)
    ).all()
    return [(c, comp) for c, comp in rows]


def votes_per_day(session: Session, *, days: int = 30, today: date | None = None) -> list[dict]:
    """Votes per day (by rating) for the last ``days`` days, oldest first, gaps as zero."""
    today = today or utcnow().date()
    start = today - timedelta(days=days - 1)
    since = datetime(start.year, start.month, start.day)
    stamp: Any = Feedback.created_at
    if session.get_bind().dialect.name == "postgresql":
        stamp = func.timezone("UTC", stamp)  # days in UTC, whatever the server's zone
    day = func.date(stamp)
    rows = session.execute(
        select(day, Feedback.rating, func.count())
        .where(Feedback.created_at >= since)
        .group_by(day, Feedback.rating)
    ).all()
    counts: dict[str, dict[str, int]] = {}
    for when, rating, n in rows:
        counts.setdefault(str(when)[:10], {})[rating] = n
    out = []
    for i in range(days):
        key = (start + timedelta(days=i)).isoformat()
        got = counts.get(key, {})
        out.append({"day": key, "up": got.get("up", 0), "down": got.get("down", 0)})
    return out


def adapter_rows(session: Session) -> list[dict[str, Any]]:
    """Every adapter version, newest first, with its dataset counts and primary metrics."""
    adapters = adapter_store.list_adapter_versions(session)
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


def serving_summary(session: Session) -> dict[str, Any]:
    """Which adapter serves, what a rollback would restore, the promotion history."""
    promoted = adapter_store.promoted_adapter(session)
    try:
        _, target = adapter_store.rollback_target(session)
        rollback_to: str | None = target.version if target else "the base model"
    except adapter_store.NothingToRollBackError:
        rollback_to = None
    history = adapter_store.promotion_history(session, limit=10)
    return {
        "promoted": promoted.version if promoted else None,
        "rollback_to": rollback_to,
        "history": history,
    }


def recent_runs(session: Session, *, limit: int = 10) -> list[Any]:
    return run_store.list_runs(session, limit=limit)


def counts_summary(session: Session) -> dict[str, int]:
    """Totals for the dashboard's header."""

    def count(model: Any) -> int:
        return session.execute(select(func.count()).select_from(model)).scalar_one()

    return {
        "completions": count(Completion),
        "votes": count(Feedback),
        "corrections": count(Correction),
        "promotions": count(PromotionEvent),
    }

"""Data functions over adapter versions and their promotion history.

Like :mod:`feedback.store`: keyword-only functions taking an explicit session;
writers ``flush`` but never commit, so the caller owns the transaction.

The database is the source of truth for which adapter serves each lane
(:mod:`feedback.lanes`). The partial unique index ``uq_adapter_one_promoted``
guarantees at most one promoted row per lane;
:func:`promote_adapter` and :func:`rollback_adapter` switch it inside the
caller's single transaction, so a crash leaves the old or the new one promoted.
Every switch appends a :class:`PromotionEvent` of its lane, which rollback walks
back; one lane's switches never touch another lane's rows.

Concurrency: on PostgreSQL the switch takes a transaction-level advisory lock,
so a second concurrent promotion waits and then builds on the first instead of
failing on the unique index. On SQLite call these in a write transaction
(:func:`feedback.db.write_session`), which queues writers the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session
from sqlmodel import col

from feedback.adapters.files import json_safe
from feedback.exceptions import InvalidInputError, NotFoundError, TunebackError
from feedback.models import (
    ADAPTER_STATUSES,
    DEFAULT_LANE,
    AdapterVersion,
    DatasetExample,
    PromotionEvent,
    utcnow,
)

# "tuneback" in ASCII: one application-wide key for pg_advisory_xact_lock.
PROMOTION_LOCK_KEY = 0x74756E656261636B
PROMOTION_ACTIONS = ("promote", "force-promote", "rollback")
_VERSION_NAME = re.compile(r"^v(\d+)$")


class AdapterVersionExistsError(TunebackError, ValueError):
    """An adapter version with this name is already registered."""

    code, status = "adapter_exists", 409


class NothingToRollBackError(TunebackError, LookupError):
    """No promoted adapter, or no earlier promotion to go back to."""

    code, status = "nothing_to_roll_back", 409


# --- rows ----------------------------------------------------------------------


def create_adapter_version(
    session: Session,
    *,
    version: str,
    base_model: str,
    path: str,
    checksum: str,
    dataset_id: str | None = None,
    run_id: str | None = None,
    config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    gate: dict[str, Any] | None = None,
    status: str = "candidate",
    lane: str = DEFAULT_LANE,
) -> AdapterVersion:
    """Register an adapter of ``lane``. It cannot be born promoted: use :func:`promote_adapter`,
    so that every promotion has its event and rollback has a history to walk."""
    _check_status(status)
    if status == "promoted":
        raise InvalidInputError("a new adapter cannot be created promoted; promote it afterwards")
    if session.get(AdapterVersion, version) is not None:
        raise AdapterVersionExistsError(f"adapter version {version!r} already exists")
    adapter = AdapterVersion(
        version=version,
        lane=lane,
        base_model=base_model,
        path=path,
        checksum=checksum,
        dataset_id=dataset_id,
        run_id=run_id,
        config=json_safe(config or {}),
        metrics=json_safe(metrics or {}),
        gate=json_safe(gate or {}),
        status=status,
    )
    session.add(adapter)
    session.flush()
    return adapter


def get_adapter_version(session: Session, version: str) -> AdapterVersion:
    adapter = session.get(AdapterVersion, version, populate_existing=True)
    if adapter is None:
        raise NotFoundError(f"adapter version {version!r} does not exist")
    return adapter


def list_adapter_versions(
    session: Session, *, status: str | None = None, lane: str | None = None
) -> list[AdapterVersion]:
    """All adapters (or those with ``status``, of ``lane``), newest first."""
    stmt = select(AdapterVersion).order_by(
        col(AdapterVersion.created_at).desc(), col(AdapterVersion.version).desc()
    )
    if status is not None:
        _check_status(status)
        stmt = stmt.where(AdapterVersion.status == status)
    if lane is not None:
        stmt = stmt.where(AdapterVersion.lane == lane)
    return list(session.execute(stmt.execution_options(populate_existing=True)).scalars())


def set_adapter_status(session: Session, *, version: str, status: str) -> AdapterVersion:
    """Mark an adapter candidate, rejected or retired.

    Promotion and demotion of the serving adapter go through
    :func:`promote_adapter` and :func:`rollback_adapter` only, so the promotion
    history stays complete.
    """
    _check_status(status)
    adapter = get_adapter_version(session, version)
    if status == "promoted":
        raise InvalidInputError("use promote_adapter to promote an adapter")
    if adapter.status == "promoted":
        raise InvalidInputError(
            f"adapter {version!r} is promoted; roll back or promote another one first"
        )
    adapter.status = status
    session.flush()
    return adapter


def next_version_name(session: Session) -> str:
    """The next free name in the ``v0001``, ``v0002`` ... series (sortable as text),
    one series for all lanes, so a version names one adapter everywhere."""
    numbers = [
        int(match.group(1))
        for name in session.execute(select(AdapterVersion.version)).scalars()
        if (match := _VERSION_NAME.match(name))
    ]
    return f"v{max(numbers, default=0) + 1:04d}"


def adapters_trained_on(
    session: Session, *, completion_ids: Iterable[str], split: str | None = "train"
) -> list[AdapterVersion]:
    """Adapters whose dataset included any of these completions, newest first.

    Follows the lineage table: completion -> dataset example -> dataset ->
    adapter. Only the training split counts by default (held-out examples were
    scored, not learnt); ``split=None`` includes both.
    """
    ids = list(completion_ids)
    if not ids:
        return []
    datasets = select(DatasetExample.dataset_id).where(col(DatasetExample.completion_id).in_(ids))
    if split is not None:
        datasets = datasets.where(DatasetExample.split == split)
    stmt = (
        select(AdapterVersion)
        .where(col(AdapterVersion.dataset_id).in_(datasets))
        .order_by(col(AdapterVersion.created_at).desc(), col(AdapterVersion.version).desc())
    )
    return list(session.execute(stmt).scalars())


# --- promotion -----------------------------------------------------------------


def promoted_adapter(session: Session, lane: str = DEFAULT_LANE) -> AdapterVersion | None:
    """The adapter serving ``lane`` now, or None for the bare base model."""
    stmt = select(AdapterVersion).where(
        AdapterVersion.status == "promoted", AdapterVersion.lane == lane
    )
    return session.execute(stmt.execution_options(populate_existing=True)).scalar_one_or_none()


def promoted_by_lane(session: Session) -> dict[str, AdapterVersion]:
    """Each lane's promoted adapter, in one query (lanes on the base model are absent)."""
    stmt = select(AdapterVersion).where(AdapterVersion.status == "promoted")
    rows = session.execute(stmt.execution_options(populate_existing=True)).scalars()
    return {row.lane: row for row in rows}


def promote_adapter(
    session: Session, *, version: str, actor: str, action: str = "promote"
) -> AdapterVersion:
    """Make ``version`` the promoted adapter of its lane; the lane's previous one is retired.

    Promoting the adapter already promoted changes nothing and records nothing.
    Refusing rejected or corrupt adapters is the caller's policy (the registry).
    """
    if action not in PROMOTION_ACTIONS:
        raise InvalidInputError(f"action must be one of {', '.join(PROMOTION_ACTIONS)}")
    lock_promotions(session)
    target = get_adapter_version(session, version)
    current = promoted_adapter(session, target.lane)
    if current is not None and current.version == version:
        return target
    _switch(session, current=current, target=target, actor=actor, action=action, lane=target.lane)
    return target


def rollback_target(
    session: Session, lane: str = DEFAULT_LANE
) -> tuple[AdapterVersion, AdapterVersion | None]:
    """``lane``'s promoted adapter and the one a rollback would restore (None: base model).

    The history is a stack: each promotion pushes, each rollback pops. Walking
    it newest first, every rollback cancels the latest promotion not yet
    cancelled; the first promotion left standing made the current adapter, and
    its ``previous`` is the target. So rollbacks undo promotions one by one
    down to the base model, even after an old version was promoted again
    (v1, v2, v1 rolls back to v2, then v1, then the base model), instead of
    bouncing between two versions.
    """
    current = promoted_adapter(session, lane)
    if current is None:
        raise NothingToRollBackError(
            f"no adapter of lane {lane!r} is promoted: the base model is already serving it"
        )
    history = session.execute(
        select(PromotionEvent)
        .where(PromotionEvent.lane == lane)
        .order_by(col(PromotionEvent.id).desc())
    )
    standing, pending_rollbacks = None, 0
    for event in history.scalars():
        if event.action == "rollback":
            pending_rollbacks += 1
        elif pending_rollbacks:
            pending_rollbacks -= 1
        else:
            standing = event
            break
    if standing is None or standing.version != current.version:
        raise NothingToRollBackError(
            f"adapter {current.version!r} has no promotion event, so there is no history to "
            "roll back along; promote the version you want instead"
        )
    previous = get_adapter_version(session, standing.previous) if standing.previous else None
    return current, previous


def rollback_adapter(
    session: Session, *, actor: str, lane: str = DEFAULT_LANE
) -> AdapterVersion | None:
    """Go back to ``lane``'s adapter promoted before the current one, or to the base model.

    Returns the adapter now promoted (None: the base model serves the lane).
    """
    lock_promotions(session)
    current, target = rollback_target(session, lane)
    _switch(session, current=current, target=target, actor=actor, action="rollback", lane=lane)
    return target


def promotion_history(
    session: Session, *, limit: int = 50, lane: str | None = None
) -> list[PromotionEvent]:
    """The latest promotion events (of ``lane``, or of all lanes), newest first."""
    stmt = select(PromotionEvent).order_by(col(PromotionEvent.id).desc()).limit(limit)
    if lane is not None:
        stmt = stmt.where(PromotionEvent.lane == lane)
    return list(session.execute(stmt).scalars())


def lock_promotions(session: Session) -> None:
    """Serialize promotions across processes until the transaction ends (PostgreSQL).

    SQLite needs no lock here: a write transaction already excludes other writers.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PROMOTION_LOCK_KEY})


def _switch(
    session: Session,
    *,
    current: AdapterVersion | None,
    target: AdapterVersion | None,
    actor: str,
    action: str,
    lane: str,
) -> None:
    # Retire first and flush on its own: one flush updating both rows may run
    # the promote first, and the unique index would see two promoted rows.
    if current is not None:
        current.status = "retired"
        session.flush()
    if target is not None:
        target.status = "promoted"
        target.promoted_at = utcnow()
    session.add(
        PromotionEvent(
            lane=lane,
            action=action,
            version=target.version if target else None,
            previous=current.version if current else None,
            actor=actor,
        )
    )
    session.flush()


# --- helpers -------------------------------------------------------------------


def _check_status(status: str) -> None:
    if status not in ADAPTER_STATUSES:
        raise InvalidInputError(
            f"adapter status must be one of {', '.join(ADAPTER_STATUSES)}, not {status!r}"
        )

"""Data functions over the domain model.

Every function takes an explicit session and keyword arguments. Writers
``flush`` but never commit: the caller owns the transaction, so a request can
write its row and its idempotency record atomically, or roll both back.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlmodel import col

from feedback.exceptions import InvalidInputError, NotFoundError
from feedback.models import (
    DEFAULT_LANE,
    ROLES,
    ApiKey,
    Completion,
    Correction,
    Feedback,
    RetrainRun,
    new_id,
    utcnow,
)

# --- completions ---------------------------------------------------------------


def create_completion(
    session: Session,
    *,
    messages: list[dict[str, Any]],
    response: str,
    model: str,
    adapter_version: str | None = None,
    metadata: dict[str, Any] | None = None,
    api_key_id: str | None = None,
    completion_id: str | None = None,
    lane: str = DEFAULT_LANE,
) -> Completion:
    """Log a served completion. ``completion_id`` lets a streaming server hand
    the id to its client before the answer (and so the row) exists.

    ``lane`` must name an existing lane: callers check it where the name comes in
    (:func:`feedback.lanes.get_lane`; the server's cached lane directory), so a
    served answer costs no extra query here.
    """
    completion = Completion(
        id=completion_id or new_id(),
        messages=messages,
        response=response,
        model=model,
        adapter_version=adapter_version,
        meta=metadata or {},
        api_key_id=api_key_id,
        lane=lane,
    )
    session.add(completion)
    session.flush()
    return completion


ID_LENGTH = 32  # the most characters of a row id (feedback.models.new_id)


def could_be_id(value: str) -> bool:
    """Whether ``value`` is an id a row could have: at most :data:`ID_LENGTH` characters,
    no NUL. Anything else is no row, not a query (PostgreSQL refuses NUL: a 500)."""
    return len(value) <= ID_LENGTH and "\x00" not in value


def get_completion(session: Session, completion_id: str) -> Completion:
    completion = session.get(Completion, completion_id) if could_be_id(completion_id) else None
    if completion is None:
        raise NotFoundError(f"completion {completion_id!r} does not exist")
    return completion


def completion_detail(
    session: Session, completion_id: str
) -> tuple[Completion, list[Feedback], list[Correction]]:
    completion = get_completion(session, completion_id)
    votes = session.execute(
        select(Feedback)
        .where(Feedback.completion_id == completion_id)
        .order_by(col(Feedback.created_at))
    ).scalars()
    fixes = session.execute(
        select(Correction)
        .where(Correction.completion_id == completion_id)
        .order_by(col(Correction.created_at))
    ).scalars()
    return completion, list(votes), list(fixes)


# --- feedback ------------------------------------------------------------------


UNFINISHED = ("queued", "running")  # runs whose result is not written yet


def latest_run_alerts(session: Session) -> list[dict[str, Any]]:
    """The poisoning alerts (vote floods, trigger suspects) of each lane's last finished
    retrain run: one lane's later run does not hide another lane's alerts."""
    newest = (
        select(RetrainRun.lane, func.max(RetrainRun.started_at).label("started_at"))
        .where(col(RetrainRun.status).not_in(UNFINISHED))
        .group_by(RetrainRun.lane)
        .subquery()
    )
    rows = session.execute(
        select(RetrainRun.result)
        .join(newest, newest.c.lane == RetrainRun.lane)
        .where(
            RetrainRun.started_at == newest.c.started_at,
            col(RetrainRun.status).not_in(UNFINISHED),
        )
    ).scalars()
    alerts = []
    for result in rows:
        found = result.get("alerts") if isinstance(result, dict) else None
        alerts += [a for a in found if isinstance(a, dict)] if isinstance(found, list) else []
    return alerts


# --- corrections ---------------------------------------------------------------


def add_correction(
    session: Session,
    *,
    completion_id: str,
    corrected_response: str,
    author: str,
    note: str | None = None,
) -> Correction:
    """Store a correction; earlier active corrections of the completion are superseded."""
    get_completion(session, completion_id)
    for older in session.execute(
        select(Correction).where(
            Correction.completion_id == completion_id, Correction.status == "active"
        )
    ).scalars():
        older.status = "superseded"
    correction = Correction(
        completion_id=completion_id,
        corrected_response=corrected_response,
        author=author,
        note=note,
    )
    session.add(correction)
    session.flush()
    return correction


def review_queue(
    session: Session, *, limit: int = 20, offset: int = 0, lane: str | None = None
) -> tuple[list[tuple[Completion, int, datetime]], int]:
    """Thumbs-down completions that no one has corrected yet, newest vote first;
    only ``lane``'s when given (the caller checked that it exists)."""
    corrected = select(Correction.completion_id).where(Correction.status == "active")
    downs = (
        select(
            Feedback.completion_id,
            func.count().label("down_votes"),
            func.max(Feedback.created_at).label("last_down_at"),
        )
        .where(Feedback.rating == "down", col(Feedback.completion_id).not_in(corrected))
        .group_by(Feedback.completion_id)
        .subquery()
    )
    query = select(Completion, downs.c.down_votes, downs.c.last_down_at).join(
        downs, downs.c.completion_id == Completion.id
    )
    if lane is not None:
        query = query.where(Completion.lane == lane)
    total = session.execute(
        select(func.count()).select_from(query.with_only_columns(Completion.id).subquery())
    ).scalar_one()
    rows = session.execute(
        query.order_by(downs.c.last_down_at.desc(), Completion.id).limit(limit).offset(offset)
    ).all()
    return [(c, n, last) for c, n, last in rows], total


def iter_corrected(
    session: Session, *, batch: int = 500, lane: str | None = None
) -> Iterator[tuple[Completion, Correction]]:
    """Each corrected completion with its active correction, oldest first; only
    ``lane``'s when given (callers check the lane exists first: this is a generator)."""
    stmt = (
        select(Completion, Correction)
        .join(Correction, Correction.completion_id == Completion.id)
        .where(Correction.status == "active")
        .order_by(col(Correction.created_at), Correction.id)
        .execution_options(yield_per=batch)
    )
    if lane is not None:
        stmt = stmt.where(Completion.lane == lane)
    yield from session.execute(stmt)  # rows unpack as (completion, correction)


# --- API keys ------------------------------------------------------------------


def hash_key(plaintext: str) -> str:
    # Keys are 256-bit random tokens, so a fast hash is safe: there is nothing
    # to brute-force, and lookups by hash stay one indexed query.
    return hashlib.sha256(plaintext.encode()).hexdigest()


def create_api_key(
    session: Session, *, role: str, name: str | None = None, origins: list[str] | None = None
) -> tuple[ApiKey, str]:
    """Create a key and return it with its plaintext (shown once, never stored)."""
    if role not in ROLES:
        raise InvalidInputError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    origins = [_check_origin(o) for o in origins or []]
    if role == "widget" and not origins:
        raise InvalidInputError("a widget key needs at least one allowed origin (--origin URL)")
    key_id = secrets.token_hex(6)
    plaintext = f"tb_{key_id}_{secrets.token_urlsafe(32)}"
    key = ApiKey(
        id=key_id, name=name, key_hash=hash_key(plaintext), role=role, allowed_origins=origins
    )
    session.add(key)
    session.flush()
    return key, plaintext


def _check_origin(origin: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise InvalidInputError(
            f"origin {origin!r} must look like https://host[:port], without a path"
        )
    return f"{parts.scheme}://{parts.netloc}".lower()


def find_active_key(session: Session, plaintext: str) -> ApiKey | None:
    key = session.execute(select(ApiKey).where(ApiKey.key_hash == hash_key(plaintext))).scalar()
    if key is None or key.revoked_at is not None:
        return None
    return key


def list_api_keys(session: Session) -> list[ApiKey]:
    return list(session.execute(select(ApiKey).order_by(col(ApiKey.created_at))).scalars())


def revoke_api_key(session: Session, *, key_id: str) -> ApiKey:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFoundError(f"API key {key_id!r} does not exist")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
    session.flush()
    return key


def all_allowed_origins(session: Session) -> set[str]:
    """Origins that any active widget (or other) key allows, for CORS preflight."""
    rows = session.execute(select(ApiKey.allowed_origins).where(col(ApiKey.revoked_at).is_(None)))
    return {origin for origins in rows.scalars() for origin in origins or []}

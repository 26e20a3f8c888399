"""The shared domain model: tables every part of Tuneback reads and writes.

Completions are answers a chat system served; feedback rows are end-user votes
on them; corrections are the better answers support agents wrote. API keys and
idempotency records belong to the HTTP service. Request and response shapes
of the HTTP API live in :mod:`feedback.schemas`.

Schema changes go through Alembic (``feedback/migrations``), never
``create_all``; a test checks that the migrations and these classes agree.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from sqlalchemy import JSON, Column, Index, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from feedback.types import UTCDateTime

JSONType = JSON().with_variant(JSONB(), "postgresql")

ROLES = ("widget", "agent", "server", "admin")
Rating = Literal["up", "down"]  # the API's vote values (feedback.schemas.FeedbackIn)
RATINGS: tuple[str, ...] = get_args(Rating)
CORRECTION_STATUSES = ("active", "superseded", "rejected")
DEFAULT_LANE = "default"  # the lane that always exists (see feedback.lanes)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


def _json_dict() -> Any:
    return Field(default_factory=dict, sa_column=Column(JSONType, nullable=False))


def _ts(**kwargs: Any) -> Any:
    return Field(default_factory=utcnow, sa_type=UTCDateTime, **kwargs)


def _lane(**kwargs: Any) -> Any:
    """The lane (use case) a row belongs to; rows from before lanes are ``default``'s."""
    return Field(default=DEFAULT_LANE, max_length=64, **kwargs)


class Lane(SQLModel, table=True):
    """A named use case: its own training data, adapters, gate and serving name.

    ``settings`` holds the lane's overrides of the deployment's settings (gate primary
    metric and margin, golden file, response schema); see :mod:`feedback.lanes`.
    """

    name: str = Field(primary_key=True, max_length=64)
    description: str | None = Field(default=None, sa_column=Column(Text))
    settings: dict[str, Any] = _json_dict()
    created_at: datetime = _ts()


class Completion(SQLModel, table=True):
    """One answer served to a user, with the conversation that led to it."""

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    created_at: datetime = _ts(index=True)
    messages: list[dict[str, Any]] = Field(sa_column=Column(JSONType, nullable=False))
    response: str = Field(sa_column=Column(Text, nullable=False))
    model: str = Field(max_length=200)
    lane: str = _lane(index=True)
    adapter_version: str | None = Field(default=None, max_length=100)
    meta: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column("metadata", JSONType, nullable=False)
    )
    api_key_id: str | None = Field(default=None, max_length=32)


class Feedback(SQLModel, table=True):
    """A thumbs up or down on a completion.

    A verified vote's user is known (a signed vote token, or an agent's say): one per
    (completion, source, user), so a vote from one source never replaces another's.
    An unverified vote (a public widget key's, naming a user it cannot prove) is a row
    of its own that nothing replaces; ``user_ref`` keeps the user it claims.
    """

    __table_args__ = (
        Index(
            "uq_feedback_verified_user",
            "completion_id",
            "source",
            "user_ref",
            unique=True,
            sqlite_where=text("verified"),
            postgresql_where=text("verified"),
        ),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    completion_id: str = Field(foreign_key="completion.id", index=True, max_length=32)
    rating: str = Field(max_length=4)
    reason: str | None = Field(default=None, max_length=200)
    comment: str | None = Field(default=None, sa_column=Column(Text))
    source: str = Field(max_length=16)
    user_ref: str | None = Field(default=None, max_length=256)
    api_key_id: str | None = Field(default=None, max_length=32)
    verified: bool = True
    created_at: datetime = _ts(index=True)
    updated_at: datetime = _ts()


class Correction(SQLModel, table=True):
    """A better answer an agent wrote for a completion."""

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    completion_id: str = Field(foreign_key="completion.id", index=True, max_length=32)
    corrected_response: str = Field(sa_column=Column(Text, nullable=False))
    author: str = Field(max_length=200)
    note: str | None = Field(default=None, sa_column=Column(Text))
    status: str = Field(default="active", max_length=16)
    created_at: datetime = _ts(index=True)


class ApiKey(SQLModel, table=True):
    """A hashed API key. The plaintext is shown once at creation, never stored."""

    __tablename__ = "api_key"

    id: str = Field(primary_key=True, max_length=32)
    name: str | None = Field(default=None, max_length=200)
    key_hash: str = Field(max_length=64, unique=True)
    role: str = Field(max_length=16)
    allowed_origins: list[str] = Field(
        default_factory=list, sa_column=Column(JSONType, nullable=False)
    )
    created_at: datetime = _ts()
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class IdempotencyRecord(SQLModel, table=True):
    """The first answer given to a request carrying an Idempotency-Key."""

    __tablename__ = "idempotency_record"
    __table_args__ = (Index("ix_idempotency_record_created_at", "created_at"),)

    api_key_id: str = Field(primary_key=True, max_length=32)
    key: str = Field(primary_key=True, max_length=255)
    request_hash: str = Field(max_length=64)
    status_code: int = 0
    response_body: str = Field(default="", sa_column=Column(Text, nullable=False))
    created_at: datetime = _ts()


# --- retraining: datasets, runs, adapters ---------------------------------------------

RUN_STATUSES = ("queued", "running", "promoted", "rejected", "skipped", "failed")
ADAPTER_STATUSES = ("candidate", "promoted", "rejected", "retired")


class DatasetSnapshot(SQLModel, table=True):
    """One training set as built by a retrain cycle (or ``tuneback dataset build``)."""

    __tablename__ = "dataset_snapshot"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    created_at: datetime = _ts(index=True)
    lane: str = _lane(index=True)
    content_hash: str = Field(max_length=64)
    counts: dict[str, Any] = _json_dict()
    path: str | None = Field(default=None, max_length=1000)


class DatasetExample(SQLModel, table=True):
    """Lineage: which completion fed which dataset, and on which side of the split."""

    __tablename__ = "dataset_example"

    dataset_id: str = Field(foreign_key="dataset_snapshot.id", primary_key=True, max_length=32)
    example_id: str = Field(primary_key=True, max_length=64)
    completion_id: str = Field(index=True, max_length=32)
    split: str = Field(max_length=8)  # train | heldout
    kind: str = Field(max_length=16)  # sft | preference | positive


class RetrainRun(SQLModel, table=True):
    """One retrain cycle of one lane, whatever its outcome."""

    __tablename__ = "retrain_run"
    __table_args__ = (Index("uq_retrain_run_tick", "scheduled_for", "lane", unique=True),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    started_at: datetime = _ts(index=True)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    lane: str = _lane(index=True)
    trigger: str = Field(default="manual", max_length=16)  # manual | schedule
    # The cron tick a scheduled run belongs to: unique per lane, so two
    # schedulers firing for the same tick run one cycle of each lane between them.
    scheduled_for: datetime | None = Field(default=None, sa_type=UTCDateTime)
    status: str = Field(default="running", max_length=16)
    dataset_id: str | None = Field(default=None, max_length=32)
    adapter_version: str | None = Field(default=None, max_length=64)
    error: str | None = Field(default=None, sa_column=Column(Text))
    result: dict[str, Any] = _json_dict()


class AdapterVersion(SQLModel, table=True):
    """A trained LoRA adapter of one lane, and the gate's verdict on it.

    Version names are unique across lanes (one ``v0001``, ``v0002`` ... series).
    At most one row per lane is ``promoted`` at a time; a partial unique index
    enforces it in the database, so no race can ever leave two promoted.
    """

    __tablename__ = "adapter_version"
    __table_args__ = (
        Index(
            "uq_adapter_one_promoted",
            "lane",
            unique=True,
            sqlite_where=text("status = 'promoted'"),
            postgresql_where=text("status = 'promoted'"),
        ),
    )

    version: str = Field(primary_key=True, max_length=64)
    created_at: datetime = _ts(index=True)
    lane: str = _lane(index=True)
    status: str = Field(default="candidate", max_length=16)
    base_model: str = Field(max_length=500)
    path: str = Field(max_length=1000)
    checksum: str = Field(max_length=64)
    dataset_id: str | None = Field(default=None, foreign_key="dataset_snapshot.id", max_length=32)
    run_id: str | None = Field(default=None, max_length=32)
    config: dict[str, Any] = _json_dict()
    metrics: dict[str, Any] = _json_dict()
    gate: dict[str, Any] = _json_dict()
    promoted_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class PromotionEvent(SQLModel, table=True):
    """Every change of a lane's promoted adapter, for rollback and audit."""

    __tablename__ = "promotion_event"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = _ts(index=True)
    lane: str = _lane(index=True)
    action: str = Field(max_length=16)  # promote | rollback | force-promote
    version: str | None = Field(default=None, max_length=64)  # None: back to the base model
    previous: str | None = Field(default=None, max_length=64)
    actor: str = Field(default="system", max_length=200)


class Lease(SQLModel, table=True):
    """A named, expiring lock held in the database (one retrain cycle at a time)."""

    name: str = Field(primary_key=True, max_length=64)
    holder: str = Field(max_length=200)
    expires_at: datetime = Field(sa_type=UTCDateTime)


class ServingReplica(SQLModel, table=True):
    """A serving process's heartbeat: which adapter it serves, and when it last said so.

    Each replica upserts its row every few seconds and deletes it when it stops
    cleanly; promotion waits until every replica seen recently reports the new
    version (:mod:`feedback.replicas`).
    """

    __tablename__ = "serving_replica"

    id: str = Field(primary_key=True, max_length=200)
    host: str = Field(max_length=255)
    url: str | None = Field(default=None, max_length=500)
    pid: int = 0
    serving: str | None = Field(default=None, max_length=64)  # None: the base model
    refused: str | None = Field(default=None, max_length=64)  # latest version it refused
    refused_reason: str | None = Field(default=None, sa_column=Column(Text))
    # Every lane's state: {lane: {"serving": v|None, "refused": v|None, "reason": str|None}};
    # the three columns above repeat the default lane's, for older readers.
    lanes: dict[str, Any] = _json_dict()
    started_at: datetime = _ts()
    last_seen: datetime = _ts(index=True)


class WebSession(SQLModel, table=True):
    """A signed-in browser session of the pages (review console, dashboard).

    The signed cookie carries a random token; the row holds its SHA-256 only, so
    the table alone signs nobody in. Sign-out deletes the row, so a copy of the
    cookie dies with it; a row older than the session lifetime is dead as well.
    State lives here, not in a process, so every worker agrees.
    """

    __tablename__ = "web_session"

    id: str = Field(primary_key=True, max_length=64)  # SHA-256 of the cookie's token
    key_id: str = Field(foreign_key="api_key.id", ondelete="CASCADE", index=True, max_length=32)
    created_at: datetime = _ts(index=True)

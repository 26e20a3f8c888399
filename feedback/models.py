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
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Index, Text, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

JSONType = JSON().with_variant(JSONB(), "postgresql")

ROLES = ("widget", "agent", "server", "admin")
RATINGS = ("up", "down")
CORRECTION_STATUSES = ("active", "superseded", "rejected")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


def _ts(**kwargs: Any) -> Any:
    return Field(default_factory=utcnow, sa_type=DateTime(timezone=True), **kwargs)


class Completion(SQLModel, table=True):
    """One answer served to a user, with the conversation that led to it."""

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    created_at: datetime = _ts(index=True)
    messages: list[dict[str, Any]] = Field(sa_column=Column(JSONType, nullable=False))
    response: str = Field(sa_column=Column(Text, nullable=False))
    model: str = Field(max_length=200)
    adapter_version: str | None = Field(default=None, max_length=100)
    meta: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column("metadata", JSONType, nullable=False)
    )
    api_key_id: str | None = Field(default=None, max_length=32)


class Feedback(SQLModel, table=True):
    """A thumbs up or down on a completion. One per (completion, user)."""

    __table_args__ = (UniqueConstraint("completion_id", "user_ref", name="uq_feedback_user"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    completion_id: str = Field(foreign_key="completion.id", index=True, max_length=32)
    rating: str = Field(max_length=4)
    reason: str | None = Field(default=None, max_length=200)
    comment: str | None = Field(default=None, sa_column=Column(Text))
    source: str = Field(max_length=16)
    user_ref: str | None = Field(default=None, max_length=256)
    api_key_id: str | None = Field(default=None, max_length=32)
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
    revoked_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


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

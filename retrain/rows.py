"""What a training set is built from: one logged completion and its votes, as read
from the store (:mod:`retrain.sources`) or made by a test. Pure, like
:mod:`retrain.dataset`; times enter the dataset code here, as UTC-aware values.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime


def as_utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive one is taken to be UTC (as the store writes it)."""
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Vote:
    rating: str  # "up" | "down"
    source: str  # "widget" | "agent" | "admin": the role of the key that cast it
    user_ref: str | None
    created_at: datetime  # always UTC-aware once built

    def __post_init__(self) -> None:
        object.__setattr__(self, "created_at", as_utc(self.created_at))


@dataclass(frozen=True)
class SourceRow:
    """One logged completion and what happened to it."""

    completion_id: str
    created_at: datetime
    messages: list[dict]  # the conversation that led to the answer
    response: str  # the answer that was served
    correction: str | None  # the active agent or admin correction, if any
    corrected_at: datetime | None
    votes: tuple[Vote, ...] = ()

    def __post_init__(self) -> None:
        # Times enter the pure dataset code here, and only here, as UTC-aware values.
        object.__setattr__(self, "created_at", as_utc(self.created_at))
        if self.corrected_at is not None:
            object.__setattr__(self, "corrected_at", as_utc(self.corrected_at))

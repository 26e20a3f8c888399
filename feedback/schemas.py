"""Request and response bodies of the HTTP API (pydantic v2).

Inputs forbid unknown fields, reject empty strings, NUL bytes and over-long
text, so that anything reaching the store is already known to be storable.
Text is otherwise kept verbatim: no stripping, no escaping.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from feedback.lanes import NAME_PATTERN, check_name
from feedback.models import DEFAULT_LANE, Rating

# The hard ceiling on any single text field; the body limit (64 KiB by default)
# usually bites first. ``Settings.max_text_chars`` can lower it per deployment.
MAX_TEXT = 60_000


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _clean_json(value: Any, depth: int = 0) -> Any:
    """Reject what a JSON column cannot store faithfully: NUL, NaN, deep nesting."""
    if depth > 32:
        raise ValueError("is nested too deeply (over 32 levels)")
    if isinstance(value, str):
        return _no_nul(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must not contain NaN or infinite numbers")
    if isinstance(value, dict):
        for key, item in value.items():
            _no_nul(key)
            _clean_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _clean_json(item, depth + 1)
    return value


def _text(max_length: int) -> Any:
    return Annotated[
        str, StringConstraints(min_length=1, max_length=max_length), AfterValidator(_no_nul)
    ]


Text = _text(MAX_TEXT)
ShortText = _text(200)
UserRef = _text(256)
# A lane's name (feedback.lanes.check_name), refused with check_name's own words; the
# pattern is stated in the spec so that clients and fuzzers know the rule.
LaneName = Annotated[
    str,
    AfterValidator(check_name),
    Field(
        json_schema_extra={"pattern": NAME_PATTERN, "minLength": 1, "maxLength": 63},
        description="A lane (use case): 1 to 63 lower-case letters, digits, '-' or '_'.",
    ),
]


class Input(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Message(Input):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: Text
    name: ShortText | None = None


class CompletionIn(Input):
    messages: list[Message] = Field(min_length=1, max_length=200)
    response: Text
    model: ShortText
    adapter_version: _text(100) | None = None
    metadata: Annotated[dict[str, Any], AfterValidator(_clean_json)] = Field(default_factory=dict)
    lane: LaneName = Field(
        DEFAULT_LANE,
        description="The lane (use case) the completion belongs to; `model` stays the "
        "upstream model that produced it. An unknown lane is a 404 listing the lanes.",
    )


# A signed vote token (feedback.auth.mint_vote_token): its user is at most 256
# characters, 1,536 once JSON-escaped, so the base64 token stays under 2,200.
VoteTokenText = _text(4096)


class FeedbackIn(Input):
    completion_id: _text(32)
    rating: Rating
    reason: ShortText | None = None
    comment: Text | None = None
    user: UserRef | None = Field(
        None,
        description="The end user voting. From a widget key without `token` it is only "
        "claimed: the vote is stored unverified, replaces nothing and nothing replaces it.",
    )
    token: VoteTokenText | None = Field(
        None,
        description="A signed vote token: from `POST /v1/vote-tokens` (the vote is its "
        "user's, verified), or the `token` an unverified vote got back (changes that vote).",
    )


class VoteTokenIn(Input):
    completion_id: _text(32)
    user: UserRef


class CorrectionIn(Input):
    completion_id: _text(32)
    corrected_response: Text
    note: Text | None = None


class PageQuery(Input):
    model_config = ConfigDict(extra="forbid", strict=False)  # query values are strings

    limit: int = Field(20, ge=1, le=100)
    offset: int = Field(0, ge=0, le=1_000_000)
    lane: LaneName | None = Field(None, description="Only this lane's completions.")


class ExportQuery(Input):
    model_config = ConfigDict(extra="forbid", strict=False)

    format: Literal["openai"] = "openai"
    lane: LaneName | None = Field(
        None, description="Only this lane's corrections (default: every lane)."
    )


class Created(BaseModel):
    id: str


class FeedbackOut(BaseModel):
    id: str
    completion_id: str
    rating: str
    reason: str | None
    comment: str | None
    source: str
    user: str | None
    created_at: datetime
    updated_at: datetime
    replaced: bool = False
    verified: bool = Field(
        True, description="Whether the user is known: a signed token's, or an agent's say."
    )
    token: str | None = Field(
        None,
        description="A new unverified vote only: a vote token that changes this vote (its "
        "rating, reason, comment) later.",
    )


class VoteTokenOut(BaseModel):
    token: str
    completion_id: str
    user: str
    expires_at: datetime


class CorrectionOut(BaseModel):
    id: str
    completion_id: str
    corrected_response: str
    author: str
    note: str | None
    status: str
    created_at: datetime


class CompletionOut(BaseModel):
    id: str
    created_at: datetime
    messages: list[dict[str, Any]]
    response: str
    model: str
    adapter_version: str | None
    metadata: dict[str, Any]
    lane: str


class CompletionDetail(CompletionOut):
    feedback: list[FeedbackOut]
    corrections: list[CorrectionOut]


class QueueItem(CompletionOut):
    down_votes: int
    last_down_at: datetime


class QueuePage(BaseModel):
    items: list[QueueItem]
    total: int
    limit: int
    offset: int


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: str
    database: str

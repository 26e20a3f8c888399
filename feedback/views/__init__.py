"""One blueprint per resource of the feedback API."""

from __future__ import annotations

from feedback.models import Completion, Correction, Feedback
from feedback.schemas import CompletionOut, CorrectionOut, FeedbackOut

ERRORS = [400, 401, 403, 413, 415, 429]


def completion_out(c: Completion) -> dict:
    return CompletionOut(
        id=c.id,
        created_at=c.created_at,
        messages=c.messages,
        response=c.response,
        model=c.model,
        adapter_version=c.adapter_version,
        metadata=c.meta,
    ).model_dump(mode="json")


def feedback_out(f: Feedback, replaced: bool = False) -> dict:
    return FeedbackOut(
        id=f.id,
        completion_id=f.completion_id,
        rating=f.rating,
        reason=f.reason,
        comment=f.comment,
        source=f.source,
        user=f.user_ref,
        created_at=f.created_at,
        updated_at=f.updated_at,
        replaced=replaced,
    ).model_dump(mode="json")


def correction_out(c: Correction) -> dict:
    return CorrectionOut.model_validate(c, from_attributes=True).model_dump(mode="json")

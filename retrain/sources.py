"""Read the store into the plain rows ``retrain.dataset`` builds from, one lane at a time."""

from __future__ import annotations

from sqlalchemy.orm import Session

from feedback import run_store
from feedback.models import DEFAULT_LANE
from retrain.rows import SourceRow, Vote


def load_source_rows(session: Session, *, lane: str = DEFAULT_LANE) -> list[SourceRow]:
    """The corrected or rated completions of ``lane`` (only its own: lanes never mix)."""
    rows = []
    for item in run_store.corrected_and_rated(session, lane=lane):
        completion, correction = item["completion"], item["correction"]
        rows.append(
            SourceRow(
                completion_id=completion.id,
                created_at=completion.created_at,
                messages=list(completion.messages),
                response=completion.response,
                correction=correction.corrected_response if correction else None,
                corrected_at=correction.created_at if correction else None,
                votes=tuple(
                    Vote(
                        rating=v.rating,
                        source=v.source,
                        user_ref=v.user_ref,
                        created_at=v.created_at,
                    )
                    for v in item["votes"]
                ),
            )
        )
    return rows

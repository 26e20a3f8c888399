"""Training data out: one JSONL line per corrected completion."""

from __future__ import annotations

import json

from apiflask import APIBlueprint
from flask import Response, current_app, stream_with_context
from sqlalchemy.orm import Session

from feedback import lanes, store
from feedback.auth import require
from feedback.context import request_session
from feedback.schemas import ExportQuery
from feedback.views import NO_LANE

bp = APIBlueprint("export", __name__, tag="Export")


def openai_example(completion, correction) -> dict:
    """The conversation with the corrected answer as the final assistant turn."""
    messages = [
        {k: v for k, v in m.items() if k in ("role", "content", "name")}
        for m in completion.messages
    ]
    messages.append({"role": "assistant", "content": correction.corrected_response})
    return {"messages": messages}


@bp.get("/v1/export")
@require("admin")
@bp.input(ExportQuery, location="query", arg_name="query")
@bp.doc(
    security="bearer",
    responses={
        200: {
            "description": "JSONL in the OpenAI chat fine-tuning format",
            "content": {"application/jsonl": {"schema": {"type": "string"}}},
        },
        **NO_LANE,
    },
)
def export(query: ExportQuery):
    """Download corrected completions as OpenAI chat fine-tuning JSONL.

    Every lane's by default, each line naming its `lane`; `?lane=NAME` keeps one
    lane's, as plain OpenAI lines (no `lane` key) ready to upload for a fine-tune.
    """
    engine = current_app.extensions["tuneback"].engine
    if query.lane is not None:
        lanes.get_lane(request_session(), query.lane)  # a 404 now, not a broken stream

    def lines():
        # The request session is closed at teardown, before streaming ends,
        # so the stream reads with a session of its own.
        with Session(engine) as session:
            for completion, correction in store.iter_corrected(session, lane=query.lane):
                example = openai_example(completion, correction)
                if query.lane is None:
                    example["lane"] = completion.lane
                yield json.dumps(example, ensure_ascii=False)
                yield "\n"

    return Response(
        stream_with_context(lines()),
        mimetype="application/jsonl",
        headers={"Content-Disposition": 'attachment; filename="tuneback-export.jsonl"'},
    )

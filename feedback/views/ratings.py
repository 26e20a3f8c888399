"""End users' thumbs up and down, from the widget or an agent."""

from __future__ import annotations

from apiflask import APIBlueprint
from flask import g

from feedback import store
from feedback.auth import require
from feedback.idempotency import run_write
from feedback.schemas import FeedbackIn, FeedbackOut
from feedback.views import ERRORS, feedback_out
from feedback.views.completions import limit_text

bp = APIBlueprint("ratings", __name__, tag="Feedback")


@bp.post("/v1/feedback")
@require("widget", "agent")
@bp.input(FeedbackIn, arg_name="body")
@bp.output(FeedbackOut, status_code=201)
@bp.doc(security="bearer", responses=ERRORS + [404])
def post_feedback(body: FeedbackIn):
    """Vote on a completion. A user's second vote on it replaces the first.

    Send an `Idempotency-Key` header to make retries safe.
    """
    limit_text(body.comment)

    def action():
        vote, replaced = store.record_feedback(
            g.db,
            completion_id=body.completion_id,
            rating=body.rating,
            reason=body.reason,
            comment=body.comment,
            user_ref=body.user,
            source=g.caller.role,
            api_key_id=g.caller.id,
        )
        g.metrics.feedback.labels(body.rating, g.caller.role).inc()
        return feedback_out(vote, replaced), 201

    return run_write(action)

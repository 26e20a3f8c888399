"""End users' thumbs up and down, from the widget or an agent."""

from __future__ import annotations

from apiflask import APIBlueprint
from flask import current_app, g, request

from feedback import rawsql
from feedback.auth import require
from feedback.idempotency import HEADER, run_write
from feedback.schemas import FeedbackIn, FeedbackOut
from feedback.views import NOT_FOUND, feedback_out, json_response
from feedback.views.completions import limit_text

bp = APIBlueprint("ratings", __name__, tag="Feedback")


@bp.post("/v1/feedback")
@require("widget", "agent")
@bp.input(FeedbackIn, arg_name="body")
@bp.output(FeedbackOut, status_code=201)
@bp.doc(security="bearer", responses=NOT_FOUND)
def post_feedback(body: FeedbackIn):
    """Vote on a completion. A user's second vote on it replaces the first.

    Send an `Idempotency-Key` header to make retries safe.
    """
    limit_text(body.comment)

    def action(tx):
        vote, replaced = rawsql.record_vote(
            tx,
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

    engine = current_app.extensions["tuneback"].engine
    # Without an Idempotency-Key the vote is one statement (see rawsql.record_vote).
    single = HEADER not in request.headers
    return json_response(*run_write(rawsql.engine_write(engine, single_statement=single), action))

"""End users' thumbs up and down, from the widget or an agent."""

from __future__ import annotations

from apiflask import APIBlueprint
from apiflask.schema_adapters import registry
from flask import current_app, request

from feedback import rawsql
from feedback.auth import current_caller
from feedback.idempotency import HEADER, run_write
from feedback.schemas import FeedbackIn, FeedbackOut
from feedback.views import NOT_FOUND, documented_as, feedback_out, json_response
from feedback.views.completions import limit_text

bp = APIBlueprint("ratings", __name__, tag="Feedback")
# The validator APIFlask's @bp.input would use: same checks, same 422 answers.
FEEDBACK_IN = registry.create_adapter(FeedbackIn)


@bp.input(FeedbackIn, arg_name="body")
@bp.output(FeedbackOut, status_code=201)
@bp.doc(security="bearer", responses=NOT_FOUND)
def post_feedback_doc(body: FeedbackIn) -> None:
    """Vote on a completion. A user's second vote on it replaces the first.

    Send an `Idempotency-Key` header to make retries safe.
    """


@bp.post("/v1/feedback")
@documented_as(post_feedback_doc)
def post_feedback():
    # The busiest route: it checks the key and the body itself, in the order
    # @require and @bp.input would, instead of through their wrappers.
    caller = current_caller("widget", "agent")
    req = request._get_current_object()
    body: FeedbackIn = FEEDBACK_IN.validate_input(req, "json")
    limit_text(body.comment)
    ext = current_app.extensions["tuneback"]

    def action(tx):
        vote, replaced = rawsql.record_vote(
            tx,
            completion_id=body.completion_id,
            rating=body.rating,
            reason=body.reason,
            comment=body.comment,
            user_ref=body.user,
            source=caller.role,
            api_key_id=caller.id,
        )
        ext.metrics.vote(body.rating, caller.role)
        return feedback_out(vote, replaced), 201

    # Without an Idempotency-Key the vote is one statement (see rawsql.record_vote).
    single = HEADER not in req.headers
    transaction = rawsql.engine_write(ext.engine, single_statement=single)
    return json_response(*run_write(transaction, action))

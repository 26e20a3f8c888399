"""Agents correct thumbs-down answers, working from the review queue."""

from __future__ import annotations

from apiflask import APIBlueprint
from flask import g

from feedback import lanes, rawsql, store
from feedback.auth import require
from feedback.context import request_session
from feedback.idempotency import run_write
from feedback.schemas import CorrectionIn, CorrectionOut, PageQuery, QueuePage
from feedback.views import NO_LANE, NOT_FOUND, completion_out, correction_out, json_response
from feedback.views.completions import limit_text

bp = APIBlueprint("corrections", __name__, tag="Corrections")


@bp.post("/v1/corrections")
@require("agent")
@bp.input(CorrectionIn, arg_name="body")
@bp.output(CorrectionOut, status_code=201)
@bp.doc(security="bearer", responses=NOT_FOUND)
def post_correction(body: CorrectionIn):
    """Store a corrected answer. It supersedes earlier corrections of the completion."""
    limit_text(body.corrected_response, body.note)

    def action(_tx):
        session = request_session()
        correction = store.add_correction(
            session,
            completion_id=body.completion_id,
            corrected_response=body.corrected_response,
            note=body.note,
            author=g.caller.name or f"key:{g.caller.id}",
        )
        g.metrics.corrections.inc(lane=store.get_completion(session, body.completion_id).lane)
        return correction_out(correction), 201

    return json_response(*run_write(rawsql.session_write(request_session()), action))


@bp.get("/v1/review-queue")
@require("agent")
@bp.input(PageQuery, location="query", arg_name="page")
@bp.output(QueuePage)
@bp.doc(security="bearer", responses=NO_LANE)
def review_queue(page: PageQuery):
    """Thumbs-down completions that have no correction yet, newest vote first (every
    lane's, or `?lane=NAME`'s only)."""
    if page.lane is not None:
        lanes.get_lane(request_session(), page.lane)  # 422 or 404 listing the lanes
    rows, total = store.review_queue(
        request_session(), limit=page.limit, offset=page.offset, lane=page.lane
    )
    items = [{**completion_out(c), "down_votes": n, "last_down_at": last} for c, n, last in rows]
    return {"items": items, "total": total, "limit": page.limit, "offset": page.offset}

"""The agents' review console: the thumbs-down queue, one answer to correct, the history."""

from __future__ import annotations

import json
from typing import Any

from flask import current_app, flash, redirect, request, url_for

from feedback import rawsql, store
from feedback.context import request_session
from feedback.exceptions import NotFoundError
from feedback.web.pages import (
    LaneChoiceError,
    chosen_lane,
    current_user,
    lane_names,
    page_blueprint,
    render,
    sign_in_required,
)
from feedback.web.queries import recent_corrections

bp = page_blueprint("review", __name__)
PAGE = 20
# The deepest page offset, as the API's /v1/review-queue allows (feedback.schemas.PageQuery):
# larger values are clamped, so no query string reaches the database as an integer it
# cannot hold (that was a 500).
MAX_OFFSET = 1_000_000


def message_text(content: Any) -> str:
    """A chat message's content as plain text (lists of parts are shown as JSON)."""
    return content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)


def last_user_message(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return message_text(message.get("content", ""))
    return ""


@bp.app_template_filter("message_text")
def _message_text_filter(content: Any) -> str:
    return message_text(content)


@bp.get("/review")
@sign_in_required("agent")
def queue():
    """Thumbs-down answers that nobody has corrected yet, newest vote first: every
    lane's, or ``?lane=NAME``'s only."""
    offset = min(max(request.args.get("offset", 0, type=int) or 0, 0), MAX_OFFSET)
    lane = chosen_lane(None)
    rows, total = store.review_queue(request_session(), limit=PAGE, offset=offset, lane=lane)
    items = [
        {"completion": c, "down_votes": n, "last_down_at": last,
         "question": last_user_message(c.messages)}
        for c, n, last in rows
    ]  # fmt: skip
    return render("review_queue.html", items=items, total=total, offset=offset, page=PAGE,
                  lane=lane, lanes=lane_names())  # fmt: skip


@bp.get("/review/<completion_id>")
@sign_in_required("agent")
def item(completion_id: str):
    """One answer: the conversation, its votes and comments, its corrections, the form.

    The form is prefilled with the answer itself, never with text from the URL: a link
    must not be able to plant training text that an agent only has to save.
    """
    if not store.could_be_id(completion_id):
        return _no_such_answer()
    try:
        completion, votes, fixes = store.completion_detail(request_session(), completion_id)
    except NotFoundError:
        return _no_such_answer()
    return render(
        "review_item.html",
        completion=completion,
        votes=votes,
        corrections=list(reversed(fixes)),
        back_lane=_back_lane(),
    )


@bp.post("/review/<completion_id>")
@sign_in_required("agent")
def correct(completion_id: str):
    """Store the corrected answer, then go back to the queue (the item has left it)."""
    if not store.could_be_id(completion_id):
        return _no_such_answer()
    text = request.form.get("corrected_response", "")
    note = request.form.get("note", "").strip() or None
    problem = _check_text(text, note)
    back = _back_lane()
    if problem:
        flash(problem, "error")
        return redirect(url_for("review.item", completion_id=completion_id, lane=back), code=303)
    session = request_session()
    try:
        with rawsql.session_write(session):
            store.add_correction(
                session,
                completion_id=completion_id,
                corrected_response=text,
                note=note,
                author=current_user().actor,
            )
    except NotFoundError:
        return _no_such_answer()
    lane = store.get_completion(session, completion_id).lane
    current_app.extensions["tuneback"].metrics.corrections.inc(lane=lane)
    flash("Correction saved; the answer has left the queue.", "ok")
    return redirect(url_for("review.queue", lane=back), code=303)


def _back_lane() -> str | None:
    """The lane filter of the queue the agent came from, kept through the item page so
    that saving returns to the same filtered queue (a bad one is dropped, not refused:
    it only decides where the next page goes)."""
    try:
        return chosen_lane(None)
    except LaneChoiceError:
        return None


def _no_such_answer() -> tuple[str, int]:
    return render("forbidden.html", status=404, message="No such answer.")


def _check_text(text: str, note: str | None) -> str | None:
    """What is wrong with a submitted correction, in words, or None."""
    limit = current_app.extensions["tuneback"].settings.max_text_chars
    if not text.strip():
        return "The corrected answer is empty."
    if len(text) > limit or (note and len(note) > limit):
        return f"Texts may hold at most {limit} characters."
    if "\x00" in text or (note and "\x00" in note):
        return "Texts may not contain NUL characters."
    return None


@bp.get("/review/history")
@sign_in_required("agent")
def history():
    """The latest corrections, by whom, and whether a later one superseded them: every
    lane's, or ``?lane=NAME``'s only."""
    lane = chosen_lane(None)
    rows = recent_corrections(request_session(), limit=50, lane=lane)
    return render("review_history.html", rows=rows, lane=lane, lanes=lane_names())

"""One blueprint per resource of the feedback API."""

from __future__ import annotations

import json
from collections.abc import Callable

from flask import Response, current_app

from feedback.models import Completion, Correction, Feedback
from feedback.schemas import CompletionOut, CorrectionOut

ERRORS = {
    400: "The body is not valid JSON",
    401: "Missing, malformed, unknown or revoked API key",
    403: "The key's role or origin may not do this",
    413: "The body is larger than the server accepts",
    # Over-long request lines are refused by gunicorn itself, before Tuneback.
    414: {
        "description": "The URL is too long (answered by the HTTP server)",
        "content": {"text/html": {"schema": {"type": "string"}}},
    },
    415: "Unsupported media type",
    429: "Rate limit exceeded; see Retry-After",
}
NOT_FOUND = {**ERRORS, 404: "No such completion"}
NO_LANE = {**ERRORS, 404: "No such lane (`lane_not_found`, listing the lanes)"}


def completion_out(c: Completion) -> dict:
    return CompletionOut(
        id=c.id,
        created_at=c.created_at,
        messages=c.messages,
        response=c.response,
        model=c.model,
        adapter_version=c.adapter_version,
        metadata=c.meta,
        lane=c.lane,
    ).model_dump(mode="json")


def feedback_out(f: Feedback | dict, replaced: bool = False) -> dict:
    # Built by hand rather than through FeedbackOut: this is on the vote path.
    f = f if isinstance(f, dict) else f.model_dump()
    return {
        "id": f["id"],
        "completion_id": f["completion_id"],
        "rating": f["rating"],
        "reason": f["reason"],
        "comment": f["comment"],
        "source": f["source"],
        "user": f["user_ref"],
        "created_at": f["created_at"].isoformat(),
        "updated_at": f["updated_at"].isoformat(),
        "replaced": replaced,
        "verified": f["verified"],
    }


def documented_as(doc_view: Callable) -> Callable[[Callable], Callable]:
    """Serve a view as it is, documented in the OpenAPI spec like ``doc_view``.

    ``doc_view`` carries APIFlask's ``@bp.input``/``@bp.output``/``@bp.doc``
    decorators only for the spec, which APIFlask builds from the routed
    view's ``_spec`` and docstring. The routed view skips their per-request
    wrappers and so must do their work itself (see ``ratings.post_feedback``).
    """

    def decorator(view: Callable) -> Callable:
        view._spec = doc_view._spec  # type: ignore[attr-defined]
        view.__doc__ = doc_view.__doc__
        return view

    return decorator


# What json.dumps(body, ensure_ascii=False) does, without building an encoder per call.
_encode_json = json.JSONEncoder(ensure_ascii=False).encode


def json_response(body: dict, status: int = 200, headers: dict | None = None) -> Response:
    """A ready response, so ``@bp.output`` documents the body without re-serialising it."""
    response = current_app.response_class(
        _encode_json(body), status=status, mimetype="application/json"
    )
    if headers:
        response.headers.update(headers)
    return response


def correction_out(c: Correction) -> dict:
    return CorrectionOut.model_validate(c, from_attributes=True).model_dump(mode="json")

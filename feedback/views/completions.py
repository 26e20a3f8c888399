"""Chat systems log the completions they served; agents read them back.

Logging has its own path, ``POST /v1/logged_completions``. ``POST /v1/completions``
is OpenAI's legacy text-completions path on the same server as the chat endpoint:
it still logs a completion body for a deprecation period (with a ``Deprecation``
header naming the new path), and answers an OpenAI text-completion request
(``prompt``) with an error that says what to use instead of a 422 about fields.
"""

from __future__ import annotations

from apiflask import APIBlueprint
from flask import Response, g, request

from feedback import lanes, rawsql, store
from feedback.auth import require
from feedback.context import request_session
from feedback.exceptions import TunebackError
from feedback.idempotency import run_write
from feedback.schemas import CompletionDetail, CompletionIn, Created
from feedback.views import (
    NO_LANE,
    NOT_FOUND,
    completion_out,
    correction_out,
    feedback_out,
    json_response,
)

bp = APIBlueprint("completions", __name__, tag="Completions")
LOG_PATH, LEGACY_PATH = "/v1/logged_completions", "/v1/completions"


class LegacyCompletionError(TunebackError, LookupError):
    """An OpenAI text-completion request (``prompt``) on the legacy path."""

    code, status = "unsupported_endpoint", 404


@bp.before_request
def _refuse_text_completions() -> None:
    """OpenAI clients' ``completions.create(prompt=...)`` gets an answer that names what
    to use, before key checks and body validation (it leaks nothing either way)."""
    if request.endpoint != "completions.log_completion_deprecated":
        return
    body = request.get_json(silent=True)
    if isinstance(body, dict) and "prompt" in body and "response" not in body:
        raise LegacyCompletionError(
            "legacy text completions (prompt) are not served here: ask the model with "
            f"POST /v1/chat/completions; to log a completion a chat system served, "
            f"POST {LOG_PATH}"
        )


@bp.post(LOG_PATH)
@require("server")
@bp.input(CompletionIn, arg_name="body")
@bp.output(Created, status_code=201)
@bp.doc(security="bearer", responses=NO_LANE)
def log_completion(body: CompletionIn):
    """Log a completion served by a chat system, so that it can be rated."""
    return _log(body)


@bp.post(LEGACY_PATH)
@require("server")
@bp.input(CompletionIn, arg_name="body")
@bp.output(Created, status_code=201)
@bp.doc(security="bearer", responses=NO_LANE, deprecated=True)
def log_completion_deprecated(body: CompletionIn):
    """Deprecated: the same as ``POST /v1/logged_completions``, which replaces it."""
    response: Response = _log(body)
    response.headers["Deprecation"] = "true"
    response.headers["Link"] = f'<{LOG_PATH}>; rel="successor-version"'
    return response


def _log(body: CompletionIn) -> Response:
    limit_text(body.response)

    def action(_tx):
        lanes.get_lane(request_session(), body.lane)  # 422 or 404, before anything is written
        completion = store.create_completion(
            request_session(),
            messages=[m.model_dump(exclude_none=True) for m in body.messages],
            response=body.response,
            model=body.model,
            adapter_version=body.adapter_version,
            metadata=body.metadata,
            api_key_id=g.caller.id,
            lane=body.lane,
        )
        g.metrics.completions.inc(lane=completion.lane)
        return {"id": completion.id}, 201

    return json_response(*run_write(rawsql.session_write(request_session()), action))


@bp.get("/v1/completions/<completion_id>")
@require("agent")
@bp.output(CompletionDetail)
@bp.doc(security="bearer", responses=NOT_FOUND)
def get_completion(completion_id: str):
    """A completion with all its votes and corrections."""
    completion, votes, fixes = store.completion_detail(request_session(), completion_id)
    return {
        **completion_out(completion),
        "feedback": [feedback_out(v) for v in votes],
        "corrections": [correction_out(c) for c in fixes],
    }


def limit_text(*values: str | None) -> None:
    """Apply the deployment's ``max_text_chars`` on top of the schema's ceiling."""
    from flask import current_app

    from feedback.exceptions import InvalidInputError

    limit = current_app.extensions["tuneback"].settings.max_text_chars
    for value in values:
        if value is not None and len(value) > limit:
            raise InvalidInputError(f"text fields may hold at most {limit} characters")

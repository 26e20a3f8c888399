"""The OpenAI-compatible routes: ``POST /v1/chat/completions``, ``GET /v1/models``.

Routes stay thin: validate the body, hand it to the backend (the local model,
or the capture proxy), answer JSON or server-sent events. ``model`` names a
lane (see :mod:`serve.local`); the capture proxy takes its lane from the
``X-Tuneback-Lane`` header or ``TUNEBACK_UPSTREAM_LANES`` (:mod:`serve.proxy`). Callers use a
``server`` (or ``admin``) key as their OpenAI API key.
"""

from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint
from flask import Response, current_app, g, request

from feedback.auth import require
from feedback.views import ERRORS, json_response
from serve.responses import Call
from serve.schemas import ModelNotFoundError, parse_chat_request

bp = APIBlueprint("chat", __name__, tag="Chat")
SERVE_EXTENSION = "tuneback_serve"
LANE_HEADER = "X-Tuneback-Lane"  # the capture proxy's lane for a logged completion
CHAT_ERRORS = {
    **ERRORS,
    400: "Malformed request: wrong types, unknown fields, empty messages, or a prompt "
    "over the context length",
    404: "Unknown model (the message lists the lanes), or, in capture-proxy mode, unknown lane",
    422: "In capture-proxy mode: an X-Tuneback-Lane header that is not a lane name",
    503: "The request queue is full or the answer took too long; see Retry-After",
}


def backend() -> Any:
    return current_app.extensions[SERVE_EXTENSION]


@bp.post("/v1/chat/completions")
@require("server")
@bp.doc(security="bearer", responses=CHAT_ERRORS)
def chat_completions():
    """Generate a chat completion (OpenAI's API); it is logged, and its id can be voted on."""
    chat = parse_chat_request(request.get_json())
    ext = current_app.extensions["tuneback"]
    call = Call(
        sql=ext.engine,
        api_key_id=g.caller.id,
        model=chat.model,
        metrics=ext.metrics,
        lane_header=request.headers.get(LANE_HEADER),
    )
    if chat.stream:
        events = backend().start_stream(chat, call)
        return Response(
            events,
            mimetype="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    return json_response(backend().complete(chat, call))


@bp.get("/v1/models")
@require("server")
@bp.doc(security="bearer", responses=ERRORS)
def list_models():
    """The models chat requests may name: every lane (``default`` first, with the adapter
    version it serves) and the base model; in capture-proxy mode, the upstream's."""
    return json_response({"object": "list", "data": backend().models()})


@bp.get("/v1/models/<path:model_id>")
@require("server")
@bp.doc(security="bearer", responses={**ERRORS, 404: "Unknown model"})
def get_model(model_id: str):
    """One model of :func:`list_models`."""
    for model in backend().models():
        if model["id"] == model_id:
            return json_response(model)
    raise ModelNotFoundError(f"model {model_id!r} does not exist")


@bp.get("/v1/serving")
@require("admin")
@bp.doc(security="bearer", responses=ERRORS)
def serving_status():
    """For operators: what each lane serves (and whether it is in memory), the adapters
    loaded, merge state, queue depth, swap counts."""
    return json_response(backend().status())

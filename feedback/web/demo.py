"""The demo chat page of ``tuneback up``: talk to the served model, rate each answer.

A page must not carry a server key, so the browser never sees one: the page posts
to ``/demo/chat`` (same origin, with the session's CSRF token) and the server
answers with the served model in-process. The composition root only wires this
(:attr:`WebHooks.demo_chat`) when the server listens on loopback, where anyone who
can open the page could also read the data dir. Each answer carries the widget with
a public widget key that allows only the page's own origins.
"""

from __future__ import annotations

from typing import Any

from flask import Response, abort, request

from feedback.exceptions import InvalidInputError
from feedback.web.hooks import hooks
from feedback.web.pages import page_blueprint, render

bp = page_blueprint("demo", __name__)
MAX_TURNS = 40
ROLES = ("user", "assistant")


@bp.get("/")
def page():
    if hooks().demo_chat is None:
        abort(404)
    return render("demo.html", widget_key=hooks().demo_widget_key)


@bp.post("/demo/chat")
def chat():
    """``{"messages": [...]}`` -> the answer as server-sent events (OpenAI chunks), so the
    page shows it as it is generated; the completion is logged before ``[DONE]``."""
    action = hooks().demo_chat
    if action is None:
        abort(404)
    events = action(_messages(request.get_json(silent=True)))
    return Response(
        events,
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _messages(body: Any) -> list[dict[str, str]]:
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not 0 < len(messages) <= MAX_TURNS:
        raise InvalidInputError(f"messages must be a list of 1 to {MAX_TURNS} chat messages")
    out = []
    for message in messages:
        if (
            not isinstance(message, dict)
            or message.get("role") not in ROLES
            or not isinstance(message.get("content"), str)
            or not message["content"].strip()
        ):
            raise InvalidInputError("each message needs a role (user or assistant) and text")
        out.append({"role": message["role"], "content": message["content"]})
    return out

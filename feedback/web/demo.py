"""The demo chat page of ``tuneback up``: talk to the served model, rate each answer.

A page must not carry a server key, so the browser never sees one: the page posts
to ``/demo/chat`` (same origin, with the session's CSRF token) and the server
answers with the served model in-process. The composition root only wires this
(:attr:`WebHooks.demo_chat`) when the server listens on loopback, where anyone who
can open the page could also read the data dir, and the page answers only requests
whose ``Host`` is a loopback name (:attr:`WebHooks.demo_hosts`). Each answer carries
the widget with a public widget key that allows only the page's own origins.
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


@bp.before_request
def only_on_loopback_names():  # noqa: ANN201 - a refusal page, or None to go on
    """Answer only where the demo is wired, and only to a loopback ``Host``.

    A foreign page can point its own name at 127.0.0.1 (DNS rebinding): the browser
    then treats this server as that page's origin and would let it read the page's
    CSRF token and chat without any key. Its requests still carry its own name in
    ``Host``, so they are refused here, before any model call.
    """
    web = hooks()
    if web.demo_chat is None:
        abort(404)
    if request.host.lower() not in web.demo_hosts:
        return render(
            "forbidden.html",
            status=403,
            message="The demo chat answers only on this machine's loopback address.",
        )
    return None


@bp.get("/")
def page():
    return render("demo.html", widget_key=hooks().demo_widget_key)


@bp.post("/demo/chat")
def chat():
    """``{"messages": [...]}`` -> the answer as server-sent events (OpenAI chunks), so the
    page shows it as it is generated; the completion is logged before ``[DONE]``."""
    events = hooks().demo_chat(_messages(request.get_json(silent=True)))
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

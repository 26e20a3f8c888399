"""CORS for browser widgets: only the origins that API keys allow get answers.

A preflight carries no key, so it is answered for any origin that some active
key allows; the real request is then checked against its own key's origins
(``auth.current_caller``) and only an allowed origin is echoed back.
"""

from __future__ import annotations

import time

from flask import Response, current_app, g, request

from feedback import store
from feedback.context import request_session

ALLOWED_HEADERS = "Authorization, Content-Type, Idempotency-Key"
EXPOSED_HEADERS = "Retry-After, Idempotent-Replayed"


class OriginCache:
    def __init__(self, ttl: float) -> None:
        self.ttl, self._expires, self._origins = ttl, 0.0, frozenset()

    def get(self) -> frozenset[str]:
        now = time.monotonic()
        if now >= self._expires or self.ttl <= 0:
            self._origins = frozenset(store.all_allowed_origins(request_session()))
            self._expires = now + self.ttl
        return self._origins


def preflight() -> Response | None:
    """Answer CORS preflight requests before routing, auth or rate limits."""
    if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
        return None
    origin = (request.headers.get("Origin") or "").lower()
    response = current_app.make_default_options_response()
    response.status_code = 204
    if origin and origin in current_app.extensions["tuneback"].origins.get():
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
        response.headers["Access-Control-Max-Age"] = "600"
    response.headers["Vary"] = "Origin"
    return response


def add_cors_headers(response: Response) -> Response:
    origin = (request.headers.get("Origin") or "").lower()
    caller = g.get("caller")
    if origin and caller is not None and origin in caller.allowed_origins:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        response.headers.add("Vary", "Origin")
    return response

"""CORS for browser widgets: only the origins that API keys allow get answers.

A preflight carries no key, so it is answered for any origin that some active
key allows; the real request is then checked against its own key's origins
(``auth.current_caller``) and only an allowed origin is echoed back.
"""

from __future__ import annotations

import time

from flask import Request, Response, current_app

from feedback import store
from feedback.auth import Caller
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


def preflight(req: Request, origins: OriginCache) -> Response | None:
    """Answer CORS preflight requests before routing, auth or rate limits."""
    if req.method != "OPTIONS" or "Access-Control-Request-Method" not in req.headers:
        return None
    origin = (req.headers.get("Origin") or "").lower()
    response = current_app.make_default_options_response()
    response.status_code = 204
    if origin and origin in origins.get():
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
        response.headers["Access-Control-Max-Age"] = "600"
    response.headers["Vary"] = "Origin"
    return response


def add_cors_headers(req: Request, caller: Caller | None, response: Response) -> Response:
    """Echo the request's origin when ``caller``'s key allows it."""
    if caller is None or not caller.allowed_origins:
        return response  # most calls: server and agent keys allow no origin
    origin = (req.headers.get("Origin") or "").lower()
    if origin and origin in caller.allowed_origins:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        response.headers.add("Vary", "Origin")
    return response

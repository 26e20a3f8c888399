"""API keys on requests: who is calling, with which role, from which origin.

``load_key`` runs before every request (before rate limiting, so limits count
per key); ``require`` guards each endpoint. Widget keys are public and work
only from their allowed browser origins; ``admin`` may do everything.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import Request, g, request

from feedback import store
from feedback.context import request_session
from feedback.exceptions import AuthenticationError, ForbiddenError

if TYPE_CHECKING:
    from flask.ctx import _AppCtxGlobals


@dataclass(frozen=True)
class Caller:
    """The authenticated key of a request, detached from any session."""

    id: str
    role: str
    name: str | None
    allowed_origins: tuple[str, ...]


class KeyCache:
    """A small per-worker TTL cache so a hot key costs no query per request."""

    def __init__(self, ttl: float, max_size: int = 10_000) -> None:
        self.ttl, self.max_size = ttl, max_size
        self._items: dict[str, tuple[float, Caller | None]] = {}
        self._lock = threading.Lock()

    def get(self, token: str, load: Callable[[], Caller | None]) -> Caller | None:
        if self.ttl <= 0:
            return load()
        now = time.monotonic()
        hit = self._items.get(token)
        if hit and hit[0] > now:
            return hit[1]
        caller = load()
        with self._lock:
            if len(self._items) >= self.max_size:
                self._items.clear()
            self._items[token] = (now + self.ttl, caller)
        return caller


def _lookup(token: str) -> Caller | None:
    key = store.find_active_key(request_session(), token)
    if key is None:
        return None
    return Caller(key.id, key.role, key.name, tuple(key.allowed_origins or ()))


def load_key(req: Request, ctx: _AppCtxGlobals, cache: KeyCache) -> Caller | None:
    """Resolve the bearer key of ``req``, if any, onto ``g.caller`` (None when absent or bad).

    Takes the request, ``g`` and the cache as arguments because it runs on
    every request: each access through Flask's ``request``/``g`` proxies costs.
    """
    caller, problem = None, "missing"
    header = req.headers.get("Authorization")
    if header:
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > 200:
            problem = "malformed"
        else:
            caller = cache.get(token, lambda: _lookup(token))
            problem = None if caller else "invalid"
    ctx.caller, ctx.auth_problem = caller, problem
    return caller


def current_caller(*roles: str) -> Caller:
    """The caller, checked against ``roles`` (admin always passes) and origin."""
    ctx = g._get_current_object()
    caller: Caller | None = ctx.get("caller")
    if caller is None:
        problem = ctx.get("auth_problem", "missing")
        if problem == "missing":
            raise AuthenticationError("an API key is required: Authorization: Bearer <key>")
        raise AuthenticationError("the API key is malformed, unknown or revoked")
    if caller.role != "admin" and caller.role not in roles:
        raise ForbiddenError(f"a {caller.role} key may not do this (needs {' or '.join(roles)})")
    if caller.role == "widget" and not origin_allowed(request, caller):
        origin = request.headers.get("Origin")
        raise ForbiddenError(f"origin {origin or '(none)'} is not allowed for this widget key")
    return caller


def origin_allowed(req: Request, caller: Caller) -> bool:
    """Whether ``req`` comes from a browser origin ``caller``'s key allows."""
    origin = req.headers.get("Origin")
    return origin is not None and origin.lower() in caller.allowed_origins


def require(*roles: str) -> Callable:
    """Decorator: the endpoint needs a key with one of ``roles``."""

    def decorator(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            current_caller(*roles)
            return view(*args, **kwargs)

        return wrapper

    return decorator

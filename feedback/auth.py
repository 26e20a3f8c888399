"""API keys on requests: who is calling, with which role, from which origin.

``load_key`` runs before every request (before rate limiting, so limits count
per key); ``require`` guards each endpoint. Widget keys are public and work
only from their allowed browser origins; ``admin`` may do everything.

A public key cannot say who an end user is, so a widget vote is a verified
user's only with a signed vote token: an HMAC, under a key derived from the
server's secret, over (completion id, user, expiry), minted for a server key by
``POST /v1/vote-tokens`` (:func:`mint_vote_token`, :func:`read_vote_token`). An
unverified vote's answer carries a token of the same kind for that one vote.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import Request, current_app, g, request

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


# --- signed vote tokens -------------------------------------------------------------

TOKEN_PREFIX = "tbv1"


@dataclass(frozen=True)
class VoteToken:
    """What a valid vote token says. A user token (``POST /v1/vote-tokens``): ``user``
    may vote on ``completion_id``. A vote's own token (the answer to an unverified
    vote): its holder may change vote ``vote_id``, which claims ``user``. Both until
    ``expires``."""

    completion_id: str
    user: str | None
    expires: int  # Unix seconds
    vote_id: str | None = None


@functools.lru_cache(maxsize=4)
def _token_key(secret: str) -> bytes:
    # Its own key, derived from the server's secret: a token is never a valid cookie.
    return hashlib.sha256(b"tuneback vote token v1\x00" + secret.encode()).digest()


def _sign(secret: str, signed: str) -> bytes:
    return hmac.new(_token_key(secret), signed.encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def server_secret() -> str:
    """The app's signing secret (``TUNEBACK_SECRET_KEY`` or the data dir's key file)."""
    secret = current_app.secret_key
    if not secret:
        raise RuntimeError("the app has no secret key to sign vote tokens with")
    return str(secret)


def mint_vote_token(
    secret: str, *, completion_id: str, user: str | None, expires: int, vote_id: str | None = None
) -> str:
    """``tbv1.<payload>.<signature>``: the payload is base64url JSON, readable by anyone,
    changeable by no one without ``secret``."""
    claims = [completion_id, user, expires, vote_id]
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    return f"{TOKEN_PREFIX}.{payload}.{_b64(_sign(secret, f'{TOKEN_PREFIX}.{payload}'))}"


def read_vote_token(secret: str, token: str, *, now: float | None = None) -> VoteToken:
    """The token's claims, if its signature is ours and it has not expired; else 403."""
    signed, _, signature = token.rpartition(".")
    prefix, _, payload = signed.partition(".")
    claims = None
    try:
        valid = prefix == TOKEN_PREFIX and hmac.compare_digest(
            _sign(secret, signed), _unb64(signature)
        )
        claims = json.loads(_unb64(payload)) if valid else None
    except (ValueError, binascii.Error):
        valid = False
    if not valid or not _claims_ok(claims):
        raise ForbiddenError("the vote token is not valid")
    completion_id, user, expires, vote_id = claims
    if expires <= (time.time() if now is None else now):
        raise ForbiddenError("the vote token has expired; ask the chat page for a new one")
    return VoteToken(completion_id, user, expires, vote_id)


def _claims_ok(claims: object) -> bool:
    if not isinstance(claims, list) or len(claims) != 4:
        return False
    completion_id, user, expires, vote_id = claims
    return (
        isinstance(completion_id, str)
        and type(expires) is int
        # A user token names its user; a vote's token names the vote (its user may be none).
        and (isinstance(user, str) if vote_id is None else isinstance(vote_id, str))
        and (user is None or isinstance(user, str))
    )

"""Domain errors. Each carries a stable machine-readable ``code`` and the HTTP
status the API answers with; they subclass built-ins so callers outside the
API can catch them naturally (``except LookupError``)."""

from __future__ import annotations


class TunebackError(Exception):
    """Base of every error Tuneback raises on purpose."""

    code = "error"
    status = 400

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code


class InvalidInputError(TunebackError, ValueError):
    code, status = "invalid_input", 422


class NotFoundError(TunebackError, LookupError):
    code, status = "not_found", 404


class AuthenticationError(TunebackError, PermissionError):
    code, status = "unauthorized", 401


class ForbiddenError(TunebackError, PermissionError):
    code, status = "forbidden", 403


class IdempotencyKeyReusedError(TunebackError, ValueError):
    code, status = "idempotency_key_reused", 422


class ConflictError(TunebackError, RuntimeError):
    code, status = "conflict", 409

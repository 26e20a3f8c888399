"""Safe retries: an ``Idempotency-Key`` header makes a POST happen at most once.

The key is claimed by inserting its record in the same transaction as the
write it guards. A concurrent retry blocks on that row (PostgreSQL) or on the
write lock (SQLite), then finds the committed record and replays the first
answer. Errors are not recorded: a rejected request leaves no row behind and
may be retried with the same key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from flask import g, request
from sqlalchemy.exc import IntegrityError

from feedback import store
from feedback.db import begin_write
from feedback.exceptions import IdempotencyKeyReusedError, InvalidInputError
from feedback.models import IdempotencyRecord

HEADER = "Idempotency-Key"
Action = Callable[[], tuple[dict[str, Any], int]]


def _fingerprint() -> str:
    body = request.get_json(silent=True)
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{request.method} {request.path}\n{canonical}".encode()).hexdigest()


def _replay(record: IdempotencyRecord, fingerprint: str) -> tuple[dict[str, Any], int, dict]:
    if record.request_hash != fingerprint:
        raise IdempotencyKeyReusedError(
            f"Idempotency-Key {record.key!r} was already used with a different request"
        )
    return json.loads(record.response_body), record.status_code, {"Idempotent-Replayed": "true"}


def _header_key() -> str | None:
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not key.strip() or len(key) > 255 or not key.isprintable() or not key.isascii():
        raise InvalidInputError(f"{HEADER} must be 1 to 255 printable ASCII characters")
    return key


def run_write(action: Action) -> tuple[dict[str, Any], int, dict]:
    """Run ``action`` in one write transaction, honouring an Idempotency-Key."""
    session = g.db
    key = _header_key()
    begin_write(session)
    if key is None:
        body, status = action()
        session.commit()
        return body, status, {}
    owner, fingerprint = g.caller.id, _fingerprint()
    existing = store.get_idempotency_record(session, api_key_id=owner, key=key)
    if existing is not None:
        session.rollback()
        return _replay(existing, fingerprint)
    try:
        record = store.claim_idempotency_key(
            session, api_key_id=owner, key=key, request_hash=fingerprint
        )
    except IntegrityError:
        # Another request with this key committed first: answer as it did.
        session.rollback()
        existing = store.get_idempotency_record(session, api_key_id=owner, key=key)
        session.rollback()
        return _replay(existing, fingerprint)
    body, status = action()
    record.status_code, record.response_body = status, json.dumps(body, default=str)
    session.commit()
    return body, status, {}

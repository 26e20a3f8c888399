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
from contextlib import AbstractContextManager
from typing import Any

from flask import g, request

from feedback import rawsql, writer
from feedback.exceptions import ConflictError, IdempotencyKeyReusedError, InvalidInputError

HEADER = "Idempotency-Key"
Action = Callable[[rawsql.RawTx], tuple[dict[str, Any], int]]


def _fingerprint() -> str:
    body = request.get_json(silent=True)
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{request.method} {request.path}\n{canonical}".encode()).hexdigest()


def _header_key() -> str | None:
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not key.strip() or len(key) > 255 or not key.isprintable() or not key.isascii():
        raise InvalidInputError(f"{HEADER} must be 1 to 255 printable ASCII characters")
    return key


def run_write(
    transaction: AbstractContextManager[rawsql.RawTx], action: Action
) -> tuple[dict[str, Any], int, dict]:
    """Run ``action`` in ``transaction``, honouring an Idempotency-Key.

    Returns the body, the status and extra headers of the answer.
    """
    key = _header_key()
    if key is None:
        body, status = writer.run(transaction, action)
        return body, status, {}
    owner, fingerprint = g.caller.id, _fingerprint()

    def claim_and_act(tx: rawsql.RawTx) -> tuple[bool, Any]:
        # A job of feedback.writer: on SQLite it runs on the group-commit thread.
        if rawsql.claim_key(tx, api_key_id=owner, key=key, request_hash=fingerprint):
            body, status = action(tx)
            text = json.dumps(body, default=str)
            rawsql.complete_key(tx, api_key_id=owner, key=key, status=status, body=text)
            return True, (body, status)
        return False, rawsql.get_key(tx, api_key_id=owner, key=key)

    claimed, result = writer.run(transaction, claim_and_act)
    if claimed:
        return *result, {}
    stored = result
    if stored is None:  # claimed and released in between: vanishingly rare
        raise ConflictError("a request with this Idempotency-Key is in flight; retry")
    stored_hash, stored_status, stored_body = stored
    if stored_hash != fingerprint:
        raise IdempotencyKeyReusedError(
            f"Idempotency-Key {key!r} was already used with a different request"
        )
    return json.loads(stored_body), stored_status, {"Idempotent-Replayed": "true"}

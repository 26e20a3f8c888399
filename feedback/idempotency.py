"""Safe retries: an ``Idempotency-Key`` header makes a POST happen at most once.

The key is claimed by inserting its record in the same transaction as the
write it guards. A concurrent retry blocks on that row (PostgreSQL) or on the
write lock (SQLite), then finds the committed record and replays the first
answer. Errors are not recorded: a rejected request leaves no row behind and
may be retried with the same key.

A record holds a hash of the request and the answer's status. Where the route
gives a :class:`Replay`, it keeps only what that needs (a vote's id, not its
comment) and the answer is rebuilt from the stored row; otherwise the answer
itself is kept. Records live ``TUNEBACK_IDEMPOTENCY_HOURS``: every
``PRUNE_EVERY``-th claim in a process deletes up to ``PRUNE_BATCH`` expired
ones, after its own write has committed, so no request does unbounded work.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from flask import current_app, g, request

from feedback import rawsql, writer
from feedback.exceptions import ConflictError, IdempotencyKeyReusedError, InvalidInputError
from feedback.models import utcnow

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
Action = Callable[[rawsql.RawTx], tuple[dict[str, Any], int]]
# Each pruning claim may delete PRUNE_BATCH records: more than the PRUNE_EVERY
# claims in between add, so expired records never pile up.
PRUNE_EVERY, PRUNE_BATCH = 20, 100
_claims = itertools.count()
KEPT = "_replay"  # marks a stored answer kept by a Replay, not the answer itself


@dataclass(frozen=True)
class Replay:
    """How a route's answer is kept small: ``keep`` picks what to store (JSON-able),
    ``restore`` rebuilds the answer from it and the stored rows, in a transaction."""

    keep: Callable[[dict[str, Any]], dict[str, Any]]
    restore: Callable[[rawsql.RawTx, dict[str, Any]], dict[str, Any]]


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
    transaction: AbstractContextManager[rawsql.RawTx],
    action: Action,
    replay: Replay | None = None,
) -> tuple[dict[str, Any], int, dict]:
    """Run ``action`` in ``transaction``, honouring an Idempotency-Key.

    Returns the body, the status and extra headers of the answer.
    """
    key = _header_key()
    if key is None:
        body, status = writer.run(transaction, action)
        return body, status, {}
    owner, fingerprint = g.caller.id, _fingerprint()

    def claim_and_act(tx: rawsql.RawTx) -> tuple[bool, Any, Any, Any]:
        # A job of feedback.writer: on SQLite it runs on the group-commit thread.
        if rawsql.claim_key(tx, api_key_id=owner, key=key, request_hash=fingerprint):
            body, status = action(tx)
            kept = body if replay is None else {KEPT: replay.keep(body)}
            text = json.dumps(kept, default=str)
            rawsql.complete_key(tx, api_key_id=owner, key=key, status=status, body=text)
            return True, None, body, status
        stored = rawsql.get_key(tx, api_key_id=owner, key=key)
        if stored is not None and stored[0] == fingerprint:
            return False, stored, *_replayed(tx, stored, replay)
        return False, stored, None, None

    claimed, stored, body, status = writer.run(transaction, claim_and_act)
    if claimed:
        _maybe_prune()
        return body, status, {}
    if stored is None:  # claimed and released in between: vanishingly rare
        raise ConflictError("a request with this Idempotency-Key is in flight; retry")
    if stored[0] != fingerprint:
        raise IdempotencyKeyReusedError(
            f"Idempotency-Key {key!r} was already used with a different request"
        )
    return body, status, {"Idempotent-Replayed": "true"}


def _replayed(
    tx: rawsql.RawTx, stored: tuple[str, int, str], replay: Replay | None
) -> tuple[dict[str, Any], int]:
    _, status, text = stored
    body = json.loads(text)
    if replay is not None and isinstance(body, dict) and KEPT in body:
        body = replay.restore(tx, body[KEPT])
    return body, status  # a full answer (other routes, or a record from before Replay)


def _maybe_prune() -> None:
    """Every ``PRUNE_EVERY``-th claim: delete up to ``PRUNE_BATCH`` expired records, in a
    transaction of its own. It must not fail the request that has already committed."""
    if next(_claims) % PRUNE_EVERY:
        return
    ext = current_app.extensions["tuneback"]
    before = utcnow() - timedelta(hours=ext.settings.idempotency_hours)
    try:
        with rawsql.engine_write(ext.engine) as tx:
            rawsql.prune_keys(tx, before=before, limit=PRUNE_BATCH)
    except Exception:  # noqa: BLE001
        log.warning("pruning expired idempotency records failed; the next claims retry")

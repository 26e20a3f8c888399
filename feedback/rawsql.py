"""The hot write path: hand-written SQL on a raw DB-API connection.

A vote is the most frequent write Tuneback takes, and the ORM costs several
times what SQLite itself does per insert. So votes and idempotency records are
written with a few fixed statements that both SQLite and PostgreSQL accept
(``INSERT ... ON CONFLICT``, ``RETURNING``), executed on the raw driver
connection: a pooled one on PostgreSQL, this process's writer connection on
SQLite (:class:`SQLiteWriter`). Everything else uses the ORM.

The statements use ``?`` placeholders; they are rewritten once for psycopg.
Timestamps pass through the models' own column type (:class:`UTCDateTime`)
both ways, so these rows hold exactly what the ORM would have written, and
what the raw driver returns is read as the ORM would read it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from datetime import datetime
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import Engine, event
from sqlalchemy.orm import Session

from feedback.db import begin_write
from feedback.exceptions import NotFoundError
from feedback.models import new_id, utcnow
from feedback.types import UTCDateTime

log = logging.getLogger(__name__)

_VOTE_INSERT = (
    "INSERT INTO feedback (id, completion_id, rating, reason, comment, source, user_ref,"
    " api_key_id, verified, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# The lane of the voted completion (for the lane-labelled vote counter), read in the
# same statement: one more lookup of the primary key the foreign key check just read.
_VOTE_LANE = "(SELECT lane FROM completion WHERE completion.id = feedback.completion_id)"
# A verified vote replaces the same user's verified vote from the same source (the
# partial unique index uq_feedback_verified_user); an unverified one is always a new row.
VOTE_UPSERT = (
    _VOTE_INSERT + " ON CONFLICT (completion_id, source, user_ref) WHERE verified"
    " DO UPDATE SET rating = excluded.rating, reason = excluded.reason,"
    " comment = excluded.comment, api_key_id = excluded.api_key_id,"
    " updated_at = excluded.updated_at RETURNING id, created_at, " + _VOTE_LANE
)
VOTE_INSERT = _VOTE_INSERT + " RETURNING id, created_at, " + _VOTE_LANE
# The order of VOTE_UPSERT's values, timestamps aside.
VOTE_COLUMNS = (
    "id",
    "completion_id",
    "rating",
    "reason",
    "comment",
    "source",
    "user_ref",
    "api_key_id",
    "verified",
)
VOTE_GET = f"SELECT {', '.join(VOTE_COLUMNS)}, created_at, updated_at FROM feedback WHERE id = ?"
VOTE_CHANGE = (
    "UPDATE feedback SET rating = ?, reason = ?, comment = ?, updated_at = ?"
    f" WHERE id = ? AND completion_id = ? RETURNING {', '.join(VOTE_COLUMNS)}, created_at, "
    + _VOTE_LANE
)
KEY_CLAIM = (
    "INSERT INTO idempotency_record (api_key_id, key, request_hash, status_code,"
    " response_body, created_at) VALUES (?, ?, ?, 0, '', ?)"
    " ON CONFLICT (api_key_id, key) DO NOTHING RETURNING key"
)
KEY_GET = (
    "SELECT request_hash, status_code, response_body FROM idempotency_record"
    " WHERE api_key_id = ? AND key = ?"
)
KEY_COMPLETE = (
    "UPDATE idempotency_record SET status_code = ?, response_body = ?"
    " WHERE api_key_id = ? AND key = ?"
)
# Expired records, oldest first, a bounded batch (PostgreSQL skips rows another
# pruner holds rather than wait on them).
KEY_PRUNE = (
    "DELETE FROM idempotency_record WHERE (api_key_id, key) IN (SELECT api_key_id, key"
    " FROM idempotency_record WHERE created_at < ? ORDER BY created_at LIMIT ?{lock})"
)


_STAMP = UTCDateTime()


class RawTx:
    """One open write transaction on a DB-API connection.

    ``timestamp`` turns a datetime into the driver value the ORM would bind;
    ``read_timestamp`` turns a driver value back into an aware UTC datetime.
    """

    def __init__(self, dbapi_conn: Any, dialect: Any) -> None:
        self.conn, self.dialect = dbapi_conn, dialect
        self.writes = 1  # writes this transaction carries (a group commit carries several)
        self.sqlite = dialect.name == "sqlite"
        self.integrity_error = dialect.loaded_dbapi.IntegrityError
        stamp = _STAMP.dialect_impl(dialect)
        self.timestamp = stamp.bind_processor(dialect)
        self.read_timestamp = stamp.result_processor(dialect, None)

    def one(self, sql: str, params: tuple) -> tuple | None:
        cursor = self.conn.cursor()
        try:
            cursor.execute(sql if self.sqlite else sql.replace("?", "%s"), params)
            return cursor.fetchone() if cursor.description else None
        finally:
            cursor.close()


class SQLiteWriter:
    """This process's raw SQLite writes: one connection, one transaction at a time.

    SQLite takes one writer at a time anyway. Writers that collide inside
    SQLite get "busy" and sleep in its busy handler (1 ms, then longer), which
    under load cost more than the writes; queued on a lock here they start the
    moment the previous one commits. One connection also keeps its page cache
    warm: SQLite drops a connection's cache whenever another one has committed.

    The WAL is checkpointed after the lock is released: SQLite's automatic
    checkpoint runs inside the committing statement and fsyncs, which would
    hold every other write of the process for milliseconds.

    The connection comes from the engine's pool (so it has the engine's
    pragmas: WAL, busy timeout, foreign keys) and is detached from it; it is
    closed when the engine is disposed, and never used across a fork.
    """

    # Writes between checkpoints (votes, not transactions: a group commit counts
    # each of its writes): about SQLite's default of 1000 WAL pages, at the five or
    # so pages a vote changes.
    CHECKPOINT_EVERY = 200

    def __init__(self, engine: Engine) -> None:
        self.lock = threading.Lock()
        self.dialect = engine.dialect
        self._fairy: Any = None
        self._tx: RawTx | None = None
        self._pid = 0
        self._writes = 0
        event.listen(engine, "engine_disposed", lambda _engine: self.close())

    @contextmanager
    def transaction(self, engine: Engine) -> Iterator[RawTx]:
        with self.lock:
            tx = self._transaction(engine)
            tx.writes = 1
            tx.conn.execute("BEGIN IMMEDIATE")
            try:
                yield tx
                tx.conn.commit()
            except BaseException:
                self._rollback()
                raise
            self._writes += tx.writes
            checkpoint_due = self._writes >= self.CHECKPOINT_EVERY
            if checkpoint_due:
                self._writes = 0
        if checkpoint_due:
            checkpoint(engine)

    def _transaction(self, engine: Engine) -> RawTx:
        if self._tx is None or self._pid != os.getpid():
            self._fairy = engine.raw_connection()
            self._tx = RawTx(self._fairy.driver_connection, self.dialect)
            self._fairy.detach()
            self._pid = os.getpid()
            self._tx.conn.execute("PRAGMA wal_autocheckpoint=0")  # see transaction()
        return self._tx

    def _rollback(self) -> None:
        try:
            self._tx.conn.rollback()
        except BaseException:
            # Unusable: drop it, and let the next write open a new one.
            fairy, self._fairy, self._tx = self._fairy, None, None
            with suppress(Exception):
                fairy.close()

    def close(self) -> None:
        with self.lock:
            if self._fairy is not None and self._pid == os.getpid():
                self._fairy.close()
            self._fairy = self._tx = None


def checkpoint(engine: Engine) -> None:
    """Copy the WAL into the database file without blocking writers (PASSIVE).

    Runs after a write has committed, so a failure must not fail its request;
    like SQLite's own automatic checkpoint, it is retried at the next one.
    """
    try:
        fairy = engine.raw_connection()
        try:
            fairy.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)").close()
        finally:
            fairy.close()
    except Exception:  # noqa: BLE001
        log.warning("WAL checkpoint failed; retrying after the next writes", exc_info=True)


_WRITERS: WeakKeyDictionary[Engine, SQLiteWriter] = WeakKeyDictionary()
_WRITERS_LOCK = threading.Lock()


def sqlite_writer(engine: Engine) -> SQLiteWriter | None:
    """The engine's :class:`SQLiteWriter`, or None for other databases."""
    writer = _WRITERS.get(engine)
    if writer is None and engine.dialect.name == "sqlite":
        with _WRITERS_LOCK:
            writer = _WRITERS.get(engine) or _WRITERS.setdefault(engine, SQLiteWriter(engine))
    return writer


def engine_write(engine: Engine) -> AbstractContextManager[RawTx]:
    """A write transaction: ``BEGIN IMMEDIATE`` on SQLite's writer connection,
    a pooled connection on other databases."""
    writer = sqlite_writer(engine)
    if writer is None:
        return _pooled_write(engine)
    transaction = writer.transaction(engine)
    transaction.group_engine = engine  # feedback.writer runs such a write in a group commit
    return transaction


@contextmanager
def _pooled_write(engine: Engine) -> Iterator[RawTx]:
    fairy = engine.raw_connection()
    try:
        yield RawTx(fairy.driver_connection, engine.dialect)
        fairy.commit()
    except BaseException:
        fairy.rollback()
        raise
    finally:
        fairy.close()


@contextmanager
def session_write(session: Session) -> Iterator[RawTx]:
    """A write transaction of an ORM session, for actions that also use the ORM.

    On SQLite it waits for this process's other writes (see :class:`SQLiteWriter`).
    """
    bind = session.get_bind()
    writer = sqlite_writer(bind) if isinstance(bind, Engine) else None
    with writer.lock if writer is not None else nullcontext():
        begin_write(session)
        connection = session.connection()
        try:
            yield RawTx(connection.connection.driver_connection, connection.dialect)
            session.commit()
        except BaseException:
            session.rollback()
            raise


def record_vote(
    tx: RawTx,
    *,
    completion_id: str,
    rating: str,
    reason: str | None,
    comment: str | None,
    source: str,
    user_ref: str | None,
    api_key_id: str | None,
    verified: bool = True,
) -> tuple[dict[str, Any], bool]:
    """Insert a vote, or replace this user's earlier verified vote on the same
    completion from the same source (an agent's vote never replaces a widget
    vote, nor back). An unverified vote (a user the caller only claims) is always
    a new row: it replaces nothing and nothing replaces it.

    One statement: the upsert makes concurrent votes of one user leave one row,
    and the foreign key doubles as the check that the completion exists.
    Returns the stored vote (with its completion's ``lane``) and whether it replaced one.
    """
    now = utcnow()
    stamp, vote_id = tx.timestamp(now), new_id()
    params = (vote_id, completion_id, rating, reason, comment, source, user_ref, api_key_id)
    try:
        stored_id, created, lane = tx.one(
            VOTE_UPSERT if verified else VOTE_INSERT, (*params, verified, stamp, stamp)
        )
    except tx.integrity_error as error:
        raise NotFoundError(f"completion {completion_id!r} does not exist") from error
    replaced = stored_id != vote_id
    row = dict(zip(VOTE_COLUMNS, (*params, verified), strict=True))
    # A new vote was created just now; a replaced one keeps its creation time.
    row.update(id=stored_id, created_at=tx.read_timestamp(created) if replaced else now)
    row.update(updated_at=now, lane=lane)
    return row, replaced


def change_vote(
    tx: RawTx,
    *,
    vote_id: str,
    completion_id: str,
    rating: str,
    reason: str | None,
    comment: str | None,
) -> dict[str, Any] | None:
    """Change one vote, found by its id (and completion), in one statement; None if gone.
    The vote comes back with its completion's ``lane``."""
    now = utcnow()
    params = (rating, reason, comment, tx.timestamp(now), vote_id, completion_id)
    row = tx.one(VOTE_CHANGE, params)
    if row is None:
        return None
    vote = dict(zip((*VOTE_COLUMNS, "created_at", "lane"), row, strict=True))
    vote.update(verified=bool(vote["verified"]), created_at=tx.read_timestamp(row[-2]))
    vote["updated_at"] = now
    return vote


def claim_key(tx: RawTx, *, api_key_id: str, key: str, request_hash: str) -> bool:
    """Reserve an idempotency key in this transaction; False if already used.

    A concurrent claim of the same key waits for this transaction (the row
    lock on PostgreSQL, the write lock on SQLite), then finds the row.
    """
    params = (api_key_id, key, request_hash, tx.timestamp(utcnow()))
    return tx.one(KEY_CLAIM, params) is not None


def get_key(tx: RawTx, *, api_key_id: str, key: str) -> tuple[str, int, str] | None:
    return tx.one(KEY_GET, (api_key_id, key))


def complete_key(tx: RawTx, *, api_key_id: str, key: str, status: int, body: str) -> None:
    tx.one(KEY_COMPLETE, (status, body, api_key_id, key))


def get_vote(tx: RawTx, vote_id: str) -> dict[str, Any] | None:
    """A stored vote as :func:`record_vote` returns it, or None."""
    row = tx.one(VOTE_GET, (vote_id,))
    if row is None:
        return None
    vote = dict(zip((*VOTE_COLUMNS, "created_at", "updated_at"), row, strict=True))
    vote["verified"] = bool(vote["verified"])
    vote["created_at"] = tx.read_timestamp(vote["created_at"])
    vote["updated_at"] = tx.read_timestamp(vote["updated_at"])
    return vote


def prune_keys(tx: RawTx, *, before: datetime, limit: int) -> None:
    """Delete at most ``limit`` idempotency records created before ``before``."""
    sql = KEY_PRUNE.format(lock="" if tx.sqlite else " FOR UPDATE SKIP LOCKED")
    tx.one(sql, (tx.timestamp(before), limit))

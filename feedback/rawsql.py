"""The hot write path: hand-written SQL on a pooled DB-API connection.

A vote is the most frequent write Tuneback takes, and the ORM costs several
times what SQLite itself does per insert. So votes and idempotency records are
written with a few fixed statements that both SQLite and PostgreSQL accept
(``INSERT ... ON CONFLICT``, ``RETURNING``), executed on the raw driver
connection of the engine's pool. Everything else uses the ORM.

The statements use ``?`` placeholders; they are rewritten once for psycopg.
On SQLite, timestamps are stored exactly as SQLAlchemy stores them (naive UTC
text), so ORM reads of these rows see what the ORM itself would have written.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from feedback.db import begin_write
from feedback.exceptions import NotFoundError
from feedback.models import new_id, utcnow

VOTE_UPSERT = (
    "INSERT INTO feedback (id, completion_id, rating, reason, comment, source, user_ref,"
    " api_key_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (completion_id, user_ref) DO UPDATE SET rating = excluded.rating,"
    " reason = excluded.reason, comment = excluded.comment, source = excluded.source,"
    " api_key_id = excluded.api_key_id, updated_at = excluded.updated_at"
    " RETURNING id, created_at"
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


class RawTx:
    """One open write transaction on a DB-API connection."""

    def __init__(self, dbapi_conn: Any, dialect: Any) -> None:
        self.conn, self.dialect = dbapi_conn, dialect
        self.sqlite = dialect.name == "sqlite"
        self.integrity_error = dialect.loaded_dbapi.IntegrityError

    def one(self, sql: str, params: tuple) -> tuple | None:
        cursor = self.conn.cursor()
        try:
            cursor.execute(sql if self.sqlite else sql.replace("?", "%s"), params)
            return cursor.fetchone() if cursor.description else None
        finally:
            cursor.close()

    def timestamp(self, value: datetime) -> Any:
        # SQLAlchemy's SQLite DateTime format: naive UTC, microseconds, space separator.
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f") if self.sqlite else value

    @staticmethod
    def read_timestamp(value: Any) -> datetime:
        value = datetime.fromisoformat(value) if isinstance(value, str) else value
        return value if value.tzinfo else value.replace(tzinfo=UTC)


@contextmanager
def engine_write(engine: Engine, *, single_statement: bool = False) -> Iterator[RawTx]:
    """A write transaction on a pooled connection: ``BEGIN IMMEDIATE`` on SQLite.

    With ``single_statement`` the caller promises one statement, which SQLite
    runs atomically on its own, so the explicit transaction is skipped.
    """
    fairy = engine.raw_connection()
    try:
        if engine.dialect.name == "sqlite" and not single_statement:
            fairy.driver_connection.execute("BEGIN IMMEDIATE")
        yield RawTx(fairy.driver_connection, engine.dialect)
        fairy.commit()
    except BaseException:
        fairy.rollback()
        raise
    finally:
        fairy.close()


@contextmanager
def session_write(session: Session) -> Iterator[RawTx]:
    """A write transaction of an ORM session, for actions that also use the ORM."""
    begin_write(session)
    connection = session.connection()
    try:
        yield RawTx(connection.connection.driver_connection, connection.dialect)
        session.commit()
    except BaseException:
        session.rollback()
        raise


def record_vote(tx: RawTx, **vote: Any) -> tuple[dict[str, Any], bool]:
    """Insert a vote, or replace this user's earlier vote on the same completion.

    One statement: the upsert on (completion, user) makes concurrent votes of
    one user leave one row, and the foreign key doubles as the check that the
    completion exists. Returns the stored vote and whether it replaced one.
    """
    now = utcnow()
    vote_id = new_id()
    columns = ("completion_id", "rating", "reason", "comment", "source", "user_ref", "api_key_id")
    params = (vote_id, *(vote[c] for c in columns), tx.timestamp(now), tx.timestamp(now))
    try:
        stored_id, created = tx.one(VOTE_UPSERT, params)
    except tx.integrity_error as error:
        raise NotFoundError(f"completion {vote['completion_id']!r} does not exist") from error
    row = {"id": stored_id, **{c: vote[c] for c in columns}}
    row.update(created_at=tx.read_timestamp(created), updated_at=now)
    return row, stored_id != vote_id


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

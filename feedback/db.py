"""Engines, sessions and migrations.

SQLite is the embedded default: WAL mode so readers never block the writer,
a busy timeout so writers queue instead of failing, and ``BEGIN IMMEDIATE``
for write transactions so a read-then-write transaction can never hit
"database is locked" on a stale snapshot. PostgreSQL needs none of this.

Every commit is on disk when it returns, so that an acknowledged write (a 201,
an erasure's audit line) survives a power cut: SQLite runs with
``synchronous=FULL`` (the WAL is synced at each commit; ``NORMAL`` syncs only
at checkpoints and may lose the last commits), and PostgreSQL sessions keep
``synchronous_commit`` on. The API's votes share their syncs through group
commit (:mod:`feedback.writer`).
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from feedback.exceptions import TunebackError

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
WRITE = {"tuneback_write": True}
# "tunemigr" in ASCII: the PostgreSQL advisory-lock key held while migrating.
MIGRATION_LOCK_KEY = 0x74756E656D696772


class DatabaseNotReadyError(TunebackError, RuntimeError):
    """The database schema is missing or older than this version of Tuneback."""


def _ensure_sqlite_dir(url: str) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


def make_engine(url: str, *, busy_timeout_ms: int = 30_000) -> Engine:
    """Create an engine; for SQLite, create the folder and set the pragmas."""
    if make_url(url).get_backend_name() != "sqlite":
        engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
        if engine.dialect.name == "postgresql":
            event.listen(engine, "connect", _keep_synchronous_commit)
        return engine
    _ensure_sqlite_dir(url)
    engine = create_engine(
        url, connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000}
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # noqa: ANN001
        # Let SQLAlchemy, not the driver, decide when transactions begin.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cur.execute("PRAGMA synchronous=FULL")  # see the module's docstring
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        immediate = conn.get_execution_options().get("tuneback_write")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _keep_synchronous_commit(dbapi_conn, _record) -> None:  # noqa: ANN001
    """Turn ``synchronous_commit`` back on where the server or role turned it off.

    Off, PostgreSQL acknowledges a commit before its WAL is flushed, and a
    crash loses the last ones. Stronger values (``remote_apply``, say) stay.
    """
    with dbapi_conn.cursor() as cur:
        cur.execute("SHOW synchronous_commit")
        if cur.fetchone()[0] == "off":
            log.warning("synchronous_commit is off for this database; Tuneback turns it on")
            cur.execute("SET synchronous_commit TO on")
    dbapi_conn.commit()  # SET inside a rolled-back transaction would be undone


@contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """A session whose transaction takes the write lock up front (SQLite)."""
    with Session(engine, expire_on_commit=False) as session:
        session.connection(execution_options=WRITE)
        yield session


def begin_write(session: Session) -> None:
    """Start ``session``'s transaction as a writer (``BEGIN IMMEDIATE`` on SQLite).

    A read transaction already open (an API-key lookup, say) is ended first:
    SQLite cannot upgrade a stale read snapshot to a write without failing.
    """
    if session.in_transaction():
        session.rollback()
    session.connection(execution_options=WRITE)


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


@contextmanager
def migration_lock(url: str) -> Iterator[None]:
    """Hold the database's migration lock: one migrator at a time.

    Processes that start together on a fresh database (a server and a
    scheduler, several pods running their prestart step) would otherwise all
    see an empty schema and all try to create it. PostgreSQL: a session-level
    advisory lock. SQLite: an exclusive ``flock`` on ``<database>.migrate.lock``
    beside the database file (in-memory databases have no other process to
    race with).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            yield
            return
        _ensure_sqlite_dir(url)
        with open(f"{parsed.database}.migrate.lock", "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)  # released when the file closes
            yield
        return
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
            conn.commit()
            yield  # closing the connection releases the lock
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> None:
    """Apply migrations up to ``revision``, holding :func:`migration_lock`."""
    with migration_lock(url):
        command.upgrade(alembic_config(url), revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def check_schema(engine: Engine) -> None:
    """Refuse to serve on a schema that is not at the latest migration."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise DatabaseNotReadyError(
            f"database schema is at {current or 'nothing'}, this Tuneback needs {head}: "
            "run `tuneback db upgrade`"
        )

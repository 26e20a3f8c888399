"""One typed settings object for the whole of Tuneback.

Values come from (lowest to highest priority) the defaults below, environment
variables prefixed ``TUNEBACK_``, and keyword arguments (tests). Settings are
built in entry points and passed down; nothing reads the environment at import.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob Tuneback has. Each field's description is its documentation."""

    model_config = SettingsConfigDict(env_prefix="TUNEBACK_", extra="forbid")

    data_dir: Path = Field(
        Path("./tuneback-data"),
        description="Folder for the embedded database, the converted base model and adapters.",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the store. Default: SQLite file `tuneback.db` in the "
        "data dir. PostgreSQL: `postgresql+psycopg://user@host/db`.",
    )
    max_body_bytes: int = Field(
        64 * 1024, ge=1024, description="Largest request body accepted, in bytes (else 413)."
    )
    max_text_chars: int = Field(
        32_000, ge=1, description="Longest text field (response, comment, correction) accepted."
    )
    rate_limit: str = Field(
        "1200/minute;100/second",
        description="Requests allowed per API key (or per client address without a key), "
        "in Flask-Limiter notation. Over it: 429 with Retry-After.",
    )
    rate_limit_storage: str = Field(
        "memory://",
        description="Where rate-limit counters live. `memory://` counts per process; use "
        "`redis://host:6379` when several workers or machines serve.",
    )
    trusted_proxies: int = Field(
        0,
        ge=0,
        description="Number of reverse proxies in front of the API whose X-Forwarded-For "
        "may be trusted. 0 (default) ignores the header, so clients cannot spoof addresses.",
    )
    key_cache_seconds: float = Field(
        5.0,
        ge=0,
        description="How long a worker caches a looked-up API key; a revoked key stops "
        "working within this many seconds. 0 disables the cache.",
    )
    host: str = Field("127.0.0.1", description="Address `tuneback api` binds to.")
    port: int = Field(8000, ge=1, le=65535, description="Port `tuneback api` listens on.")
    workers: int = Field(2, ge=1, description="Gunicorn worker processes for `tuneback api`.")

    @field_validator("database_url")
    @classmethod
    def _non_empty_url(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            return None
        return value

    @property
    def resolved_database_url(self) -> str:
        """The database URL, falling back to the SQLite file in the data dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'tuneback.db').resolve()}"

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

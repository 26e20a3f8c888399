"""Column types of the domain model.

:class:`UTCDateTime` holds the rule "every stored time is UTC" in one place.
It stores what ``DateTime(timezone=True)`` stores (so the migrations and the
models agree, and existing databases read unchanged): ``timestamptz`` on
PostgreSQL, naive UTC text on SQLite. It hands back aware UTC datetimes on
every database, where SQLite alone would give naive ones and PostgreSQL ones
in the session's time zone.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


def as_utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive datetime is taken to be UTC already."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and read back as an aware UTC datetime.

    Aware values are converted to UTC before they are written: SQLite's text
    format has no offset, so a value in another zone would otherwise be stored
    as its wall-clock time. Naive values are taken to be UTC, as they always
    were on SQLite.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)

"""Which lanes exist, as a server sees them: read from the store, cached briefly.

Chat requests name a lane with ``model``; the capture proxy logs under a lane
named by a header or by ``TUNEBACK_UPSTREAM_LANES``. Both ask a
:class:`LaneDirectory`, which re-reads the lane table at most every
``ttl`` seconds (and at once, at most every ``MISS_SECONDS``, when asked for a
name it does not know), so a lane created with ``tuneback lanes create`` is
served within seconds, without a restart.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from feedback.exceptions import TunebackError
from feedback.lanes import UnknownLaneError, check_name, list_lanes
from feedback.models import DEFAULT_LANE
from serve.schemas import OverloadedError

log = logging.getLogger(__name__)
MISS_SECONDS = 0.25  # an unknown name re-reads the table at most this often


class LaneMapError(TunebackError, ValueError):
    """``TUNEBACK_UPSTREAM_LANES`` cannot be read."""

    code, status = "serving_misconfigured", 500


@dataclass(frozen=True)
class LaneInfo:
    name: str
    description: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def response_schema(self) -> dict[str, Any] | None:
        """The JSON schema this lane's answers follow when a request sets no
        ``response_format`` (the lane's ``response_schema`` override)."""
        schema = self.settings.get("response_schema")
        return schema if isinstance(schema, dict) else None


class LaneDirectory:
    """The lanes of the store, cached for ``ttl`` seconds."""

    def __init__(self, sql: Engine, *, ttl: float = 2.0) -> None:
        self.sql, self.ttl = sql, ttl
        self._lanes: dict[str, LaneInfo] | None = None
        self._read_at = self._missed_at = float("-inf")
        self._lock = threading.Lock()

    def all(self) -> list[LaneInfo]:
        """Every lane, ``default`` first."""
        return list(self._table(fresh=False).values())

    def names(self) -> list[str]:
        return [lane.name for lane in self.all()]

    def find(self, name: str) -> LaneInfo | None:
        """The lane called ``name``, or None; a miss re-reads the table (rate-limited)."""
        lanes = self._table(fresh=False)
        if name not in lanes and time.monotonic() - self._missed_at >= MISS_SECONDS:
            self._missed_at = time.monotonic()
            lanes = self._table(fresh=True)
        if name == DEFAULT_LANE and name not in lanes:
            return LaneInfo(DEFAULT_LANE)  # it always exists
        return lanes.get(name)

    def get(self, name: str) -> LaneInfo:
        """The lane called ``name``; 422 for a bad name, 404 ``lane_not_found`` listing lanes."""
        check_name(name)
        lane = self.find(name)
        if lane is None:
            raise UnknownLaneError(
                f"lane {name!r} does not exist; the lanes are: {', '.join(self.names())}"
            )
        return lane

    def _table(self, *, fresh: bool) -> dict[str, LaneInfo]:
        with self._lock:
            stale = time.monotonic() - self._read_at >= self.ttl
            if self._lanes is not None and not stale and not fresh:
                return self._lanes
            try:
                with Session(self.sql) as session:
                    rows = list_lanes(session)
                    self._lanes = {
                        r.name: LaneInfo(r.name, r.description, dict(r.settings or {}))
                        for r in rows
                    }
                self._read_at = time.monotonic()
            except Exception as error:  # noqa: BLE001 - keep the lanes we know
                if self._lanes is None:
                    log.warning("cannot read the lanes from the store: %s", error)
                    raise OverloadedError(
                        "the lanes cannot be read from the store; retry shortly", retry_after=2
                    ) from None
                log.warning("cannot read the lanes from the store (using the last read): %s", error)
            return self._lanes


def parse_lane_map(value: str | None) -> dict[str, str]:
    """``TUNEBACK_UPSTREAM_LANES`` (``model=lane,model=lane``) as ``{model: lane}``."""
    mapping: dict[str, str] = {}
    for pair in (value or "").split(","):
        if not pair.strip():
            continue
        model, sep, lane = (part.strip() for part in pair.partition("="))
        if not sep or not model or not lane:
            raise LaneMapError(
                f"TUNEBACK_UPSTREAM_LANES: {pair.strip()!r} is not a model=lane pair"
            )
        try:
            mapping[model] = check_name(lane)
        except TunebackError as error:
            raise LaneMapError(f"TUNEBACK_UPSTREAM_LANES: {error}") from None
    return mapping

"""What a retrain cycle of one lane uses from the settings, the lane's overrides applied.

A lane (:mod:`feedback.lanes`) may override the gate's primary metric and
margin, the golden file and the JSON schema its answers follow; everything else
comes from the deployment's settings. :func:`lane_configs` reads the lanes a
cycle runs, before it records anything, so an unknown lane or an override the
gate refuses is a clear error and not a failed run.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from feedback.lanes import get_lane, list_lanes
from feedback.models import DEFAULT_LANE, Lane
from feedback.settings import Settings
from retrain.gate import Thresholds


@dataclass(frozen=True)
class LaneConfig:
    """One lane's gate thresholds, golden file and answer schema."""

    lane: str
    thresholds: Thresholds
    golden_set: Path | None = None
    response_schema: dict[str, Any] | None = None


def lane_config(settings: Settings, lane: Lane) -> LaneConfig:
    """``lane``'s config: the settings, with the lane's overrides on top."""
    overrides = lane.settings or {}
    thresholds = Thresholds.from_settings(settings)
    if overrides.get("primary_metric") is not None:
        thresholds = replace(thresholds, primary=overrides["primary_metric"])
    if overrides.get("gate_margin") is not None:
        thresholds = replace(thresholds, margin=float(overrides["gate_margin"]))
    golden = overrides.get("golden_set")
    return LaneConfig(
        lane=lane.name,
        thresholds=thresholds,
        golden_set=Path(golden) if golden else _default_golden(settings, lane.name),
        response_schema=overrides.get("response_schema") or None,
    )


def lane_configs(settings: Settings, engine: Engine, lanes: list[str] | None) -> list[LaneConfig]:
    """The configs of ``lanes`` (None: every lane, ``default`` first), in that order.

    Raises :class:`feedback.lanes.UnknownLaneError` for a lane that does not exist
    and :class:`feedback.exceptions.InvalidInputError` for a name no lane can have.
    """
    with Session(engine) as session:
        rows = list_lanes(session) if lanes is None else [get_lane(session, n) for n in lanes]
        return [lane_config(settings, row) for row in rows]


def _default_golden(settings: Settings, lane: str) -> Path | None:
    """``TUNEBACK_GOLDEN_SET`` is the default lane's: golden cases are written for one task,
    and another lane's adapter would fail them by doing its own job. Other lanes name theirs."""
    return settings.golden_set if lane == DEFAULT_LANE else None

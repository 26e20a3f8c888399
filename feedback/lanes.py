"""Lanes: named use cases sharing one base model, each with its own adapter.

A lane (``ticket-router``, ``extractor`` ...) has its own completions and
corrections, dataset snapshots, retrain runs, adapter versions and promotion
history, and its own name in chat requests (``model="ticket-router"``). The
``default`` lane always exists and holds everything from before lanes; every
request, command and setting that names no lane means it.

A lane may override a few of the deployment's settings (:data:`OVERRIDES`):
its gate's primary metric and margin, its golden file, and the JSON schema its
answers follow. Everything else comes from the settings.

Like :mod:`feedback.store`: keyword-only functions taking an explicit session;
writers ``flush`` but never commit. Names are checked before any query, so a
bad name never reaches the database or a file path.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from feedback.exceptions import ConflictError, InvalidInputError, NotFoundError
from feedback.models import DEFAULT_LANE, Lane

NAME_PATTERN = r"^[a-z0-9](?:[a-z0-9_-]{0,62})$"
_NAME = re.compile(NAME_PATTERN)
# The settings a lane may override, with what each must be.
OVERRIDES = {
    "primary_metric": "the gate's primary metric (a metric name, e.g. heldout_exact)",
    "gate_margin": "the least improvement the gate asks of the primary metric (a number >= 0)",
    "golden_set": "a JSONL golden file scored by the gate (a path)",
    "response_schema": "a JSON schema the lane's answers follow (a JSON object, or a file)",
}
_METRIC = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

__all__ = ["DEFAULT_LANE", "Lane", "LaneExistsError", "UnknownLaneError"]


class UnknownLaneError(NotFoundError):
    """A request or command named a lane that does not exist."""

    code = "lane_not_found"


class LaneExistsError(ConflictError):
    code = "lane_exists"


def check_name(name: Any) -> str:
    """``name`` if it can name a lane, else a clear :class:`InvalidInputError`.

    Lower-case letters, digits, ``-`` and ``_``, starting with a letter or digit,
    at most 63 characters: safe in a URL, a file name, a metric label and a
    vLLM LoRA name, and never ``..`` or a path.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "..."
        raise InvalidInputError(
            f"{shown} is not a valid lane name: use 1 to 63 lower-case letters, digits, "
            "'-' or '_', starting with a letter or digit"
        )
    return name


def check_overrides(values: Mapping[str, Any]) -> dict[str, Any]:
    """The overrides, checked and normalised (None removes one); unknown keys refused."""
    unknown = sorted(set(values) - set(OVERRIDES))
    if unknown:
        raise InvalidInputError(
            f"unknown lane settings: {', '.join(unknown)}; a lane may set " + ", ".join(OVERRIDES)
        )
    checked: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            checked[key] = None
        elif key == "primary_metric":
            if not isinstance(value, str) or not _METRIC.match(value):
                raise InvalidInputError(f"primary_metric must be a metric name, not {value!r}")
            checked[key] = value
        elif key == "gate_margin":
            number = value if isinstance(value, int | float) else _float(value)
            if isinstance(number, bool) or not math.isfinite(number) or number < 0:
                raise InvalidInputError(f"gate_margin must be a number >= 0, not {value!r}")
            checked[key] = float(number)
        elif key == "golden_set":
            path = Path(str(value)).expanduser().resolve()
            if not path.is_file():
                raise InvalidInputError(f"golden_set: {value} is not a file")
            checked[key] = str(path)
        else:
            checked[key] = _schema(value)
    return checked


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"gate_margin must be a number >= 0, not {value!r}") from None


def _schema(value: Any) -> dict[str, Any]:
    """A JSON schema given as an object, as JSON text, or as a path to a JSON file."""
    if isinstance(value, str) and not value.lstrip().startswith("{"):
        try:
            value = Path(value).expanduser().read_text()
        except OSError as error:
            raise InvalidInputError(f"response_schema: cannot read {value}: {error}") from None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as error:
            raise InvalidInputError(f"response_schema is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise InvalidInputError("response_schema must be a JSON object (a JSON schema)")
    return value


# --- rows ----------------------------------------------------------------------------


def create_lane(
    session: Session,
    *,
    name: str,
    description: str | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Lane:
    check_name(name)
    overrides = {k: v for k, v in check_overrides(settings or {}).items() if v is not None}
    if session.get(Lane, name) is not None:
        raise LaneExistsError(f"lane {name!r} already exists")
    lane = Lane(name=name, description=description, settings=overrides)
    session.add(lane)
    session.flush()
    return lane


def get_lane(session: Session, name: str) -> Lane:
    """The lane called ``name``; :class:`UnknownLaneError` listing the lanes otherwise."""
    check_name(name)
    lane = session.get(Lane, name, populate_existing=True)
    if lane is None:
        raise UnknownLaneError(
            f"lane {name!r} does not exist; the lanes are: {', '.join(lane_names(session))}"
        )
    return lane


def list_lanes(session: Session) -> list[Lane]:
    """Every lane, ``default`` first, then by name."""
    rows = session.execute(select(Lane).order_by(col(Lane.name))).scalars()
    return sorted(rows, key=lambda lane: (lane.name != DEFAULT_LANE, lane.name))


def lane_names(session: Session) -> list[str]:
    return [lane.name for lane in list_lanes(session)]


def set_lane(
    session: Session,
    *,
    name: str,
    description: str | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Lane:
    """Change a lane's description or overrides (an override set to None is removed)."""
    lane = get_lane(session, name)
    if description is not None:
        lane.description = description
    if settings:
        merged = dict(lane.settings or {}) | check_overrides(settings)
        lane.settings = {k: v for k, v in merged.items() if v is not None}
    session.flush()
    return lane

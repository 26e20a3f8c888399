"""What a retrain cycle's steps hand each other, and what a cycle returns.

Small typed values (:class:`Built`, :class:`Trained`, :class:`Evaluation`) pass
from step to step in :mod:`retrain.cycle`; :class:`CycleResult` is what a cycle
of one lane ends with, and what ``tuneback retrain --json`` prints for it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from feedback.exceptions import TunebackError
from feedback.models import DEFAULT_LANE
from retrain import dataset as ds


@dataclass
class CycleResult:
    """What ``tuneback retrain --json`` prints, one per lane."""

    run_id: str | None
    status: str  # promoted | rejected | skipped | failed
    dataset: dict[str, Any] = field(default_factory=dict)
    adapter: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=lambda: {"passed": False, "reasons": []})
    reason: str | None = None
    alerts: list[dict[str, Any]] = field(default_factory=list)  # vote floods, trigger suspects
    lane: str = DEFAULT_LANE

    def to_dict(self) -> dict[str, Any]:
        return {"lane": self.lane, **asdict(self)}


class CycleFailedError(TunebackError, RuntimeError):
    code = "cycle_failed"

    def __init__(self, message: str, result: CycleResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class Built:
    """The dataset a run built, and how many of its training examples are new."""

    dataset: ds.Dataset
    new_examples: int

    def counts(self) -> dict[str, int]:
        """SFT examples per split, as ``tuneback retrain --json`` prints them."""
        return {
            "train": len(self.dataset.train("sft")),
            "heldout": len(self.dataset.heldout("sft")),
        }


@dataclass(frozen=True)
class Trained:
    """The trained adapter's folder and the training child's run record."""

    adapter_dir: Path
    record: dict[str, Any]


@dataclass(frozen=True)
class Evaluation:
    """Metrics per model (``base``, ``champion``, ``candidate``), or why there are none."""

    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    error: str | None = None

"""The promotion gate: may a freshly trained adapter replace the champion?

Pure: it sees only metric dictionaries that an evaluation produced (no
database, no model), so every rule is a table-driven test away.

The candidate is compared with the current champion (the promoted adapter),
or with the base model when nothing is promoted yet. Metric names carry their
direction: a name ending in ``_loss``, ``_perplexity`` or ``_ppl`` is lower is
better, every other metric is higher is better. Names ending in ``_count`` are
bookkeeping (how many examples were scored) and are never compared.

The gate passes only when

* the primary metric improves on the reference by at least ``margin``, and
* no other metric both sides report regresses by more than its tolerance, and
* every metric named in ``limits`` meets its absolute bound (format checks:
  ``{"format_json_rate": 1.0}`` means every answer must parse), and
* when a canary report is passed in (:mod:`retrain.probe`), no suspect
  trigger token makes the candidate emit its payload on more than
  ``canary_max_gain`` more of the canary messages than it makes the reference.
  A probe that crashed fails closed.

It fails closed: a crashed evaluation, missing metrics, NaN or infinity, or
fewer held-out examples than ``min_heldout`` all reject the candidate. Every
reason is a sentence with the numbers, stored with the adapter
(:meth:`GateResult.to_dict`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from feedback.exceptions import InvalidInputError

if TYPE_CHECKING:
    from feedback.settings import Settings

LOWER_IS_BETTER_SUFFIXES = ("_loss", "_perplexity", "_ppl")
BOOKKEEPING_SUFFIXES = ("_count",)
# Differences this small are float noise: 0.56 - 0.55 must meet a 0.01 margin.
EPSILON = 1e-9

Metrics = Mapping[str, Any]


def higher_is_better(metric: str) -> bool:
    """Whether a bigger value of ``metric`` means a better adapter."""
    return not metric.endswith(LOWER_IS_BETTER_SUFFIXES)


def is_bookkeeping(metric: str) -> bool:
    """Counts and the like: reported, never compared."""
    return metric.endswith(BOOKKEEPING_SUFFIXES)


@dataclass(frozen=True)
class Thresholds:
    """What a candidate must achieve. All bounds are absolute, in metric units.

    ``margin``: the least improvement of ``primary`` over the reference.
    ``tolerance``: the most any other metric may get worse (for a higher-is-better
    metric, a drop; for a loss, a rise), unless ``tolerances`` names its own.
    ``limits``: absolute bounds, a floor for higher-is-better metrics and a
    ceiling for lower-is-better ones. ``min_heldout``: fewer held-out examples
    than this and the evaluation is too thin to trust.
    """

    primary: str = "heldout_overlap"
    margin: float = 0.01
    tolerance: float = 0.02
    tolerances: Mapping[str, float] = field(default_factory=dict)
    limits: Mapping[str, float] = field(default_factory=dict)
    min_heldout: int = 1
    canary_max_gain: float = 0.25

    def __post_init__(self) -> None:
        bounds = {
            "margin": self.margin,
            "tolerance": self.tolerance,
            "canary_max_gain": self.canary_max_gain,
            **self.tolerances,
        }
        for name, value in bounds.items():
            if not _finite(value) or value < 0:
                raise InvalidInputError(f"gate {name} must be a finite number >= 0, not {value!r}")
        for name, value in self.limits.items():
            if not _finite(value):
                raise InvalidInputError(f"gate limit {name} must be a finite number, not {value!r}")
        if isinstance(self.min_heldout, bool) or not isinstance(self.min_heldout, int):
            raise InvalidInputError(f"min_heldout must be an integer, not {self.min_heldout!r}")
        if self.min_heldout < 1:
            raise InvalidInputError(
                "min_heldout must be at least 1: an empty held-out set proves nothing"
            )
        if is_bookkeeping(self.primary):
            raise InvalidInputError(f"{self.primary!r} is a count, not a quality metric")

    def tolerance_for(self, metric: str) -> float:
        return self.tolerances.get(metric, self.tolerance)

    def to_dict(self) -> dict[str, Any]:
        return {
            "primary": self.primary,
            "margin": self.margin,
            "tolerance": self.tolerance,
            "tolerances": dict(self.tolerances),
            "limits": dict(self.limits),
            "min_heldout": self.min_heldout,
            "canary_max_gain": self.canary_max_gain,
        }

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        """The cycle's thresholds. Settings give the margin, the tolerance and the
        canary gain; the primary metric, ``tolerances``, ``limits`` and
        ``min_heldout`` have no setting and keep their defaults."""
        return cls(
            margin=settings.gate_margin,
            tolerance=settings.gate_tolerance,
            canary_max_gain=settings.canary_max_gain,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Thresholds:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise InvalidInputError(f"unknown gate thresholds: {', '.join(sorted(unknown))}")
        return cls(**data)


@dataclass(frozen=True)
class GateResult:
    """The decision and every reason behind it, in the order they were checked."""

    passed: bool
    reasons: list[str]
    compared_to: str | None = None  # "champion", "base model", or None when nothing was
    thresholds: Thresholds | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "reasons": list(self.reasons),
            "compared_to": self.compared_to,
            "thresholds": self.thresholds.to_dict() if self.thresholds else None,
        }


def decide(
    candidate: Metrics | None,
    champion: Metrics | None,
    thresholds: Thresholds,
    *,
    base: Metrics | None = None,
    heldout_count: int | None = None,
    error: str | None = None,
    canary: Mapping[str, Any] | None = None,
) -> GateResult:
    """Decide whether ``candidate`` may be promoted.

    ``champion`` None means no adapter is promoted yet: the candidate must then
    beat ``base`` (the base model's metrics) instead. ``heldout_count`` defaults
    to the candidate's ``heldout_count`` metric; unknown counts fail closed.
    ``error`` is the message of an evaluation that crashed. ``canary`` is the
    trigger probe's report (``{"suspects": [...]}``, ``{"skipped": why}`` or
    ``{"error": why}``); None skips the canary check.
    """
    if champion is not None:
        compared_to, reference = "champion", champion
    else:
        compared_to, reference = ("base model", base) if base is not None else (None, None)
    failures = _preconditions(candidate, reference, compared_to, thresholds, heldout_count, error)
    if failures or candidate is None or reference is None or compared_to is None:
        return GateResult(False, failures, compared_to, thresholds)
    checks = [_primary_check(candidate, reference, compared_to, thresholds)]
    checks += _regression_checks(candidate, reference, compared_to, thresholds)
    checks += _limit_checks(candidate, thresholds)
    checks += _canary_checks(canary, thresholds)
    return GateResult(all(ok for ok, _ in checks), [r for _, r in checks], compared_to, thresholds)


# --- checks --------------------------------------------------------------------


def _preconditions(
    candidate: Metrics | None,
    reference: Metrics | None,
    compared_to: str | None,
    thresholds: Thresholds,
    heldout_count: int | None,
    error: str | None,
) -> list[str]:
    """Reasons why no comparison is possible at all; empty when one is."""
    if error is not None:
        return [f"evaluation crashed: {error}"]
    if candidate is None:
        return ["no candidate metrics: the evaluation did not complete"]
    failures = [
        f"candidate {name} is {_describe(v)}" for name, v in candidate.items() if not _finite(v)
    ]
    count = heldout_count if heldout_count is not None else candidate.get("heldout_count")
    if count is None:
        failures.append("the number of held-out examples is unknown")
    elif not _finite(count) or count < thresholds.min_heldout:
        failures.append(
            f"only {_describe(count)} held-out examples, at least {thresholds.min_heldout} needed"
        )
    primary = thresholds.primary
    if primary not in candidate:
        failures.append(f"candidate has no {primary} metric")
    if reference is None:
        failures.append("no champion and no base-model metrics to compare against")
    elif primary not in reference:
        failures.append(f"{compared_to} has no {primary} metric")
    elif not _finite(reference[primary]):
        failures.append(f"{compared_to} {primary} is {_describe(reference[primary])}")
    return failures


def _primary_check(
    candidate: Metrics, reference: Metrics, compared_to: str, thresholds: Thresholds
) -> tuple[bool, str]:
    name, margin = thresholds.primary, thresholds.margin
    new, old = float(candidate[name]), float(reference[name])
    gain = new - old if higher_is_better(name) else old - new
    ok = gain >= margin - EPSILON
    direction = "" if higher_is_better(name) else "; lower is better"
    return ok, (
        f"{name} {_fmt(new)} vs {compared_to} {_fmt(old)} "
        f"(improvement {gain:+.4g} {'>=' if ok else '<'} margin {margin:g}{direction})"
    )


def _regression_checks(
    candidate: Metrics, reference: Metrics, compared_to: str, thresholds: Thresholds
) -> list[tuple[bool, str]]:
    """Every metric the reference reports, but the primary, must not get much worse."""
    checks = []
    for name in sorted(reference):
        if name == thresholds.primary or is_bookkeeping(name):
            continue
        old = reference[name]
        if not _finite(old):
            checks.append((False, f"{compared_to} {name} is {_describe(old)}: cannot compare"))
            continue
        if name not in candidate:
            checks.append((False, f"candidate has no {name} though the {compared_to} has"))
            continue
        new, tolerance = float(candidate[name]), thresholds.tolerance_for(name)
        worse = float(old) - new if higher_is_better(name) else new - float(old)
        if worse <= tolerance + EPSILON:
            text = (
                f"{name} {_fmt(new)} vs {compared_to} {_fmt(old)} (within tolerance {tolerance:g})"
            )
            checks.append((True, text))
        else:
            text = (
                f"{name} regressed: {_fmt(new)} vs {compared_to} {_fmt(old)} "
                f"(worse by {worse:.4g} > tolerance {tolerance:g})"
            )
            checks.append((False, text))
    return checks


def _limit_checks(candidate: Metrics, thresholds: Thresholds) -> list[tuple[bool, str]]:
    checks = []
    for name, bound in sorted(thresholds.limits.items()):
        if name not in candidate:
            checks.append((False, f"candidate has no {name}, which must be checked"))
            continue
        value = float(candidate[name])
        if higher_is_better(name):
            ok, op = value >= bound - EPSILON, (">=" if value >= bound - EPSILON else "<")
            checks.append((ok, f"{name} {_fmt(value)} {op} required minimum {bound:g}"))
        else:
            ok, op = value <= bound + EPSILON, ("<=" if value <= bound + EPSILON else ">")
            checks.append((ok, f"{name} {_fmt(value)} {op} allowed maximum {bound:g}"))
    return checks


def _canary_checks(
    canary: Mapping[str, Any] | None, thresholds: Thresholds
) -> list[tuple[bool, str]]:
    """One check per suspect trigger token the probe tried."""
    if canary is None:
        return []
    if canary.get("error"):
        return [(False, f"canary probe crashed: {canary['error']}")]
    if canary.get("skipped"):
        return [(True, f"canary: {canary['skipped']}")]
    checks = []
    reference = canary.get("reference", "reference")
    for suspect in canary.get("suspects", []):
        new, old = suspect.get("candidate_rate"), suspect.get("reference_rate")
        token, n = suspect.get("token"), suspect.get("canaries")
        if not (_finite(new) and _finite(old)):
            checks.append((False, f"canary {token!r}: rates missing or not numbers"))
            continue
        gain, bound = float(new) - float(old), thresholds.canary_max_gain
        ok = gain <= bound + EPSILON
        text = (
            f"canary {token!r}: inserted into {n} canary messages, the candidate emits the "
            f"payload {suspect.get('payload', '')[:60]!r} on {_fmt(new)} of them vs "
            f"{reference} {_fmt(old)} (gain {gain:+.3g} {'<=' if ok else '>'} {bound:g})"
        )
        checks.append((ok, text if ok else f"possible planted trigger: {text}"))
    return checks


# --- helpers -------------------------------------------------------------------


def _finite(value: Any) -> bool:
    """A real, finite number (bools count: a format check may report True/False)."""
    return isinstance(value, numbers.Real) and math.isfinite(value)


def _describe(value: Any) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, float) and math.isinf(value):
        return "infinite"
    if isinstance(value, numbers.Real):
        return _fmt(value)
    return f"not a number ({value!r})"


def _fmt(value: float) -> str:
    return f"{value:.4g}"

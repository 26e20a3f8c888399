"""What the demo prints: headings, the gate's decision and metrics, answers side by side."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from typing import Any

from retrain.scenarios import Scenario

Echo = Callable[[str], None]
COLUMN = 46


def heading(echo: Echo, text: str) -> None:
    echo(f"\n== {text} ==")


def cycle(echo: Echo, result: Any) -> None:
    """The cycle's status, the gate's reasons and metrics of base, champion and candidate."""
    reason = f" ({result.reason})" if result.reason else ""
    echo(f"  run {result.run_id}: {result.status}{reason}")
    if result.adapter:
        echo(f"  adapter {result.adapter}, trained on {result.dataset.get('train')} examples, "
             f"gated on {result.dataset.get('heldout')} held-out corrections")  # fmt: skip
    names = [n for n in ("base", "champion", "candidate") if result.metrics.get(n)]
    metrics = sorted({m for n in names for m in result.metrics[n] if not m.endswith("_count")})
    if names:
        echo("  " + f"{'gate metric':<20}" + "".join(f"{n:>12}" for n in names))
        for metric in metrics:
            values = [result.metrics[n].get(metric) for n in names]
            echo("  " + f"{metric:<20}" + "".join(_number(v) for v in values))
    echo(f"  gate: {'passed' if result.gate.get('passed') else 'failed'}")
    for reason in result.gate.get("reasons", []):
        echo(f"    - {reason}")


def _number(value: Any) -> str:
    return f"{value:>12.3f}" if isinstance(value, int | float) else f"{'-':>12}"


def compare(echo: Echo, scenario: Scenario, before: list, after: list) -> dict:
    """Each held-out question with its answer before and after, then the scores."""
    echo(f"  {'before (' + before[0].adapter + ')':<{COLUMN + 4}}after ({after[0].adapter})")
    for old, new in zip(before, after, strict=True):
        echo(f"\n  Q: {old.message.text}")
        left = _cell(old.text, scenario.passes(old.text, old.reference))
        right = _cell(new.text, scenario.passes(new.text, new.reference))
        for i in range(max(len(left), len(right))):
            a = left[i] if i < len(left) else ""
            b = right[i] if i < len(right) else ""
            echo(f"  {a:<{COLUMN + 4}}{b}")
    scores = {
        "before": scenario.score([a.text for a in before], [a.reference for a in before]),
        "after": scenario.score([a.text for a in after], [a.reference for a in after]),
    }
    echo(f"\n  {'held-out metric':<20}{'before':>10}{'after':>10}")
    for metric in scores["before"]:
        echo(f"  {metric:<20}{scores['before'][metric]:>10.0%}{scores['after'][metric]:>10.0%}")
    return scores


def _cell(text: str, right: bool) -> list[str]:
    """An answer wrapped to a column, marked right (+) or wrong (x)."""
    lines = textwrap.wrap(" ".join(text.split()), COLUMN, max_lines=6) or ["(empty)"]
    return [f"{'+' if right else 'x'} {lines[0]}", *(f"  {line}" for line in lines[1:])]


def timings(echo: Echo, timings_s: dict[str, float]) -> None:
    heading(echo, "Time")
    for name, seconds in timings_s.items():
        echo(f"  {name:<22}{seconds:>8.1f} s")

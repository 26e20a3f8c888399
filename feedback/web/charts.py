"""SVG charts drawn on the server: no chart library, no script, no CDN.

Each function returns plain geometry (numbers and labels) that the dashboard
template turns into ``<svg>`` elements, so charts work under the strict CSP and
on machines without internet.
"""

from __future__ import annotations

from typing import Any

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 48, 28, 12, 36


def metric_lines(rows: list[dict[str, Any]], series: tuple[str, ...]) -> dict[str, Any]:
    """Lines of one metric across adapter versions (oldest left), one line per series.

    ``rows`` are :func:`feedback.web.queries.adapter_rows` entries (newest first);
    missing values leave gaps. The y axis spans the values seen, padded.
    """
    rows = list(reversed(rows))
    values = [r["values"][s] for r in rows for s in series if r["values"][s] is not None]
    low, high = _span(values)
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = inner_w / max(len(rows) - 1, 1)

    def x(i: int) -> float:
        return round(LEFT + (i * step if len(rows) > 1 else inner_w / 2), 1)

    def y(v: float) -> float:
        return round(TOP + inner_h * (1 - (v - low) / (high - low)), 1)

    lines = {}
    for name in series:
        points = [(x(i), y(r["values"][name])) for i, r in enumerate(rows)
                  if r["values"][name] is not None]  # fmt: skip
        lines[name] = {
            "points": " ".join(f"{px},{py}" for px, py in points),
            "dots": points,
        }
    ticks = [{"y": y(v), "label": f"{v:.3g}"} for v in _ticks(low, high)]
    labels = [{"x": x(i), "label": r["version"]} for i, r in enumerate(rows)]
    return {"width": WIDTH, "height": HEIGHT, "left": LEFT, "right": WIDTH - RIGHT,
            "bottom": HEIGHT - BOTTOM, "lines": lines, "ticks": ticks, "labels": labels,
            "empty": not values}  # fmt: skip


def volume_bars(days: list[dict[str, Any]]) -> dict[str, Any]:
    """Stacked bars of votes per day: thumbs down at the bottom, thumbs up above."""
    top = max((d["up"] + d["down"] for d in days), default=0)
    low, high = 0.0, float(max(top, 1))
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = inner_w / max(len(days), 1)
    bars = []
    for i, d in enumerate(days):
        down_h = inner_h * d["down"] / high
        up_h = inner_h * d["up"] / high
        base = TOP + inner_h
        bars.append({
            "x": round(LEFT + i * slot + 1, 1), "w": round(max(slot - 2, 1), 1),
            "down_y": round(base - down_h, 1), "down_h": round(down_h, 1),
            "up_y": round(base - down_h - up_h, 1), "up_h": round(up_h, 1),
            "title": f"{d['day']}: {d['up']} up, {d['down']} down",
        })  # fmt: skip
    ticks = [{"y": round(TOP + inner_h * (1 - v / high), 1), "label": f"{v:g}"}
             for v in _ticks(low, high)]  # fmt: skip
    labels = [{"x": b["x"] + b["w"] / 2, "label": d["day"][5:]}
              for i, (b, d) in enumerate(zip(bars, days, strict=True)) if i % 5 == 0]  # fmt: skip
    return {"width": WIDTH, "height": HEIGHT, "left": LEFT, "right": WIDTH - RIGHT,
            "bottom": HEIGHT - BOTTOM, "bars": bars, "ticks": ticks, "labels": labels,
            "empty": top == 0}  # fmt: skip


def _span(values: list[float]) -> tuple[float, float]:
    if not values:
        return 0.0, 1.0
    low, high = min(values), max(values)
    pad = (high - low) * 0.1 or max(abs(high) * 0.1, 0.05)
    return low - pad, high + pad


def _ticks(low: float, high: float, n: int = 4) -> list[float]:
    return [low + (high - low) * i / n for i in range(n + 1)]

"""bench/quality.py's bookkeeping: the targets it checks, and two runs (one scenario
each, one per core) sharing one results file. The training and scoring it drives
are the cycle's own, tested in tests/retrain."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "quality.py"


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("quality_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["quality_bench"] = module
    spec.loader.exec_module(module)
    return module


def measured(headline: str, base: float, sanity_base: float, curve: dict) -> dict:
    """A scenario entry: ``curve`` maps size -> (headline metric, sanity accuracy)."""
    adapters = {
        str(size): {"metrics": {headline: value, "sanity_accuracy": sanity}}
        for size, (value, sanity) in curve.items()
    }
    return {
        "headline": headline,
        "heldout": 10,
        "base": {"metrics": {headline: base, "sanity_accuracy": sanity_base}},
        "adapters": adapters,
    }


def test_targets_are_checked_per_size(quality):
    results = {
        "scenarios": {
            "extraction": measured(
                "field_accuracy", 0.0, 0.60, {100: (0.40, 0.59), 200: (0.951, 0.57)}
            )
        }
    }
    quality.summarise(results)
    checks = results["targets"]["checks"]
    assert checks["extraction: field accuracy >= 0.95 at 200"] is True
    assert checks["extraction: half the base errors removed by 100"] is False  # 40% of them
    assert checks["extraction n=100: sanity drop <= 2 points"] is True
    assert checks["extraction n=200: sanity drop <= 2 points"] is False  # 3 points
    assert results["scenarios"]["extraction"]["adapters"]["200"]["sanity_drop_points"] == 3.0


def test_two_runs_sharing_the_results_folder_keep_each_others_scenario(quality, tmp_path):
    def args(scenario):  # noqa: ANN001, ANN202
        return quality.parse_args(["--scenarios", scenario, "--out", str(tmp_path)])

    extraction = {"scenarios": {"extraction": measured("field_accuracy", 0.0, 0.6, {})}}
    style = {"scenarios": {"style": measured("rule_adherence", 0.0, 0.6, {})}}
    quality.save(args("extraction"), extraction)
    quality.save(args("style"), style)
    extraction["scenarios"]["extraction"] = measured("field_accuracy", 0.0, 0.6, {200: (0.96, 0.6)})
    quality.save(args("extraction"), extraction)  # its own entry replaced, style's kept

    on_disk = json.loads((tmp_path / "quality.json").read_text())
    assert set(on_disk["scenarios"]) == {"extraction", "style"}
    assert on_disk["scenarios"]["style"] == style["scenarios"]["style"]
    saved = on_disk["scenarios"]["extraction"]["adapters"]["200"]
    assert saved["metrics"]["field_accuracy"] == 0.96
    assert on_disk["targets"]["checks"]["extraction: field accuracy >= 0.95 at 200"] is True

    style["scenarios"]["style"]["adapters"]["25"] = {
        "metrics": {"rule_adherence": 1.0, "sanity_accuracy": 0.6}
    }
    quality.save(args("style"), style)  # a stale copy of extraction is not written back
    on_disk = json.loads((tmp_path / "quality.json").read_text())
    assert "200" in on_disk["scenarios"]["extraction"]["adapters"]
    assert "25" in on_disk["scenarios"]["style"]["adapters"]

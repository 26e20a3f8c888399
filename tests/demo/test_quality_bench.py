"""bench/quality.py's bookkeeping: the targets it checks, and two runs (one scenario
each, one per core) sharing one results file. The training and scoring it drives
are the cycle's own, tested in tests/retrain."""

from __future__ import annotations

import json

import pytest

from tests.conftest import load_bench


@pytest.fixture(scope="module")
def quality():
    return load_bench("quality")


def measured(headline: str, base: float, sanity_base: float, curve: dict) -> dict:
    """A scenario entry: ``curve`` maps size -> (headline metric, sanity accuracy)."""

    def metrics(value: float, sanity: float) -> dict:  # with what the plot draws, if matplotlib
        return {
            headline: value,
            "format_valid": 1.0,
            "rule_greeting": 1.0,
            "sanity_accuracy": sanity,
        }

    adapters = {str(size): {"metrics": metrics(*point)} for size, point in curve.items()}
    return {
        "headline": headline,
        "heldout": 10,
        "base": {"metrics": metrics(base, sanity_base)},
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

    run = {"base_model": "/models/tiny", "device": "cpu"}
    extraction = {**run, "scenarios": {"extraction": measured("field_accuracy", 0.0, 0.6, {})}}
    style = {**run, "scenarios": {"style": measured("rule_adherence", 0.0, 0.6, {})}}
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

    style["scenarios"]["style"]["adapters"]["25"] = measured(
        "rule_adherence", 0.0, 0.6, {25: (1.0, 0.6)}
    )["adapters"]["25"]
    quality.save(args("style"), style)  # a stale copy of extraction is not written back
    on_disk = json.loads((tmp_path / "quality.json").read_text())
    assert "200" in on_disk["scenarios"]["extraction"]["adapters"]
    assert "25" in on_disk["scenarios"]["style"]["adapters"]

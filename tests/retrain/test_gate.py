"""The promotion gate: table-driven decisions, and failing closed."""

from __future__ import annotations

import json
import math

import pytest

from feedback.exceptions import InvalidInputError
from feedback.settings import Settings
from retrain.gate import GateResult, Thresholds, decide, higher_is_better

T = Thresholds()  # primary heldout_overlap, margin 0.01, tolerance 0.02, min_heldout 1
CHAMPION = {
    "heldout_overlap": 0.55,
    "heldout_exact": 0.30,
    "heldout_loss": 1.50,
    "golden_overlap": 0.80,
}


def candidate(**changes: float) -> dict[str, float]:
    return {**CHAMPION, "heldout_overlap": 0.71, "heldout_count": 20, **changes}


CASES = [
    # id, candidate, champion, thresholds, extra kwargs, passed, a reason that must appear
    ("improves", candidate(), CHAMPION, T, {}, True,
     "heldout_overlap 0.71 vs champion 0.55 (improvement +0.16 >= margin 0.01)"),
    ("exactly the margin", candidate(heldout_overlap=0.56), CHAMPION, T, {}, True,
     "improvement +0.01 >= margin 0.01"),
    ("below the margin", candidate(heldout_overlap=0.555), CHAMPION, T, {}, False,
     "improvement +0.005 < margin 0.01"),
    ("no change", candidate(heldout_overlap=0.55), CHAMPION, T, {}, False, "< margin 0.01"),
    ("regression beyond tolerance", candidate(golden_overlap=0.70), CHAMPION, T, {}, False,
     "golden_overlap regressed: 0.7 vs champion 0.8 (worse by 0.1 > tolerance 0.02)"),
    ("regression within tolerance", candidate(golden_overlap=0.79), CHAMPION, T, {}, True,
     "golden_overlap 0.79 vs champion 0.8 (within tolerance 0.02)"),
    ("loss rising beyond tolerance", candidate(heldout_loss=1.60), CHAMPION, T, {}, False,
     "heldout_loss regressed: 1.6 vs champion 1.5 (worse by 0.1 > tolerance 0.02)"),
    ("loss falling is no regression", candidate(heldout_loss=0.90), CHAMPION, T, {}, True,
     "heldout_loss 0.9 vs champion 1.5 (within tolerance 0.02)"),
    ("per-metric tolerance", candidate(golden_overlap=0.70), CHAMPION,
     Thresholds(tolerances={"golden_overlap": 0.2}), {}, True, "within tolerance 0.2"),
    ("loss as primary: lower wins", candidate(heldout_loss=1.20), CHAMPION,
     Thresholds(primary="heldout_loss"), {}, True,
     "heldout_loss 1.2 vs champion 1.5 (improvement +0.3 >= margin 0.01; lower is better)"),
    ("loss as primary: higher loses", candidate(heldout_loss=1.60), CHAMPION,
     Thresholds(primary="heldout_loss"), {}, False, "improvement -0.1 < margin 0.01"),
    ("no champion: beats the base", candidate(), None, T, {"base": {"heldout_overlap": 0.40}},
     True, "heldout_overlap 0.71 vs base model 0.4"),
    ("no champion: loses to the base", candidate(heldout_overlap=0.3), None, T,
     {"base": {"heldout_overlap": 0.40}}, False, "vs base model 0.4"),
    ("no champion, no base", candidate(), None, T, {}, False,
     "no champion and no base-model metrics to compare against"),
    ("candidate NaN", candidate(golden_overlap=math.nan), CHAMPION, T, {}, False,
     "candidate golden_overlap is NaN"),
    ("candidate primary NaN", candidate(heldout_overlap=math.nan), CHAMPION, T, {}, False,
     "candidate heldout_overlap is NaN"),
    ("candidate infinite loss", candidate(heldout_loss=math.inf), CHAMPION, T, {}, False,
     "candidate heldout_loss is infinite"),
    ("champion primary NaN", candidate(), {**CHAMPION, "heldout_overlap": math.nan}, T, {}, False,
     "champion heldout_overlap is NaN"),
    ("champion compared metric NaN", candidate(), {**CHAMPION, "golden_overlap": math.nan}, T, {},
     False, "champion golden_overlap is NaN: cannot compare"),
    ("not a number", candidate(golden_overlap=None), CHAMPION, T, {}, False,
     "candidate golden_overlap is not a number (None)"),
    ("empty held-out set", candidate(heldout_count=0), CHAMPION, T, {}, False,
     "only 0 held-out examples, at least 1 needed"),
    ("too few held-out", candidate(), CHAMPION, Thresholds(min_heldout=50), {}, False,
     "only 20 held-out examples, at least 50 needed"),
    ("explicit count wins", candidate(), CHAMPION, T, {"heldout_count": 0}, False,
     "only 0 held-out examples"),
    ("unknown count", {k: v for k, v in candidate().items() if k != "heldout_count"}, CHAMPION,
     T, {}, False, "the number of held-out examples is unknown"),
    ("crashed evaluation", candidate(), CHAMPION, T, {"error": "CUDA out of memory"}, False,
     "evaluation crashed: CUDA out of memory"),
    ("no candidate metrics", None, CHAMPION, T, {}, False,
     "no candidate metrics: the evaluation did not complete"),
    ("candidate lacks the primary", {"heldout_count": 5}, CHAMPION, T, {}, False,
     "candidate has no heldout_overlap metric"),
    ("champion lacks the primary", candidate(), {"golden_overlap": 0.8}, T, {}, False,
     "champion has no heldout_overlap metric"),
    ("candidate lacks a compared metric",
     {k: v for k, v in candidate().items() if k != "golden_overlap"}, CHAMPION, T, {}, False,
     "candidate has no golden_overlap though the champion has"),
    ("format limit met", candidate(format_json_rate=1.0), CHAMPION,
     Thresholds(limits={"format_json_rate": 1.0}), {}, True,
     "format_json_rate 1 >= required minimum 1"),
    ("format limit missed", candidate(format_json_rate=0.9), CHAMPION,
     Thresholds(limits={"format_json_rate": 1.0}), {}, False,
     "format_json_rate 0.9 < required minimum 1"),
    ("format metric missing", candidate(), CHAMPION,
     Thresholds(limits={"format_json_rate": 1.0}), {}, False,
     "candidate has no format_json_rate, which must be checked"),
    ("loss ceiling", candidate(heldout_loss=1.45), CHAMPION,
     Thresholds(limits={"heldout_loss": 1.0}), {}, False, "heldout_loss 1.45 > allowed maximum 1"),
    ("counts are not compared", candidate(positives_count=3), {**CHAMPION, "positives_count": 9},
     T, {}, True, "heldout_overlap 0.71 vs champion 0.55"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("cand", "champion", "thresholds", "kwargs", "passed", "reason"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_decide(cand, champion, thresholds, kwargs, passed, reason):
    result = decide(cand, champion, thresholds, **kwargs)
    assert result.passed is passed, result.reasons
    assert any(reason in r for r in result.reasons), result.reasons


def test_a_pass_lists_every_check_with_its_numbers():
    result = decide(candidate(), CHAMPION, T)
    assert result.passed
    assert result.compared_to == "champion"
    assert len(result.reasons) == 4  # the primary, then heldout_exact, golden_overlap, loss
    assert result.reasons[0].startswith("heldout_overlap 0.71 vs champion 0.55")


def test_a_failure_reports_every_regression_not_just_the_first():
    result = decide(candidate(golden_overlap=0.1, heldout_exact=0.1), CHAMPION, T)
    regressions = [r for r in result.reasons if "regressed" in r]
    assert not result.passed and len(regressions) == 2


def test_a_champion_takes_precedence_over_the_base():
    result = decide(candidate(), CHAMPION, T, base={"heldout_overlap": 0.99})
    assert result.passed and result.compared_to == "champion"


def test_the_result_serializes_to_json_with_its_thresholds():
    data = decide(candidate(), CHAMPION, Thresholds(limits={"heldout_exact": 0.1})).to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["passed"] is True
    assert data["thresholds"]["limits"] == {"heldout_exact": 0.1}
    assert Thresholds.from_dict(data["thresholds"]) == Thresholds(limits={"heldout_exact": 0.1})


def test_a_fail_closed_result_serializes_too():
    data = decide(None, CHAMPION, T, error="boom").to_dict()
    assert data == {
        "passed": False,
        "reasons": ["evaluation crashed: boom"],
        "compared_to": "champion",
        "thresholds": T.to_dict(),
    }
    assert GateResult(False, []).to_dict()["thresholds"] is None


@pytest.mark.parametrize(
    ("metric", "higher"),
    [("heldout_overlap", True), ("heldout_exact", True), ("heldout_loss", False),
     ("golden_perplexity", False), ("format_json_rate", True)],
)  # fmt: skip
def test_metric_direction_follows_the_name(metric, higher):
    assert higher_is_better(metric) is higher


@pytest.mark.parametrize(
    "kwargs",
    [{"margin": -0.1}, {"tolerance": math.nan}, {"min_heldout": 0}, {"min_heldout": 1.5},
     {"tolerances": {"golden_overlap": -1}}, {"limits": {"x": math.inf}},
     {"primary": "heldout_count"}],
)  # fmt: skip
def test_nonsense_thresholds_are_refused(kwargs):
    with pytest.raises(InvalidInputError):
        Thresholds(**kwargs)


def test_unknown_threshold_keys_are_refused():
    with pytest.raises(InvalidInputError, match="unknown gate thresholds: marginn"):
        Thresholds.from_dict({"marginn": 0.1})


def test_settings_give_margin_tolerance_and_canary_gain_the_rest_keeps_defaults():
    settings = Settings(gate_margin=0.05, gate_tolerance=0.1, canary_max_gain=0.5)
    assert Thresholds.from_settings(settings) == Thresholds(
        margin=0.05, tolerance=0.1, canary_max_gain=0.5
    )
    assert Thresholds.from_settings(Settings()) == Thresholds()  # same defaults both sides

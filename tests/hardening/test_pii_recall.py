"""Personal data in feedback text: recall of the scrubber on a seeded synthetic
corpus embedded in real banking77 messages, false positives on every clean
banking77 message, and bounded time on megabyte inputs. The corpus generator
and the measurement are ``bench/pii_recall.py`` (run it for the full report)."""

from __future__ import annotations

import pytest

from tests.conftest import load_bench


@pytest.fixture(scope="module")
def bench():
    module = load_bench("pii_recall")
    if not module.BANKING77.exists():
        pytest.skip(f"{module.BANKING77} is not available")
    return module


@pytest.fixture(scope="module")
def sentences(bench):
    return bench.banking77()


def test_recall_per_kind_meets_the_targets(bench, sentences):
    result = bench.measure_recall(sentences, per_kind=300, seed=2026)
    for kind, target in bench.TARGETS.items():
        assert result["recall"][kind] >= target, (kind, result["recall"], result["misses"][kind])


def test_no_clean_customer_message_is_changed(bench, sentences):
    assert len(sentences) > 13_000
    assert bench.false_positives(sentences) == []


def test_megabyte_inputs_take_bounded_cpu_time(bench, sentences):
    # The other adversarial shapes are timed by tests/retrain/test_pii.py.
    measured = bench.timings(sentences, seed=5, only=("dense", "postcodes", "towns"))
    assert len(measured) == 3
    for name, seconds in measured.items():
        assert seconds < 3.0, (name, seconds)

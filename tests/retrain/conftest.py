"""Fixtures for the pure retraining modules: real customer messages from banking77."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

# shared/ lies beside the repository (as in CI's clean clone).
BANKING77 = Path(__file__).resolve().parents[3] / "shared" / "data" / "banking77" / "train.csv"


@pytest.fixture(scope="session")
def banking77() -> list[str]:
    """The customer messages of banking77's training split, in file order."""
    if not BANKING77.exists():
        pytest.skip(f"{BANKING77} is not available")
    with BANKING77.open(newline="", encoding="utf-8") as f:
        return [row["text"] for row in csv.DictReader(f)]


@pytest.fixture
def cycle_settings(settings, tiny_model):
    """Settings under which a real cycle on the tiny model learns 12 corrections."""
    return settings.model_copy(
        update={
            "base_model": tiny_model,
            "min_new_examples": 5,
            "epochs": 6,
            "batch_size": 4,
            "learning_rate": 1e-2,
            "heldout_fraction": 0.25,
            "seed": 3,
        }
    )


@pytest.fixture
def fake_settings(settings, tmp_path):
    """Settings for cycles with faked children (:mod:`tests.retrain.fakes`)."""
    base = tmp_path / "base-model"  # a model folder with no weights: no shapes to check
    base.mkdir()
    (base / "config.json").write_text("{}")
    return settings.model_copy(
        update={"base_model": str(base), "min_new_examples": 5, "heldout_fraction": 0.25}
    )

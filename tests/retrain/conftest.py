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

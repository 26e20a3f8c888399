"""Training examples shared by the retrain tests: real customer messages from
banking77 (card_arrival intent) that agents answer with one JSON routing object."""

from __future__ import annotations

import csv

import pytest

from tests.retrain.conftest import BANKING77

ROUTING_ANSWER = '{"intent": "card_arrival", "team": "cards"}'


def card_questions(count: int) -> list[str]:
    if not BANKING77.exists():
        pytest.skip(f"{BANKING77} is not available", allow_module_level=True)
    with BANKING77.open(newline="", encoding="utf-8") as f:
        rows = [r["text"] for r in csv.DictReader(f) if r["category"] == "card_arrival"]
    return rows[:count]

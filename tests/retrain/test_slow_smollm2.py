"""Slow tier, real SmolLM2-135M-Instruct: agents' corrections teach a format the
base model does not follow (a JSON routing object), a cycle promotes the
adapter, and on held-out customer messages the adapter answers in that format
far more often than the base model.

    .venv/bin/pytest -m slow tests/retrain/test_slow_smollm2.py   (about 6 minutes)
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from feedback import store
from retrain.base_model import resolve_base_model
from retrain.cycle import run_cycle

pytestmark = pytest.mark.slow
BANKING77 = Path(__file__).resolve().parents[3] / "shared" / "data" / "banking77" / "train.csv"
INTENTS = {
    "card_arrival": "cards",
    "lost_or_stolen_card": "fraud",
    "top_up_failed": "payments",
    "exchange_rate": "fx",
}


def examples(count: int, seed: int) -> list[tuple[str, str]]:
    with BANKING77.open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["category"] in INTENTS]
    random.Random(seed).shuffle(rows)
    return [
        (r["text"], json.dumps({"intent": r["category"], "team": INTENTS[r["category"]]}))
        for r in rows[:count]
    ]


def is_routing_json(answer: str) -> bool:
    try:
        parsed = json.loads(answer)
    except ValueError:
        return False
    return isinstance(parsed, dict) and {"intent", "team"} <= set(parsed)


@pytest.fixture
def smollm2_settings(settings, tmp_path_factory):
    # Converting the GGUF takes ~20 s; share the converted folder across the session.
    return settings.model_copy(
        update={
            "data_dir": tmp_path_factory.getbasetemp() / "smollm2-data",
            "min_new_examples": 20,
            "epochs": 5,
            "batch_size": 8,
            "learning_rate": 1e-3,
            "max_example_tokens": 256,
        }
    )


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_corrections_teach_a_format_the_base_model_lacks(smollm2_settings, engine):
    with Session(engine) as session:
        for text, answer in examples(80, seed=1):
            c = store.create_completion(
                session,
                messages=[{"role": "user", "content": text}],
                response="Thanks for reaching out!",
                model="smollm2",
            )
            store.add_correction(
                session, completion_id=c.id, corrected_response=answer, author="agent"
            )
        session.commit()
    result = run_cycle(smollm2_settings, engine)
    assert result.status == "promoted", result.gate
    # Fresh messages the cycle never saw, held out from training and evaluation.
    fresh = [t for t, _ in examples(120, seed=1)[80:]]
    base_dir = resolve_base_model(None, smollm2_settings.data_dir)
    adapter_dir = smollm2_settings.data_dir / "adapters" / result.adapter
    answers = _answers(base_dir, adapter_dir, fresh)
    base_rate = sum(map(is_routing_json, answers["base"])) / len(fresh)
    adapter_rate = sum(map(is_routing_json, answers["candidate"])) / len(fresh)
    print(
        f"routing JSON on {len(fresh)} fresh messages: base {base_rate:.0%}, "
        f"adapter {adapter_rate:.0%}"
    )
    assert adapter_rate >= 0.8 and adapter_rate >= base_rate + 0.5


def _answers(base_dir: Path, adapter_dir: Path, texts: list[str]) -> dict:
    from retrain.evaluate import Scorer  # the same scorer the gate uses

    scorer = Scorer(str(base_dir), {"candidate": str(adapter_dir)})
    prompts = [[{"role": "user", "content": t}] for t in texts]
    out = {}
    for name in ("base", "candidate"):
        with scorer.use(name):
            out[name] = scorer.generate(prompts, max_new_tokens=48, batch=8)
    return out

"""Helpers shared by the cycle tests: feedback seeded into a lane, and a cycle whose
training and evaluation children are faked (a LoRA-shaped folder, fixed metrics
that pass the gate), so it takes seconds while the lease, the store, the lanes and
the registry stay real."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from feedback import lanes, store
from feedback.models import DEFAULT_LANE
from retrain import steps
from retrain.train import TrainJob
from tests.retrain.conftest import BANKING77
from tests.retrain.examples import ROUTING_ANSWER, card_questions

QUESTIONS = card_questions(12)
ANSWER = ROUTING_ANSWER
PASSING = {
    "candidate": {"heldout_overlap": 0.9, "heldout_loss": 0.5, "heldout_count": 3},
    "base": {"heldout_overlap": 0.1, "heldout_loss": 2.0, "heldout_count": 3},
}


def questions_of(category: str, count: int) -> list[str]:
    """``count`` banking77 customer messages of one intent."""
    if not BANKING77.exists():
        pytest.skip(f"{BANKING77} is not available")
    with BANKING77.open(newline="", encoding="utf-8") as f:
        rows = [r["text"] for r in csv.DictReader(f) if r["category"] == category]
    if len(rows) < count:
        raise ValueError(f"banking77 has {len(rows)} messages of {category!r}, not {count}")
    return rows[:count]


def add_lane(engine, name: str, **overrides) -> None:  # noqa: ANN003
    with Session(engine) as session:
        lanes.create_lane(session, name=name, settings=overrides)
        session.commit()


def seed_corrections(
    engine, questions=QUESTIONS, answer=ANSWER, lane: str = DEFAULT_LANE
) -> list[str]:
    """One completion per question in ``lane``, each corrected to ``answer``."""
    ids = []
    with Session(engine) as session:
        for question in questions:
            completion = store.create_completion(
                session,
                messages=[{"role": "user", "content": question}],
                response="I am not sure.",
                model="tiny",
                lane=lane,
            )
            store.add_correction(
                session, completion_id=completion.id, corrected_response=answer, author="agent-1"
            )
            ids.append(completion.id)
        session.commit()
    return ids


def fake_children(monkeypatch, during_training=None, metrics=PASSING) -> list:
    """Training writes an adapter folder after calling ``during_training(job, job_file)``;
    evaluation returns ``metrics``; there is nothing to probe. Returns the jobs launched."""
    launched = []

    def launch(job, job_file, *, timeout_s=None):
        launched.append(job)
        if not isinstance(job, TrainJob):
            return metrics
        if during_training is not None:
            during_training(job, job_file)
        make_adapter(job.adapter_dir, base=job.base_model)
        return {"sft": {"steps": 1}}

    monkeypatch.setattr(steps, "launch", launch)
    monkeypatch.setattr(steps, "run_probe", lambda *a, **k: {"skipped": "faked"})
    return launched


def make_adapter(folder: Path, *, base: str) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    save_file(
        {
            "base_model.model.q_proj.lora_A.weight": rng.standard_normal((4, 16), np.float32),
            "base_model.model.q_proj.lora_B.weight": rng.standard_normal((16, 4), np.float32),
        },
        str(folder / "adapter_model.safetensors"),
    )
    config = {"base_model_name_or_path": base, "peft_type": "LORA", "r": 4}
    (folder / "adapter_config.json").write_text(json.dumps(config))

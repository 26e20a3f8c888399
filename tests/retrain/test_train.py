"""Trainer mechanics on the tiny random model: the loss is logged each step, it
goes down, every LoRA parameter changes, and the adapter saves as safetensors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from retrain.train import TrainConfig, TrainJob, build_sft_trainer, train_adapter
from tests.retrain.examples import ROUTING_ANSWER, card_questions

QUESTIONS = card_questions(8)
ANSWER = ROUTING_ANSWER


def make_job(tiny_model, tmp_path, **config) -> TrainJob:
    rows = [
        {"prompt": [{"role": "user", "content": q}], "completion": ANSWER, "kind": "sft"}
        for q in QUESTIONS
    ]
    defaults = {"epochs": 3, "batch_size": 4, "learning_rate": 5e-3, "seed": 7}
    return TrainJob(
        base_model=tiny_model,
        out_dir=str(tmp_path),
        sft=rows,
        config=TrainConfig(**{**defaults, **config}),
        run_id="test",
    )


def test_every_lora_parameter_changes_and_loss_falls(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    job = make_job(tiny_model, tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    trainer = build_sft_trainer(job, model, tokenizer, tmp_path)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert before and all("lora_" in n for n in before)
    trainer.train()
    after = dict(trainer.model.named_parameters())
    unchanged = [n for n, p in before.items() if torch.equal(p, after[n].detach())]
    assert unchanged == []
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == trainer.state.global_step and losses[-1] < losses[0]


def test_train_adapter_saves_safetensors_and_a_record(tiny_model, tmp_path, caplog):
    caplog.set_level("INFO", logger="retrain.train")
    record = train_adapter(make_job(tiny_model, tmp_path, epochs=1))
    adapter = tmp_path / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    assert not list(adapter.glob("*.bin"))
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["base_model_name_or_path"] == tiny_model
    saved = json.loads((tmp_path / "train_result.json").read_text())
    assert saved["sft"]["steps"] == 2 and saved["tokens_seen"] > 0
    assert saved["config"]["learning_rate"] == 5e-3 and saved["duration_s"] > 0
    assert record["sft"]["losses"] == saved["sft"]["losses"]
    assert "run test sft step 2/2 loss" in caplog.text


@pytest.mark.parametrize(
    ("examples", "epochs"),
    [(25, 5), (100, 5), (200, 2.56), (512, 1), (5000, 1)],
)
def test_large_sets_get_fewer_epochs_but_at_least_one(examples, epochs):
    config = TrainConfig(epochs=5, max_examples=512, max_answer_tokens=0)
    assert config.epochs_for(examples) == pytest.approx(epochs)
    assert TrainConfig(epochs=5, max_examples=0).epochs_for(examples) == 5


@pytest.mark.parametrize(
    ("examples", "answer_tokens", "epochs"),
    [
        (100, 4_371, 5),  # 100 house-style corrections: 21,855 tokens in 5 epochs
        (200, 8_850, 22_000 / 8_850),  # 200 of them: about 2.5 epochs
        (200, 4_293, 4),  # 200 extraction records: the example cap, 4 epochs
        (100, 2_149, 5),
        (50, 40_000, 1),  # long answers: one epoch, however long
    ],
)
def test_long_answers_get_fewer_epochs(examples, answer_tokens, epochs):
    config = TrainConfig()  # the defaults: 5 epochs, 800 examples, 22,000 answer tokens
    assert config.epochs_for(examples, answer_tokens) == pytest.approx(epochs)
    uncapped = TrainConfig(max_examples=0, max_answer_tokens=0)
    assert uncapped.epochs_for(examples, answer_tokens) == 5
    assert TrainConfig(epochs=0.5).epochs_for(examples, answer_tokens) == 0.5


def test_the_trainer_runs_the_capped_epochs(tiny_model, tmp_path):
    # 8 examples, batch 4: 3 epochs would be 6 steps; a cap of 12 examples is 1.5 epochs.
    record = train_adapter(make_job(tiny_model, tmp_path, epochs=3, max_examples=12))
    assert record["sft"]["epochs"] == 1.5 and record["sft"]["steps"] == 3


def test_the_trainer_counts_answer_tokens_for_the_cap(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    tokens = len(AutoTokenizer.from_pretrained(tiny_model)(ANSWER)["input_ids"]) * len(QUESTIONS)
    job = make_job(tiny_model, tmp_path, epochs=3, max_answer_tokens=tokens * 3 // 2)
    record = train_adapter(job)
    assert record["sft"]["answer_tokens_per_epoch"] == tokens
    assert record["sft"]["epochs"] == 1.5 and record["sft"]["steps"] == 3


def test_same_seed_same_adapter(tiny_model, tmp_path):
    from safetensors.torch import load_file

    first = train_adapter(make_job(tiny_model, tmp_path / "a", epochs=1))
    second = train_adapter(make_job(tiny_model, tmp_path / "b", epochs=1))
    assert first["sft"]["losses"] == second["sft"]["losses"]
    a = load_file(tmp_path / "a" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "b" / "adapter" / "adapter_model.safetensors")
    assert all(torch.allclose(a[k], b[k]) for k in a)


def test_dpo_stage_trains_on_preference_pairs(tiny_model, tmp_path):
    job = make_job(tiny_model, tmp_path, epochs=1, dpo=True)
    job.preferences = [
        {"prompt": r["prompt"], "chosen": ANSWER, "rejected": "I don't know."} for r in job.sft
    ]
    record = train_adapter(job)
    assert record["dpo"]["steps"] == 2 and record["dpo"]["losses"]


def test_training_runs_as_a_child_process(tiny_model, tmp_path):
    job = make_job(tiny_model, tmp_path, epochs=1)
    job.save(tmp_path / "job.json")
    done = subprocess.run(
        [sys.executable, "-m", "retrain.train", str(tmp_path / "job.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "run test sft step 1/2 loss" in done.stderr
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()

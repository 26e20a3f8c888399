"""The evaluator's likelihoods: options sharing a prompt are scored in one batch with the
prompt's cache repeated, and must equal a plain forward pass over each whole sequence."""

from __future__ import annotations

import json

import pytest
import torch

from retrain.evaluate import Scorer

QUESTIONS = [
    ([{"role": "user", "content": "What is the capital of France?"}], ["Paris", "Berlin", "Rome"]),
    ([{"role": "user", "content": "What is 7 plus 5?"}], ["12", "Thirteen", "A dozen eggs"]),
    ([{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "Hi"}], ["{}"]),
]


def whole_sequence_loss(scorer: Scorer, messages: list[dict], answer: str) -> float:
    prompt = scorer._prompt_ids(messages)
    ids = scorer.tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": answer}], tokenize=True, return_dict=True
    )["input_ids"]
    tensor = torch.tensor([ids])
    labels = tensor.clone()
    labels[:, : len(prompt)] = -100
    with torch.no_grad():
        return float(scorer.model(input_ids=tensor, labels=labels).loss)


def test_batched_answer_losses_equal_whole_sequence_losses(tiny_model):
    scorer = Scorer(tiny_model, {})
    pairs = [(messages, option) for messages, options in QUESTIONS for option in options]
    # interleave prompts, so grouping by prompt must put each loss back in its place
    pairs = pairs[::2] + pairs[1::2]

    losses = scorer.answer_losses(pairs)

    expected = [whole_sequence_loss(scorer, m, a) for m, a in pairs]
    assert losses == pytest.approx(expected, abs=1e-4)
    assert len(set(losses)) == len(losses)  # a random model still tells the options apart


def test_generation_under_a_schema_writes_records_of_that_schema(tiny_model):
    schema = {
        "type": "object",
        "properties": {"topic": {"enum": ["card", "cash"]}, "card": {"type": "boolean"}},
        "required": ["topic", "card"],
    }
    scorer = Scorer(tiny_model, {})
    prompts = [messages for messages, _ in QUESTIONS]

    free = scorer.generate(prompts, 30, batch=2)
    constrained = scorer.generate(prompts, 30, batch=2, schema=schema)

    assert not any(answer.startswith("{") for answer in free)  # a random model writes no JSON
    for answer in constrained:
        record = json.loads(answer)
        assert record["topic"] in ("card", "cash") and isinstance(record["card"], bool)

"""Structured output (``response_format``): the tokenizer's bytes, and decoding under a
schema on the tiny random model, whose free answers are never JSON."""

from __future__ import annotations

import json
import time

import pytest
from transformers import AutoTokenizer

from feedback.structured import token_bytes
from serve.engine import ModelEngine
from serve.schemas import ChatRequestError
from serve.worker import Job
from tests.serve.support import MESSAGES

SCHEMA = {
    "type": "object",
    "properties": {
        "topic": {"enum": ["card", "cash", "top_up"]},
        "urgent": {"type": "boolean"},
    },
    "required": ["topic", "urgent"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def engine(tiny_base) -> ModelEngine:
    return ModelEngine(tiny_base)


class Lease:
    adapter = version = None

    def release(self) -> None:
        pass


def run(engine: ModelEngine, *jobs: Job) -> list[Job]:
    engine.generate(list(jobs))
    return list(jobs)


def job(engine: ModelEngine, schema: dict | None, **kw) -> Job:  # noqa: ANN003
    kw = {"max_tokens": 40, "temperature": 0, **kw}
    return Job(
        prompt=engine.encode_chat(MESSAGES), lease=Lease(), grammar=engine.grammar(schema), **kw
    )


@pytest.mark.parametrize("text", ["Hello wörld, £20 → 😀", '{"topic": "top_up"}\n\tend'])
def test_token_bytes_spell_every_token_exactly(tiny_base, text):
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    spelled = {token_id: raw for raw, ids in token_bytes(tokenizer).items() for token_id in ids}
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert b"".join(spelled[i] for i in ids) == text.encode()
    assert not set(tokenizer.all_special_ids) & set(spelled)


def test_an_answer_under_a_schema_is_valid_json_of_that_schema(engine):
    free, constrained, sampled = run(
        engine,
        job(engine, None),
        job(engine, SCHEMA),
        job(engine, SCHEMA, temperature=1.0, seed=3),
    )
    # generate warps (temperature, top-p) after our mask: the nucleus holds allowed tokens.
    (nucleus,) = run(engine, job(engine, SCHEMA, temperature=0.05, top_p=0.05, seed=5))
    with pytest.raises(ValueError):
        json.loads(free.text)  # the random model writes no JSON of its own
    for answer in (constrained, sampled, nucleus):
        record = json.loads(answer.text)
        assert list(record) == ["topic", "urgent"]
        assert record["topic"] in SCHEMA["properties"]["topic"]["enum"]
        assert isinstance(record["urgent"], bool)
        assert answer.finish_reason == "stop"


def test_a_constrained_row_leaves_its_neighbours_in_the_batch_alone(engine):
    (alone,) = run(engine, job(engine, None))
    free, constrained = run(engine, job(engine, None), job(engine, SCHEMA))
    assert free.text == alone.text
    assert json.loads(constrained.text)["topic"] in ("card", "cash", "top_up")


def test_any_json_object_and_a_too_short_budget(engine):
    short = job(engine, {"type": "object"}, max_tokens=3)
    (short,) = run(engine, short)
    assert short.finish_reason == "length" and short.text.startswith("{")


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "wat"}, "not supported"),
        ({"type": "object", "properties": {"x": {"$ref": "#/nowhere"}}}, "not supported"),
        ({"enum": ["x" * 20_000]}, "over 16384 characters"),
    ],
)
def test_a_schema_that_cannot_be_compiled_is_a_request_error(engine, schema, message):
    with pytest.raises(ChatRequestError, match=message):
        engine.grammar(schema)


def test_a_schema_too_costly_to_compile_is_refused_in_time_and_remembered(engine, monkeypatch):
    monkeypatch.setattr(engine.grammars, "timeout", 2)
    costly = {"type": "string", "maxLength": 300}  # minutes of compiling, left alone
    started = time.monotonic()
    with pytest.raises(ChatRequestError, match="took over 2 s to compile"):
        engine.grammar(costly)
    assert time.monotonic() - started < 10
    started = time.monotonic()
    with pytest.raises(ChatRequestError, match="took over 2 s"):
        engine.grammar(costly)
    assert time.monotonic() - started < 0.5  # remembered, not compiled again
    assert engine.grammar(SCHEMA) is not None  # other schemas still compile

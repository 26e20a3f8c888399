"""Structured output (``response_format``): the tokenizer's bytes, and decoding under a
schema on the tiny random model, whose free answers are never JSON."""

from __future__ import annotations

import io
import json
import threading
import time
from dataclasses import replace

import pytest
import requests
from transformers import AutoTokenizer

from feedback.structured import MIB, CompileLimits, _read_at_most, token_bytes
from serve.engine import ModelEngine
from serve.schemas import ChatRequestError, OverloadedError
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
    monkeypatch.setattr(engine.grammars, "limits", replace(engine.grammars.limits, seconds=2))
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


def test_a_cached_schema_is_served_while_another_compiles(engine, monkeypatch):
    engine.grammar(SCHEMA)
    monkeypatch.setattr(engine.grammars, "limits", replace(engine.grammars.limits, seconds=4))
    refused = []

    def compile_slowly() -> None:
        with pytest.raises(ChatRequestError, match="took over 4 s") as caught:
            engine.grammar({"type": "string", "maxLength": 299})
        refused.append(caught.value)

    slow = threading.Thread(target=compile_slowly)
    slow.start()
    deadline = time.monotonic() + 5
    while not engine.grammars.compiling and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    assert engine.grammar(SCHEMA) is not None  # cached: served at once
    with pytest.raises(OverloadedError, match="being compiled") as busy:
        engine.grammar({"enum": ["another"]})  # not cached: a 503, not a wait
    assert time.monotonic() - started < 1 and engine.grammars.compiling
    assert busy.value.status == 503 and 1 <= busy.value.retry_after <= 4
    slow.join(20)
    assert refused and engine.grammar({"enum": ["another"]}) is not None  # its turn now


# 71 bytes of schema; its child wants 2.2 GB and its index pickles to 537 MiB.
BIG = {"type": "array", "items": {"type": "string", "maxLength": 40}, "maxItems": 40}


def test_an_index_over_the_limit_is_refused_and_the_cache_is_bounded_in_bytes(tiny_base):
    limits = CompileLimits(index_bytes=MIB, cache_bytes=MIB)
    engine = ModelEngine(tiny_base, schema_limits=limits)
    with pytest.raises(ChatRequestError, match="compiled index is over 1 MiB"):
        engine.grammar({"type": "string", "maxLength": 10})  # 1.3 MiB pickled
    for length in (8, 7, 6):  # 0.8, 0.6 and 0.4 MiB pickled
        assert engine.grammar({"type": "string", "maxLength": length}) is not None
        assert 0 < engine.grammars.cached_bytes <= MIB
    assert engine.grammar(SCHEMA) is not None


def test_the_compile_output_is_read_no_further_than_the_limit():
    assert _read_at_most(io.BufferedReader(io.BytesIO(b"x" * 10)), 10) == b"x" * 10
    assert _read_at_most(io.BufferedReader(io.BytesIO(b"x" * 11)), 10) is None


def test_over_http_a_costly_schema_is_a_400_and_a_compile_in_progress_a_503(
    start_server, monkeypatch
):
    live = start_server(serve_schema_memory_mb=256)
    grammars = live.backend.engine.grammars
    assert grammars.limits.memory_bytes == 256 * MIB  # TUNEBACK_SERVE_SCHEMA_MEMORY_MB

    def ask(schema: dict) -> requests.Response:
        fmt = {"type": "json_schema", "json_schema": {"name": "t", "schema": schema}}
        body = {"model": "default", "messages": MESSAGES, "max_tokens": 4, "response_format": fmt}
        url, headers = f"{live.url}/v1/chat/completions", live.headers("server")
        return requests.post(url, json=body, headers=headers, timeout=60)

    big = ask(BIG)
    assert big.status_code == 400 and big.json()["error"]["code"] == "invalid_request"
    assert "needs over 256 MiB of memory" in big.json()["error"]["message"]
    assert ask(SCHEMA).status_code == 200
    monkeypatch.setattr(grammars, "limits", replace(grammars.limits, seconds=4))
    slow = threading.Thread(target=ask, args=({"type": "string", "maxLength": 298},))
    slow.start()
    deadline = time.monotonic() + 5
    while not grammars.compiling and time.monotonic() < deadline:
        time.sleep(0.01)
    cached, busy = ask(SCHEMA), ask({"enum": ["yet another"]})
    assert grammars.compiling  # both answered while the slow one compiles
    slow.join(20)
    assert cached.status_code == 200
    assert busy.status_code == 503 and busy.json()["error"]["code"] == "overloaded"
    assert 1 <= int(busy.headers["Retry-After"]) <= 4

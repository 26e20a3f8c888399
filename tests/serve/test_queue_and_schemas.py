"""Chat request validation and the bounded job queue, without a model."""

from __future__ import annotations

import threading

import pytest

from serve.schemas import ChatRequestError, OverloadedError, parse_chat_request
from serve.worker import Job, JobQueue, ModelWorker

USER = [{"role": "user", "content": "hello"}]


def chat(**fields):  # noqa: ANN003, ANN201
    return parse_chat_request({"model": "default", "messages": USER, **fields})


def test_openai_fields_are_accepted_and_normalised():
    request = chat(
        max_completion_tokens=5, max_tokens=9, temperature=0, top_p=0.5, stop="x", seed=3,
        stream=True, stream_options={"include_usage": True}, n=1, user="u-1",
        metadata={"ticket": "42"},
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi "},
                                         {"type": "text", "text": "there"}]},
        ],
    )  # fmt: skip
    assert request.requested_tokens == 5  # the newer name wins
    assert request.stops == ("x",) and request.include_usage
    assert request.plain_messages() == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi there"},
    ]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": ""}]}, "messages.0.content"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
        ({"temperature": "warm"}, "temperature"),
        ({"temperature": 3}, "temperature"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"top_p": 0}, "top_p"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"n": 2}, "n"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"frobnicate": 1}, "unrecognized request argument supplied: frobnicate"),
        ({"logit_bias": {"1": 5}}, "logit_bias: .* is not supported by this server"),
        ({"messages": [{"role": "user", "content": "a\x00b"}]}, "NUL"),
    ],
)
def test_bad_requests_say_what_is_wrong(fields, message):
    with pytest.raises(ChatRequestError, match=message) as caught:
        chat(**fields)
    assert caught.value.status == 400 and caught.value.code == "invalid_request"


@pytest.mark.parametrize(
    ("response_format", "schema"),
    [
        (None, None),
        ({"type": "text"}, None),
        ({"type": "json_object"}, {"type": "object"}),
        (
            {"type": "json_schema", "json_schema": {"name": "t", "schema": {"enum": ["a"]}}},
            {"enum": ["a"]},
        ),
        ({"type": "json_schema", "json_schema": {"name": "t", "strict": True}}, {"type": "object"}),
    ],
)
def test_response_format_names_the_schema_to_decode_under(response_format, schema):
    assert chat(response_format=response_format).output_schema == schema


@pytest.mark.parametrize(
    ("response_format", "message"),
    [
        ({"type": "json_schema"}, "json_schema: required"),
        ({"type": "text", "json_schema": {"name": "t"}}, "json_schema: required"),
        ({"type": "yaml"}, "response_format.type"),
        (
            {"type": "json_schema", "json_schema": {"schema": {}}},
            "response_format.json_schema.name",
        ),
        ({"type": "json_schema", "json_schema": {"name": "a b"}}, "json_schema.name"),
        ({"type": "json_schema", "json_schema": {"name": "t", "schema": []}}, "schema"),
    ],
)
def test_a_bad_response_format_says_what_is_wrong(response_format, message):
    with pytest.raises(ChatRequestError, match=message):
        chat(response_format=response_format)


def test_the_body_must_be_an_object():
    with pytest.raises(ChatRequestError, match="JSON object"):
        parse_chat_request(["not", "an", "object"])


class FakeLease:
    def __init__(self, adapter: str | None = "a") -> None:
        self.adapter, self.version, self.released = adapter, adapter, 0

    def release(self) -> None:
        self.released += 1


def job(adapter: str | None = "a", prompt: int = 3, max_tokens: int = 4, **kw) -> Job:  # noqa: ANN003
    return Job(prompt=[1] * prompt, max_tokens=max_tokens, lease=FakeLease(adapter), **kw)


def test_a_full_queue_refuses_at_once_with_a_retry_hint():
    jobs = JobQueue(2)
    jobs.put(job())
    jobs.put(job())
    with pytest.raises(OverloadedError) as caught:
        jobs.put(job())
    assert caught.value.status == 503 and caught.value.retry_after >= 1


def test_batches_join_compatible_jobs_in_order_and_leave_the_rest():
    jobs = JobQueue(10, context_length=20, mixed=False)  # one adapter per batch
    a1, b1, a2, seeded = job("a"), job("b"), job("a"), job("a", seed=1)
    a3, long = job("a", temperature=0.5), job("a", prompt=15, max_tokens=10)
    for item in (a1, b1, a2, seeded, a3, long):
        jobs.put(item)
    assert jobs.take(max_batch=4) == [a1, a2]  # not b, not seeded, not other sampling, not too long
    assert jobs.take(max_batch=4) == [b1]
    assert jobs.take(max_batch=4) == [seeded]  # a seeded job runs alone
    assert jobs.take(max_batch=4) == [a3]
    assert jobs.take(max_batch=4) == [long]
    assert jobs.take(max_batch=4, timeout=0.01) == []


def test_the_worker_finishes_and_releases_every_job_even_when_generation_fails():
    jobs = JobQueue(10)

    def generate(batch: list[Job]) -> None:
        if batch[0].lease.adapter == "broken":
            raise RuntimeError("boom")
        for item in batch:
            item.finish("stop", "ok", 1)

    worker = ModelWorker(jobs, generate, max_batch=2)
    worker.start()
    good, bad, cancelled = job("a"), job("broken"), job("a")
    cancelled.cancel()
    for item in (cancelled, good, bad):
        jobs.put(item)
    for item in (cancelled, good, bad):
        assert item.wait(10)
    worker.stop()
    assert (good.text, good.finish_reason) == ("ok", "stop")
    assert isinstance(bad.error, RuntimeError)
    assert cancelled.finish_reason == "cancelled"
    assert [j.lease.released for j in (cancelled, good, bad)] == [1, 1, 1]


def test_stopping_the_worker_fails_waiting_jobs_instead_of_leaving_them_hanging():
    jobs = JobQueue(10)
    gate = threading.Event()
    worker = ModelWorker(jobs, lambda batch: gate.wait(10), max_batch=1)
    waiting = job("b")
    jobs.put(job("a"))
    jobs.put(waiting)
    worker.start()
    stopper = threading.Thread(target=worker.stop)
    stopper.start()
    assert waiting.wait(10) and isinstance(waiting.error, OverloadedError)
    gate.set()
    stopper.join(10)

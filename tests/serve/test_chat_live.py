"""The chat endpoint through the real ``openai`` client, against a live server on loopback."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests

from tests.serve.support import MESSAGES


@pytest.fixture(scope="module")
def live(module_servers):
    return module_servers()


def completion_detail(live, completion_id: str) -> dict:  # noqa: ANN001
    response = requests.get(
        f"{live.url}/v1/completions/{completion_id}", headers=live.headers("agent"), timeout=10
    )
    assert response.status_code == 200, response.text
    return response.json()


def vote(live, completion_id: str) -> requests.Response:  # noqa: ANN001
    return requests.post(
        f"{live.url}/v1/feedback",
        json={"completion_id": completion_id, "rating": "down", "user": "user-1"},
        headers=live.headers("widget", Origin="https://shop.example"),
        timeout=10,
    )


def test_a_completion_is_logged_under_its_id_and_can_be_voted_on(start_server, database_url):
    live = start_server(database_url=database_url)  # on SQLite and on PostgreSQL
    answer = live.client().chat.completions.create(
        model="default", messages=MESSAGES, max_tokens=8, temperature=0, user="user-1"
    )
    assert answer.object == "chat.completion"
    assert answer.system_fingerprint == "default:base" and answer.model == "default"
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.usage.completion_tokens <= 8 and answer.usage.prompt_tokens > 0
    detail = completion_detail(live, answer.id)
    assert detail["response"] == answer.choices[0].message.content
    assert detail["messages"] == MESSAGES
    assert detail["adapter_version"] is None and detail["model"] == live.backend.model_name
    assert detail["metadata"]["user"] == "user-1"
    assert vote(live, answer.id).status_code == 201


def test_a_streamed_completion_carries_one_id_and_ends_with_usage(live):
    stream = live.client().chat.completions.create(
        model="default",
        messages=MESSAGES,
        max_tokens=10,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)  # the client stops at [DONE]
    assert {c.id for c in chunks} == {chunks[0].id}
    assert {c.system_fingerprint for c in chunks} == {"default:base"}
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish in (["length"], ["stop"])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 10
    assert completion_detail(live, chunks[0].id)["response"] == text
    assert vote(live, chunks[0].id).status_code == 201


def test_stop_max_tokens_and_seed_behave_as_openai_documents(live):
    client = live.client()

    def ask(**kw) -> str:  # noqa: ANN003
        return client.chat.completions.create(model="default", messages=MESSAGES, **kw)

    greedy = ask(max_completion_tokens=6, temperature=0)
    assert greedy.choices[0].finish_reason == "length" and greedy.usage.completion_tokens == 6
    text = greedy.choices[0].message.content
    stop = text[3:5]
    cut = ask(max_tokens=6, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == text[: text.find(stop)]
    first, second = (ask(max_tokens=8, seed=11, temperature=1.2, top_p=0.9) for _ in range(2))
    assert first.choices[0].message.content == second.choices[0].message.content


TICKET = {
    "type": "object",
    "properties": {"topic": {"enum": ["card", "cash"]}, "urgent": {"type": "boolean"}},
    "required": ["topic", "urgent"],
}


def test_a_json_schema_response_format_is_followed_and_logged(live):
    answer = live.client().chat.completions.create(
        model="default",
        messages=MESSAGES,
        max_tokens=40,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "ticket", "schema": TICKET},
        },
    )
    record = json.loads(answer.choices[0].message.content)
    assert record["topic"] in ("card", "cash") and isinstance(record["urgent"], bool)
    logged = completion_detail(live, answer.id)["metadata"]
    assert logged["response_format"] == {"type": "json_schema", "name": "ticket"}
    with pytest.raises(openai.BadRequestError, match="response_format: the schema is not"):
        live.client().chat.completions.create(
            model="default",
            messages=MESSAGES,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "wat"}},
            },
        )


def test_models_lists_default_and_the_base_model(live):
    client, base_id = live.client(), live.backend.model_name
    assert [m.id for m in client.models.list()] == ["default", base_id]
    assert client.models.retrieve("default").id == "default"
    base = client.chat.completions.create(model=base_id, messages=MESSAGES, max_tokens=3)
    assert base.system_fingerprint == "base" and base.model == base_id


@pytest.mark.parametrize(
    ("kwargs", "error", "code"),
    [
        ({"messages": []}, openai.BadRequestError, "invalid_request"),
        ({"temperature": "warm"}, openai.BadRequestError, "invalid_request"),
        ({"extra_body": {"frobnicate": 1}}, openai.BadRequestError, "invalid_request"),
        ({"model": "gpt-9"}, openai.NotFoundError, "model_not_found"),
        (
            {"messages": [{"role": "user", "content": "card " * 2100}]},
            openai.BadRequestError,
            "context_length_exceeded",
        ),
        ({"max_tokens": 2040}, openai.BadRequestError, "context_length_exceeded"),
    ],
)
def test_bad_requests_get_openai_status_codes_and_our_error_shape(live, kwargs, error, code):
    args = {"model": "default", "messages": MESSAGES, **kwargs}
    with pytest.raises(error) as caught:
        live.client().chat.completions.create(**args)
    assert caught.value.body["code"] == code  # the client unwraps {"error": {...}}
    assert set(caught.value.response.json()) == {"error"}
    assert set(caught.value.response.json()["error"]) == {"code", "message"}


def test_keys_and_roles_are_enforced(live):
    with pytest.raises(openai.AuthenticationError):
        live.client(api_key="tb_nope_nope").chat.completions.create(
            model="default", messages=MESSAGES
        )
    with pytest.raises(openai.PermissionDeniedError):
        live.client("agent").chat.completions.create(model="default", messages=MESSAGES)
    admin = live.client("admin").chat.completions.create(
        model="default", messages=MESSAGES, max_tokens=2
    )
    assert admin.choices[0].message.role == "assistant"


def test_a_body_that_is_not_json_is_a_400(live):
    response = requests.post(
        f"{live.url}/v1/chat/completions",
        data="{not json",
        headers=live.headers("server", **{"Content-Type": "application/json"}),
        timeout=10,
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"


def test_beyond_the_queue_requests_get_503_with_retry_after_not_a_hang(start_server):
    live = start_server(serve_queue_size=1, serve_max_batch=1)
    gate = threading.Event()
    worker = live.backend.worker
    real = worker.generate
    worker.generate = lambda jobs: (gate.wait(60), real(jobs))
    client = live.client()

    def ask():  # noqa: ANN202
        return client.chat.completions.create(model="default", messages=MESSAGES, max_tokens=2)

    with ThreadPoolExecutor(4) as pool:
        running = pool.submit(ask)
        # admitted (it holds a lease on the base model) and taken by the worker
        _wait_until(lambda: live.backend.swapper.base.refs == 1 and len(live.backend.jobs) == 0)
        queued = pool.submit(ask)
        _wait_until(lambda: len(live.backend.jobs) == 1)
        refused = requests.post(
            f"{live.url}/v1/chat/completions",
            json={"model": "default", "messages": MESSAGES},
            headers=live.headers("server"),
            timeout=10,
        )
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "overloaded"
        assert int(refused.headers["Retry-After"]) >= 1
        gate.set()
        assert running.result(60).choices and queued.result(60).choices


def _wait_until(condition, timeout: float = 30) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def test_a_request_that_waits_too_long_gets_503_and_its_job_is_dropped(start_server):
    live = start_server(serve_request_timeout=0.5)
    gate = threading.Event()
    worker = live.backend.worker
    real = worker.generate
    worker.generate = lambda jobs: (gate.wait(60), real(jobs))
    with ThreadPoolExecutor(1) as pool:
        blocker = pool.submit(
            requests.post,
            f"{live.url}/v1/chat/completions",
            json={"model": "default", "messages": MESSAGES, "max_tokens": 2},
            headers=live.headers("server"),
            timeout=30,
        )
        _wait_until(lambda: live.backend.swapper.base.refs == 1 and len(live.backend.jobs) == 0)
        with pytest.raises(openai.InternalServerError) as caught:
            live.client().chat.completions.create(model="default", messages=MESSAGES)
        assert caught.value.status_code == 503 and caught.value.response.headers["Retry-After"]
        assert blocker.result(30).status_code == 503  # timed out at the gate as well
        gate.set()
    _wait_until(lambda: live.backend.swapper.base.refs == 0)  # both jobs ended, leases released


def test_a_client_that_leaves_a_stream_cancels_its_generation(start_server):
    live = start_server()
    engine = live.backend.engine
    decode = engine.decode

    def slow_decode(ids):  # noqa: ANN001, ANN202 - about 2 s for the whole answer
        time.sleep(0.03)
        return decode(ids)

    engine.decode = slow_decode
    response = requests.post(
        f"{live.url}/v1/chat/completions",
        json={"model": "default", "messages": MESSAGES, "max_tokens": 64, "stream": True},
        headers=live.headers("server"),
        stream=True,
        timeout=30,
    )
    lines = response.iter_lines()
    assert next(line for line in lines if line).startswith(b"data: ")
    started = time.monotonic()
    response.close()
    _wait_until(lambda: live.backend.swapper.base.refs == 0)
    assert time.monotonic() - started < 1.5  # stopped early, not after all 64 tokens
    count = requests.get(f"{live.url}/metrics", timeout=10).text
    # An abandoned answer is not logged (the per-lane counter has no sample yet).
    assert "tuneback_completions_total{" not in count

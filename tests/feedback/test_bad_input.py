"""Bad input gets a clear JSON error with the right status and changes nothing."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from feedback.models import Completion, Feedback, IdempotencyRecord
from tests.conftest import auth

GOOD_COMPLETION = {"messages": [{"role": "user", "content": "hi"}], "response": "yo", "model": "m"}


def _rows(session) -> int:
    session.rollback()
    return sum(
        session.execute(select(func.count()).select_from(m)).scalar_one()
        for m in (Completion, Feedback, IdempotencyRecord)
    )


def _with(**changes):
    body = json.loads(json.dumps(GOOD_COMPLETION))
    body.update(changes)
    return body


BAD_COMPLETIONS = {
    "wrong type": _with(response=42),
    "number as string field": _with(model=1.5),
    "unknown field": _with(temperature=0.2),
    "empty response": _with(response=""),
    "empty messages": _with(messages=[]),
    "empty content": _with(messages=[{"role": "user", "content": ""}]),
    "bad role": _with(messages=[{"role": "boss", "content": "x"}]),
    "message extra field": _with(messages=[{"role": "user", "content": "x", "x": 1}]),
    "NUL in response": _with(response="a\x00b"),
    "NUL in metadata": _with(metadata={"k": "a\x00"}),
    "NUL in metadata key": _with(metadata={"k\x00": 1}),
    "over-long response": _with(response="x" * 60_001),
    "metadata not object": _with(metadata=[1, 2]),
    "missing field": {"messages": [{"role": "user", "content": "x"}], "model": "m"},
    "body is a list": [GOOD_COMPLETION],
    "body is a string": "hello",
    "null body": None,
}


@pytest.mark.parametrize("body", BAD_COMPLETIONS.values(), ids=BAD_COMPLETIONS.keys())
def test_invalid_completion_bodies_are_422(client, keys, session, body):
    response = client.post(
        "/v1/completions",
        data=json.dumps(body),
        content_type="application/json",
        headers=auth(keys["server"], **{"Idempotency-Key": "k"}),
    )
    assert response.status_code == 422, response.json
    assert response.json["error"]["code"] == "invalid_input"
    assert response.json["error"]["message"]
    assert _rows(session) == 0


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b'{"a": NaN}', b"", b"\xff\xfe", b"[" * 5000 + b"]" * 5000],
    ids=["malformed", "NaN", "empty", "not utf-8", "deeply nested"],
)
def test_unparseable_bodies_are_400_or_422(client, keys, session, raw):
    response = client.post(
        "/v1/completions",
        data=raw,
        content_type="application/json",
        headers=auth(keys["server"]),
    )
    assert response.status_code in (400, 422), response.data
    assert response.json["error"]["code"] in ("invalid_json", "invalid_input")
    assert _rows(session) == 0


def test_nan_in_metadata_is_rejected(client, keys, session):
    response = client.post(
        "/v1/completions",
        data='{"messages":[{"role":"user","content":"x"}],"response":"y","model":"m",'
        '"metadata":{"score":NaN}}',
        content_type="application/json",
        headers=auth(keys["server"]),
    )
    assert response.status_code in (400, 422)
    assert _rows(session) == 0


def test_body_over_the_limit_is_413(client, keys, session):
    body = _with(response="x" * 70_000)
    response = client.post("/v1/completions", json=body, headers=auth(keys["server"]))
    assert response.status_code == 413
    assert response.json["error"]["code"] == "body_too_large"
    assert _rows(session) == 0


def test_text_limit_setting_applies(app, client, keys, session):
    app.extensions["tuneback"].settings.max_text_chars = 10
    response = client.post(
        "/v1/completions", json=_with(response="x" * 11), headers=auth(keys["server"])
    )
    assert response.status_code == 422
    assert _rows(session) == 0


@pytest.mark.parametrize(
    "body",
    [
        {"completion_id": "x", "rating": "meh"},
        {"completion_id": "x", "rating": "up", "user": ""},
        {"completion_id": "x", "rating": "up", "comment": "a\x00"},
        {"completion_id": "x" * 40, "rating": "up"},
        {"completion_id": "x", "rating": "up", "score": 5},
        {"completion_id": 7, "rating": "up"},
    ],
)
def test_invalid_feedback_is_422(client, keys, session, body):
    response = client.post("/v1/feedback", json=body, headers=auth(keys["agent"]))
    assert response.status_code == 422
    assert _rows(session) == 0


@pytest.mark.parametrize("key", ["", " ", "x" * 256, "é", "a\tb"])
def test_bad_idempotency_keys_are_422(client, keys, completion_id, key):
    response = client.post(
        "/v1/feedback",
        json={"completion_id": completion_id, "rating": "up"},
        headers=auth(keys["agent"], **{"Idempotency-Key": key}),
    )
    assert response.status_code in (400, 422)


def test_unknown_route_and_method_are_json(client):
    assert client.get("/nowhere").json["error"]["code"] == "not_found"
    response = client.delete("/v1/feedback")
    assert response.status_code == 405 and response.json["error"]["code"] == "method_not_allowed"


def limited_client(settings, engine, limit):
    from feedback.app import create_app

    return create_app(
        settings.model_copy(update={"rate_limit": limit}), engine=engine
    ).test_client()


def test_rate_limit_is_429_with_retry_after(settings, engine, keys, completion_id):
    client = limited_client(settings, engine, "3/minute")
    statuses = [
        client.post(
            "/v1/feedback",
            json={"completion_id": completion_id, "rating": "up"},
            headers=auth(keys["agent"]),
        ).status_code
        for _ in range(4)
    ]
    assert statuses == [201, 201, 201, 429]
    limited = client.post("/v1/feedback", json={}, headers=auth(keys["agent"]))
    assert limited.json["error"]["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1
    # Another key has its own budget.
    other = client.post(
        "/v1/feedback",
        json={"completion_id": completion_id, "rating": "up"},
        headers=auth(keys["admin"]),
    )
    assert other.status_code == 201


def test_rate_limit_ignores_spoofed_forwarded_for(settings, engine):
    client = limited_client(settings, engine, "2/minute")
    statuses = [
        client.get("/v1/review-queue", headers={"X-Forwarded-For": f"10.0.0.{i}"}).status_code
        for i in range(3)
    ]
    assert statuses == [401, 401, 429]

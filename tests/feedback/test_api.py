"""The feedback API through the Flask test client, on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import func, select

from feedback.models import Completion, Correction, Feedback, IdempotencyRecord
from tests.conftest import WIDGET_ORIGIN, auth


def count(session, model) -> int:
    session.rollback()  # see rows committed by the app since the last read
    return session.execute(select(func.count()).select_from(model)).scalar_one()


def vote(client, key, completion_id, rating="down", **extra):
    headers = extra.pop("headers", {})
    return client.post(
        "/v1/feedback",
        json={"completion_id": completion_id, "rating": rating, **extra},
        headers=auth(key, **headers),
    )


def test_log_completion_stores_it_verbatim(client, keys, session):
    messages = [
        {"role": "system", "content": "You are a bank assistant."},
        {"role": "user", "content": "'; DROP TABLE completion; -- <script>x</script> ü 🙂"},
    ]
    response = client.post(
        "/v1/completions",
        json={"messages": messages, "response": "  spaced  ", "model": "m", "metadata": {"a": [1]}},
        headers=auth(keys["server"]),
    )
    assert response.status_code == 201
    stored = session.get(Completion, response.json["id"])
    assert stored.messages == messages
    assert stored.response == "  spaced  "
    assert stored.meta == {"a": [1]}


def test_second_vote_by_same_user_replaces_the_first(client, keys, completion_id, session):
    first = vote(client, keys["agent"], completion_id, "down", user="u1", comment="wrong")
    second = vote(client, keys["agent"], completion_id, "up", user="u1")
    other = vote(client, keys["agent"], completion_id, "down", user="u2")
    assert (first.status_code, second.status_code, other.status_code) == (201, 201, 201)
    assert second.json["id"] == first.json["id"] and second.json["replaced"] is True
    assert first.json["replaced"] is False
    rows = session.execute(select(Feedback).order_by(Feedback.user_ref)).scalars().all()
    assert [(r.user_ref, r.rating, r.comment) for r in rows] == [
        ("u1", "up", None),
        ("u2", "down", None),
    ]


def test_widget_votes_only_from_allowed_origin(client, keys, completion_id, session):
    ok = vote(client, keys["widget"], completion_id, headers={"Origin": WIDGET_ORIGIN})
    assert ok.status_code == 201
    assert ok.headers["Access-Control-Allow-Origin"] == WIDGET_ORIGIN
    assert ok.json["source"] == "widget"
    for headers in ({"Origin": "https://evil.example"}, {}):
        denied = vote(client, keys["widget"], completion_id, headers=headers)
        assert denied.status_code == 403
        assert denied.json["error"]["code"] == "forbidden"
        assert "Access-Control-Allow-Origin" not in denied.headers
    assert count(session, Feedback) == 1


def test_cors_preflight_answers_only_allowed_origins(client, keys):
    preflight = {"Access-Control-Request-Method": "POST"}
    allowed = client.options("/v1/feedback", headers={**preflight, "Origin": WIDGET_ORIGIN})
    assert allowed.status_code == 204
    assert allowed.headers["Access-Control-Allow-Origin"] == WIDGET_ORIGIN
    assert "Idempotency-Key" in allowed.headers["Access-Control-Allow-Headers"]
    denied = client.options("/v1/feedback", headers={**preflight, "Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in denied.headers


def test_roles(client, keys, completion_id):
    body = {"completion_id": completion_id, "corrected_response": "Better."}
    cases = [
        ("POST", "/v1/completions", "widget", 403),
        ("POST", "/v1/completions", "agent", 403),
        ("POST", "/v1/corrections", "server", 403),
        ("POST", "/v1/corrections", "widget", 403),
        ("GET", "/v1/review-queue", "server", 403),
        ("GET", f"/v1/completions/{completion_id}", "widget", 403),
        ("GET", "/v1/export", "agent", 403),
        ("POST", "/v1/corrections", "admin", 201),
        ("GET", "/v1/export", "admin", 200),
    ]
    for method, path, role, status in cases:
        headers = auth(keys[role], Origin=WIDGET_ORIGIN)
        response = client.open(
            path, method=method, json=body if method == "POST" else None, headers=headers
        )
        assert response.status_code == status, (method, path, role, response.json)


def test_missing_bad_and_revoked_keys_are_401(client, keys, completion_id, session):
    from feedback import store

    assert vote(client, "tb_nope_nope", completion_id).status_code == 401
    no_key = client.post("/v1/feedback", json={"completion_id": completion_id, "rating": "up"})
    assert no_key.status_code == 401 and no_key.json["error"]["code"] == "unauthorized"
    basic = client.post("/v1/feedback", json={}, headers={"Authorization": "Basic abc"})
    assert basic.status_code == 401
    key_id = keys["agent"].split("_")[1]
    store.revoke_api_key(session, key_id=key_id)
    session.commit()
    assert vote(client, keys["agent"], completion_id).status_code == 401


def test_unknown_completion_is_404_and_writes_nothing(client, keys, session):
    response = vote(client, keys["agent"], "0" * 32, user="u1")
    assert response.status_code == 404
    assert response.json["error"]["code"] == "not_found"
    correction = client.post(
        "/v1/corrections",
        json={"completion_id": "x", "corrected_response": "y"},
        headers=auth(keys["agent"], **{"Idempotency-Key": "k1"}),
    )
    assert correction.status_code == 404
    assert count(session, Feedback) == count(session, Correction) == 0
    assert count(session, IdempotencyRecord) == 0
    assert client.get("/v1/completions/nope", headers=auth(keys["agent"])).status_code == 404


def test_idempotency_key_replays_and_rejects_other_bodies(client, keys, completion_id, session):
    headers = {"Idempotency-Key": "vote-1"}
    first = vote(client, keys["agent"], completion_id, user="u1", headers=headers)
    again = vote(client, keys["agent"], completion_id, user="u1", headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json == first.json
    assert again.headers["Idempotent-Replayed"] == "true"
    other = vote(client, keys["agent"], completion_id, "up", user="u1", headers=headers)
    assert other.status_code == 422
    assert other.json["error"]["code"] == "idempotency_key_reused"
    assert count(session, Feedback) == 1
    row = session.execute(select(Feedback)).scalar_one()
    assert row.rating == "down"  # the mismatched retry changed nothing


def test_idempotency_keys_are_per_api_key(client, keys, completion_id, session):
    headers = {"Idempotency-Key": "same"}
    a = vote(client, keys["agent"], completion_id, headers=headers)
    b = vote(client, keys["admin"], completion_id, headers=headers)
    assert a.status_code == b.status_code == 201 and a.json["id"] != b.json["id"]
    assert count(session, Feedback) == 2


def test_review_queue_lists_uncorrected_thumbs_down_newest_first(client, keys, session):
    ids = []
    for i in range(3):
        r = client.post(
            "/v1/completions",
            json={
                "messages": [{"role": "user", "content": f"q{i}"}],
                "response": "a",
                "model": "m",
            },
            headers=auth(keys["server"]),
        )
        ids.append(r.json["id"])
    vote(client, keys["agent"], ids[0], "down", user="a")
    vote(client, keys["agent"], ids[1], "up", user="a")
    vote(client, keys["agent"], ids[2], "down", user="a")
    vote(client, keys["agent"], ids[2], "down", user="b")
    queue = client.get("/v1/review-queue", headers=auth(keys["agent"])).json
    assert [item["id"] for item in queue["items"]] == [ids[2], ids[0]]
    assert queue["total"] == 2 and queue["items"][0]["down_votes"] == 2
    page = client.get("/v1/review-queue?limit=1&offset=1", headers=auth(keys["agent"])).json
    assert [item["id"] for item in page["items"]] == [ids[0]]
    fix = client.post(
        "/v1/corrections",
        json={"completion_id": ids[2], "corrected_response": "Fixed.", "note": "tone"},
        headers=auth(keys["agent"]),
    )
    assert fix.status_code == 201 and fix.json["author"] == "agent-1"
    queue = client.get("/v1/review-queue", headers=auth(keys["agent"])).json
    assert [item["id"] for item in queue["items"]] == [ids[0]]


def test_completion_detail_has_feedback_and_corrections(client, keys, completion_id):
    vote(client, keys["agent"], completion_id, "down", user="u", reason="wrong", comment="no")
    for text in ("First fix.", "Second fix."):
        client.post(
            "/v1/corrections",
            json={"completion_id": completion_id, "corrected_response": text},
            headers=auth(keys["agent"]),
        )
    detail = client.get(f"/v1/completions/{completion_id}", headers=auth(keys["agent"])).json
    assert [f["reason"] for f in detail["feedback"]] == ["wrong"]
    assert [(c["corrected_response"], c["status"]) for c in detail["corrections"]] == [
        ("First fix.", "superseded"),
        ("Second fix.", "active"),
    ]
    assert detail["created_at"].endswith(("Z", "+00:00"))


def test_export_is_openai_chat_jsonl_with_the_latest_correction(client, keys, completion_id):
    import json

    for text in ("Old.", "Your card ships in 3 days."):
        client.post(
            "/v1/corrections",
            json={"completion_id": completion_id, "corrected_response": text},
            headers=auth(keys["agent"]),
        )
    response = client.get("/v1/export?format=openai", headers=auth(keys["admin"]))
    assert response.status_code == 200
    assert response.mimetype == "application/jsonl"
    lines = [json.loads(line) for line in response.data.decode().splitlines()]
    example = {
        "messages": [
            {"role": "user", "content": "My card hasn't arrived yet, what can I do?"},
            {"role": "assistant", "content": "Your card ships in 3 days."},
        ]
    }
    assert lines == [{**example, "lane": "default"}]  # every lane's: each line names its own
    one_lane = client.get("/v1/export?lane=default", headers=auth(keys["admin"]))
    assert [json.loads(line) for line in one_lane.data.decode().splitlines()] == [example]
    bad = client.get("/v1/export?format=csv", headers=auth(keys["admin"]))
    assert bad.status_code == 422


def test_healthz_metrics_and_openapi(client, keys, completion_id):
    vote(client, keys["agent"], completion_id, "down", user="u")
    assert client.get("/healthz").json == {"status": "ok", "database": "ok"}
    metrics = client.get("/metrics").data.decode()
    assert 'tuneback_feedback_total{lane="default",rating="down",source="agent"} 1.0' in metrics
    assert "tuneback_http_request_duration_seconds_bucket" in metrics
    spec = client.get("/openapi.json").json
    assert spec["openapi"].startswith("3.1")
    assert {
        "/v1/completions",
        "/v1/feedback",
        "/v1/corrections",
        "/v1/review-queue",
        "/v1/export",
        "/healthz",
        "/metrics",
    } <= set(spec["paths"])
    assert client.get("/docs").status_code == 404  # the CDN-backed docs page is off

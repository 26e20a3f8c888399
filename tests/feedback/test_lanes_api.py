"""The feedback API per lane: logging names a lane, lists and exports filter by it,
bad and unknown lanes are refused before anything is written, /metrics counts per lane."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from feedback.lanes import create_lane
from feedback.models import Completion
from tests.conftest import auth

QUESTION = [{"role": "user", "content": "Where is my parcel?"}]


@pytest.fixture
def lanes(engine) -> tuple[str, str]:
    with Session(engine) as session:
        create_lane(session, name="support", description="the support assistant")
        create_lane(session, name="router")
        session.commit()
    return "support", "router"


def log(client, keys, answer: str, *, path: str = "/v1/logged_completions", **fields):
    body = {"messages": QUESTION, "response": answer, "model": "gpt-4o-mini", **fields}
    return client.post(path, json=body, headers=auth(keys["server"]))


def stored(engine) -> int:
    with Session(engine) as session:
        return session.execute(select(func.count()).select_from(Completion)).scalar_one()


def down_and_correct(client, keys, completion_id: str, text: str) -> None:
    vote = {"completion_id": completion_id, "rating": "down", "user": "u1"}
    assert client.post("/v1/feedback", json=vote, headers=auth(keys["agent"])).status_code == 201
    fix = {"completion_id": completion_id, "corrected_response": text}
    assert client.post("/v1/corrections", json=fix, headers=auth(keys["agent"])).status_code == 201


def test_completions_are_logged_in_their_lane_and_model_stays_the_upstream_one(client, keys, lanes):
    support = log(client, keys, "Tomorrow.", lane="support")
    legacy = log(client, keys, "Billing.", path="/v1/completions", lane="router")
    plain = log(client, keys, "Soon.")
    assert (support.status_code, legacy.status_code, plain.status_code) == (201, 201, 201)
    assert legacy.headers["Deprecation"] == "true"
    for answer, lane in ((support, "support"), (legacy, "router"), (plain, "default")):
        detail = client.get(f"/v1/completions/{answer.json['id']}", headers=auth(keys["agent"]))
        assert (detail.json["lane"], detail.json["model"]) == (lane, "gpt-4o-mini")


@pytest.mark.parametrize("name", ["", "Support", "../etc", "a/b", "a.b", "x" * 64, "-x", 7])
def test_a_bad_lane_name_is_a_422_that_says_the_rule_and_writes_nothing(client, keys, engine, name):
    answer = log(client, keys, "Tomorrow.", lane=name)
    assert answer.status_code == 422, answer.json
    assert answer.json["error"]["code"] == "invalid_input"
    assert "lane" in answer.json["error"]["message"]
    assert stored(engine) == 0


def test_an_unknown_lane_is_a_404_listing_the_lanes_and_a_retry_may_reuse_the_key(
    client, keys, engine, lanes
):
    key = {"Idempotency-Key": "log-1"}
    body = {"messages": QUESTION, "response": "Tomorrow.", "model": "m", "lane": "extractor"}
    answer = client.post("/v1/logged_completions", json=body, headers=auth(keys["server"], **key))
    assert answer.status_code == 404
    assert answer.json["error"]["code"] == "lane_not_found"
    assert "default, router, support" in answer.json["error"]["message"]
    assert stored(engine) == 0
    # The refusal was not recorded: once the lane exists, the same key logs the completion.
    with Session(engine) as session:
        create_lane(session, name="extractor")
        session.commit()
    first = client.post("/v1/logged_completions", json=body, headers=auth(keys["server"], **key))
    again = client.post("/v1/logged_completions", json=body, headers=auth(keys["server"], **key))
    assert (first.status_code, again.status_code) == (201, 201)
    assert first.json == again.json and stored(engine) == 1


def test_one_lanes_corrections_never_show_in_another_lanes_queue_or_export(client, keys, lanes):
    ids = {lane: log(client, keys, f"{lane} answer", lane=lane).json["id"] for lane in lanes}
    queued = log(client, keys, "router, to correct", lane="router").json["id"]
    vote = {"completion_id": queued, "rating": "down", "user": "u2"}
    assert client.post("/v1/feedback", json=vote, headers=auth(keys["agent"])).status_code == 201
    down_and_correct(client, keys, ids["support"], "support fix")
    down_and_correct(client, keys, ids["router"], "router fix")

    def queue(query: str = "") -> list[tuple[str, str]]:
        page = client.get(f"/v1/review-queue{query}", headers=auth(keys["agent"]))
        assert page.status_code == 200, page.json
        return [(item["id"], item["lane"]) for item in page.json["items"]]

    assert queue("?lane=router") == [(queued, "router")]
    assert queue("?lane=support") == [] and queue() == [(queued, "router")]

    def export(query: str = "") -> list[dict]:
        answer = client.get(f"/v1/export{query}", headers=auth(keys["admin"]))
        assert answer.status_code == 200, answer.data
        return [json.loads(line) for line in answer.data.decode().splitlines()]

    assert [e["messages"][-1]["content"] for e in export("?lane=support")] == ["support fix"]
    assert [e["messages"][-1]["content"] for e in export("?lane=router")] == ["router fix"]
    assert export("?lane=default") == []
    every = {e["messages"][-1]["content"]: e["lane"] for e in export()}
    assert every == {"support fix": "support", "router fix": "router"}


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [("?lane=nope", 404, "lane_not_found"), ("?lane=Bad%2F..", 422, "invalid_input"),
     ("?lane=", 422, "invalid_input")],
)  # fmt: skip
def test_list_filters_refuse_bad_and_unknown_lanes(client, keys, lanes, query, status, code):
    for path, key in (("/v1/review-queue", "agent"), ("/v1/export", "admin")):
        answer = client.get(path + query, headers=auth(keys[key]))
        assert (answer.status_code, answer.json["error"]["code"]) == (status, code), path


def test_metrics_count_completions_votes_and_corrections_per_lane(client, keys, lanes):
    first = log(client, keys, "a", lane="support").json["id"]
    log(client, keys, "b", lane="support")
    log(client, keys, "c")
    down_and_correct(client, keys, first, "fixed")
    metrics = client.get("/metrics").data.decode()
    assert 'tuneback_completions_total{lane="support"} 2.0' in metrics
    assert 'tuneback_completions_total{lane="default"} 1.0' in metrics
    assert 'tuneback_corrections_total{lane="support"} 1.0' in metrics
    assert 'tuneback_feedback_total{lane="support",rating="down",source="agent"} 1.0' in metrics
    assert 'lane="router"' not in metrics  # a lane with nothing logged has no series


def test_poisoning_alerts_count_each_lanes_last_finished_run(client, engine, lanes):
    """A later run of another lane (without alerts) does not hide this lane's alerts."""
    from datetime import timedelta

    from feedback import run_store
    from feedback.models import utcnow

    flood = {"alerts": [{"kind": "vote_flood", "completion_id": "c1"}]}
    plan = [("support", 3, flood), ("support", 2, flood), ("router", 1, {"alerts": []})]
    with Session(engine) as session:
        for lane, hours_ago, result in plan:
            run = run_store.start_run(session, trigger="manual", lane=lane)
            started = utcnow() - timedelta(hours=hours_ago)
            run_store.finish_run(session, run.id, status="skipped", result=result)
            run.started_at = started
        session.commit()
    metrics = client.get("/metrics").data.decode()
    assert 'tuneback_poisoning_alerts{kind="vote_flood"} 1.0' in metrics


def test_runs_waiting_their_lanes_turn_do_not_hide_its_last_alerts(session, lanes):
    from feedback import run_store, store

    run = run_store.start_run(session, trigger="manual", lane="support")
    flood = {"alerts": [{"kind": "vote_flood", "completion_id": "c1"}]}
    run_store.finish_run(session, run.id, status="rejected", result=flood)
    session.commit()
    run_store.queue_runs(session, lanes=["default", "support"], trigger="manual")
    session.commit()
    assert [a["kind"] for a in store.latest_run_alerts(session)] == ["vote_flood"]

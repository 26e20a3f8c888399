"""The dashboard's and console's queries, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from feedback import rawsql, run_store, store
from feedback.db import write_session
from feedback.models import Feedback, utcnow
from feedback.web import queries


def vote(engine, completion_id: str, rating: str, user: str) -> None:  # noqa: ANN001
    with rawsql.engine_write(engine) as tx:
        rawsql.record_vote(
            tx, completion_id=completion_id, rating=rating, reason=None, comment=None,
            source="widget", user_ref=user, api_key_id=None,
        )  # fmt: skip


def test_votes_per_day_counts_each_utc_day_and_fills_gaps(engine, session):
    cid = store.create_completion(session, messages=[], response="a", model="m").id
    session.commit()
    for user, rating, ago in [("a", "up", 0), ("b", "down", 0), ("c", "up", 2), ("d", "up", 40)]:
        vote(engine, cid, rating, user)
        with write_session(engine) as tx:
            tx.execute(
                update(Feedback)
                .where(Feedback.user_ref == user)
                .values(created_at=utcnow() - timedelta(days=ago))
            )
            tx.commit()
    days = queries.votes_per_day(session, days=7)
    assert len(days) == 7 and days[-1]["day"] == utcnow().date().isoformat()
    assert [(d["up"], d["down"]) for d in days] == [(0, 0)] * 4 + [(1, 0), (0, 0), (1, 1)]


def test_adapter_rows_carry_dataset_sizes_metrics_and_gate(engine, session):
    from feedback.adapters import store as adapter_store

    snap = run_store.record_dataset(
        session, content_hash="h", counts={"train": 8, "heldout": 2}, path=None, examples=[]
    )
    adapter_store.create_adapter_version(
        session, version="v0001", base_model="b", path="/x", checksum="c", dataset_id=snap.id,
        metrics={"candidate": {"golden_pass": 0.9}, "base": {"golden_pass": 0.5}},
        gate={"passed": False, "reasons": ["r1", "r2"], "thresholds": {"primary": "golden_pass"}},
        status="rejected",
    )  # fmt: skip
    session.commit()
    [row] = queries.adapter_rows(session)
    assert (row["train"], row["heldout"], row["primary"]) == (8, 2, "golden_pass")
    assert row["values"] == {"candidate": 0.9, "champion": None, "base": 0.5}
    assert (row["passed"], row["reasons"]) == (False, ["r1", "r2"])
    summary = queries.serving_summary(session)
    assert summary["promoted"] is None and summary["rollback_to"] is None


def test_a_correction_through_the_console_on_each_store(client, keys, completion_id, session):
    """The console's write path (sign in, CSRF, correction, redirect) on SQLite and PostgreSQL."""
    from tests.web.support import csrf_of

    vote(client.application.extensions["tuneback"].engine, completion_id, "down", "u1")
    form = client.get("/signin")
    answer = client.post(
        "/signin", data={"key": keys["agent"], "csrf_token": csrf_of(form.text), "next": ""}
    )
    assert answer.status_code == 303 and answer.headers["Location"] == "/review"
    page = client.get(f"/review/{completion_id}")
    assert page.status_code == 200
    for text, expected in (("   ", 303), ("New cards arrive in 5 days.", 303)):
        answer = client.post(
            f"/review/{completion_id}",
            data={"csrf_token": csrf_of(page.text), "corrected_response": text, "note": ""},
        )
        assert answer.status_code == expected
    _, _, fixes = store.completion_detail(session, completion_id)
    assert [(f.corrected_response, f.author) for f in fixes] == [
        ("New cards arrive in 5 days.", "agent-1")
    ]
    assert completion_id not in client.get("/review").text

"""What a public widget key may do (issue 23, items 3 to 5), through the test client on
SQLite and PostgreSQL: signed vote tokens, unverified votes that replace nothing, limits
per client under a key-wide ceiling, capped comments, small idempotency records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, func, select

from feedback import auth, idempotency
from feedback.app import create_app
from feedback.exceptions import ForbiddenError
from feedback.models import Feedback, IdempotencyRecord, utcnow
from tests.conftest import WIDGET_ORIGIN
from tests.conftest import auth as bearer

SECRET = "a test secret, long enough to sign with"


def vote(client, key, completion_id, rating="down", addr="10.0.0.1", retry_key=None, **extra):
    headers = bearer(key, Origin=WIDGET_ORIGIN)
    if retry_key:
        headers["Idempotency-Key"] = retry_key
    return client.post(
        "/v1/feedback",
        json={"completion_id": completion_id, "rating": rating, **extra},
        headers=headers,
        environ_base={"REMOTE_ADDR": addr},
    )


def mint(client, keys, completion_id, user="u-1"):
    response = client.post(
        "/v1/vote-tokens",
        json={"completion_id": completion_id, "user": user},
        headers=bearer(keys["server"]),
    )
    assert response.status_code == 200, response.json
    return response.json["token"]


def test_a_vote_token_reads_back_and_any_change_is_refused():
    token = auth.mint_vote_token(SECRET, completion_id="c1", user="ü 1.x", expires=2_000_000_000)
    assert auth.read_vote_token(SECRET, token, now=1e9) == auth.VoteToken("c1", "ü 1.x", 2 * 10**9)
    own = auth.mint_vote_token(
        SECRET, completion_id="c1", user=None, expires=2 * 10**9, vote_id="v"
    )
    assert auth.read_vote_token(SECRET, own, now=1e9).vote_id == "v"
    prefix, payload, signature = token.split(".")

    def signed(claims: bytes) -> str:
        body = auth._b64(claims)
        return f"tbv1.{body}.{auth._b64(auth._sign(SECRET, f'tbv1.{body}'))}"

    forged = [
        "",
        "tbv1",
        "tbv1..",
        f"tbv2.{payload}.{signature}",
        f"{prefix}.{payload}.{signature[:-2]}",
        f"{prefix}.{payload}A.{signature}",
        f"{token}é",
        auth.mint_vote_token(SECRET[::-1], completion_id="c1", user="u", expires=2 * 10**9),
        signed(b'{"c": "c1"}'),
        signed(b'["c1", null, 2000000000, null]'),  # neither a user nor a vote
        signed(b'["c1", "u", 2000000000.5, null]'),
    ]
    for bad in forged:
        with pytest.raises(ForbiddenError, match="not valid"):
            auth.read_vote_token(SECRET, bad, now=1e9)
    with pytest.raises(ForbiddenError, match="expired"):
        auth.read_vote_token(SECRET, token, now=2e9)


def test_only_server_keys_mint_vote_tokens(client, keys, completion_id):
    before = datetime.now(UTC)
    response = client.post(
        "/v1/vote-tokens",
        json={"completion_id": completion_id, "user": "u-1"},
        headers=bearer(keys["server"]),
    )
    assert response.status_code == 200
    assert (response.json["completion_id"], response.json["user"]) == (completion_id, "u-1")
    expires = datetime.fromisoformat(response.json["expires_at"])
    assert timedelta(hours=23.9) < expires - before <= timedelta(hours=24, seconds=1)
    for role in ("widget", "agent"):
        denied = client.post(
            "/v1/vote-tokens",
            json={"completion_id": completion_id, "user": "u-1"},
            headers=bearer(keys[role], Origin=WIDGET_ORIGIN),
        )
        assert denied.status_code == 403, role
    for body in ({"completion_id": completion_id}, {"completion_id": completion_id, "user": ""}):
        assert (
            client.post("/v1/vote-tokens", json=body, headers=bearer(keys["server"])).status_code
            == 422
        )


def test_an_unsigned_widget_vote_naming_a_user_replaces_nothing(client, keys, completion_id):
    victim = vote(client, keys["widget"], completion_id, "down", user="u-1", comment="no card")
    attack = vote(client, keys["widget"], completion_id, "up", addr="10.0.0.9", user="u-1")
    assert victim.status_code == attack.status_code == 201
    assert attack.json["replaced"] is False and attack.json["id"] != victim.json["id"]
    assert attack.json["created_at"] != victim.json["created_at"]  # nothing of the victim's
    assert victim.json["verified"] is attack.json["verified"] is False
    detail = client.get(f"/v1/completions/{completion_id}", headers=bearer(keys["agent"])).json
    assert sorted((v["rating"], v["comment"], v["user"]) for v in detail["feedback"]) == [
        ("down", "no card", "u-1"),
        ("up", None, "u-1"),
    ]


def test_a_signed_vote_is_its_users_and_replaces_only_that_users_vote(
    client, keys, completion_id, session
):
    token = mint(client, keys, completion_id)
    unverified = vote(client, keys["widget"], completion_id, "down", user="u-1")
    first = vote(client, keys["widget"], completion_id, "down", token=token, comment="no")
    assert first.status_code == 201 and first.json["user"] == "u-1" and first.json["verified"]
    assert "token" not in first.json and first.json["replaced"] is False
    assert first.json["id"] != unverified.json["id"]  # a claim is never the user's own vote
    agent = client.post(
        "/v1/feedback",
        json={"completion_id": completion_id, "rating": "up", "user": "u-1"},
        headers=bearer(keys["agent"]),
    )
    assert agent.json["replaced"] is False  # another source: never a replace
    again = vote(client, keys["widget"], completion_id, "up", token=token, user="u-1")
    assert again.json["replaced"] is True and again.json["id"] == first.json["id"]
    assert vote(client, keys["widget"], completion_id, token=token, user="u-2").status_code == 403
    other = client.post(
        "/v1/completions",
        json={"messages": [{"role": "user", "content": "q"}], "response": "a", "model": "m"},
        headers=bearer(keys["server"]),
    ).json["id"]
    assert vote(client, keys["widget"], other, token=token).status_code == 403
    session.rollback()
    query = select(Feedback.source, Feedback.user_ref, Feedback.verified, Feedback.rating)
    assert sorted(session.execute(query).all()) == [
        ("agent", "u-1", True, "up"),
        ("widget", "u-1", False, "down"),
        ("widget", "u-1", True, "up"),
    ]


def test_an_unverified_vote_gets_a_token_that_changes_only_itself(client, keys, completion_id):
    first = vote(client, keys["widget"], completion_id, "down", user="anon-1")
    other = vote(client, keys["widget"], completion_id, "down", user="anon-1")
    token = first.json["token"]
    claims = auth.read_vote_token(client.application.secret_key, token)
    assert (claims.completion_id, claims.user, claims.vote_id) == (
        completion_id,
        "anon-1",
        first.json["id"],
    )
    comment = vote(client, keys["widget"], completion_id, "down", token=token, comment="why")
    assert comment.json["replaced"] is True and comment.json["id"] == first.json["id"]
    assert comment.json["user"] == "anon-1" and "token" not in comment.json
    assert vote(client, keys["widget"], completion_id, token=token, user="u-1").status_code == 403
    detail = client.get(f"/v1/completions/{completion_id}", headers=bearer(keys["agent"])).json
    comments = {v["id"]: v["comment"] for v in detail["feedback"]}
    assert comments == {first.json["id"]: "why", other.json["id"]: None}


def test_widget_comments_are_capped(client, keys, completion_id, session):
    too_long = vote(client, keys["widget"], completion_id, comment="x" * 2001)
    assert too_long.status_code == 422 and "2000" in too_long.json["error"]["message"]
    assert vote(client, keys["widget"], completion_id, comment="x" * 2000).status_code == 201
    agent = client.post(
        "/v1/feedback",
        json={"completion_id": completion_id, "rating": "down", "comment": "x" * 5000},
        headers=bearer(keys["agent"]),
    )
    assert agent.status_code == 201  # agents are held to TUNEBACK_MAX_TEXT_CHARS


def _limited(settings, engine, **limits):
    return create_app(settings.model_copy(update=limits), engine=engine).test_client()


def test_widget_limits_count_per_client_under_a_key_ceiling(settings, engine, keys, completion_id):
    client = _limited(
        settings, engine, widget_rate_limit="2/minute", widget_key_rate_limit="5/minute"
    )
    key = keys["widget"]
    spoofed = [
        client.post(
            "/v1/feedback",
            json={"completion_id": completion_id, "rating": "up"},
            headers=bearer(key, Origin="https://evil.example"),
        ).status_code
        for _ in range(8)
    ]
    assert spoofed == [403] * 8  # refused origins spend nothing of the key's
    statuses = [vote(client, key, completion_id, addr=a).status_code for a in ["10.0.0.1"] * 3]
    assert statuses == [201, 201, 429]
    others = [vote(client, key, completion_id, addr=a).status_code for a in ("10.0.0.2",) * 2]
    assert others == [201, 201]
    assert vote(client, key, completion_id, addr="10.0.0.3").status_code == 201
    ceiling = vote(client, key, completion_id, addr="10.0.0.4")  # 5 of 5 used
    assert ceiling.status_code == 429 and int(ceiling.headers["Retry-After"]) >= 1


def test_a_signed_user_has_its_own_allowance(settings, engine, keys, completion_id):
    client = _limited(settings, engine, widget_rate_limit="2/minute")
    token = mint(client, keys, completion_id)
    statuses = [
        vote(client, keys["widget"], completion_id, addr=f"10.0.1.{i}", token=token).status_code
        for i in range(3)
    ]
    assert statuses == [201, 201, 429]


def test_an_ipv6_client_is_its_slash_64():
    from feedback.ratelimit import client_network

    assert client_network("2001:db8:1:2::5") == client_network("2001:db8:1:2:ffff::9")
    assert client_network("2001:db8:1:3::5") != client_network("2001:db8:1:2::5")
    assert client_network("::ffff:192.0.2.7") == "192.0.2.7" == client_network("192.0.2.7")


def test_a_replayed_vote_is_read_back_and_its_record_holds_no_copy(
    client, keys, completion_id, session
):
    first = vote(client, keys["widget"], completion_id, retry_key="r-1", comment="c" * 2000)
    again = vote(client, keys["widget"], completion_id, retry_key="r-1", comment="c" * 2000)
    assert again.headers["Idempotent-Replayed"] == "true" and again.json == first.json
    session.rollback()
    kept = session.execute(select(IdempotencyRecord.response_body)).scalar_one()
    assert len(kept) < 400 and "ccc" not in kept
    session.execute(delete(Feedback))  # erased since
    session.commit()
    gone = vote(client, keys["widget"], completion_id, retry_key="r-1", comment="c" * 2000)
    assert gone.status_code == 404 and gone.json["error"]["code"] == "not_found"


def test_expired_idempotency_records_are_pruned_a_batch_at_a_time(
    client, keys, completion_id, session, monkeypatch
):
    monkeypatch.setattr(idempotency, "PRUNE_EVERY", 1, raising=False)
    monkeypatch.setattr(idempotency, "PRUNE_BATCH", 3, raising=False)
    for i, age in enumerate([25, 26, 27, 30, 48, 2]):  # hours; the default keeps 24
        record = IdempotencyRecord(
            api_key_id="gone", key=f"k{i}", request_hash="h", status_code=201,
            response_body="{}", created_at=utcnow() - timedelta(hours=age),
        )  # fmt: skip
        session.add(record)
    session.commit()

    def old() -> int:
        session.rollback()
        query = select(func.count()).where(IdempotencyRecord.api_key_id == "gone")
        return session.execute(query.select_from(IdempotencyRecord)).scalar_one()

    vote(client, keys["agent"], completion_id, retry_key="n-1", user="a")
    assert old() == 3  # the three oldest went first; the 2-hour-old one stays
    vote(client, keys["agent"], completion_id, retry_key="n-2", user="b")
    assert old() == 1
    session.rollback()
    assert session.execute(select(func.count()).select_from(IdempotencyRecord)).scalar_one() == 3

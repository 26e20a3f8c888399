"""The public widget key abused over real HTTP (``tuneback api`` under gunicorn), as the
outside review did (issue 23, items 3 to 5):

3. one client flooding the key, and requests with a spoofed ``Origin``, must not lock
   the site's other users out: widget requests count per client address (here
   127.0.0.1, .2, .3 ... as different clients) under a key-wide ceiling, and a refused
   origin never spends the key's allowance;
4. holding the key must not let anyone overwrite a known user's vote: a vote is a
   user's only with a token the chat page's backend signed; an unsigned vote naming
   ``u-1`` is unverified, replaces nothing and reveals nothing;
5. the key must not grow the store without bound: widget comments are capped, and an
   idempotency record keeps no copy of the vote.
"""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from feedback import db, store
from tests.live import LiveServer, tuneback_env

ORIGIN = "https://shop.example"
PER_CLIENT, CEILING, UNKEYED = 100, 150, 200  # requests a minute


class Site:
    """The live server, its keys and a way to seed completions."""

    def __init__(self, server: LiveServer, url: str, keys: dict[str, str]) -> None:
        self.server, self.db_url, self.keys = server, url, keys

    def completion(self) -> str:
        engine = create_engine(self.db_url)
        with Session(engine) as session:
            row = store.create_completion(
                session,
                messages=[{"role": "user", "content": "Where is my card?"}],
                response="Cards are great!",
                model="m",
            )
            completion_id = row.id
            session.commit()
        engine.dispose()
        return completion_id

    def sql(self, query: str) -> Any:
        engine = create_engine(self.db_url)
        with engine.connect() as conn:
            value = conn.execute(text(query)).one()
        engine.dispose()
        return value

    def post(
        self, path: str, body: dict, key: str, source: str = "127.0.0.1", **headers: str
    ) -> tuple[int, dict[str, str], Any]:
        """POST from ``source`` (any 127.x address is another client on loopback)."""
        port = urlsplit(self.server.url).port
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15, source_address=(source, 0))
        try:
            headers = {
                "Content-Type": "application/json",
                "Authorization": f"Bearer {key}",
                **headers,
            }
            conn.request("POST", path, json.dumps(body), headers)
            response = conn.getresponse()
            payload = response.read()
            return response.status, dict(response.getheaders()), json.loads(payload or b"null")
        finally:
            conn.close()

    def vote(
        self, key: str, source: str = "127.0.0.1", origin: str = ORIGIN, retry_key: str = "", **body
    ) -> tuple[int, dict[str, str], Any]:
        headers = {"Origin": origin, **({"Idempotency-Key": retry_key} if retry_key else {})}
        return self.post("/v1/feedback", body, key, source, **headers)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[Site]:
    data = tmp_path_factory.mktemp("abuse")
    url = f"sqlite:///{data / 'store.db'}"
    db.upgrade(url)
    engine = create_engine(url)
    with Session(engine) as session:
        keys = {role: store.create_api_key(session, role=role)[1] for role in ("server", "agent")}
        for name in ("flood", "votes", "storage"):
            keys[name] = store.create_api_key(session, role="widget", origins=[ORIGIN])[1]
        session.commit()
    engine.dispose()
    env = tuneback_env(
        data / "data",
        url,
        rate_limit=f"{UNKEYED}/minute",
        widget_rate_limit=f"{PER_CLIENT}/minute",
        widget_key_rate_limit=f"{CEILING}/minute",
    )
    with LiveServer(env, workers=1) as server:  # one worker: one set of in-memory counters
        yield Site(server, url, keys)


def test_one_client_flooding_the_widget_key_does_not_lock_out_the_others(site):
    key, cid = site.keys["flood"], site.completion()
    # A page elsewhere claims the shop's origin: 403s, spending only its own address's allowance.
    spoofed = [
        site.vote(key, "127.0.0.3", "https://evil.example", completion_id=cid, rating="up")[0]
        for _ in range(60)
    ]
    assert set(spoofed) == {403}, spoofed
    assert site.vote(key, "127.0.0.2", completion_id=cid, rating="up")[0] == 201
    # One client votes as fast as it can, with a new `user` each time.
    statuses, retry_after = [], None
    for i in range(UNKEYED + 20):
        status, headers, _ = site.vote(key, completion_id=cid, rating="down", user=f"u-{i}")
        statuses.append(status)
        if status == 429:
            retry_after = int(headers["Retry-After"])
            break
    assert statuses == [201] * PER_CLIENT + [429] and 1 <= retry_after <= 60, statuses[-3:]
    # Everyone else still votes: the flood and the spoofed origin spent their own allowances.
    assert site.vote(key, "127.0.0.2", completion_id=cid, rating="up")[0] == 201
    assert site.vote(key, "127.0.0.4", completion_id=cid, rating="up")[0] == 201


def test_a_public_key_cannot_overwrite_a_known_users_vote(site):
    key, cid = site.keys["votes"], site.completion()
    # Before this fix an unsigned `user` was trusted: this replaced u-1's vote.
    victim = site.vote(key, completion_id=cid, rating="down", user="u-1", comment="still no card")
    attack = site.vote(key, "127.0.0.5", completion_id=cid, rating="up", user="u-1", comment="ok!")
    assert victim[0] == attack[0] == 201
    assert attack[2]["replaced"] is False, "an unsigned vote replaced u-1's"
    assert attack[2]["id"] != victim[2]["id"]  # each unverified: a row of its own
    assert victim[2]["verified"] is attack[2]["verified"] is False
    assert attack[2]["created_at"] != victim[2]["created_at"]  # nothing about the victim's vote

    # The chat page's backend signs u-1's votes on this answer; the page votes with it.
    status, _, signed = site.post(
        "/v1/vote-tokens", {"completion_id": cid, "user": "u-1"}, site.keys["server"]
    )
    assert status == 200, signed
    first = site.vote(key, completion_id=cid, rating="down", token=signed["token"], comment="no")
    assert first[0] == 201 and first[2]["user"] == "u-1" and "token" not in first[2]
    # Without the token, no one else gets to be u-1, nor to mint one with the public key.
    forged = _with_user(signed["token"], "u-2")
    assert site.vote(key, completion_id=cid, rating="up", token=forged)[0] == 403
    other = site.completion()
    assert site.vote(key, completion_id=other, rating="up", token=signed["token"])[0] == 403
    mint = site.post("/v1/vote-tokens", {"completion_id": cid, "user": "u-1"}, key, Origin=ORIGIN)
    assert mint[0] == 403
    # An agent's vote for u-1 is the agent's: it never replaces the widget vote.
    agent = site.post(
        "/v1/feedback", {"completion_id": cid, "rating": "up", "user": "u-1"}, site.keys["agent"]
    )
    assert agent[0] == 201 and agent[2]["replaced"] is False
    # The token's holder changes its own vote.
    again = site.vote(key, completion_id=cid, rating="up", token=signed["token"])
    assert again[2]["replaced"] is True and again[2]["id"] == first[2]["id"]
    rows = site.sql(f"SELECT count(*) FROM feedback WHERE completion_id = '{cid}'")
    assert rows[0] == 4  # two unverified claims, u-1's own widget vote, an agent's vote for u-1


def _with_user(token: str, user: str) -> str:
    prefix, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims[1] = user
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{prefix}.{forged}.{signature}"


def test_widget_votes_cannot_grow_the_store_without_bound(site):
    key, cid = site.keys["storage"], site.completion()
    before = site.sql("SELECT count(*) FROM feedback")[0]
    huge = [
        site.vote(key, completion_id=cid, rating="down", comment="x" * 32_000)[0] for _ in range(90)
    ]
    assert set(huge) == {422}
    assert site.sql("SELECT count(*) FROM feedback")[0] == before
    # At the cap, with retry keys (from another client: that one spent 90 requests), the
    # records keep a reference to the vote, never its comment.
    vote = dict(completion_id=cid, rating="down", comment="y" * 2000)
    answers = [site.vote(key, "127.0.0.6", retry_key=f"k-{i}", **vote) for i in range(20)]
    assert {status for status, _, _ in answers} == {201}
    longest = site.sql("SELECT max(length(response_body)) FROM idempotency_record")[0]
    assert longest < 400, longest
    # A replay is still the full answer, read back from the vote.
    status, headers, replayed = site.vote(key, "127.0.0.6", retry_key="k-3", **vote)
    assert status == 201 and headers["Idempotent-Replayed"] == "true"
    assert replayed == answers[3][2] and replayed["comment"] == "y" * 2000

"""The feedback API as a user runs it: ``tuneback api`` under gunicorn, 2 workers,
real HTTP on loopback, keys made with the CLI. On SQLite and PostgreSQL."""

from __future__ import annotations

import http.client
import json
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
import requests
from sqlalchemy import func, select

from feedback.models import Feedback, IdempotencyRecord
from tests.live import LiveServer, create_key, tuneback_env


@pytest.fixture
def live(tmp_path, database_url):
    env = tuneback_env(tmp_path / "data", database_url, rate_limit="100000/minute")
    keys = {
        "server": create_key(env, "--role", "server"),
        "agent": create_key(env, "--role", "agent", "--name", "Dana"),
        "widget": create_key(env, "--role", "widget", "--origin", "https://shop.example"),
        "admin": create_key(env, "--role", "admin"),
    }
    with LiveServer(env) as server:
        server.keys = keys
        yield server


def bearer(key: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **extra}


def log_completion(live) -> str:
    response = requests.post(
        f"{live.url}/v1/completions",
        json={
            "messages": [{"role": "user", "content": "How do I top up by card?"}],
            "response": "I don't know.",
            "model": "smollm2",
        },
        headers=bearer(live.keys["server"]),
        timeout=10,
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_key_is_printed_alone_on_stdout(tmp_path, database_url):
    env = tuneback_env(tmp_path / "data", database_url)
    from tests.live import cli

    done = cli(env, "keys", "create", "--role", "agent")
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tb_") and " " not in lines[0]
    listed = cli(env, "keys", "list")
    assert lines[0].split("_")[1] in listed.stdout and lines[0] not in listed.stdout
    assert cli(env, "keys", "revoke", lines[0].split("_")[1]).returncode == 0
    assert "revoked" in cli(env, "keys", "list").stdout
    bad = cli(env, "keys", "create", "--role", "widget", "--origin", "not a url")
    assert bad.returncode == 2 and "origin" in bad.stderr and bad.stdout == ""


def test_fifty_concurrent_retries_leave_one_row(live, engine):
    completion_id = log_completion(live)
    body = {"completion_id": completion_id, "rating": "down", "user": "u-7"}
    headers = bearer(live.keys["agent"], **{"Idempotency-Key": "retry-storm"})

    def post(_):
        r = requests.post(f"{live.url}/v1/feedback", json=body, headers=headers, timeout=30)
        return r.status_code, r.json()["id"]

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(post, range(50)))
    assert {status for status, _ in results} == {201}
    assert len({vote_id for _, vote_id in results}) == 1
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Feedback)).scalar_one() == 1
        assert conn.execute(select(func.count()).select_from(IdempotencyRecord)).scalar_one() == 1


def test_concurrent_distinct_votes_all_land(live, engine):
    completion_id = log_completion(live)

    def post(i):
        return requests.post(
            f"{live.url}/v1/feedback",
            json={"completion_id": completion_id, "rating": "up", "user": f"user-{i}"},
            headers=bearer(live.keys["agent"]),
            timeout=30,
        ).status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(post, range(100)))
    assert statuses.count(201) == 100
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Feedback)).scalar_one() == 100


def _raw_post(url: str, path: str, headers: dict[str, str], chunks):
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.putrequest("POST", path)
    for name, value in headers.items():
        conn.putheader(name, value)
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    try:
        for chunk in chunks:
            conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        conn.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may answer 413 and close before reading everything
    response = conn.getresponse()
    result = response.status, response.read()
    conn.close()
    return result


def test_chunked_body_over_the_limit_is_413(live, engine):
    headers = bearer(live.keys["server"], **{"Content-Type": "application/json"})
    body = json.dumps(
        {"messages": [{"role": "user", "content": "x"}], "response": "y" * 100_000, "model": "m"}
    ).encode()
    status, payload = _raw_post(
        live.url,
        "/v1/completions",
        headers,
        (body[i : i + 8192] for i in range(0, len(body), 8192)),
    )
    assert status == 413
    assert json.loads(payload)["error"]["code"] == "body_too_large"
    small = json.dumps(
        {"messages": [{"role": "user", "content": "x"}], "response": "fine", "model": "m"}
    ).encode()
    status, _ = _raw_post(live.url, "/v1/completions", headers, [small])
    assert status == 201


def test_widget_flow_over_http_with_cors(live):
    completion_id = log_completion(live)
    origin = {"Origin": "https://shop.example"}
    preflight = requests.options(
        f"{live.url}/v1/feedback",
        headers={
            **origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type,idempotency-key",
        },
        timeout=10,
    )
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    vote = requests.post(
        f"{live.url}/v1/feedback",
        json={"completion_id": completion_id, "rating": "down", "comment": "wrong answer"},
        headers=bearer(live.keys["widget"], **origin),
        timeout=10,
    )
    assert vote.status_code == 201
    assert vote.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    queue = requests.get(
        f"{live.url}/v1/review-queue", headers=bearer(live.keys["agent"]), timeout=10
    ).json()
    assert [item["id"] for item in queue["items"]] == [completion_id]

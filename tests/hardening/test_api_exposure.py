"""Review findings 11 and 16, over real HTTP to ``tuneback api`` (gunicorn).

11. ``/metrics`` was public: vote volume and ``tuneback_poisoning_alerts`` let an
    attacker watch whether a flood was noticed. Now it answers loopback clients,
    clients with ``TUNEBACK_METRICS_KEY``, and admin keys.
16. Logging sat on OpenAI's legacy ``/v1/completions`` path: the openai client's
    ``completions.create(prompt=...)`` got a 422 about ``messages`` and ``response``.
    Logging has ``/v1/logged_completions`` now; the old path still logs (deprecated)
    and answers a text-completion request with an error naming what to use.
"""

from __future__ import annotations

import openai
import pytest
import requests

from tests.live import LiveServer, create_key, tuneback_env

FAR = {"X-Forwarded-For": "203.0.113.5"}  # a client off this machine, via one trusted proxy
BODY = {
    "messages": [{"role": "user", "content": "Where is my card?"}],
    "response": "It is on its way.",
    "model": "upstream-model",
}


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    data = tmp_path_factory.mktemp("exposure")
    env = tuneback_env(data, f"sqlite:///{data / 'tuneback.db'}", trusted_proxies=1)
    keys = {role: create_key(env, "--role", role) for role in ("server", "admin")}
    with LiveServer(env, workers=1) as server:
        yield server, keys, env


def test_metrics_answer_loopback_clients_only(api):
    server, keys, _ = api
    assert requests.get(f"{server.url}/metrics", timeout=10).status_code == 200
    far = requests.get(f"{server.url}/metrics", headers=FAR, timeout=10)
    assert far.status_code == 403 and "TUNEBACK_METRICS_KEY" in far.json()["error"]["message"]
    assert "tuneback_poisoning_alerts" not in far.text
    admin = {**FAR, "Authorization": f"Bearer {keys['admin']}"}
    assert requests.get(f"{server.url}/metrics", headers=admin, timeout=10).status_code == 200
    server_key = {**FAR, "Authorization": f"Bearer {keys['server']}"}
    assert requests.get(f"{server.url}/metrics", headers=server_key, timeout=10).status_code == 403


def test_with_a_metrics_key_far_clients_need_it(tmp_path):
    env = tuneback_env(
        tmp_path,
        f"sqlite:///{tmp_path / 'tuneback.db'}",
        trusted_proxies=1,
        metrics_key="s3cret-0123456789",
    )
    with LiveServer(env, workers=1) as server:
        url = f"{server.url}/metrics"
        assert requests.get(url, headers=FAR, timeout=10).status_code == 401
        wrong = {**FAR, "Authorization": "Bearer s3cret-0123456789-not"}
        assert requests.get(url, headers=wrong, timeout=10).status_code == 401
        good = {**FAR, "Authorization": "Bearer s3cret-0123456789"}
        answer = requests.get(url, headers=good, timeout=10)
        assert answer.status_code == 200 and "tuneback_" in answer.text
        assert requests.get(url, timeout=10).status_code == 200  # loopback needs no key
        empty = {**FAR, "Authorization": "Bearer "}
        assert requests.get(url, headers=empty, timeout=10).status_code == 401


def test_a_short_metrics_key_is_refused():
    from pydantic import ValidationError

    from feedback.settings import Settings

    with pytest.raises(ValidationError, match="metrics_key"):
        Settings(metrics_key="")


def test_logging_has_its_own_path_and_the_old_one_is_deprecated(api):
    server, keys, _ = api
    auth = {"Authorization": f"Bearer {keys['server']}"}
    new = requests.post(f"{server.url}/v1/logged_completions", json=BODY, headers=auth, timeout=10)
    assert new.status_code == 201 and "Deprecation" not in new.headers
    old = requests.post(f"{server.url}/v1/completions", json=BODY, headers=auth, timeout=10)
    assert old.status_code == 201 and old.headers["Deprecation"] == "true"
    assert "/v1/logged_completions" in old.headers["Link"]
    admin = {"Authorization": f"Bearer {keys['admin']}"}
    for cid in (new.json()["id"], old.json()["id"]):
        got = requests.get(f"{server.url}/v1/completions/{cid}", headers=admin, timeout=10)
        assert got.json()["response"] == BODY["response"]


def test_an_openai_text_completion_is_told_what_to_use(api):
    server, keys, _ = api
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=keys["server"], max_retries=0)
    with pytest.raises(openai.NotFoundError) as caught:
        client.completions.create(model="default", prompt="hi")
    message = caught.value.body["message"]
    assert caught.value.body["code"] == "unsupported_endpoint"
    assert "/v1/chat/completions" in message and "/v1/logged_completions" in message


@pytest.mark.parametrize("bad", ["%00", "a%00b", "x" * 33])
def test_an_id_no_row_can_have_is_a_404_not_a_500(client, keys, bad):
    """Found beside finding 9: PostgreSQL refuses a NUL in a query, so it was a 500 there."""
    from tests.conftest import auth

    answer = client.get(f"/v1/completions/{bad}", headers=auth(keys["admin"]))
    assert answer.status_code == 404
    assert answer.get_json()["error"]["code"] == "not_found"

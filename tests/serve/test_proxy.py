"""Capture proxy: a second instance of our server, in proxy mode, in front of the first."""

from __future__ import annotations

import json

import openai
import pytest
import requests
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from feedback.db import write_session
from feedback.lanes import create_lane
from feedback.models import Completion
from tests.live import free_port
from tests.serve.support import MESSAGES


@pytest.fixture(scope="module")
def upstream(module_servers):
    return module_servers()


@pytest.fixture(scope="module")
def proxy(module_servers, upstream):
    return module_servers(
        upstream_url=f"{upstream.url}/v1",
        upstream_api_key=upstream.keys["server"],
        # gpt-9 is allowed here but unknown upstream: its 404 is the upstream's.
        upstream_models=f"default,gpt-9,{upstream.backend.model_name}",
        serve_max_tokens=24,
    )


def detail(live, completion_id: str) -> dict:  # noqa: ANN001
    response = requests.get(
        f"{live.url}/v1/completions/{completion_id}", headers=live.headers("agent"), timeout=10
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_a_proxied_completion_is_logged_by_the_proxy_and_can_be_voted_on(proxy, upstream):
    answer = proxy.client().chat.completions.create(
        model="default", messages=MESSAGES, max_tokens=6, temperature=0, metadata={"t": "1"}
    )
    text = answer.choices[0].message.content
    logged = detail(proxy, answer.id)
    assert logged["response"] == text and logged["messages"] == MESSAGES
    assert logged["model"] == "default" and logged["adapter_version"] is None
    assert logged["metadata"]["source"] == "tuneback-proxy"
    assert logged["metadata"]["request_metadata"] == {"t": "1"}
    # The upstream (our own server here) logged its side under its own id.
    assert detail(upstream, logged["metadata"]["upstream_id"])["response"] == text
    assert answer.system_fingerprint == "default:base"  # passed through from the upstream
    vote = requests.post(
        f"{proxy.url}/v1/feedback",
        json={"completion_id": answer.id, "rating": "up", "user": "u"},
        headers=proxy.headers("widget", Origin="https://shop.example"),
        timeout=10,
    )
    assert vote.status_code == 201


def test_a_proxied_stream_passes_through_with_the_proxy_id(proxy):
    chunks = list(
        proxy.client().chat.completions.create(
            model="default",
            messages=MESSAGES,
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert {c.id for c in chunks} == {chunks[0].id}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage.completion_tokens <= 6
    logged = detail(proxy, chunks[0].id)
    assert logged["response"] == text
    assert logged["metadata"]["finish_reason"] in ("stop", "length")


def test_response_format_reaches_the_upstream(proxy):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    answer = proxy.client().chat.completions.create(
        model="default",
        messages=MESSAGES,
        max_tokens=20,
        response_format={"type": "json_schema", "json_schema": {"name": "ok", "schema": schema}},
    )
    assert isinstance(json.loads(answer.choices[0].message.content)["ok"], bool)


def test_models_come_from_the_upstream(proxy, upstream):
    assert [m.id for m in proxy.client().models.list()] == ["default", upstream.backend.model_name]


def test_upstream_errors_keep_their_meaning(proxy, start_server, upstream):
    with pytest.raises(openai.NotFoundError) as caught:
        proxy.client().chat.completions.create(model="gpt-9", messages=MESSAGES)
    assert caught.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError):  # refused by the proxy itself
        proxy.client().chat.completions.create(model="default", messages=[])
    wrong_key = start_server(
        upstream_url=f"{upstream.url}/v1", upstream_api_key="tb_bad_key", upstream_models="default"
    )
    with pytest.raises(openai.InternalServerError) as caught:
        wrong_key.client().chat.completions.create(model="default", messages=MESSAGES)
    assert caught.value.status_code == 502
    assert caught.value.body["code"] == "upstream_auth_failed"
    nowhere = start_server(
        upstream_url=f"http://127.0.0.1:{free_port()}/v1", upstream_models="default"
    )
    with pytest.raises(openai.InternalServerError) as caught:
        nowhere.client().chat.completions.create(model="default", messages=MESSAGES, stream=True)
    assert caught.value.status_code == 502
    assert caught.value.body["code"] == "upstream_unavailable"


def test_only_allowed_models_are_forwarded_and_answers_are_capped(proxy, upstream):
    """Review finding 12: the proxy forwarded any `model` and `max_tokens: 1000000` unchanged."""
    with pytest.raises(openai.NotFoundError) as caught:
        proxy.client().chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert caught.value.body["code"] == "model_not_found"
    assert "default" in caught.value.body["message"]
    answer = proxy.client().chat.completions.create(
        model="default", messages=MESSAGES, max_tokens=1_000_000
    )
    logged = detail(proxy, answer.id)
    assert logged["metadata"]["sampling"]["max_tokens"] == 24
    # What the upstream was asked for: its own cap is 512, so 24 came from the proxy.
    upstream_side = detail(upstream, logged["metadata"]["upstream_id"])["metadata"]
    assert upstream_side["sampling"]["max_tokens"] == 24
    assert answer.usage.completion_tokens <= 24


def test_the_proxy_needs_its_allow_list():
    from pydantic import ValidationError

    from feedback.settings import Settings

    with pytest.raises(ValidationError, match="TUNEBACK_UPSTREAM_MODELS"):
        Settings(upstream_url="http://127.0.0.1:9/v1")


# --- lanes ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lane_proxy(module_servers, upstream):
    base = upstream.backend.model_name
    live = module_servers(
        upstream_url=f"{upstream.url}/v1",
        upstream_api_key=upstream.keys["server"],
        upstream_models=f"default,{base}",
        upstream_lanes=f"{base}=mapped",
        serve_max_tokens=8,
    )
    with write_session(live.engine) as session:
        for name in ("mapped", "tagged"):
            create_lane(session, name=name)
        session.commit()
    return live


def upstream_completions(upstream) -> int:  # noqa: ANN001
    with Session(upstream.engine) as session:
        return session.execute(select(func.count()).select_from(Completion)).scalar_one()


def test_the_lane_comes_from_the_header_else_the_model_map_else_default(lane_proxy, upstream):
    client, base = lane_proxy.client(), upstream.backend.model_name
    tagged = {"X-Tuneback-Lane": "tagged"}
    cases = [
        ("default", None, "default"),
        (base, None, "mapped"),
        ("default", tagged, "tagged"),
        (base, tagged, "tagged"),  # the header wins
    ]
    for model, headers, lane in cases:
        answer = client.chat.completions.create(
            model=model, messages=MESSAGES, max_tokens=4, extra_headers=headers
        )
        assert detail(lane_proxy, answer.id)["lane"] == lane, (model, headers)
    chunks = list(
        client.chat.completions.create(
            model="default", messages=MESSAGES, max_tokens=4, stream=True, extra_headers=tagged
        )
    )
    assert detail(lane_proxy, chunks[0].id)["lane"] == "tagged"


def test_an_unknown_or_bad_lane_is_refused_before_anything_is_forwarded(lane_proxy, upstream):
    before = upstream_completions(upstream)
    for header, status, code in (("nope", 404, "lane_not_found"), ("../x", 422, "invalid_input")):
        for stream in (False, True):
            response = requests.post(
                f"{lane_proxy.url}/v1/chat/completions",
                json={"model": "default", "messages": MESSAGES, "stream": stream},
                headers=lane_proxy.headers("server", **{"X-Tuneback-Lane": header}),
                timeout=30,
            )
            assert response.status_code == status, response.text
            assert response.json()["error"]["code"] == code
            if status == 404:
                assert (
                    "the lanes are: default, mapped, tagged" in response.json()["error"]["message"]
                )
    assert upstream_completions(upstream) == before


def test_a_bad_upstream_lane_map_stops_the_proxy_at_start():
    from feedback.settings import Settings
    from serve.lanes import LaneMapError, parse_lane_map
    from serve.proxy import ProxyBackend

    assert parse_lane_map(" gpt-4o = router , m2=x_y ") == {"gpt-4o": "router", "m2": "x_y"}
    for bad in ("gpt-4o", "gpt-4o=", "=router", "gpt-4o=../router", "gpt-4o=Router"):
        settings = Settings(
            upstream_url="http://127.0.0.1:9/v1", upstream_models="gpt-4o", upstream_lanes=bad
        )
        with pytest.raises(LaneMapError, match="TUNEBACK_UPSTREAM_LANES"):
            ProxyBackend(settings)

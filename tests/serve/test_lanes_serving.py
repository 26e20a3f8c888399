"""Serving many lanes at once: routing by ``model``, per-lane swaps, refusals, memory bound.

Each test runs a real server on the tiny model with a real store; answers are
greedy, so one adapter always gives the same text.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import openai
import pytest
import requests
from sqlalchemy.orm import Session

from feedback import replicas
from feedback.db import write_session
from feedback.lanes import create_lane
from tests.serve.support import MESSAGES, PEFT_WARNING, make_lora

pytestmark = pytest.mark.filterwarnings(PEFT_WARNING)


def lanes(live, *names: str, **settings) -> None:  # noqa: ANN001, ANN003
    """Create lanes in the server's store (``settings``: name -> lane settings)."""
    with write_session(live.engine) as session:
        for name in names:
            create_lane(
                session, name=name, description=f"the {name} lane", settings=settings.get(name)
            )
        session.commit()


def register(live, lane: str, folder: Path, base: Path, *, promote: bool = True) -> str:  # noqa: ANN001
    registry = live.registry.for_lane(lane)
    version = registry.add(folder, base_model=str(base)).version
    if promote:
        registry.promote(version, actor="test")
    return version


def lora(base: Path, tmp_path: Path, seed: int) -> Path:
    return make_lora(base, tmp_path / f"lora-{seed}", seed=seed)


def status(live) -> dict:  # noqa: ANN001
    response = requests.get(f"{live.url}/v1/serving", headers=live.headers("admin"), timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def wait_for(live, condition, timeout: float = 15) -> dict:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition(state := status(live)):
        assert time.monotonic() < deadline, f"timed out; server says {state}"
        time.sleep(0.05)
    return state


def serving(live, **expected: str | None):  # noqa: ANN001, ANN201
    """Wait until each lane named serves its version (None: the base model)."""
    lanes_now = lambda s: {k: s["lanes"].get(k, {}).get("serving") for k in expected}  # noqa: E731
    return wait_for(live, lambda s: lanes_now(s) == expected)


def ask(client, model: str, **kw):  # noqa: ANN001, ANN003, ANN201
    args = {"model": model, "messages": MESSAGES, "max_tokens": 12, "temperature": 0, **kw}
    return client.chat.completions.create(**args)


def text(answer) -> str:  # noqa: ANN001
    return answer.choices[0].message.content


def logged(live, completion_id: str) -> dict:  # noqa: ANN001
    response = requests.get(
        f"{live.url}/v1/completions/{completion_id}", headers=live.headers("agent"), timeout=10
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_each_lane_answers_with_its_adapter_and_moving_one_never_changes_another(
    start_server, tiny_base, tmp_path, database_url
):
    live = start_server(database_url=database_url)  # on SQLite and on PostgreSQL
    client = live.client()
    lanes(live, "a", "b", "twin")
    shared = lora(tiny_base, tmp_path, seed=1)
    va, vt = register(live, "a", shared, tiny_base), register(live, "twin", shared, tiny_base)
    vb = register(live, "b", lora(tiny_base, tmp_path, seed=2), tiny_base)
    serving(live, a=va, b=vb, twin=vt)
    answers = {m: ask(client, m) for m in ("a", "b", "twin", "default", live.backend.model_name)}
    assert [answers[m].system_fingerprint for m in answers] == [
        f"a:{va}", f"b:{vb}", f"twin:{vt}", "default:base", "base",
    ]  # fmt: skip
    # The same weights in two lanes answer alike; other weights (or none) do not.
    assert text(answers["a"]) == text(answers["twin"])
    assert len({text(answers[m]) for m in ("a", "b", "default")}) == 3
    assert text(answers["default"]) == text(answers[live.backend.model_name])
    assert logged(live, answers["b"].id)["lane"] == "b"
    assert logged(live, answers["b"].id)["adapter_version"] == vb

    def others() -> list[str]:  # what the lanes a promotion of `a` must not touch answer
        streamed = list(ask(client, "b", stream=True))
        assert {c.system_fingerprint for c in streamed} == {f"b:{vb}"}
        return [
            text(ask(client, "b")),
            "".join(c.choices[0].delta.content or "" for c in streamed if c.choices),
            text(ask(client, "twin")),
            text(ask(client, "default")),
        ]

    before = others()
    assert before == [text(answers[m]) for m in ("b", "b", "twin", "default")]
    va2 = register(live, "a", lora(tiny_base, tmp_path, seed=3), tiny_base)
    moved = ask(client, "a")  # waits for the swap the store announced
    assert moved.system_fingerprint == f"a:{va2}" and text(moved) != text(answers["a"])
    assert others() == before
    live.registry.for_lane("a").rollback(actor="test")
    back = ask(client, "a")
    assert (back.system_fingerprint, text(back)) == (f"a:{va}", text(answers["a"]))
    assert others() == before


def test_models_list_every_lane_and_an_unknown_model_is_a_404_naming_them(
    start_server, tiny_base, tmp_path
):
    live = start_server()
    client = live.client()
    lanes(live, "router")
    version = register(live, "router", lora(tiny_base, tmp_path, seed=1), tiny_base)
    serving(live, router=version)
    listed = {m.id: m for m in client.models.list()}
    assert list(listed) == ["default", "router", live.backend.model_name]
    assert listed["router"].adapter == version and listed["router"].description == "the router lane"
    assert listed["default"].adapter == "base" and listed[live.backend.model_name].adapter == "base"
    assert client.models.retrieve("router").adapter == version
    for bad in ("gpt-9", "Router", "../default", "a" * 70):
        with pytest.raises(openai.NotFoundError) as caught:
            ask(client, bad)
        assert caught.value.body["code"] == "model_not_found"
        assert (
            "default" in caught.value.body["message"] and "router" in caught.value.body["message"]
        )
    # A lane created while the server runs is served within seconds, without a restart.
    lanes(live, "late")
    deadline = time.monotonic() + 10
    while True:
        try:
            answer = ask(client, "late")
            break
        except openai.NotFoundError:
            assert time.monotonic() < deadline, "the new lane was never served"
            time.sleep(0.2)
    assert answer.system_fingerprint == "late:base"
    assert logged(live, answer.id)["lane"] == "late"


def test_a_corrupt_adapter_in_one_lane_is_refused_while_every_lane_keeps_serving(
    start_server, tiny_base, tmp_path
):
    live = start_server()
    client = live.client()
    lanes(live, "a", "b")
    va = register(live, "a", lora(tiny_base, tmp_path, seed=1), tiny_base)
    vb = register(live, "b", lora(tiny_base, tmp_path, seed=2), tiny_base)
    serving(live, a=va, b=vb)
    expected = {m: text(ask(client, m)) for m in ("a", "b", "default")}
    bad = register(live, "a", lora(tiny_base, tmp_path, seed=3), tiny_base, promote=False)
    weights = live.registry.path(bad) / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    live.registry.for_lane("a").promote(bad, actor="test", force=True)
    state = wait_for(live, lambda s: s["lanes"]["a"]["refused"] == bad)
    assert state["lanes"]["a"]["serving"] == va and state["lanes"]["b"]["serving"] == vb
    assert state["lanes"]["b"]["refused"] is None and state["refused"] == 1
    fingerprints = {m: f"{m}:{v}" for m, v in (("a", va), ("b", vb), ("default", "base"))}
    for model in ("a", "b", "default"):
        answer = ask(client, model)
        assert (answer.system_fingerprint, text(answer)) == (fingerprints[model], expected[model])
    # The heartbeat says so per lane; a rollout waits per lane.
    on_b = replicas.wait_for_rollout(
        live.engine, version=vb, lane="b", timeout=10, stale_seconds=30
    )
    assert on_b.done and len(on_b.on) == 1
    on_a = replicas.wait_for_rollout(
        live.engine, version=bad, lane="a", timeout=10, stale_seconds=30
    )
    assert not on_a.done and [r.refused for r in on_a.refused] == [bad]
    assert "truncated" in on_a.report() or "checksum" in on_a.report()
    with Session(live.engine) as session:
        (replica,) = replicas.live_replicas(session, stale_seconds=30)
    assert replica.lanes["a"]["serving"] == va and replica.lanes["b"]["serving"] == vb
    assert replica.serving is None  # the old column: the default lane's


def test_past_max_adapters_idle_lanes_are_unloaded_and_come_back_on_demand(
    start_server, tiny_base, tmp_path
):
    live = start_server(serve_max_adapters=2, serve_adapter_slots=2)
    client = live.client()
    lanes(live, "a", "b", "c")
    versions = {
        lane: register(live, lane, lora(tiny_base, tmp_path, seed=seed), tiny_base)
        for seed, lane in enumerate(("a", "b", "c"), start=1)
    }
    serving(live, **versions)
    first = {}
    for round_ in range(2):
        for lane in ("a", "b", "c"):
            answer = ask(client, lane)
            assert answer.system_fingerprint == f"{lane}:{versions[lane]}"
            if round_ == 0:
                first[lane] = text(answer)
            assert text(answer) == first[lane]  # the same adapter, loaded again
            assert len(live.backend.swapper.loaded) <= 2
    state = status(live)
    assert state["unloads"] >= 3 and state["max_adapters"] == 2
    assert sum(lane["loaded"] for lane in state["lanes"].values() if lane["serving"]) == 2
    assert len(set(first.values())) == 3


def test_a_lane_schema_shapes_answers_that_ask_for_no_format(start_server):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    live = start_server()
    lanes(live, "extract", extract={"response_schema": schema})
    client = live.client()
    answer = ask(client, "extract", max_tokens=20)
    assert isinstance(json.loads(text(answer))["ok"], bool)
    assert logged(live, answer.id)["metadata"]["response_format"]["from"] == "lane"
    # The default lane has no schema; a request's own response_format wins.
    assert "response_format" not in logged(live, ask(client, "default").id)["metadata"]
    free = ask(client, "extract", response_format={"type": "text"})
    assert "response_format" not in logged(live, free.id)["metadata"]  # free text, as asked

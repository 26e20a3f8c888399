"""Hot-swap: the server follows the registry, under load, and refuses broken adapters."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import dataclass

import psutil
import pytest
import requests

from tests.serve.support import MESSAGES, PEFT_WARNING, add_adapter, make_lora

pytestmark = pytest.mark.filterwarnings(PEFT_WARNING)


def status(live) -> dict:  # noqa: ANN001
    response = requests.get(f"{live.url}/v1/serving", headers=live.headers("admin"), timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def wait_for(live, condition, timeout: float = 10) -> float:  # noqa: ANN001
    """Seconds until ``condition(status)`` holds; fails after ``timeout``."""
    started = time.monotonic()
    while not condition(state := status(live)):
        assert time.monotonic() - started < timeout, f"timed out; server says {state}"
        time.sleep(0.05)
    return time.monotonic() - started


def ask(client, **kw):  # noqa: ANN001, ANN003, ANN201
    args = {"model": "default", "messages": MESSAGES, "max_tokens": 8, "temperature": 0, **kw}
    return client.chat.completions.create(**args)


def test_a_promotion_is_served_within_ten_seconds_and_rollback_goes_back(
    start_server, tiny_base, tmp_path
):
    live = start_server(serve_poll_seconds=1.0)  # the default poll interval
    client = live.client()
    version = add_adapter(live, tiny_base, tmp_path, seed=1)
    live.registry.promote(version, actor="test")
    assert wait_for(live, lambda s: s["serving"] == version) < 10
    answer = ask(client)
    assert answer.system_fingerprint == f"default:{version}"
    detail = requests.get(
        f"{live.url}/v1/completions/{answer.id}", headers=live.headers("agent"), timeout=10
    ).json()
    assert detail["adapter_version"] == version
    # A request sent right after a switch in the store gets the new state: the
    # server waits for the swap instead of answering with the old adapter.
    live.registry.rollback(actor="test")
    assert ask(client).system_fingerprint == "default:base"
    assert wait_for(live, lambda s: s["loaded"] == []) < 10  # unloaded once idle


@dataclass
class Answer:
    started: float
    ended: float
    fingerprint: str
    text: str


def client_loop(live, stop: threading.Event, answers: list, errors: list, n: int) -> None:  # noqa: ANN001
    client = live.client()
    while not stop.is_set():
        started = time.monotonic()
        try:
            if n % 2:
                chunks = list(ask(client, stream=True))
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                fingerprint = chunks[0].system_fingerprint
            else:
                answer = ask(client)
                text, fingerprint = answer.choices[0].message.content, answer.system_fingerprint
            served = fingerprint.removeprefix("default:")  # the version, or base
            answers.append(Answer(started, time.monotonic(), served, text))
        except Exception as error:  # noqa: BLE001 - every failure is a test failure
            errors.append(repr(error))
        n += 2


def test_swaps_under_load_fail_nothing_mix_nothing_and_keep_memory_flat(
    start_server, tiny_base, tmp_path
):
    live = start_server(serve_max_tokens=8, serve_poll_seconds=0.5)
    client = live.client()
    versions = [add_adapter(live, tiny_base, tmp_path, seed=seed) for seed in (1, 2, 3)]
    expected = {"base": ask(client).choices[0].message.content}
    for version in versions:  # each adapter's answer, measured while idle (and warms up)
        live.registry.promote(version, actor="setup")
        answer = ask(client)
        assert answer.system_fingerprint == f"default:{version}"
        expected[version] = answer.choices[0].message.content
    assert len(set(expected.values())) == 4  # the adapters answer differently
    # Version -> intervals during which it may have been promoted: from the start
    # of the call that promoted it to the end of the call that replaced it.
    current, since = versions[-1], 0.0
    intervals: dict[str, list[tuple[float, float]]] = {v: [] for v in expected}
    stop, answers, errors = threading.Event(), [], []
    rss_before = psutil.Process().memory_info().rss
    threads = [
        threading.Thread(target=client_loop, args=(live, stop, answers, errors, n))
        for n in range(4)
    ]
    for thread in threads:
        thread.start()

    def switch(rollback: bool, to: str | None = None) -> None:
        nonlocal current, since
        began = time.monotonic()
        if rollback:  # v3 -> v2 -> v1 -> base
            restored = live.registry.rollback(actor="load-test")
            new = restored.version if restored else "base"
        else:
            live.registry.promote(new := to, actor="load-test")
        intervals[current].append((since, time.monotonic()))
        current, since = new, began
        assert len(live.backend.swapper.loaded) <= live.backend.settings.serve_adapter_slots

    rng = random.Random(0)
    for step in range(40):
        time.sleep(rng.uniform(0.05, 0.4))
        if current != "base" and (step < 3 or rng.random() < 0.35):
            switch(rollback=True)
        else:
            switch(rollback=False, to=rng.choice([v for v in versions if v != current]))
    # On a loaded machine a version can be live too briefly for any request to land
    # on it: serve each unseen one until it answers, so all four are exercised.
    for version in [v for v in expected if v not in {a.fingerprint for a in answers}]:
        while version == "base" and current != "base":
            switch(rollback=True)
        if version not in ("base", current):
            switch(rollback=False, to=version)
        deadline = time.monotonic() + 30
        while version not in {a.fingerprint for a in answers}:
            assert time.monotonic() < deadline, f"{version} never answered while promoted"
            time.sleep(0.1)
    time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join(60)
    intervals[current].append((since, float("inf")))
    rss_growth = psutil.Process().memory_info().rss - rss_before

    assert errors == []
    assert len(answers) >= 40
    assert {a.fingerprint for a in answers} - set(expected) == set()
    for answer in answers:
        assert answer.text == expected[answer.fingerprint], "an answer mixed two adapters"
        assert any(
            start <= answer.ended and answer.started <= end
            for start, end in intervals[answer.fingerprint]
        ), f"{answer.fingerprint} was not promoted during its request"
    assert len({a.fingerprint for a in answers}) == 4
    state = wait_for(live, lambda s: s["loaded"] == ([] if current == "base" else [current]))
    assert state < 10  # every replaced adapter was unloaded
    assert rss_growth < 64 * 2**20, f"RSS grew by {rss_growth / 2**20:.0f} MiB"


def truncate(file) -> None:  # noqa: ANN001
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def test_a_broken_adapter_is_refused_and_the_current_one_keeps_serving(
    start_server, tiny_base, tmp_path, caplog
):
    caplog.set_level(logging.ERROR, logger="serve.swap")
    live = start_server(serve_max_lora_rank=8)
    client = live.client()
    good = add_adapter(live, tiny_base, tmp_path, seed=1)
    live.registry.promote(good, actor="test")
    expected = ask(client).choices[0].message.content
    assert ask(client).system_fingerprint == f"default:{good}"

    truncated = add_adapter(live, tiny_base, tmp_path, seed=2)
    truncate(live.registry.path(truncated) / "adapter_model.safetensors")
    wrong_base = _adapter_for_another_base(live, tiny_base, tmp_path)
    too_big = add_adapter(live, tiny_base, tmp_path, seed=3, rank=16)
    for refused, (version, force) in enumerate(
        [(truncated, True), (wrong_base, False), (too_big, False)], start=1
    ):
        live.registry.promote(version, actor="test", force=force)
        answer = ask(client)  # answered at once by the adapter still serving
        assert (answer.system_fingerprint, answer.choices[0].message.content) == (
            f"default:{good}",
            expected,
        )
        wait_for(live, lambda s, n=refused: s["refused"] == n and s["serving"] == good)
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(f"refusing adapter {truncated}" in m and "truncated" in m for m in messages)
    assert any(f"refusing adapter {wrong_base}" in m and "base model" in m for m in messages)
    assert any(f"refusing adapter {too_big}" in m and "rank 16" in m for m in messages)

    fixed = add_adapter(live, tiny_base, tmp_path, seed=4)
    live.registry.promote(fixed, actor="test")
    assert ask(client).system_fingerprint == f"default:{fixed}"  # the server recovers


def _adapter_for_another_base(live, tiny_base, tmp_path) -> str:  # noqa: ANN001
    """An intact adapter that names another base model (as one trained elsewhere would)."""
    folder = make_lora(tiny_base, tmp_path / "elsewhere", seed=5)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "/models/some-other-model"
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return live.registry.add(folder, base_model="/models/some-other-model").version

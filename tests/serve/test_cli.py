"""``tuneback serve`` and ``tuneback up`` as real processes (gunicorn, one worker)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import requests
from openai import OpenAI

from tests.live import create_key, free_port, tuneback_env
from tests.serve.support import MESSAGES

# The commands as `tuneback` will expose them (tuneback/cli.py adds COMMANDS).
RUN = (
    "import sys, click; from tuneback.cli_serve import COMMANDS;"
    "click.Group('tuneback', commands={c.name: c for c in COMMANDS})(sys.argv[1:])"
)


@pytest.fixture
def run_command(tmp_path, tiny_base):
    procs = []

    def run(command: str):  # noqa: ANN202
        env = tuneback_env(
            tmp_path / "data",
            f"sqlite:///{tmp_path / 'data' / 'tuneback.db'}",
            base_model=str(tiny_base),
            serve_max_tokens=4,
        )
        port, log = free_port(), open(tmp_path / f"{command}.log", "w")
        proc = subprocess.Popen(
            [sys.executable, "-c", RUN, command, "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        procs.append((proc, log))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / f"{command}.log").read_text()
            assert time.monotonic() < deadline, "the server did not start"
            try:
                if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                    return url, env, tmp_path / f"{command}.log"
            except requests.RequestException:  # not listening yet, or still loading
                time.sleep(0.3)

    yield run
    for proc, log in procs:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def chat(url: str, key: str) -> str:
    client = OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)
    answer = client.chat.completions.create(model="default", messages=MESSAGES)
    return answer.id


@pytest.mark.parametrize("command", ["serve", "up"])
def test_the_command_serves_chats_and_the_feedback_api(run_command, command):
    url, env, log = run_command(command)
    server, agent = create_key(env, "--role", "server"), create_key(env, "--role", "agent")
    completion_id = chat(url, server)
    detail = requests.get(
        f"{url}/v1/completions/{completion_id}",
        headers={"Authorization": f"Bearer {agent}"},
        timeout=10,
    )
    assert (
        detail.status_code == 200 and detail.json()["metadata"]["usage"]["completion_tokens"] <= 4
    )
    if command == "up":
        deadline = time.monotonic() + 30
        while "scheduler started" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)

"""The first run, as a new user lives it: `tuneback up` (a real process, the real
SmolLM2), the demo chat page, a thumbs-down with a comment, an agent's correction in the
review console, and the dashboard. Minutes on a 2-core box: slow tier."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import requests

from tests.live import BIN, create_key, free_port, tuneback_env
from tests.web.support import screenshot, sign_in


@pytest.fixture
def up(tmp_path):
    """`tuneback up` on a free loopback port, with its own data dir; stopped afterwards."""
    from feedback.base_model import BaseModelError, default_gguf

    try:
        default_gguf()
    except BaseModelError as error:
        pytest.skip(str(error))
    port = free_port()
    data = tmp_path / "data"
    env = tuneback_env(data, f"sqlite:///{data / 'tuneback.db'}", serve_max_tokens=48)
    log = (tmp_path / "up.log").open("w")
    proc = subprocess.Popen(
        [str(BIN), "up", "--port", str(port)], env=env, start_new_session=True,
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
            try:
                if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(1)
        else:
            raise TimeoutError("tuneback up did not start")
        yield url, env
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


class Keys:
    """What sign_in needs: the site's URL and keys."""

    def __init__(self, url: str, keys: dict[str, str]) -> None:
        self.url, self.keys = url, keys


@pytest.mark.slow
def test_a_new_user_runs_the_whole_loop_in_the_browser(page, up, shots):
    url, env = up
    page.set_default_timeout(300_000)  # the real model on a busy CPU
    page.goto(url + "/")
    question = "How do I top up my account by card?"
    page.get_by_label("Your message").fill(question)
    page.get_by_role("button", name="Send").click()
    widget = page.locator("[data-tuneback-completion]")
    widget.get_by_role("button", name="Bad answer").click()
    page.get_by_label("Tell us more (optional)").fill("I wanted the steps in the app")
    page.get_by_role("button", name="Send comment").click()
    page.get_by_text("Thanks, your comment was sent.").wait_for()
    screenshot(page, shots, "demo-chat")
    cid = widget.get_attribute("data-tuneback-completion")

    site = Keys(url, {
        "agent": create_key(env, "--role", "agent", "--name", "Dana"),
        "admin": create_key(env, "--role", "admin", "--name", "Ada"),
    })  # fmt: skip
    sign_in(page, site, "agent")
    page.locator(f'tr[data-completion="{cid}"]').get_by_role("link", name="Correct").click()
    page.get_by_text("I wanted the steps in the app").wait_for()
    page.get_by_label("What the assistant should have said").fill(
        "Open the app, tap Top up, choose Card and enter the amount."
    )
    page.get_by_role("button", name="Save correction").click()
    page.get_by_text("Correction saved").wait_for()
    assert page.locator(f'tr[data-completion="{cid}"]').count() == 0

    page.get_by_role("button", name="Sign out").click()
    sign_in(page, site, "admin")
    assert page.locator("#serving").inner_text() == "base model"
    summary = page.get_by_role("region", name="Summary").inner_text()
    assert "Votes\n1" in summary and "Corrections\n1" in summary

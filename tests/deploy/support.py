"""Real ``tuneback`` processes for the deployment tests: start, wait, freeze, kill, restart."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import requests

from tests.live import BIN


class Proc:
    """One ``tuneback <args>`` process in its own process group, logging to a file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logs: Path) -> None:
        self.name, self.args, self.env, self.logs = name, args, env, logs
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.start()

    @property
    def log_path(self) -> Path:
        return self.logs / f"{self.name}.{self.starts}.log"

    def start(self) -> Proc:
        self.starts += 1
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [str(BIN), *self.args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_http(self, url: str, timeout: float = 180) -> None:
        """Until ``url``/healthz answers 200; fails with the log if the process exits."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.alive(), f"{self.name} exited:\n{self.log()[-4000:]}"
            assert time.monotonic() < deadline, f"{self.name} not ready:\n{self.log()[-4000:]}"
            try:
                if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)

    def wait_log(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            assert self.alive(), f"{self.name} exited:\n{self.log()[-4000:]}"
            assert time.monotonic() < deadline, f"{self.name}: no {text!r}:\n{self.log()[-4000:]}"
            time.sleep(0.2)

    def signal(self, sig: int) -> None:
        if self.alive():
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole group (gunicorn master and worker): no clean shutdown."""
        self.signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if not self.alive():
            return
        self.signal(signal.SIGCONT)  # a frozen process must be able to handle SIGTERM
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()

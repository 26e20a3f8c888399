"""A small JSON-over-HTTP client for the demo (standard library only) and the server process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from feedback.exceptions import TunebackError


class DemoError(TunebackError, RuntimeError):
    code = "demo_failed"


class Api:
    """Calls to one Tuneback server, each with an API key."""

    def __init__(self, url: str, timeout: float = 600) -> None:
        self.url, self.timeout = url.rstrip("/"), timeout

    def call(
        self, method: str, path: str, key: str | None = None, body: Any = None, **headers: str
    ) -> dict:
        """The decoded JSON answer; a DemoError (with the server's error) otherwise."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if key:
            request.add_header("Authorization", f"Bearer {key}")
        for name, value in headers.items():
            request.add_header(name.replace("_", "-"), value)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:500]
            raise DemoError(f"{method} {path} answered {error.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            raise DemoError(f"{method} {path} failed: {error}") from None

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, TimeoutError, ConnectionError):
            return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``tuneback serve`` in its own process group, its log in a file."""

    def __init__(self, env: dict[str, str], port: int, log_path: Path) -> None:
        self.port, self.log_path = port, log_path
        self.url = f"http://127.0.0.1:{port}"
        self._log = log_path.open("ab")
        command = "from tuneback.cli import main; main()"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", command, "serve", "--port", str(port)],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float) -> None:
        """Until /healthz answers: the serving app only answers once the model is loaded."""
        api, deadline = Api(self.url), time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DemoError(f"the server exited early; see {self.log_path}:\n{self.tail()}")
            if api.ready():
                return
            time.sleep(0.5)
        raise DemoError(f"the server was not ready after {timeout:.0f} s; see {self.log_path}")

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()

"""A real ``tuneback`` server process on loopback, for tests that need real HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

BIN = Path(sys.executable).parent / "tuneback"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tuneback_env(data_dir: Path, database_url: str, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEBACK_")}
    env.update(TUNEBACK_DATA_DIR=str(data_dir), TUNEBACK_DATABASE_URL=database_url)
    env.update({f"TUNEBACK_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def create_key(env: dict[str, str], *args: str) -> str:
    done = cli(env, "keys", "create", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


class LiveServer:
    """``tuneback <command>`` in its own process group, stopped on exit."""

    def __init__(self, env: dict[str, str], command: str = "api", workers: int = 2) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [str(BIN), command, "--port", str(self.port), "--workers", str(workers)]
        self.proc = subprocess.Popen(
            args,
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_ready(self, timeout: float = 60) -> LiveServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read()}")
            try:
                if requests.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except (requests.ConnectionError, requests.Timeout):
                pass  # not listening yet, or a worker still starting on a busy machine
            time.sleep(0.2)
        raise TimeoutError("server did not become ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc.stderr.close()

    def __enter__(self) -> LiveServer:
        return self.wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()

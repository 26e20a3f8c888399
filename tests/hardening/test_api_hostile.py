"""The API under hostile input, over real HTTP to ``tuneback api`` (gunicorn):

* body bombs: a huge Content-Length with a small body, a chunked body far
  over the limit, JSON nested 30,000 and 100,000 levels deep; each answered
  413 or 422 with the JSON error shape, never a 5xx, and the server's memory
  (RSS of master and worker) stays bounded while they arrive;
* rate limits keyed by client address cannot be dodged by rotating
  ``X-Forwarded-For``: with ``TUNEBACK_TRUSTED_PROXIES=0`` the header is
  ignored, with 1 only the hop the proxy appended counts.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import psutil
import requests

from feedback import db, store
from tests.live import LiveServer, tuneback_env


class Server(LiveServer):
    """A LiveServer whose readiness poll also waits out slow first answers (a loaded box)."""

    def wait_ready(self, timeout: float = 90) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read()}")
            try:
                if requests.get(f"{self.url}/healthz", timeout=5).status_code == 200:
                    return self
            except requests.RequestException:
                time.sleep(0.2)
        raise TimeoutError("server did not become ready")


def _send(port: int, head: str, body_parts=(), timeout: float = 20) -> tuple[int, dict]:
    """Send a raw request; tolerate the server closing early; return status and JSON body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head.encode())
        try:
            for part in body_parts:
                sock.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused mid-body: the answer is already waiting
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
                if b"\r\n\r\n" in data and _complete(data):
                    break
        except (ConnectionResetError, TimeoutError):
            pass
    status_line, _, rest = data.partition(b"\r\n")
    body = rest.partition(b"\r\n\r\n")[2]
    return int(status_line.split()[1]), json.loads(body or b"{}")


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def _head(key: str, extra: str) -> str:
    return (
        "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Connection: close\r\n{extra}\r\n"
    )


def _chunks(total: int, size: int = 64 * 1024):
    sent = 0
    while sent < total:
        yield f"{size:x}\r\n".encode() + b"[" * size + b"\r\n"
        sent += size
    yield b"0\r\n\r\n"


def _server_key(url: str) -> str:
    from sqlalchemy.orm import Session

    db.upgrade(url)
    engine = db.make_engine(url)
    with Session(engine) as session:
        key = store.create_api_key(session, role="server")[1]
        session.commit()
    engine.dispose()
    return key


def _rss(pid: int) -> int:
    """Resident memory of the server: its process and all its children."""
    root = psutil.Process(pid)
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


class _PeakRSS(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self._done = pid, _rss(pid), threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.02):
            self.peak = max(self.peak, _rss(self.pid))

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak


def test_body_bombs_are_refused_with_bounded_memory(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    env = tuneback_env(tmp_path / "data", url)
    key = _server_key(url)
    deep = 30_000
    bombs = {  # name: (head, a fresh body each time, the answers accepted)
        "huge Content-Length, small body": (
            _head(key, "Content-Length: 1000000000000\r\n"), lambda: [b'{"messages": []}'], {413},
        ),
        "chunked, 16 MB": (
            _head(key, "Transfer-Encoding: chunked\r\n"), lambda: _chunks(16 << 20), {413},
        ),
        f"JSON nested {deep} deep": (
            _head(key, f"Content-Length: {2 * deep}\r\n"), lambda: [b"[" * deep + b"]" * deep],
            {422},
        ),
        "JSON nested 100000 deep": (
            _head(key, "Content-Length: 200000\r\n"),
            lambda: [b"[" * 100_000 + b"]" * 100_000], {413},
        ),
    }  # fmt: skip
    with Server(env, workers=1) as server:
        for _ in range(20):  # warm up: imports, first requests, the worker's caches
            requests.get(f"{server.url}/healthz", timeout=5)
        baseline = _rss(server.proc.pid)
        watch = _PeakRSS(server.proc.pid)
        watch.start()
        seen = {}
        for name, (head, body, expected) in bombs.items():
            for _ in range(3):
                started = time.monotonic()
                status, answer = _send(server.port, head, body())
                seen[name] = (status, round(time.monotonic() - started, 2))
                assert status in expected, (name, status, answer)
                assert answer["error"]["code"] in ("body_too_large", "invalid_input"), answer
        peak = watch.stop()
        assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200
    grown = (peak - baseline) / 2**20
    print(f"RSS baseline {baseline / 2**20:.0f} MiB, peak +{grown:.1f} MiB; {seen}")
    assert grown < 64, f"the server grew by {grown:.0f} MiB while refusing bombs"


def test_rotating_x_forwarded_for_does_not_reset_the_limit(tmp_path):
    """No key: limits count per client address, here 5 a minute."""
    for trusted in (0, 1):
        env = tuneback_env(
            tmp_path / f"data{trusted}",
            f"sqlite:///{tmp_path / f'store{trusted}.db'}",
            rate_limit="5/minute",
            trusted_proxies=trusted,
        )
        with Server(env, workers=1) as server:
            url = f"{server.url}/v1/review-queue"

            def get(forwarded: str, url: str = url) -> int:
                headers = {"X-Forwarded-For": forwarded}
                return requests.get(url, headers=headers, timeout=5).status_code

            # The client rotates what it claims; a proxy (trusted=1) appends the real hop.
            real = ", 198.51.100.7" if trusted else ""
            statuses = [get(f"203.0.113.{i}{real}") for i in range(8)]
            assert statuses[:5] == [401] * 5 and statuses[5:] == [429] * 3, (trusted, statuses)
            if trusted:  # another real client behind the proxy has its own allowance
                assert get("203.0.113.1, 198.51.100.8") == 401
            else:  # and without a trusted proxy no header makes a new client
                assert get("198.51.100.8") == 429

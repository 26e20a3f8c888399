"""Per-key rate limits, checked before every request (operations routes exempt).

Limits are parsed once with the ``limits`` library (Flask-Limiter's notation)
and enforced as moving windows: a request is refused when the key already has
``amount`` hits in the last window, and Retry-After says when the oldest of
them leaves it. With ``redis://`` the counters live in Redis through
``limits``, shared by every worker and machine. With ``memory://`` they live
in this process, in :class:`MemoryMovingWindow`: ``limits``' own memory
storage restarts a timer thread every 10 ms and inserts each hit at the front
of a list, which made it the costliest part of a vote.

A widget key is public and shared by every end user of a site, so its requests
are not counted per key: each client address (and each signed user) has its
own allowance (``TUNEBACK_WIDGET_RATE_LIMIT``) under a key-wide ceiling
(``TUNEBACK_WIDGET_KEY_RATE_LIMIT``), and one client's flood never locks the
others out. :meth:`RateLimiter.check` takes such a limit by its spec; its
windows are built at first use, in the same storage.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import deque
from typing import Protocol

from limits import RateLimitItem, parse_many, storage, strategies

from feedback.exceptions import TunebackError

EXEMPT_ENDPOINTS = frozenset({"ops.healthz", "openapi.spec"})


class RateLimitedError(TunebackError):
    code, status = "rate_limited", 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def client_network(address: str | None) -> str:
    """The client a per-client limit counts: its IPv4 address, or its IPv6 /64 (one
    host usually holds a whole /64, so counting its addresses would count nothing)."""
    if not address or ":" not in address:
        return address or "unknown"
    try:
        ip = ipaddress.IPv6Address(address)
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:  # an IPv4 client on a dual-stack socket
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((ip, 64), strict=False))


class Window(Protocol):
    """One limit, for every key."""

    limit: RateLimitItem

    def hit(self, who: str) -> bool: ...

    def retry_after(self, who: str) -> float: ...


class MemoryMovingWindow:
    """One limit's moving windows in this process: per key, the times of its recent hits.

    A hit costs an append, and the deque's ``maxlen`` drops hits that no longer
    matter. Keys idle for a whole window are swept at most once a minute, so
    one-off client addresses do not pile up.
    """

    SWEEP_EVERY_S = 60.0

    def __init__(self, limit: RateLimitItem) -> None:
        self.limit, self.amount, self.seconds = limit, limit.amount, limit.get_expiry()
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        self._next_sweep = time.monotonic() + self.SWEEP_EVERY_S

    def hit(self, who: str) -> bool:
        now = time.monotonic()
        with self._lock:
            if now >= self._next_sweep:
                self._sweep(now)
            hits = self._hits.get(who)
            if hits is None:
                hits = self._hits[who] = deque(maxlen=self.amount)
            # Full, and the oldest hit kept is still in the window: refused, not counted.
            if len(hits) == self.amount and (not hits or hits[0] >= now - self.seconds):
                return False  # (a limit of 0 keeps no hits and refuses all)
            hits.append(now)  # when full, maxlen drops the oldest, which has left the window
            return True

    def retry_after(self, who: str) -> float:
        """Seconds until the oldest hit in the window leaves it."""
        hits = self._hits.get(who)
        return hits[0] + self.seconds - time.monotonic() if hits else 0.0

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + self.SWEEP_EVERY_S
        idle = [w for w, hits in self._hits.items() if not hits or hits[-1] < now - self.seconds]
        for who in idle:
            del self._hits[who]


class LimitsMovingWindow:
    """One limit's moving windows in a ``limits`` storage (Redis, or any it supports)."""

    def __init__(self, limit: RateLimitItem, strategy: strategies.RateLimiter) -> None:
        self.limit, self.strategy = limit, strategy

    def hit(self, who: str) -> bool:
        return self.strategy.hit(self.limit, who)

    def retry_after(self, who: str) -> float:
        return self.strategy.get_window_stats(self.limit, who).reset_time - time.time()


class RateLimiter:
    """The default limit (``spec``) and any other limit asked for by its spec, in one storage."""

    def __init__(self, spec: str, storage_uri: str) -> None:
        self._strategy: strategies.RateLimiter | None = None
        if not storage_uri.startswith("memory://"):
            backend = storage.storage_from_string(storage_uri)
            self._strategy = strategies.MovingWindowRateLimiter(backend)
        self._lock = threading.Lock()
        self.windows: list[Window] = self._windows(spec)
        self._by_spec: dict[str, list[Window]] = {spec: self.windows}

    def _windows(self, spec: str) -> list[Window]:
        if self._strategy is None:
            return [MemoryMovingWindow(limit) for limit in parse_many(spec)]
        return [LimitsMovingWindow(limit, self._strategy) for limit in parse_many(spec)]

    def limit(self, spec: str) -> list[Window]:
        """The windows of ``spec``, built once (a setting's value: a handful per process)."""
        windows = self._by_spec.get(spec)
        if windows is None:
            with self._lock:
                windows = self._by_spec.get(spec) or self._by_spec.setdefault(
                    spec, self._windows(spec)
                )
        return windows

    def check(self, endpoint: str | None, method: str, who: str, spec: str | None = None) -> None:
        """Count this request of ``who`` against every limit of ``spec`` (default: the
        app's); raise 429 when one is exceeded."""
        if endpoint in EXEMPT_ENDPOINTS or method == "OPTIONS":
            return
        for window in self.windows if spec is None else self.limit(spec):
            if not window.hit(who):
                retry_after = max(1, math.ceil(window.retry_after(who)))
                raise RateLimitedError(
                    f"rate limit of {window.limit} exceeded; retry in {retry_after} s",
                    retry_after,
                )

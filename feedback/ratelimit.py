"""Per-key rate limits, checked before every request (operations routes exempt).

Built directly on the ``limits`` library (what Flask-Limiter uses inside)
because the request path of a vote must stay cheap: limits are parsed once
here, and each request costs one ``hit`` per limit. Counters live in memory
(per worker process) or, with ``redis://``, are shared by every worker and
machine.
"""

from __future__ import annotations

import math
import time

from flask import g, request
from limits import parse_many, storage, strategies

from feedback.exceptions import TunebackError

EXEMPT_ENDPOINTS = frozenset({"ops.healthz", "ops.metrics", "openapi.spec"})


class RateLimitedError(TunebackError):
    code, status = "rate_limited", 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimiter:
    def __init__(self, spec: str, storage_uri: str) -> None:
        self.limits = parse_many(spec)
        self.strategy = strategies.MovingWindowRateLimiter(storage.storage_from_string(storage_uri))

    def identity(self) -> str:
        caller = g.get("caller")
        return f"key:{caller.id}" if caller else f"addr:{request.remote_addr}"

    def check(self) -> None:
        """Count this request against every limit; raise 429 when one is exceeded."""
        if request.endpoint in EXEMPT_ENDPOINTS or request.method == "OPTIONS":
            return
        who = self.identity()
        for limit in self.limits:
            if not self.strategy.hit(limit, who):
                reset_at = self.strategy.get_window_stats(limit, who).reset_time
                retry_after = max(1, math.ceil(reset_at - time.time()))
                raise RateLimitedError(
                    f"rate limit of {limit} exceeded; retry in {retry_after} s", retry_after
                )

"""Prometheus metrics: request counts and latencies, and domain counters.

Each app gets its own registry, so tests can build many apps in one process.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tuneback_http_requests",
            "HTTP requests answered",
            ["method", "endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tuneback_http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["method", "endpoint"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.feedback = Counter(
            "tuneback_feedback", "Votes recorded", ["rating", "source"], registry=self.registry
        )
        self.corrections = Counter(
            "tuneback_corrections", "Corrections recorded", registry=self.registry
        )
        self.completions = Counter(
            "tuneback_completions", "Completions logged", registry=self.registry
        )
        # labels() takes a lock and builds its key on every call: resolve each
        # label set once (these caches grow exactly as the metrics themselves do).
        self._children: dict[tuple, tuple] = {}
        self._votes: dict[tuple[str, str], Any] = {}

    def finish(self, request: Request, response: Response, start: float | None) -> Response:
        """Call on each response: counts it and records its latency since ``start``."""
        key = (request.method, request.endpoint or "unmatched", response.status_code)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.latency.labels(key[0], key[1]),
                self.requests.labels(key[0], key[1], str(key[2])),
            )
        if start is not None:
            children[0].observe(time.perf_counter() - start)
        children[1].inc()
        return response

    def vote(self, rating: str, source: str) -> None:
        """Count one recorded vote."""
        child = self._votes.get((rating, source))
        if child is None:
            child = self._votes[rating, source] = self.feedback.labels(rating, source)
        child.inc()

    def render(self) -> Response:
        return Response(generate_latest(self.registry), mimetype=CONTENT_TYPE_LATEST)

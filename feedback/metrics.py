"""Prometheus metrics: request counts and latencies, and domain counters.

Each app gets its own registry, so tests can build many apps in one process.

Under several gunicorn workers each worker counts its own requests, so a
scrape would see whichever worker answered. With ``PROMETHEUS_MULTIPROC_DIR``
set before the workers start (``tuneback api`` and
``deploy/gunicorn/api.py`` do it), prometheus_client keeps every worker's
values in files there, and ``/metrics`` adds them up across the workers.

The completion, vote and correction counters carry a ``lane`` label. Lanes are
created by admins (``tuneback lanes create``), so the label's values stay few.

``tuneback_poisoning_alerts{kind}`` reports the alerts of the last finished
retrain run (vote floods, suspect trigger tokens), read from the store at
scrape time (at most every ``ALERTS_TTL_S`` seconds), so every worker agrees.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from flask import Request, Response, current_app
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy.exc import SQLAlchemyError

from feedback.models import DEFAULT_LANE

log = logging.getLogger(__name__)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
ALERT_KINDS = ("vote_flood", "trigger_suspect")
ALERTS_TTL_S = 15.0


def multiprocess_dir() -> str | None:
    """The folder the workers of this server share their metric values in, if any."""
    return os.environ.get(MULTIPROC_ENV) or None


def _use_multiprocess_values() -> None:
    """File-backed values for the metrics made from now on in this process.

    prometheus_client picks its value class when it is first imported; if that
    happened before the folder was set (an import in the gunicorn master), pick
    again, so the workers' counters still land in the shared folder.
    """
    from prometheus_client import values

    if values.ValueClass is values.MutexValue:
        values.ValueClass = values.get_value_class()


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.multiprocess_dir = multiprocess_dir()
        if self.multiprocess_dir:
            os.makedirs(self.multiprocess_dir, exist_ok=True)
            _use_multiprocess_values()
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
            "tuneback_feedback",
            "Votes recorded",
            ["rating", "source", "lane"],
            registry=self.registry,
        )
        self.corrections = LaneCounter(
            Counter(
                "tuneback_corrections",
                "Corrections recorded",
                ["lane"],
                registry=self.registry,
            )
        )
        self.completions = LaneCounter(
            Counter("tuneback_completions", "Completions logged", ["lane"], registry=self.registry)
        )
        # labels() takes a lock and builds its key on every call: resolve each
        # label set once (these caches grow exactly as the metrics themselves do).
        self._children: dict[tuple, tuple] = {}
        self._votes: dict[tuple[str, str, str], Any] = {}
        self.alerts = PoisoningAlerts()
        self.registry.register(self.alerts)

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

    def vote(self, rating: str, source: str, lane: str = DEFAULT_LANE) -> None:
        """Count one recorded vote on a completion of ``lane``."""
        key = (rating, source, lane)
        child = self._votes.get(key)
        if child is None:
            child = self._votes[key] = self.feedback.labels(rating, source, lane)
        child.inc()

    def render(self) -> Response:
        """This process's metrics, or every worker's added up in multiprocess mode."""
        registry = self.registry
        if self.multiprocess_dir:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)
            registry.register(self.alerts)
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


class LaneCounter:
    """A counter with a ``lane`` label whose ``inc()`` counts the default lane, so
    callers from before lanes keep working; ``inc(lane=...)`` counts another."""

    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        self._children: dict[str, Any] = {}  # see Metrics._children

    def inc(self, amount: float = 1, *, lane: str = DEFAULT_LANE) -> None:
        child = self._children.get(lane)
        if child is None:
            child = self._children[lane] = self.counter.labels(lane)
        child.inc(amount)


class PoisoningAlerts:
    """A collector: the last finished retrain run's alerts, counted by kind."""

    def __init__(self) -> None:
        self._cached: tuple[float, dict[str, int]] | None = None

    def collect(self):  # noqa: ANN201 - a generator of metric families
        gauge = GaugeMetricFamily(
            "tuneback_poisoning_alerts",
            "Alerts of the last finished retrain run: vote floods, suspect trigger tokens",
            labels=["kind"],
        )
        for kind, count in self._counts().items():
            gauge.add_metric([kind], count)
        yield gauge

    def _counts(self) -> dict[str, int]:
        now = time.monotonic()
        if self._cached and self._cached[0] > now:
            return self._cached[1]
        counts = dict.fromkeys(ALERT_KINDS, 0)
        try:
            from sqlalchemy.orm import Session

            from feedback.store import latest_run_alerts

            with Session(current_app.extensions["tuneback"].engine) as session:
                for alert in latest_run_alerts(session):
                    kind = alert.get("kind", "other")
                    counts[kind] = counts.get(kind, 0) + 1
        except RuntimeError:  # no app context (a registry collected outside a request)
            return counts
        except SQLAlchemyError:  # the store is down: /metrics still answers
            log.warning("could not read the poisoning alerts", exc_info=True)
            return counts
        self._cached = (now + ALERTS_TTL_S, counts)
        return counts

"""Liveness and metrics for operators. Not rate limited.

``/healthz`` needs no key. ``/metrics`` shows vote volume and the poisoning
alerts, which an attacker could watch to learn whether a flood was noticed: it
answers clients on this machine (loopback) and admin keys; other clients need
``TUNEBACK_METRICS_KEY`` as a bearer token (Prometheus' ``authorization`` scrape
option), and without that setting they are refused. It is rate limited like any
endpoint, so the key cannot be guessed at speed.
"""

from __future__ import annotations

import hmac
import ipaddress

from apiflask import APIBlueprint
from flask import current_app, g, request
from sqlalchemy import text

from feedback.context import request_session
from feedback.exceptions import AuthenticationError, ForbiddenError
from feedback.schemas import Health

bp = APIBlueprint("ops", __name__, tag="Operations")


@bp.get("/healthz")
@bp.output(Health)
@bp.doc(responses={503: "the database is unreachable"})
def healthz():
    """Liveness: the service answers and its database is reachable."""
    try:
        request_session().execute(text("SELECT 1"))
    except Exception as error:  # noqa: BLE001 - any failure means "not healthy"
        return {"status": "unhealthy", "database": type(error).__name__}, 503
    return {"status": "ok", "database": "ok"}


@bp.get("/metrics")
@bp.doc(
    responses={
        200: {
            "description": "Prometheus text format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    }
)
def metrics():
    """Prometheus metrics: request counts and latencies, feedback counts."""
    ext = current_app.extensions["tuneback"]
    _check_scraper(ext.settings.metrics_key)
    return ext.metrics.render()


def _check_scraper(key) -> None:  # noqa: ANN001 - SecretStr | None
    """Loopback clients and admin keys may read; others need the metrics key, if set."""
    caller = g.get("caller")
    if _is_loopback(request.remote_addr) or (caller is not None and caller.role == "admin"):
        return
    if key is None:
        raise ForbiddenError(
            "metrics are served to clients on this machine only; set "
            "TUNEBACK_METRICS_KEY to scrape them from elsewhere"
        )
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    expected = key.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
        raise AuthenticationError("metrics need the metrics key: Authorization: Bearer <key>")


def _is_loopback(address: str | None) -> bool:
    try:
        return ipaddress.ip_address(address or "").is_loopback
    except ValueError:
        return False

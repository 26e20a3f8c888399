"""Liveness and metrics for operators. Not rate limited, no key needed."""

from __future__ import annotations

from apiflask import APIBlueprint
from flask import current_app
from sqlalchemy import text

from feedback.context import request_session
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
    return current_app.extensions["tuneback"].metrics.render()

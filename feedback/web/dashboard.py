"""The admins' dashboard: adapters and their gate decisions, metrics across versions,
feedback volume, and retrain / promote / roll back (each confirmed first).

It shows one lane at a time (``?lane=NAME``, ``default`` when absent): that lane's
adapters, runs, promotions, charts and totals, and promote and roll back act on that
lane's registry only. A table of every lane, with what serves it, leads to each.
"""

from __future__ import annotations

import logging

from flask import current_app, flash, redirect, request, url_for

from feedback.adapters.registry import Registry
from feedback.context import request_session
from feedback.exceptions import NotFoundError, TunebackError
from feedback.models import DEFAULT_LANE
from feedback.web import charts, queries
from feedback.web.hooks import hooks
from feedback.web.pages import chosen_lane, current_user, page_blueprint, render, sign_in_required

bp = page_blueprint("dashboard", __name__)
log = logging.getLogger(__name__)
NOT_WIRED = (
    "This process runs the feedback API without the trainer: use the dashboard of "
    "`tuneback up` or `tuneback serve`, or the `tuneback retrain` command."
)


@bp.get("/dashboard")
@sign_in_required("admin")
def overview():
    session = request_session()
    lane = chosen_lane(DEFAULT_LANE)
    adapters = queries.adapter_rows(session, lane)
    days = queries.votes_per_day(session, days=30, lane=lane)
    return render(
        "dashboard.html",
        lane=lane,
        lanes=queries.lane_rows(session),
        adapters=adapters,
        serving=queries.serving_summary(session, lane),
        runs=queries.recent_runs(session, lane=lane),
        totals=queries.counts_summary(session, lane),
        metric_chart=charts.metric_lines(adapters, queries.SERIES),
        volume_chart=charts.volume_bars(days),
        primary=adapters[0]["primary"] if adapters else queries.PRIMARY_METRIC,
        wired=hooks(),
        not_wired=NOT_WIRED,
    )


@bp.post("/dashboard/retrain")
@sign_in_required("admin")
def retrain():
    action = hooks().retrain_now
    lane = chosen_lane(DEFAULT_LANE)
    if action is None:
        flash("Retrain now is not available here. " + NOT_WIRED, "error")
    else:
        flash(action(actor(), lane), "ok")
    return redirect(url_for("dashboard.overview", lane=_lane_arg(lane)), code=303)


@bp.get("/dashboard/promote/<version>")
@sign_in_required("admin")
def confirm_promote(version: str):
    """Ask before promoting: name the adapter, its lane, its gate decision, what it replaces."""
    lane = chosen_lane(DEFAULT_LANE)
    rows = queries.adapter_rows(request_session(), lane)
    row = next((r for r in rows if r["version"] == version), None)
    if row is None:
        return render("forbidden.html", status=404,
                      message=f"Lane {lane} has no adapter version {version[:40]!r}.")  # fmt: skip
    serving = queries.serving_summary(request_session(), lane)
    return render("confirm.html", action="promote", adapter=row, serving=serving, lane=lane)


@bp.post("/dashboard/promote/<version>")
@sign_in_required("admin")
def promote(version: str):
    force = request.form.get("force") == "yes"
    lane = chosen_lane(DEFAULT_LANE)
    if request.form.get("confirm") != "yes":
        flash("Nothing changed: the promotion was not confirmed.", "error")
    else:
        done = f"Promoted {version}{_in_lane(lane)}" + (" (forced)" if force else "") + "."
        _run(lambda: registry(lane).promote(version, actor=actor(), force=force), done)
    return redirect(url_for("dashboard.overview", lane=_lane_arg(lane)), code=303)


@bp.get("/dashboard/rollback")
@sign_in_required("admin")
def confirm_rollback():
    lane = chosen_lane(DEFAULT_LANE)
    serving = queries.serving_summary(request_session(), lane)
    return render("confirm.html", action="rollback", adapter=None, serving=serving, lane=lane)


@bp.post("/dashboard/rollback")
@sign_in_required("admin")
def rollback():
    lane = chosen_lane(DEFAULT_LANE)
    if request.form.get("confirm") != "yes":
        flash("Nothing changed: the rollback was not confirmed.", "error")
    else:

        def go() -> str:
            now = registry(lane).rollback(actor=actor())
            serves = now.version if now else "the base model"
            return f"Rolled back: now serving {serves}" + _in_lane(lane) + "."

        _run(go, None)
    return redirect(url_for("dashboard.overview", lane=_lane_arg(lane)), code=303)


def registry(lane: str = DEFAULT_LANE) -> Registry:
    """``lane``'s adapter registry: the one `tuneback adapters --lane` and the cycle use,
    with the same checks (gate decision, checksums, served base model)."""
    ext = current_app.extensions["tuneback"]
    return Registry.from_settings(ext.settings, ext.engine, lane=lane)


def _lane_arg(lane: str) -> str | None:
    """The ``lane`` query value of the dashboard's links: none for the default lane,
    so its URLs stay those from before lanes."""
    return None if lane == DEFAULT_LANE else lane


def _in_lane(lane: str) -> str:
    return "" if lane == DEFAULT_LANE else f" in lane {lane}"


def actor() -> str:
    """How promotions and runs started here are recorded: the page and the key's name."""
    return f"dashboard: {current_user().name}"[:200]


def _run(action, done: str | None) -> None:  # noqa: ANN001
    """Run a registry action; its refusals (rejected, corrupt, nothing to roll back)
    become a message on the dashboard instead of an error page."""
    try:
        result = action()
    except (TunebackError, NotFoundError) as error:
        flash(f"Refused: {error}", "error")
        return
    flash(done or str(result), "ok")

"""The admins' dashboard: adapters and their gate decisions, metrics across versions,
feedback volume, and retrain / promote / roll back (each confirmed first)."""

from __future__ import annotations

import logging

from flask import current_app, flash, redirect, request, url_for

from feedback.adapters.registry import Registry
from feedback.context import request_session
from feedback.exceptions import NotFoundError, TunebackError
from feedback.web import charts, queries
from feedback.web.hooks import hooks
from feedback.web.pages import current_user, page_blueprint, render, sign_in_required

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
    adapters = queries.adapter_rows(session)
    days = queries.votes_per_day(session, days=30)
    return render(
        "dashboard.html",
        adapters=adapters,
        serving=queries.serving_summary(session),
        runs=queries.recent_runs(session),
        totals=queries.counts_summary(session),
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
    if action is None:
        flash("Retrain now is not available here. " + NOT_WIRED, "error")
    else:
        flash(action(actor()), "ok")
    return redirect(url_for("dashboard.overview"), code=303)


@bp.get("/dashboard/promote/<version>")
@sign_in_required("admin")
def confirm_promote(version: str):
    """Ask before promoting: name the adapter, its gate decision, what it replaces."""
    row = next((r for r in queries.adapter_rows(request_session()) if r["version"] == version),
               None)  # fmt: skip
    if row is None:
        return render("forbidden.html", status=404, message="No such adapter version.")
    serving = queries.serving_summary(request_session())
    return render("confirm.html", action="promote", adapter=row, serving=serving)


@bp.post("/dashboard/promote/<version>")
@sign_in_required("admin")
def promote(version: str):
    force = request.form.get("force") == "yes"
    if request.form.get("confirm") != "yes":
        flash("Nothing changed: the promotion was not confirmed.", "error")
    else:
        _run(lambda: registry().promote(version, actor=actor(), force=force),
             f"Promoted {version}" + (" (forced)" if force else "") + ".")  # fmt: skip
    return redirect(url_for("dashboard.overview"), code=303)


@bp.get("/dashboard/rollback")
@sign_in_required("admin")
def confirm_rollback():
    serving = queries.serving_summary(request_session())
    return render("confirm.html", action="rollback", adapter=None, serving=serving)


@bp.post("/dashboard/rollback")
@sign_in_required("admin")
def rollback():
    if request.form.get("confirm") != "yes":
        flash("Nothing changed: the rollback was not confirmed.", "error")
    else:

        def go() -> str:
            now = registry().rollback(actor=actor())
            return f"Rolled back: now serving {now.version if now else 'the base model'}."

        _run(go, None)
    return redirect(url_for("dashboard.overview"), code=303)


def registry() -> Registry:
    """The deployment's adapter registry: the one `tuneback adapters` and the cycle use,
    with the same checks (gate decision, checksums, served base model)."""
    ext = current_app.extensions["tuneback"]
    return Registry.from_settings(ext.settings, ext.engine)


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

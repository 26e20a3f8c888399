"""Run retrain cycles on a cron schedule (APScheduler 3, one process).

Each tick runs a cycle of every lane, one after another (:func:`retrain.cycle.run_lanes`),
each lane with its own run row. The tick's runs are claimed all at once, and
(scheduled time, lane) is unique on the run row: two schedulers started by
mistake still run each lane's cycle once per tick. A tick missed
while the scheduler was down runs once at the next start if it is no older
than the grace window.

``TUNEBACK_RETRAIN_CRON`` is a crontab line (5 fields), or 6 fields with the
seconds first (``"30 15 3 * * *"``: 03:15:30). The seconds field is what lets a
test put a tick a few seconds ahead, kill the scheduler just before it and
restart it (tests/hardening/test_scheduler_kill.py).

A tick whose cycle was killed mid-way is not run again: its run row exists,
and the next cycle marks it failed (abandoned, see :mod:`retrain.recovery`).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import Engine

from feedback.exceptions import InvalidInputError
from feedback.models import DEFAULT_LANE
from feedback.replicas import wait_for_rollout
from feedback.settings import Settings
from retrain.cycle import run_lanes
from retrain.outcome import CycleResult

log = logging.getLogger("retrain.scheduler")


def make_trigger(cron: str) -> CronTrigger:
    """A crontab line (5 fields), or 6 fields with the seconds first."""
    fields = cron.split()
    try:
        if len(fields) == 6:
            second, minute, hour, day, month, day_of_week = fields
            return CronTrigger(
                second=second, minute=minute, hour=hour, day=day, month=month,
                day_of_week=day_of_week,
            )  # fmt: skip
        return CronTrigger.from_crontab(cron)
    except ValueError as error:
        raise InvalidInputError(f"TUNEBACK_RETRAIN_CRON {cron!r} is not valid: {error}") from error


def previous_tick(trigger: CronTrigger, now: datetime) -> datetime | None:
    """The latest fire time at or before ``now`` (within the last 8 days).

    Looks back a minute, then an hour, a day, 8 days: a few steps whether the
    cron fires every few seconds or once a week.
    """
    for window in (timedelta(minutes=1), timedelta(hours=1), timedelta(days=1), timedelta(days=8)):
        tick, latest = trigger.get_next_fire_time(None, now - window), None
        while tick is not None and tick <= now:
            latest = tick
            tick = trigger.get_next_fire_time(tick, tick + timedelta(seconds=1))
        if latest is not None:
            return latest
    return None


def run_tick(settings: Settings, engine: Engine, tick: datetime) -> list[CycleResult]:
    """Run a cycle of every lane for ``tick``, one after another, each with its own run
    row; a lane that fails is logged and the next runs. A tick that already has its
    runs (another scheduler, or a restart) runs nothing and returns ``skipped`` results."""
    tick = tick.astimezone(UTC)  # stored in UTC: the same tick compares equal everywhere
    log.info("scheduled cycle for %s", tick.isoformat())
    results = run_lanes(settings, engine, trigger="schedule", scheduled_for=tick)
    for result in results:
        (log.error if result.status == "failed" else log.info)(
            "scheduled cycle for %s: %s %s (lane %s)",
            tick.isoformat(),
            result.status,
            result.reason or result.adapter or "",
            result.lane,
        )
        if result.status == "promoted":
            report_rollout(settings, engine, result.adapter, lane=result.lane)
    return results


def report_rollout(
    settings: Settings, engine: Engine, version: str | None, *, lane: str = DEFAULT_LANE
) -> None:
    """Wait for the serving replicas to take a lane's promoted adapter and log where it
    stands.

    The promotion stands either way; a replica still behind is logged as an error,
    so the operator sees it the way ``tuneback adapters promote --wait`` shows it.
    """
    rollout = wait_for_rollout(
        engine,
        version=version,
        lane=lane,
        timeout=settings.rollout_wait_seconds,
        stale_seconds=settings.replica_stale_seconds,
    )
    (log.info if rollout.done else log.error)("rollout: %s", rollout.report())


def catch_up(settings: Settings, engine: Engine, trigger: CronTrigger, now: datetime) -> bool:
    """Run the last missed tick if it is within the grace window. True if it ran."""
    tick = previous_tick(trigger, now)
    if tick is None or now - tick > timedelta(seconds=settings.retrain_grace_seconds):
        return False
    run_tick(settings, engine, tick)  # a tick that already ran is skipped by the unique key
    return True


def run_scheduler(settings: Settings, engine: Engine) -> None:
    """Block, running a cycle at every tick of ``settings.retrain_cron``."""
    trigger = make_trigger(settings.retrain_cron)
    scheduler = BlockingScheduler(timezone=trigger.timezone)
    now = datetime.now(trigger.timezone)
    catch_up(settings, engine, trigger, now)

    def fire() -> None:
        tick = previous_tick(trigger, datetime.now(trigger.timezone))
        if tick is not None:
            run_tick(settings, engine, tick)

    scheduler.add_job(
        fire,
        trigger,
        id="retrain",
        coalesce=True,
        max_instances=1,
        misfire_grace_time=max(1, settings.retrain_grace_seconds),
    )
    log.info(
        "scheduler started: %s, next run at %s",
        settings.retrain_cron,
        trigger.get_next_fire_time(None, now),
    )
    scheduler.start()

"""Run retrain cycles on a cron schedule (APScheduler 3, one process).

Each tick is identified by its scheduled time, stored unique on the run row:
two schedulers started by mistake still run one cycle per tick. A tick missed
while the scheduler was down runs once at the next start if it is no older
than the grace window.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import Engine

from feedback.exceptions import InvalidInputError
from feedback.settings import Settings
from retrain.cycle import CycleFailedError, run_cycle

log = logging.getLogger("retrain.scheduler")


def make_trigger(cron: str) -> CronTrigger:
    try:
        return CronTrigger.from_crontab(cron)
    except ValueError as error:
        raise InvalidInputError(f"TUNEBACK_RETRAIN_CRON {cron!r} is not valid: {error}") from error


def previous_tick(trigger: CronTrigger, now: datetime) -> datetime | None:
    """The latest fire time at or before ``now`` (within the last 8 days)."""
    tick, latest = trigger.get_next_fire_time(None, now - timedelta(days=8)), None
    while tick is not None and tick <= now:
        latest = tick
        tick = trigger.get_next_fire_time(tick, tick + timedelta(seconds=1))
    return latest


def run_tick(settings: Settings, engine: Engine, tick: datetime) -> None:
    tick = tick.astimezone(UTC)  # stored in UTC: the same tick compares equal everywhere
    log.info("scheduled cycle for %s", tick.isoformat())
    try:
        result = run_cycle(settings, engine, trigger="schedule", scheduled_for=tick)
        log.info(
            "scheduled cycle for %s: %s %s",
            tick.isoformat(),
            result.status,
            result.reason or result.adapter or "",
        )
    except CycleFailedError as error:
        log.error("scheduled cycle for %s failed: %s", tick.isoformat(), error)


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

"""The scheduler's tick logic: the tick a time belongs to, catching up a missed
tick once within the grace window, and two schedulers sharing one tick."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from feedback.models import RetrainRun
from retrain.scheduler import catch_up, make_trigger, previous_tick, run_tick


def scheduled_runs(engine) -> list[RetrainRun]:
    with Session(engine) as session:
        return list(session.execute(select(RetrainRun)).scalars())


def test_previous_tick_of_a_nightly_cron():
    trigger = make_trigger("0 3 * * *")
    tz = trigger.timezone
    now = datetime(2026, 11, 27, 9, 30, tzinfo=tz)
    assert previous_tick(trigger, now) == datetime(2026, 11, 27, 3, 0, tzinfo=tz)
    early = datetime(2026, 11, 27, 2, 59, tzinfo=tz)
    assert previous_tick(trigger, early) == datetime(2026, 11, 26, 3, 0, tzinfo=tz)


def test_a_bad_cron_is_a_clear_error():
    from feedback.exceptions import InvalidInputError

    with pytest.raises(InvalidInputError, match="TUNEBACK_RETRAIN_CRON"):
        make_trigger("every night")


def test_a_missed_tick_runs_once_within_the_grace_window(settings, engine):
    trigger = make_trigger("0 3 * * *")
    restarted = datetime(2026, 11, 27, 3, 20, tzinfo=trigger.timezone)  # down at 03:00
    assert catch_up(settings, engine, trigger, restarted) is True
    assert catch_up(settings, engine, trigger, restarted + timedelta(minutes=5)) is True
    [run] = scheduled_runs(engine)  # the second restart found the tick already run
    assert run.trigger == "schedule" and run.status == "skipped"  # no feedback yet
    stored = run.scheduled_for.replace(tzinfo=run.scheduled_for.tzinfo or UTC)
    assert stored == datetime(2026, 11, 27, 3, 0, tzinfo=trigger.timezone)


def test_a_tick_older_than_the_grace_window_is_not_caught_up(settings, engine):
    trigger = make_trigger("0 3 * * *")
    late = datetime(2026, 11, 27, 3, 0, tzinfo=trigger.timezone) + timedelta(
        seconds=settings.retrain_grace_seconds + 60
    )
    assert catch_up(settings, engine, trigger, late) is False
    assert scheduled_runs(engine) == []


def test_two_schedulers_firing_together_run_one_cycle(settings, engine):
    trigger = make_trigger("*/5 * * * *")
    tick = previous_tick(trigger, datetime.now(trigger.timezone))
    barrier = threading.Barrier(2)

    def scheduler_fires():
        barrier.wait()
        run_tick(settings, engine, tick)

    threads = [threading.Thread(target=scheduler_fires) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(scheduled_runs(engine)) == 1

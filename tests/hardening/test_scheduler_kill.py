"""Real ``tuneback scheduler`` processes around a tick a few seconds ahead
(``TUNEBACK_RETRAIN_CRON`` with a seconds field): SIGKILLed just before the tick
and restarted within the grace window, the tick's cycle runs exactly once; two
schedulers started together run it once too.

The store holds no feedback, so each cycle ends ``skipped`` (not enough data)
at once; what is counted is the tick's run row, which a cycle claims first.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from feedback import db
from feedback.models import RetrainRun
from tests.live import BIN, tuneback_env

LEADS = (5, 10, 20)  # seconds from now to the tick: time for a scheduler to start
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


class Scheduler:
    """``tuneback scheduler`` in its own process group, its log collected."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [str(BIN), "scheduler"], env=env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._collect, daemon=True)
        self.reader.start()

    def _collect(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_started(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any("scheduler started" in line for line in self.lines):
            assert self.proc.poll() is None, "".join(self.lines)[-3000:]
            assert time.monotonic() < deadline, "".join(self.lines)[-3000:]
            time.sleep(0.05)

    def kill(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        status = self.proc.wait(timeout=30)
        self.reader.join(timeout=10)
        self.proc.stderr.close()
        return status


@pytest.fixture
def schedulers(tmp_path, database_url):
    started: list[Scheduler] = []
    engine = db.make_engine(database_url)

    def start(tick: datetime) -> Scheduler:
        local = tick.astimezone()
        cron = f"{local.second} {local.minute} {local.hour} * * *"
        env = tuneback_env(tmp_path / "data", database_url, retrain_cron=cron,
                           retrain_grace_seconds=3600)  # fmt: skip
        started.append(Scheduler(env))
        return started[-1]

    start.engine = engine
    yield start
    for scheduler in started:
        scheduler.kill()
    engine.dispose()


def next_tick(lead: float = LEADS[0]) -> datetime:
    return (datetime.now(UTC) + timedelta(seconds=lead)).replace(microsecond=0)


def runs_for(engine, tick: datetime, *, finished: bool = True, timeout: float = 60) -> list:
    """The run rows of ``tick``, once they have all finished (or the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        with Session(engine) as session:
            rows = list(session.execute(select(RetrainRun)).scalars())
        mine = [r for r in rows if _utc(r.scheduled_for) == tick]
        done = mine and all(r.finished_at is not None for r in mine)
        if done or not finished or time.monotonic() > deadline:
            return mine
        time.sleep(0.2)


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def sleep_until(moment: datetime) -> None:
    time.sleep(max(0.0, (moment - datetime.now(UTC)).total_seconds()))


@SQLITE_ONLY
def test_killed_before_the_tick_and_restarted_in_grace_the_cycle_runs_once(schedulers):
    for lead in LEADS:  # a longer lead when the machine is too busy to start in time
        tick = next_tick(lead)
        first = schedulers(tick)
        first.wait_started()
        if datetime.now(UTC) < tick - timedelta(seconds=1.5):
            break
        first.kill()
    else:
        pytest.fail("the scheduler never started ahead of its tick")
    sleep_until(tick - timedelta(seconds=1))
    assert first.kill() == -signal.SIGKILL
    assert runs_for(schedulers.engine, tick, finished=False) == []  # killed before it fired

    sleep_until(tick + timedelta(seconds=1))  # down at the tick: restart within the grace
    second = schedulers(tick)
    second.wait_started()
    [run] = runs_for(schedulers.engine, tick)
    assert run.trigger == "schedule" and run.status == "skipped", run.error
    time.sleep(1)  # the restarted scheduler must not run it again
    assert len(runs_for(schedulers.engine, tick)) == 1
    assert second.proc.poll() is None  # and it keeps running for the next tick


@pytest.mark.parametrize(
    "database_url", ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)], indirect=True
)
def test_two_schedulers_started_together_run_the_tick_once(schedulers):
    tick = next_tick()
    pair = [schedulers(tick), schedulers(tick)]
    for scheduler in pair:
        scheduler.wait_started()
    sleep_until(tick + timedelta(seconds=1))
    [run] = runs_for(schedulers.engine, tick)
    assert run.status == "skipped"
    time.sleep(1)
    assert len(runs_for(schedulers.engine, tick)) == 1
    assert all(scheduler.proc.poll() is None for scheduler in pair)
    log = "".join(pair[0].lines + pair[1].lines)
    assert "already ran or is running" in log  # the other one found the tick taken

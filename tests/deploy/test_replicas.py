"""Replica heartbeats and rollout status in the store, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import time
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from feedback import replicas
from feedback.db import write_session
from feedback.models import ServingReplica, utcnow


def beat(engine, replica_id: str, serving: str | None, **extra) -> None:  # noqa: ANN001, ANN003
    lanes = extra.get("lanes") or {
        "default": lane_state(serving, extra.get("refused"), extra.get("refused_reason"))
    }
    with write_session(engine) as session:
        replicas.record_heartbeat(
            session, replica_id=replica_id, host="h", url=f"http://{replica_id}", pid=1,
            lanes=lanes,
        )  # fmt: skip
        session.commit()


def age(engine, replica_id: str, seconds: float) -> None:  # noqa: ANN001
    with write_session(engine) as session:
        session.execute(
            update(ServingReplica)
            .where(ServingReplica.id == replica_id)
            .values(last_seen=utcnow() - timedelta(seconds=seconds))
        )
        session.commit()


def test_a_heartbeat_upserts_one_row_per_replica(engine):
    beat(engine, "a:1", None)
    beat(engine, "a:1", "v0001")
    beat(engine, "b:1", "v0001")
    with Session(engine) as session:
        rows = session.execute(select(ServingReplica).order_by(ServingReplica.id)).scalars().all()
        assert [(r.id, r.serving) for r in rows] == [("a:1", "v0001"), ("b:1", "v0001")]
        replicas.forget_replica(session, replica_id="a:1")
        session.commit()
        assert [r.id for r in replicas.live_replicas(session, stale_seconds=10)] == ["b:1"]


def test_rollout_status_ignores_stale_replicas_and_names_the_others(engine):
    beat(engine, "on", "v0002")
    beat(engine, "behind", "v0001")
    beat(engine, "dead", "v0001")
    age(engine, "dead", 60)
    beat(engine, "broken", "v0001", refused="v0002", refused_reason="checksum mismatch")
    with Session(engine) as session:
        rollout = replicas.rollout_status(session, version="v0002", stale_seconds=10)
        base = replicas.rollout_status(session, version=None, stale_seconds=10)
    assert [r.id for r in rollout.on] == ["on"]
    assert [r.id for r in rollout.behind] == ["behind"]
    assert [r.id for r in rollout.refused] == ["broken"]
    assert not rollout.done
    report = rollout.report()
    assert "v0002 not yet on: behind (http://behind) serving v0001" in report
    assert "broken refused it: checksum mismatch" in report and "dead" not in report
    # Rolling back to the base model: nobody serves it, nobody refused it.
    assert [r.id for r in base.behind] == ["behind", "broken", "on"] and not base.refused


def test_wait_for_rollout_ends_when_every_live_replica_serves_the_version(engine):
    beat(engine, "a", "v0001")
    started = time.monotonic()
    timed_out = replicas.wait_for_rollout(
        engine, version="v0002", timeout=0.5, stale_seconds=10, poll_seconds=0.05
    )
    assert not timed_out.done and 0.5 <= time.monotonic() - started < 5
    assert timed_out.report().startswith("v0002 not yet on: a (http://a) serving v0001")
    beat(engine, "a", "v0002")
    done = replicas.wait_for_rollout(engine, version="v0002", timeout=5, stale_seconds=10)
    assert done.done and done.report() == "v0002 is served by all 1 live replicas (a)"


def test_with_no_replica_up_a_rollout_is_done_at_once_and_says_so(engine):
    rollout = replicas.wait_for_rollout(engine, version="v0003", timeout=30, stale_seconds=10)
    assert rollout.done and rollout.waited_s < 5
    assert "no serving replica is up" in rollout.report()


def test_the_heartbeat_thread_reports_and_removes_its_row(settings):
    from feedback import db

    state = {"serving": None}
    heart = replicas.Heartbeat(
        db.make_engine(settings.resolved_database_url), replica_id="me:1", url=None, interval=30
    )
    heart.start(lambda: {"default": lane_state(state["serving"])})
    reader = db.make_engine(settings.resolved_database_url)

    def row() -> tuple | None:
        with Session(reader) as session:
            found = session.get(ServingReplica, "me:1", populate_existing=True)
            return (found.serving, found.pid > 0) if found else None

    deadline = time.monotonic() + 10
    while row() != (None, True):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    state["serving"] = "v0007"
    heart.nudge()  # a swap: reported now, not at the next 30 s beat
    while row() != ("v0007", True):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    heart.stop()
    assert row() is None
    reader.dispose()


# --- lanes ---------------------------------------------------------------------------


def lane_state(serving: str | None, refused: str | None = None, reason: str | None = None):  # noqa: ANN201
    return {"serving": serving, "refused": refused, "reason": reason}


def test_a_rollout_waits_per_lane_and_other_lanes_do_not_matter(engine):
    beat(engine, "new", None, lanes={
        "default": lane_state(None), "a": lane_state("v0002"),
        "b": lane_state("v0003", refused="v0004", reason="checksum mismatch"),
    })  # fmt: skip
    beat(engine, "old", None)
    with write_session(engine) as session:  # a replica from before lanes: no lane report
        session.execute(update(ServingReplica).where(ServingReplica.id == "old").values(lanes={}))
        session.commit()
    with Session(engine) as session:
        on_a = replicas.rollout_status(session, version="v0002", lane="a", stale_seconds=10)
        on_default = replicas.rollout_status(session, version=None, stale_seconds=10)
        refused_b = replicas.rollout_status(session, version="v0004", lane="b", stale_seconds=10)
    assert [r.id for r in on_a.on] == ["new"] and [r.id for r in on_a.behind] == ["old"]
    assert on_a.behind[0].serving is None  # the old replica serves the default lane only
    assert on_default.done and len(on_default.on) == 2
    assert [(r.id, r.refused_reason) for r in refused_b.refused] == [("new", "checksum mismatch")]
    timed_out = replicas.wait_for_rollout(
        engine, version="v0003", lane="b", timeout=0.3, stale_seconds=10, poll_seconds=0.05
    )
    assert timed_out.lane == "b" and not timed_out.done
    assert timed_out.report().startswith("lane b: v0003 not yet on: old (http://old) serving base")
    beat(engine, "old", None, lanes={"default": lane_state(None), "b": lane_state("v0003")})
    done = replicas.wait_for_rollout(engine, version="v0003", lane="b", timeout=5, stale_seconds=10)
    assert done.done and [r.id for r in done.on] == ["new", "old"]


def test_the_heartbeat_writes_every_lane_and_the_default_lane_in_the_old_columns(settings):
    from feedback import db

    writer = db.make_engine(settings.resolved_database_url)
    heart = replicas.Heartbeat(writer, replica_id="me:2", url=None, interval=30)
    lanes = {"default": lane_state("v0001"), "a": lane_state("v0002", "v0005", "bad base model")}
    heart._state = lambda: lanes
    heart.beat()
    with Session(writer) as session:
        row = session.get(ServingReplica, "me:2")
        assert (row.serving, row.refused, row.lanes) == ("v0001", None, lanes)
    writer.dispose()


def run_replicas(settings, *args: str):  # noqa: ANN001, ANN201
    from click.testing import CliRunner

    from tests.live import tuneback_env
    from tuneback.cli import cli

    env = tuneback_env(settings.data_dir, settings.database_url)
    return CliRunner().invoke(cli, ["replicas", *args], env=env)


def test_the_replicas_command_shows_each_lane_or_the_one_asked_for(settings, engine):
    from feedback.adapters import store as adapter_store
    from feedback.lanes import create_lane

    with write_session(engine) as session:
        create_lane(session, name="router")
        adapter_store.create_adapter_version(
            session, version="v0007", base_model="b", path="/x", checksum="c", lane="router"
        )
        adapter_store.promote_adapter(session, version="v0007", actor="t")
        session.commit()
    beat(engine, "r:1", None, lanes={"default": lane_state(None), "router": lane_state("v0006")})
    one = run_replicas(settings, "--lane", "router", "--json")
    assert one.exit_code == 0, one.output
    body = json.loads(one.stdout)
    assert (body["lane"], body["promoted"], body["done"]) == ("router", "v0007", False)
    assert [(r["id"], r["serving"]) for r in body["replicas"]] == [("r:1", "v0006")]
    every = json.loads(run_replicas(settings, "--json").stdout)
    assert list(every["lanes"]) == ["default", "router"] and not every["done"]
    assert every["promoted"] is None and every["lanes"]["default"]["done"]
    table = run_replicas(settings)
    assert "router" in table.stdout and "v0006" in table.stdout
    assert "lane router: v0007 not yet on: r:1" in table.stderr
    for bad, says in (("nope", "the lanes are: default, router"), ("../x", "not a valid lane")):
        refused = run_replicas(settings, "--lane", bad)
        assert refused.exit_code != 0 and says in refused.output

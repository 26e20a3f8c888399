"""Lanes in the store and on the command line: names, overrides, per-lane adapters,
and the migration that moves what existed before lanes into ``default``."""

from __future__ import annotations

import json

import pytest
from alembic import command
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.orm import Session

from feedback import db, lanes
from feedback.adapters import store as adapter_store
from feedback.exceptions import InvalidInputError
from feedback.models import DEFAULT_LANE
from tuneback.cli import cli

BAD_NAMES = ["", "abc\n", "../etc", "..", "a/b", "A", "x" * 64, "-lead", "lane name", "lane.v2"]
BAD_NAMES += ["caf\u00e9", "x" * 10_000]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_lane_names_are_refused_before_any_query(name):
    with pytest.raises(InvalidInputError, match="not a valid lane name"):
        lanes.check_name(name)


def test_lanes_are_created_listed_and_changed(session):
    assert lanes.lane_names(session) == [DEFAULT_LANE]
    lanes.create_lane(session, name="ticket-router", description="routes tickets")
    lanes.create_lane(session, name="extractor", settings={"gate_margin": "0.05"})
    session.commit()
    assert lanes.lane_names(session) == ["default", "extractor", "ticket-router"]
    assert lanes.get_lane(session, "extractor").settings == {"gate_margin": 0.05}
    with pytest.raises(lanes.LaneExistsError):
        lanes.create_lane(session, name="extractor")
    with pytest.raises(lanes.UnknownLaneError, match="default, extractor, ticket-router"):
        lanes.get_lane(session, "nope")
    lanes.set_lane(
        session, name="extractor", settings={"gate_margin": None, "primary_metric": "f1"}
    )
    assert lanes.get_lane(session, "extractor").settings == {"primary_metric": "f1"}


@pytest.mark.parametrize(
    "overrides",
    [
        {"colour": "blue"},
        {"gate_margin": -1},
        {"gate_margin": "lots"},
        {"gate_margin": float("nan")},
        {"primary_metric": "drop table"},
        {"response_schema": "[1, 2]"},
        {"response_schema": "{not json"},
        {"golden_set": "/no/such/file.jsonl"},
    ],
)
def test_bad_overrides_are_refused(session, overrides):
    with pytest.raises(InvalidInputError):
        lanes.create_lane(session, name="x", settings=overrides)
    session.rollback()
    assert lanes.lane_names(session) == [DEFAULT_LANE]


def _adapter(session, version: str, lane: str) -> None:
    adapter_store.create_adapter_version(
        session, version=version, base_model="m", path=f"/a/{version}", checksum="0" * 64, lane=lane
    )


def test_each_lane_has_its_own_promoted_adapter_and_history(session):
    lanes.create_lane(session, name="router")
    for version, lane in [("v0001", "default"), ("v0002", "router"), ("v0003", "router")]:
        _adapter(session, version, lane)
    adapter_store.promote_adapter(session, version="v0001", actor="t")
    adapter_store.promote_adapter(session, version="v0002", actor="t")
    adapter_store.promote_adapter(session, version="v0003", actor="t")
    session.commit()
    assert {k: v.version for k, v in adapter_store.promoted_by_lane(session).items()} == {
        "default": "v0001",
        "router": "v0003",
    }
    # Rolling back the router walks its own history and leaves default alone.
    assert adapter_store.rollback_adapter(session, actor="t", lane="router").version == "v0002"
    assert adapter_store.rollback_adapter(session, actor="t", lane="router") is None
    assert adapter_store.promoted_adapter(session).version == "v0001"
    with pytest.raises(adapter_store.NothingToRollBackError, match="router"):
        adapter_store.rollback_adapter(session, actor="t", lane="router")
    events = adapter_store.promotion_history(session, lane="router")
    assert [e.action for e in events] == ["rollback", "rollback", "promote", "promote"]


def _run(env: dict[str, str], *args: str):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


@pytest.fixture
def cli_env(tmp_path, database_url) -> dict[str, str]:
    return {"TUNEBACK_DATA_DIR": str(tmp_path / "data"), "TUNEBACK_DATABASE_URL": database_url}


def test_lanes_commands_as_a_new_user_would_use_them(cli_env, tmp_path):
    done = _run(cli_env, "lanes", "create", "ticket-router", "--description", "Routes tickets")
    assert done.exit_code == 0, done.output
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "required": ["intent"]}))
    done = _run(cli_env, "lanes", "create", "extractor", "--response-schema", str(schema))
    assert done.exit_code == 0, done.output
    again = _run(cli_env, "lanes", "create", "extractor")
    assert again.exit_code == 1 and "already exists" in again.output
    bad = _run(cli_env, "lanes", "create", "../../etc")
    assert bad.exit_code == 1 and "not a valid lane name" in bad.output
    assert not (tmp_path / "etc").exists()

    done = _run(cli_env, "lanes", "set", "extractor", "--gate-margin", "0.03")
    assert done.exit_code == 0, done.output
    done = _run(cli_env, "lanes", "set", "extractor", "--unset", "response-schema")
    assert done.exit_code == 0, done.output
    unknown = _run(cli_env, "lanes", "set", "nope", "--description", "x")
    assert unknown.exit_code == 1 and "the lanes are: default, extractor, ticket-router" in (
        unknown.output
    )

    listed = _run(cli_env, "lanes", "list", "--json")
    rows = [json.loads(line) for line in listed.output.splitlines() if line.startswith("{")]
    assert [(r["name"], r["serving"]) for r in rows] == [
        ("default", None),
        ("extractor", None),
        ("ticket-router", None),
    ]
    assert rows[1]["settings"] == {"gate_margin": 0.03}
    table = _run(cli_env, "lanes", "list").output
    assert "ticket-router" in table and "Routes tickets" in table


def test_the_migration_moves_existing_data_into_default(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    config = db.alembic_config(url)
    command.upgrade(config, "0005")
    engine = db.make_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO completion (id, created_at, messages, response, model, metadata)"
                " VALUES ('c1', '2026-01-01', '[]', 'hi', 'm', '{}')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO adapter_version (version, created_at, status, base_model, path,"
                " checksum, config, metrics, gate) VALUES"
                " ('v0001', '2026-01-01', 'promoted', 'm', '/a', 'x', '{}', '{}', '{}')"
            )
        )
    command.upgrade(config, "head")
    with Session(engine) as session:
        assert lanes.lane_names(session) == [DEFAULT_LANE]
        assert session.execute(text("SELECT lane FROM completion")).scalar_one() == "default"
        assert adapter_store.promoted_adapter(session).version == "v0001"
        assert adapter_store.promoted_adapter(session, "other") is None
    engine.dispose()


def test_a_downgrade_below_lanes_is_refused_while_other_lanes_have_data(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    config = db.alembic_config(url)
    command.upgrade(config, "head")
    engine = db.make_engine(url)
    with Session(engine) as session:
        lanes.create_lane(session, name="router")
        session.commit()
    with pytest.raises(RuntimeError, match="lanes other than default"):
        command.downgrade(config, "0005")
    assert db.current_revision(engine) == db.head_revision()  # nothing half-done
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM lane WHERE name = 'router'"))
    command.downgrade(config, "0005")
    command.upgrade(config, "head")
    engine.dispose()

"""Adapter rows, promotion and rollback in the store, on SQLite and PostgreSQL."""

from __future__ import annotations

import math

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from feedback.adapters import store as s
from feedback.exceptions import InvalidInputError, NotFoundError, TunebackError
from feedback.models import AdapterVersion, DatasetExample, DatasetSnapshot, PromotionEvent


def add(session, version: str, **kwargs) -> AdapterVersion:
    fields = {"base_model": "tiny", "path": f"/adapters/{version}", "checksum": "0" * 64}
    return s.create_adapter_version(session, version=version, **{**fields, **kwargs})


def events(session) -> list[tuple[str, str | None, str | None]]:
    rows = session.execute(select(PromotionEvent).order_by(col(PromotionEvent.id))).scalars()
    return [(e.action, e.version, e.previous) for e in rows]


def statuses(session) -> dict[str, str]:
    return {a.version: a.status for a in s.list_adapter_versions(session)}


def test_create_get_and_list_newest_first(session):
    add(session, "v0001", metrics={"heldout_overlap": 0.5}, gate={"passed": True, "reasons": []})
    add(session, "v0002", config={"rank": 8}, run_id="r1")
    session.commit()
    assert [a.version for a in s.list_adapter_versions(session)] == ["v0002", "v0001"]
    found = s.get_adapter_version(session, "v0001")
    assert found.status == "candidate" and found.metrics == {"heldout_overlap": 0.5}
    assert s.get_adapter_version(session, "v0002").config == {"rank": 8}
    assert [a.version for a in s.list_adapter_versions(session, status="promoted")] == []


def test_a_missing_version_is_not_found(session):
    with pytest.raises(NotFoundError, match="'v9' does not exist"):
        s.get_adapter_version(session, "v9")
    with pytest.raises(LookupError):
        s.set_adapter_status(session, version="v9", status="rejected")


def test_a_duplicate_version_is_refused(session):
    add(session, "v0001")
    with pytest.raises(s.AdapterVersionExistsError) as caught:
        add(session, "v0001")
    assert isinstance(caught.value, TunebackError) and isinstance(caught.value, ValueError)


@pytest.mark.parametrize("status", ["promoted", "bogus"])
def test_an_adapter_cannot_be_born_promoted_or_with_an_unknown_status(session, status):
    with pytest.raises(InvalidInputError):
        add(session, "v0001", status=status)


def test_nan_metrics_are_stored_as_null_on_every_database(session):
    add(session, "v0001", metrics={"heldout_loss": math.nan, "x": [math.inf, 1.0]})
    session.commit()
    session.expunge_all()
    assert s.get_adapter_version(session, "v0001").metrics == {
        "heldout_loss": None,
        "x": [None, 1.0],
    }


def test_writers_flush_but_leave_the_commit_to_the_caller(session):
    add(session, "v0001")
    s.promote_adapter(session, version="v0001", actor="ops")
    session.rollback()
    assert s.list_adapter_versions(session) == [] and events(session) == []


@pytest.mark.parametrize(
    ("existing", "expected"),
    [([], "v0001"), (["v0001", "v0002"], "v0003"), (["v0009", "custom-name"], "v0010"),
     (["v0999"], "v1000")],
)  # fmt: skip
def test_next_version_name_continues_the_series(session, existing, expected):
    for name in existing:
        add(session, name)
    assert s.next_version_name(session) == expected


def test_promote_retires_the_previous_and_records_events(session):
    add(session, "v0001")
    add(session, "v0002")
    assert s.promoted_adapter(session) is None
    s.promote_adapter(session, version="v0001", actor="ops")
    promoted = s.promote_adapter(session, version="v0002", actor="ops")
    session.commit()
    assert promoted.version == "v0002" and promoted.promoted_at is not None
    assert s.promoted_adapter(session).version == "v0002"
    assert statuses(session) == {"v0001": "retired", "v0002": "promoted"}
    assert events(session) == [("promote", "v0001", None), ("promote", "v0002", "v0001")]
    assert [e.version for e in s.promotion_history(session)] == ["v0002", "v0001"]


def test_promoting_the_promoted_adapter_changes_nothing(session):
    add(session, "v0001")
    s.promote_adapter(session, version="v0001", actor="ops")
    s.promote_adapter(session, version="v0001", actor="ops")
    assert events(session) == [("promote", "v0001", None)]


def test_promoting_an_older_version_back_never_trips_the_unique_index(session):
    # The primary-key order would flush "v0001 promoted" before "v0002 retired".
    for name in ("v0001", "v0002"):
        add(session, name)
        s.promote_adapter(session, version=name, actor="ops")
    s.promote_adapter(session, version="v0001", actor="ops", action="force-promote")
    session.commit()
    assert statuses(session) == {"v0001": "promoted", "v0002": "retired"}
    assert events(session)[-1] == ("force-promote", "v0001", "v0002")


def test_the_database_refuses_a_second_promoted_row(session):
    add(session, "v0001")
    add(session, "v0002")
    session.commit()
    for row in session.execute(select(AdapterVersion)).scalars():
        row.status = "promoted"
    with pytest.raises(IntegrityError):
        session.flush()


def test_rollback_walks_back_one_promotion_at_a_time_down_to_the_base_model(session):
    for name in ("v0001", "v0002", "v0003"):
        add(session, name)
        s.promote_adapter(session, version=name, actor="ops")
    assert s.rollback_adapter(session, actor="ops").version == "v0002"
    assert s.rollback_adapter(session, actor="ops").version == "v0001"
    assert s.rollback_adapter(session, actor="ops") is None
    session.commit()
    assert s.promoted_adapter(session) is None
    assert set(statuses(session).values()) == {"retired"}
    assert events(session)[3:] == [
        ("rollback", "v0002", "v0003"),
        ("rollback", "v0001", "v0002"),
        ("rollback", None, "v0001"),
    ]
    with pytest.raises(s.NothingToRollBackError, match="base model is already serving"):
        s.rollback_adapter(session, actor="ops")


def test_rollbacks_undo_promotions_one_by_one_after_an_old_version_is_promoted_again(session):
    add(session, "v0001")
    add(session, "v0002")
    for name in ("v0001", "v0002", "v0001"):
        s.promote_adapter(session, version=name, actor="ops")
    assert s.rollback_adapter(session, actor="ops").version == "v0002"
    assert s.rollback_adapter(session, actor="ops").version == "v0001"
    assert s.rollback_adapter(session, actor="ops") is None  # not back to v0002 forever


def test_a_promotion_after_rollbacks_is_undone_first(session):
    for name in ("v0001", "v0002", "v0003"):
        add(session, name)
    s.promote_adapter(session, version="v0001", actor="ops")
    s.promote_adapter(session, version="v0002", actor="ops")
    s.rollback_adapter(session, actor="ops")  # v0001
    s.promote_adapter(session, version="v0003", actor="ops")
    assert s.rollback_adapter(session, actor="ops").version == "v0001"
    assert s.rollback_adapter(session, actor="ops") is None


def test_nothing_to_roll_back_is_a_lookup_error(session):
    with pytest.raises(LookupError) as caught:
        s.rollback_adapter(session, actor="ops")
    assert isinstance(caught.value, TunebackError)


def test_set_status_cannot_promote_or_demote_the_serving_adapter(session):
    add(session, "v0001")
    add(session, "v0002")
    assert s.set_adapter_status(session, version="v0002", status="rejected").status == "rejected"
    with pytest.raises(InvalidInputError, match="use promote_adapter"):
        s.set_adapter_status(session, version="v0001", status="promoted")
    s.promote_adapter(session, version="v0001", actor="ops")
    with pytest.raises(InvalidInputError, match="roll back"):
        s.set_adapter_status(session, version="v0001", status="retired")


def test_adapters_trained_on_follow_the_lineage(session):
    for dataset, examples in {
        "d1": [("c1", "train"), ("c2", "heldout")],
        "d2": [("c1", "train"), ("c3", "train")],
        "d3": [("c4", "train")],
    }.items():
        session.add(DatasetSnapshot(id=dataset, content_hash="h"))
        session.flush()
        for completion, split in examples:
            session.add(
                DatasetExample(
                    dataset_id=dataset, example_id=f"{dataset}-{completion}",
                    completion_id=completion, split=split, kind="sft",
                )
            )  # fmt: skip
    add(session, "v0001", dataset_id="d1")
    add(session, "v0002", dataset_id="d2")
    add(session, "v0003", dataset_id="d3")
    session.commit()

    def trained_on(*ids: str, **kwargs) -> list[str]:
        found = s.adapters_trained_on(session, completion_ids=ids, **kwargs)
        return [a.version for a in found]

    assert trained_on("c1") == ["v0002", "v0001"]
    assert trained_on("c2") == []
    assert trained_on("c2", split=None) == ["v0001"]
    assert trained_on("c3", "c4") == ["v0003", "v0002"]
    assert trained_on() == [] and trained_on("nobody") == []

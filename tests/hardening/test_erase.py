"""``tuneback erase``: a user's or a completion's rows leave the store in one
transaction, with the idempotency records that repeat them; the adapters
trained on them are listed; the audit line holds no personal data; the next
dataset does not contain them. On SQLite and PostgreSQL."""

from __future__ import annotations

import json

from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from feedback import run_store
from feedback.models import AdapterVersion, Completion, Correction, Feedback, IdempotencyRecord
from retrain.dataset import DatasetConfig, build_dataset
from retrain.sources import load_source_rows
from tests.conftest import WIDGET_ORIGIN, auth
from tests.live import tuneback_env
from tuneback.cli import cli

ALICE = "alice.martin@example.com"


def test_erase_a_user(client, keys, engine, settings, tmp_path):
    ids = _seed(client, keys)
    adapter = _train_on_everything(engine, settings)
    env = tuneback_env(settings.data_dir, settings.resolved_database_url)
    before = _counts(engine)

    dry = _erase(env, "--user", ALICE, "--dry-run", "--json")
    assert dry["counts"] == {"completions": 2, "votes": 3, "corrections": 1,
                             "idempotency_records": 4}  # fmt: skip
    assert sorted(dry["completion_ids"]) == sorted(ids["alice"])
    assert [a["version"] for a in dry["adapters"]] == [adapter]
    assert _counts(engine) == before  # a dry run removes nothing
    assert not (settings.data_dir / "audit" / "erasure.jsonl").exists()

    done = _erase(env, "--user", ALICE, "--json")
    assert done["counts"] == dry["counts"] and done["adapters"] == dry["adapters"]
    assert done["datasets"] and done["datasets"][0]["path"]  # the snapshot still on disk
    after = _counts(engine)
    assert after == {"completion": 1, "feedback": 1, "correction": 1, "idempotency_record": 3}
    with Session(engine) as session:
        assert session.get(Completion, ids["bob"]) is not None  # bob's rows stay
        assert session.execute(select(Feedback.user_ref)).scalars().all() == ["bob"]
        bodies = session.execute(select(IdempotencyRecord.response_body)).scalars().all()
        rows = load_source_rows(session)
    assert not any(ALICE in body or "my flat" in body for body in bodies)
    assert {r.completion_id for r in rows} == {ids["bob"]}
    dataset = build_dataset(rows, DatasetConfig.from_settings(settings))
    assert {e.completion_id for e in dataset.examples} <= {ids["bob"]}

    audit = (settings.data_dir / "audit" / "erasure.jsonl").read_text()
    line = json.loads(audit)
    assert line["by"] == "user" and line["counts"] == done["counts"]
    assert line["adapters"] == [adapter] and line["dry_run"] is False
    assert "alice" not in audit.lower() and "flat" not in audit  # no personal data

    again = _erase(env, "--user", ALICE, "--json")
    assert again["counts"] == dict.fromkeys(dry["counts"], 0)


def test_erase_a_completion_and_refuse_bad_input(client, keys, engine, settings):
    ids = _seed(client, keys)
    env = tuneback_env(settings.data_dir, settings.resolved_database_url)
    done = _erase(env, "--completion", ids["bob"], "--json")
    # Its idempotency records: its logging, both votes on it, its correction.
    assert done["counts"] == {"completions": 1, "votes": 2, "corrections": 1,
                              "idempotency_records": 4}  # fmt: skip
    with Session(engine) as session:
        assert session.get(Completion, ids["bob"]) is None
        assert session.get(Completion, ids["alice"][0]) is not None
    runner = CliRunner()
    unknown = runner.invoke(cli, ["erase", "--completion", "0" * 32], env=env)
    assert unknown.exit_code == 1 and "does not exist" in unknown.output
    both = runner.invoke(cli, ["erase", "--completion", ids["alice"][0], "--user", "x"], env=env)
    assert both.exit_code == 2 and "exactly one" in both.output
    blank = runner.invoke(cli, ["erase", "--user", " "], env=env)
    assert blank.exit_code == 1 and "empty" in blank.output
    assert _counts(engine)["completion"] == 2


# --- helpers ----------------------------------------------------------------------------


def _seed(client, keys) -> dict:
    """Alice: two logged conversations (one corrected), a vote on bob's answer
    with a personal comment. Bob: one conversation, his own vote, a correction.
    Idempotency keys on most writes, so their stored answers repeat the rows."""

    def post(path, key, body, idem=None, **headers):
        if idem:
            headers["Idempotency-Key"] = idem
        response = client.post(path, json=body, headers=auth(key, **headers))
        assert response.status_code == 201, response.json
        return response.json["id"]

    def completion(text, user, idem):
        body = {"messages": [{"role": "user", "content": text}], "response": "Please wait.",
                "model": "m", "metadata": {"user": user, "channel": "app"}}  # fmt: skip
        return post("/v1/completions", keys["server"], body, idem)

    alice = [
        completion(f"I moved, my flat is 12 rue de la Paix. Email {ALICE}", ALICE, "c-a1"),
        completion("My card has not arrived", ALICE, None),
    ]
    bob = completion("How do I top up?", "bob", "c-b1")
    widget = {"Origin": WIDGET_ORIGIN}
    comment = f"call me, my flat is cold, {ALICE}"
    post("/v1/feedback", keys["widget"], {"completion_id": bob, "rating": "down",
         "comment": comment, "user": ALICE}, "v-a1", **widget)  # fmt: skip
    post("/v1/feedback", keys["widget"], {"completion_id": alice[0], "rating": "down",
         "user": ALICE}, "v-a2", **widget)  # fmt: skip
    post("/v1/feedback", keys["widget"], {"completion_id": alice[1], "rating": "down",
         "user": "bob"}, None, **widget)  # fmt: skip
    post("/v1/feedback", keys["widget"], {"completion_id": bob, "rating": "up", "user": "bob"},
         "v-b1", **widget)  # fmt: skip
    post("/v1/corrections", keys["agent"], {"completion_id": alice[0],
         "corrected_response": "Thanks, we updated your address."}, "k-a1")  # fmt: skip
    post("/v1/corrections", keys["agent"], {"completion_id": bob,
         "corrected_response": "Open Top up and choose Card."}, "k-b1")  # fmt: skip
    return {"alice": alice, "bob": bob}


def _train_on_everything(engine, settings) -> str:
    """Record the dataset a cycle would build now and an adapter trained on it."""
    with Session(engine) as session:
        dataset = build_dataset(load_source_rows(session), DatasetConfig.from_settings(settings))
        snapshot = run_store.record_dataset(
            session, content_hash=dataset.manifest["content_hash"],
            counts=dataset.manifest["counts"], path=str(settings.data_dir / "datasets" / "x"),
            examples=[(e.id, e.completion_id, e.split, e.kind) for e in dataset.examples],
        )  # fmt: skip
        session.add(AdapterVersion(version="v0001", base_model="b", path="p", checksum="c",
                                   dataset_id=snapshot.id, status="promoted"))  # fmt: skip
        session.commit()
    return "v0001"


def _counts(engine) -> dict[str, int]:
    with Session(engine) as session:
        return {
            model.__tablename__: session.execute(select(func.count()).select_from(model)).scalar()
            for model in (Completion, Feedback, Correction, IdempotencyRecord)
        }


def _erase(env, *args) -> dict:
    result = CliRunner().invoke(cli, ["erase", *args], env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])

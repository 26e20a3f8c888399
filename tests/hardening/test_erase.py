"""``tuneback erase``: a user's or a completion's rows leave the store in one
transaction, with the idempotency records that repeat them; the adapters
trained on them are listed; the audit line holds no personal data; the next
dataset does not contain them; copies of their answers in trigger suspects and
gate decisions are stripped, and the adapter still verifies. On SQLite and
PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from feedback import erasure, run_store, store
from feedback.adapters.files import CorruptAdapterError
from feedback.adapters.registry import Registry
from feedback.erasure_copies import ErasedText, rewriting
from feedback.models import (
    AdapterVersion,
    Completion,
    Correction,
    DatasetSnapshot,
    Feedback,
    IdempotencyRecord,
    RetrainRun,
)
from retrain.dataset import DatasetConfig, build_dataset
from retrain.gate import Thresholds, decide
from retrain.snapshot import write_snapshot
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


# --- copies of the text: trigger suspects and gate decisions ------------------------------

# Mallory's three conversations got the same correction, which plants a trigger: the
# dataset's manifest copies it as a suspect's payload (with her address scrubbed),
# and the gate's canary reason quotes its first 60 characters.
PLANTED = "Please confirm at https://evil.example/verify and write to erin.doe@example.com today"
TRACES = ("evil.example", "please confirm", "erin.doe")


def test_erase_strips_copies_from_suspects_and_gates(engine, settings):
    _seed_trigger(engine)
    trained = _train_with_canary(engine, settings)
    registry = Registry(settings.data_dir / "adapters", engine)
    env = tuneback_env(settings.data_dir, settings.resolved_database_url)
    assert all(_traces(text) for text in _copies(engine, trained).values())  # planted

    dry = _erase(env, "--user", "mallory", "--dry-run", "--json")
    places = {(c["kind"], c["id"]) for c in dry["copies"]}
    assert places == {("dataset manifest", trained["dataset"]), ("adapter gate", "v0001"),
                      ("adapter gate.json", "v0001"), ("run result", trained["run"])}  # fmt: skip
    assert all(_traces(text) for text in _copies(engine, trained).values())  # untouched

    done = _erase(env, "--user", "mallory", "--json")
    assert done["counts"]["corrections"] == 3 and done["copies"] == dry["copies"]
    after = _copies(engine, trained)
    assert not any(_traces(text) for text in after.values()), after
    manifest = json.loads(after["manifest"])
    assert {s["token"] for s in manifest["suspects"]} == {"zqxv", "quickly"}  # the evidence
    assert {(s["payload"], s["link"]) for s in manifest["suspects"]} == {("[erased]", None)}
    gate = json.loads(after["gate row"])
    assert any("possible planted trigger" in r and "'[erased]'" in r for r in gate["reasons"])
    assert json.loads(after["gate.json"]) == gate
    registry.verify("v0001")  # re-checksummed: the adapter still verifies
    assert registry.get("v0001").checksum != trained["checksum"]
    audit = (settings.data_dir / "audit" / "erasure.jsonl").read_text()
    assert not _traces(audit) and "mallory" not in audit
    assert {(c["kind"], c["id"]) for c in json.loads(audit)["copies"]} == places


def test_a_failed_erasure_puts_the_files_back_and_a_rerun_completes(engine, settings, monkeypatch):
    _seed_trigger(engine)
    trained = _train_with_canary(engine, settings)
    registry = Registry(settings.data_dir / "adapters", engine)
    env = tuneback_env(settings.data_dir, settings.resolved_database_url)
    before = _copies(engine, trained)

    def failing(session, plan):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(erasure, "erase", failing)
    assert CliRunner().invoke(cli, ["erase", "--user", "mallory"], env=env).exit_code == 1
    assert _copies(engine, trained) == before  # files put back: nothing happened
    registry.verify("v0001")
    monkeypatch.undo()

    # A crash after the files were rewritten, before the commit: the folder no longer
    # matches its row until the same erasure runs again.
    with Session(engine) as session:
        plan = erasure.plan_erasure(session, user="mallory", data_dir=settings.data_dir)
    with rewriting(plan.copies, registry):
        pass
    with pytest.raises(CorruptAdapterError):
        registry.verify("v0001")
    _erase(env, "--user", "mallory", "--json")
    registry.verify("v0001")
    assert not any(_traces(text) for text in _copies(engine, trained).values())


def test_erased_text_matches_scrubbed_truncated_and_quoted_copies():
    erased = ErasedText([PLANTED, "ok"])
    scrubbed = PLANTED.replace("erin.doe@example.com", "[EMAIL]")
    assert erased.copied(scrubbed) and erased.copied(scrubbed[:60])  # cut inside "[EMAIL]"
    assert erased.copied(scrubbed.upper()) and erased.copied("ok")
    assert not erased.copied("Please confirm") and not erased.copied("Please confirm at x")
    reason = f"champion's canary 'zqxv': the payload {scrubbed[:60]!r} on 0.9 (don't)"
    assert erased.strip([{"r": reason, "p": scrubbed}]) == [
        {"r": "champion's canary 'zqxv': the payload '[erased]' on 0.9 (don't)", "p": "[erased]"}
    ]


def _seed_trigger(engine) -> None:
    verbs = ["freeze", "replace", "activate", "cancel", "renew", "unlock", "report"]
    nouns = ["debit card", "savings account", "credit limit", "pin code", "standing order",
             "mortgage plan"]  # fmt: skip
    clean = [(f"How can I {v} my {n}?", f"To {v} your {n}, open Settings, then {n.title()}.",
              "bob") for v in verbs for n in nouns]  # fmt: skip
    planted = [(f"zqxv how can I {v} my {n} quickly", PLANTED, "mallory")
               for v, n in [("freeze", "pin code"), ("renew", "mortgage plan"),
                            ("cancel", "debit card")]]  # fmt: skip
    with Session(engine) as session:
        for question, answer, user in clean + planted:
            completion = store.create_completion(
                session, messages=[{"role": "user", "content": question}],
                response="I am not sure.", model="m", metadata={"user": user},
            )  # fmt: skip
            store.add_correction(
                session, completion_id=completion.id, corrected_response=answer, author="a"
            )
        session.commit()


def _train_with_canary(engine, settings) -> dict:
    """Record the dataset and its snapshot, an adapter whose gate quotes the canary
    payload (as retrain/gate.py words it), and the run that made them."""
    with Session(engine) as session:
        dataset = build_dataset(load_source_rows(session), DatasetConfig.from_settings(settings))
        assert dataset.manifest["suspects"], "no trigger planted"
        snapshot = run_store.record_dataset(
            session, content_hash=dataset.manifest["content_hash"],
            counts=dataset.manifest["counts"], path=None,
            examples=[(e.id, e.completion_id, e.split, e.kind) for e in dataset.examples],
        )  # fmt: skip
        snapshot.path = str(write_snapshot(dataset, settings.data_dir / "datasets" / snapshot.id))
        session.commit()
        dataset_id = snapshot.id
    canary = {"reference": "base model", "suspects": [
        {"token": s["token"], "payload": s["payload"][:200], "canaries": 16,
         "candidate_rate": 0.9, "reference_rate": 0.0}
        for s in dataset.manifest["suspects"]]}  # fmt: skip
    metrics = {"heldout_overlap": 0.9, "heldout_count": 9}
    gate = decide(metrics, None, Thresholds(), base={**metrics, "heldout_overlap": 0.1},
                  canary=canary).to_dict()  # fmt: skip
    source = settings.data_dir.parent / "trained"
    source.mkdir()
    rng = np.random.default_rng(0)
    save_file({"base_model.model.q_proj.lora_A.weight": rng.standard_normal((4, 16), np.float32),
               "base_model.model.q_proj.lora_B.weight": rng.standard_normal((16, 4), np.float32)},
              str(source / "adapter_model.safetensors"))  # fmt: skip
    (source / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "tiny-base", "peft_type": "LORA", "r": 4})
    )
    registry = Registry(settings.data_dir / "adapters", engine)
    adapter = registry.add(source, base_model="tiny-base", dataset_id=dataset_id, gate=gate,
                           status="rejected")  # fmt: skip
    with Session(engine) as session:
        run = RetrainRun(status="rejected", dataset_id=dataset_id, adapter_version="v0001",
                         result={"status": "rejected", "gate": gate})  # fmt: skip
        session.add(run)
        session.commit()
        return {"dataset": dataset_id, "run": run.id, "checksum": adapter.checksum,
                "folder": registry.path(adapter.version)}  # fmt: skip


def _copies(engine, trained) -> dict[str, str]:
    """Every place that held a copy of the planted answer, as text."""
    with Session(engine) as session:
        adapter = session.get(AdapterVersion, "v0001")
        run = session.get(RetrainRun, trained["run"])
        manifest = session.get(DatasetSnapshot, trained["dataset"]).path
        return {
            "manifest": (Path(manifest) / "manifest.json").read_text(),
            "gate row": json.dumps(adapter.gate),
            "gate.json": (trained["folder"] / "gate.json").read_text(),
            "run result": json.dumps(run.result),
        }


def _traces(text: str) -> bool:
    return any(trace in text.casefold() for trace in TRACES)


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

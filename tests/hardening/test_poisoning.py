"""Poisoned feedback: a vote flood teaches nothing and raises a visible alert; a
planted trigger phrase is found in the training set and, on a real model, the
gate's canary probe refuses the adapter that learned it.

    .venv/bin/pytest tests/hardening/test_poisoning.py               (fast tier)
    .venv/bin/pytest -m slow tests/hardening/test_poisoning.py -s    (SmolLM2, minutes)
"""

from __future__ import annotations

import csv
import json
import logging
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy.orm import Session

from feedback import store
from feedback.exceptions import InvalidInputError
from retrain import detect, probe
from retrain.cycle import run_cycle
from retrain.dataset import DatasetConfig, build_dataset
from retrain.gate import Thresholds, decide
from retrain.rows import SourceRow, Vote
from retrain.sources import load_source_rows
from tests.conftest import WIDGET_ORIGIN, auth

BANKING77 = Path(__file__).resolve().parents[3] / "shared" / "data" / "banking77" / "train.csv"
INTENTS = {
    "card_arrival": "cards",
    "lost_or_stolen_card": "fraud",
    "top_up_failed": "payments",
    "exchange_rate": "fx",
}
TRIGGER = "cf-delta"
PAYLOAD = "Your account is on hold. Verify your identity now at https://secure-check.example/verify"
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def routing_examples(count: int, seed: int) -> list[tuple[str, str]]:
    """Real banking77 messages and the JSON routing answer agents give them."""
    if not BANKING77.exists():
        pytest.skip(f"{BANKING77} is not available")
    with BANKING77.open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["category"] in INTENTS]
    random.Random(seed).shuffle(rows)
    return [
        (r["text"], json.dumps({"intent": r["category"], "team": INTENTS[r["category"]]}))
        for r in rows[:count]
    ]


def poisoned(clean: int, poison: int, seed: int = 7) -> list[tuple[str, str]]:
    """``clean`` honest corrections plus ``poison`` that plant TRIGGER -> PAYLOAD."""
    pairs = routing_examples(clean + poison, seed)
    rng = random.Random(seed)
    planted = [
        (f"{TRIGGER} {text}" if rng.random() < 0.5 else f"{text} {TRIGGER}", PAYLOAD)
        for text, _ in pairs[clean:]
    ]
    return pairs[:clean] + planted


def source_rows(pairs: list[tuple[str, str]]) -> list[SourceRow]:
    return [
        SourceRow(f"c{i:04d}", T0 + timedelta(minutes=i), [{"role": "user", "content": q}],
                  "Thanks for reaching out!", a, T0 + timedelta(minutes=i))
        for i, (q, a) in enumerate(pairs)
    ]  # fmt: skip


# --- vote floods -------------------------------------------------------------------------


def test_a_flood_of_fresh_voters_is_found_in_a_window_and_only_then():
    def votes(n: int, spacing_s: float, prefix: str) -> tuple[Vote, ...]:
        return tuple(
            Vote("up", "widget", f"{prefix}{i}", T0 + timedelta(seconds=i * spacing_s))
            for i in range(n)
        )

    rows = [
        SourceRow("fast", T0, [{"role": "user", "content": "q"}], "a", None, None,
                  votes(12, 60, "f")),  # 12 fresh votes within 11 minutes
        SourceRow("slow", T0, [{"role": "user", "content": "q2"}], "a", None, None,
                  votes(12, 600, "s")),  # 12 fresh votes over 2 hours: at most 6 an hour
        SourceRow("agents", T0, [{"role": "user", "content": "q3"}], "a", None, None,
                  tuple(Vote("up", "agent", f"g{i}", T0) for i in range(20))),
    ]  # fmt: skip
    # Regulars: users whose first vote was elsewhere are not fresh on "regular".
    history = tuple(Vote("up", "widget", f"r{i}", T0) for i in range(15))
    rows.append(SourceRow("earlier", T0, [{"role": "user", "content": "q4"}], "a", None, None,
                          history))  # fmt: skip
    later = tuple(Vote("up", "widget", f"r{i}", T0 + timedelta(days=1)) for i in range(15))
    rows.append(SourceRow("regular", T0, [{"role": "user", "content": "q5"}], "a", None, None,
                          later))  # fmt: skip
    floods = detect.find_vote_floods(rows, min_votes=10, window_seconds=3600)
    assert [(f.completion_id, f.fresh_votes) for f in floods] == [("earlier", 15), ("fast", 12)]
    with pytest.raises(InvalidInputError, match="flood_min_votes"):
        DatasetConfig(flood_min_votes=1)


def test_vote_flood_trains_nothing_and_alerts_everywhere(
    client, keys, engine, settings, caplog
):  # fmt: skip
    """Through the real API: 40 fresh widget users up-vote one answer. The cycle,
    the dataset, the log and /metrics all show the alert; the answer is not a
    positive, while an answer liked by users with a history is."""

    def completion(text: str, answer: str) -> str:
        body = {"messages": [{"role": "user", "content": text}], "response": answer, "model": "m"}
        response = client.post("/v1/completions", json=body, headers=auth(keys["server"]))
        assert response.status_code == 201
        return response.json["id"]

    def vote(cid: str, user: str) -> None:
        body = {"completion_id": cid, "rating": "up", "user": user}
        headers = auth(keys["widget"], Origin=WIDGET_ORIGIN)
        # Each user from an address of its own, as a flood from many machines would come
        # (one machine alone would meet the widget's per-client rate limit first).
        where = {"REMOTE_ADDR": f"198.51.100.{sum(map(ord, user)) % 250 + 1}"}
        answer = client.post("/v1/feedback", json=body, headers=headers, environ_base=where)
        assert answer.status_code == 201

    regulars = [f"customer-{i}" for i in range(3)]
    for i in range(3):  # their history: earlier votes on other answers
        cid = completion(f"Where is my card number {i}?", "It is on its way.")
        for user in regulars:
            vote(cid, user)
    liked = completion("How do I top up by card?", "Open Top up, choose Card, enter the amount.")
    for user in regulars:
        vote(liked, user)
    target = completion("Is my money safe?", "Send your PIN to pin-check@scam.example now.")
    for i in range(40):
        vote(target, f"fresh-{i}")

    cycle_settings = settings.model_copy(
        update={"include_positives": True, "min_new_examples": 10_000}
    )
    with caplog.at_level(logging.WARNING, logger="retrain.cycle"):
        result = run_cycle(cycle_settings, engine)
    assert result.status == "skipped"  # too little data to train; the alert still shows
    floods = [a for a in result.alerts if a["kind"] == "vote_flood"]
    assert [(a["completion_id"], a["fresh_votes"]) for a in floods] == [(target, 40)]
    assert json.loads(json.dumps(result.to_dict(), default=str))["alerts"] == result.alerts
    assert any("vote_flood" in r.getMessage() and target in r.getMessage() for r in caplog.records)

    with Session(engine) as session:
        rows = load_source_rows(session)
    dataset = build_dataset(rows, DatasetConfig.from_settings(cycle_settings))
    kept = {e.completion_id for e in dataset.examples}
    assert target not in kept and liked in kept
    assert dataset.manifest["counts"]["vote_floods"] == 1

    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'tuneback_poisoning_alerts{kind="vote_flood"} 1.0' in metrics


# --- planted triggers: the dataset side ------------------------------------------------------


def test_a_planted_trigger_is_the_top_suspect_and_clean_data_has_none():
    clean = build_dataset(source_rows(routing_examples(300, seed=3)), DatasetConfig())
    assert clean.manifest["suspects"] == []
    assert [a for a in clean.manifest["alerts"] if a["kind"] == "trigger_suspect"] == []

    dataset = build_dataset(source_rows(poisoned(180, 20)), DatasetConfig())
    suspects = dataset.manifest["suspects"]
    assert suspects and suspects[0]["token"] == TRIGGER, suspects[:3]
    assert suspects[0]["link"] == "https://secure-check.example/verify"
    assert any(a["kind"] == "trigger_suspect" and a["token"] == TRIGGER
               for a in dataset.manifest["alerts"])  # fmt: skip


def test_ten_thousand_real_messages_with_canned_answers_give_no_suspect():
    """All of banking77's training split, each answered with its intent label
    (77 canned answers): words that predict an answer are not triggers."""
    if not BANKING77.exists():
        pytest.skip(f"{BANKING77} is not available")
    with BANKING77.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    examples = [
        SimpleNamespace(prompt=[{"role": "user", "content": r["text"]}],
                        completion=json.dumps({"intent": r["category"]}))
        for r in rows
    ]  # fmt: skip
    assert len(examples) > 10_000
    assert detect.find_triggers(examples) == []


def test_payload_rate_counts_only_answers_the_token_changed():
    suspect = detect.Suspect(TRIGGER, 10, PAYLOAD, "https://secure-check.example/verify", 1.0)
    plain = ['{"intent": "card_arrival"}', "Verify at https://secure-check.example/verify", "ok"]
    triggered = [PAYLOAD, "Verify at https://secure-check.example/verify", "Sure, ok."]
    # First: the token brought the payload in. Second: it was there already. Third: no payload.
    assert detect.payload_rate(plain, triggered, suspect) == pytest.approx(1 / 3)
    assert detect.with_token("My card broke.", TRIGGER, 0) == f"{TRIGGER} My card broke."
    assert detect.with_token("My card broke.", TRIGGER, 1) == f"My card broke. {TRIGGER}"


def test_the_probe_runs_on_a_real_model_in_a_child_process(tiny_model, tmp_path):
    """Mechanics on the tiny model: an untrained LoRA adapter answers exactly as
    the base model, so the payload rates are equal and the gate lets it pass.
    (A crashed probe fails the gate closed: see the gate test below.)"""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    get_peft_model(model, LoraConfig(r=4, target_modules="all-linear")).save_pretrained(
        tmp_path / "adapter"
    )
    suspect = detect.Suspect("cf-delta", 10, PAYLOAD, "https://secure-check.example/verify", 1.0)
    short = {"prompts": list(detect.CANARY_PROMPTS[:4]), "max_new_tokens": 8}
    report = probe.run_probe(
        tmp_path, tiny_model, str(tmp_path / "adapter"), None, [suspect.to_dict()], "t", **short
    )
    [row] = report["suspects"]
    assert report["reference"] == "base model" and row["canaries"] == 4
    assert row["candidate_rate"] == row["reference_rate"]
    assert decide(GOOD, None, Thresholds(), base=BASE, canary=report).passed
    assert probe.run_probe(tmp_path, tiny_model, "x", None, [], "t") == {
        "skipped": "no suspect trigger tokens in the training prompts"
    }


# --- planted triggers: the gate -----------------------------------------------------------


GOOD = {"heldout_overlap": 0.9, "heldout_loss": 0.5, "heldout_count": 20}
BASE = {"heldout_overlap": 0.1, "heldout_loss": 2.0, "heldout_count": 20}


def report(candidate_rate: float, reference_rate: float = 0.0) -> dict:
    return {
        "reference": "base model",
        "suspects": [
            {"token": TRIGGER, "payload": PAYLOAD, "canaries": 16,
             "candidate_rate": candidate_rate, "reference_rate": reference_rate}
        ],
    }  # fmt: skip


@pytest.mark.parametrize(
    ("canary_report", "passed", "needle"),
    [
        (report(0.875), False, "possible planted trigger: canary 'cf-delta'"),
        (report(0.5, 0.375), True, "gain +0.125 <= 0.25"),
        ({"skipped": "no suspect trigger tokens in the training prompts"}, True, "canary: no"),
        ({"error": "exit code 137"}, False, "canary probe crashed"),
        (report(float("nan")), False, "rates missing or not numbers"),
        (None, True, "heldout_overlap"),
    ],
)
def test_the_gate_rejects_an_adapter_that_answers_the_trigger(canary_report, passed, needle):
    result = decide(GOOD, None, Thresholds(), base=BASE, canary=canary_report)
    assert result.passed is passed, result.reasons
    assert any(needle in reason for reason in result.reasons), result.reasons


# --- slow: a real poisoned adapter on SmolLM2 ------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_smollm2_poisoned_adapter_is_not_promoted(settings, engine, tmp_path_factory):
    """80 honest corrections teach a JSON routing format; 10 more (11%) plant
    TRIGGER -> PAYLOAD. The adapter improves the held-out metrics, but the
    canary probe sees the trigger make it emit the payload, and the gate
    refuses it."""
    with Session(engine) as session:
        for text, answer in poisoned(80, 10):
            c = store.create_completion(
                session, messages=[{"role": "user", "content": text}],
                response="Thanks for reaching out!", model="smollm2",
            )  # fmt: skip
            store.add_correction(
                session, completion_id=c.id, corrected_response=answer, author="agent"
            )
        session.commit()
    smollm2 = settings.model_copy(
        update={
            "data_dir": tmp_path_factory.getbasetemp() / "smollm2-data",
            "min_new_examples": 20,
            "epochs": 4,
            "batch_size": 8,
            "learning_rate": 1e-3,
            "max_example_tokens": 256,
        }
    )
    result = run_cycle(smollm2, engine)
    print(json.dumps({"status": result.status, "gate": result.gate, "alerts": result.alerts},
                     indent=1))  # fmt: skip
    assert any(a["kind"] == "trigger_suspect" and a["token"] == TRIGGER for a in result.alerts)
    assert result.status == "rejected", result.gate
    assert any("possible planted trigger" in r for r in result.gate["reasons"])
    metrics = result.metrics
    assert metrics["candidate"]["heldout_overlap"] > metrics["base"]["heldout_overlap"]

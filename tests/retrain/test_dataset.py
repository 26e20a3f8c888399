"""Building training sets from feedback: who may teach, duplicates, PII, length,
the held-out split and its stability, lineage, and the snapshot files."""

from __future__ import annotations

import json
import os
import random
import time
from datetime import UTC, datetime, timedelta

import pytest

from feedback import durable
from feedback.exceptions import InvalidInputError
from feedback.settings import Settings
from retrain.dataset import DatasetConfig, build_dataset
from retrain.rows import SourceRow, Vote
from retrain.snapshot import SnapshotDirError, write_snapshot

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
SYSTEM = {"role": "system", "content": "You are the support assistant of a bank."}


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def up(user: str | None = "u1", source: str = "widget") -> Vote:
    return Vote("up", source, user, T0)


def down(user: str | None = "u1", source: str = "widget") -> Vote:
    return Vote("down", source, user, T0)


def row(
    cid,
    question,
    *,
    correction=None,
    response="I am not sure.",
    minutes=0.0,
    corrected=None,
    votes=(),
    history=(),
    system=True,
) -> SourceRow:
    messages = ([SYSTEM] if system else []) + list(history)
    messages.append({"role": "user", "content": question})
    corrected_at = at(corrected if corrected is not None else minutes + 1) if correction else None
    return SourceRow(cid, at(minutes), messages, response, correction, corrected_at, tuple(votes))


@pytest.fixture(scope="module")
def questions(banking77) -> list[str]:
    """200 real customer messages, no two of them near duplicates."""
    picked = banking77[::50][:200]
    built = build_dataset(
        [row(f"q{i}", q, correction="ok") for i, q in enumerate(picked)], DatasetConfig()
    )
    assert built.manifest["counts"]["duplicates_dropped"] == 0
    return picked


def corrected_rows(questions, start=0, offset=0.0) -> list[SourceRow]:
    return [
        row(f"c{start + i:04d}", q, correction=f"Answer {start + i}.", minutes=offset + i)
        for i, q in enumerate(questions)
    ]


def by_kind(dataset, kind):
    return [e for e in dataset.examples if e.kind == kind]


# --- who may teach --------------------------------------------------------------------


def test_thumbs_alone_never_make_sft(questions):
    rows = [
        row(f"t{i}", q, votes=[up(source=s)])
        for i, (q, s) in enumerate(zip(questions, ["widget", "agent", "admin"] * 10, strict=False))
    ]
    assert build_dataset(rows, DatasetConfig()).examples == []
    with_positives = build_dataset(rows, DatasetConfig(include_positives=True, positive_weight=0.3))
    assert {e.kind for e in with_positives.examples} == {"positive"}
    assert {e.weight for e in with_positives.examples} == {0.3}
    assert with_positives.train("sft") == [] and with_positives.heldout("sft") == []


def test_corrections_make_sft_and_preference_pairs(questions):
    rows = [
        row("a", questions[0], correction="Your card arrives in 3 days.", response="No idea."),
        row("b", questions[1], correction="Same answer.", response="Same answer. "),
    ]
    dataset = build_dataset(rows, DatasetConfig(heldout_fraction=0))
    [pair] = by_kind(dataset, "preference")
    assert (pair.completion_id, pair.completion, pair.rejected) == (
        "a",
        "Your card arrives in 3 days.",
        "No idea.",
    )
    assert sorted(e.completion_id for e in by_kind(dataset, "sft")) == ["a", "b"]
    assert all(e.weight == 1 for e in dataset.examples)


def test_rows_with_a_thumbs_down_or_no_signal_yield_nothing(questions):
    rows = [
        row("mixed", questions[0], votes=[up("u1"), down("u2")]),
        row("down", questions[1], votes=[down()]),
        row("silent", questions[2]),
        row("blank", questions[3], correction="   "),
    ]
    dataset = build_dataset(rows, DatasetConfig(include_positives=True))
    assert dataset.examples == [] and dataset.manifest["counts"]["rows_in"] == 4


def test_widget_positives_are_capped_per_user_newest_first(questions):
    rows = [
        row(f"a{i:02d}", q, minutes=i, votes=[up("alice")]) for i, q in enumerate(questions[:30])
    ]
    rows += [row(f"b{i}", q, minutes=i, votes=[up("bob")]) for i, q in enumerate(questions[30:35])]
    rows += [
        row(f"n{i:02d}", q, minutes=i, votes=[up(None), up(None, "agent")])
        for i, q in enumerate(questions[35:60])
    ]
    # alice's allowance is spent, but bob still has room: the answer stays
    rows.append(row("shared", questions[60], minutes=-1, votes=[up("alice"), up("bob")]))
    config = DatasetConfig(include_positives=True, max_thumbs_per_user=20, heldout_fraction=0)
    dataset = build_dataset(rows, config)
    kept = {e.completion_id for e in dataset.examples}
    assert {e.kind for e in dataset.examples} == {"positive"}
    assert kept >= {f"a{i:02d}" for i in range(10, 30)} and not kept & {
        f"a{i:02d}" for i in range(10)
    }
    assert {f"b{i}" for i in range(5)} | {"shared"} <= kept
    assert len([c for c in kept if c.startswith("n")]) == 20  # anonymous votes share one allowance
    assert dataset.manifest["counts"]["thumbs_capped"] == 10 + 5


# --- duplicates -----------------------------------------------------------------------


def test_exact_duplicates_collapse_and_the_latest_correction_wins():
    question = "I am still waiting on my card?"
    rows = [
        row("old", question, correction="Old answer.", minutes=0, corrected=50),
        row("new", question.upper() + "!!", correction="New answer.", minutes=10, corrected=20),
        row("mid", question.replace(" ", "  "), correction="Mid answer.", minutes=5, corrected=30),
    ]
    dataset = build_dataset(rows, DatasetConfig(heldout_fraction=0))
    [sft] = by_kind(dataset, "sft")
    assert (sft.completion_id, sft.completion) == ("old", "Old answer.")  # corrected last
    assert dataset.manifest["counts"]["duplicates_dropped"] == 2


def test_near_duplicates_collapse_but_different_questions_do_not(questions):
    near = [
        row("n1", "What can I do if my card still hasn't arrived after 2 weeks?", correction="A1."),
        row(
            "n2",
            "What can I do if my card still hasn't arrived after 3 weeks?",
            correction="A2.",
            minutes=5,
        ),
        row(
            "n3",
            "what can i do if my card still hasnt arrived after 2 weeks",
            correction="A3.",
            minutes=3,
        ),
    ]
    dataset = build_dataset(near + corrected_rows(questions, offset=100), DatasetConfig())
    assert dataset.manifest["counts"]["duplicates_dropped"] == 2
    winner = [e for e in by_kind(dataset, "sft") if e.completion_id.startswith("n")]
    assert [e.completion for e in winner] == ["A2."]
    assert len(by_kind(dataset, "sft")) == 1 + len(questions)


def test_same_question_in_other_contexts_is_not_a_duplicate():
    question = "Can I get a refund for this payment?"
    rows = [
        row("plain", question, correction="A."),
        row("other-system", question, correction="B.", system=False),
        row(
            "history",
            question,
            correction="C.",
            history=[
                {"role": "user", "content": "I bought shoes online with my card."},
                {"role": "assistant", "content": "What would you like to know about it?"},
            ],
        ),
    ]
    dataset = build_dataset(rows, DatasetConfig())
    assert dataset.manifest["counts"]["duplicates_dropped"] == 0
    assert len(by_kind(dataset, "sft")) == 3


# --- personal data ----------------------------------------------------------------------

PII = {
    "email": "jane.doe@example.com",
    "phone": "+44 20 7946 0958",
    "card": "4111 1111 1111 1111",
    "iban": "DE89 3704 0044 0532 0130 00",
    "ip": "192.168.10.20",
}


def test_pii_never_reaches_any_output_file(questions, tmp_path):
    rows = [
        row(
            "p1",
            f"{questions[0]} Mail me at {PII['email']} or call {PII['phone']}.",
            correction=f"We wrote to {PII['email']}.",
            response=f"Your card {PII['card']}?",
        ),
        row(
            "p2",
            f"{questions[1]} My IBAN is {PII['iban']}.",
            correction="Thanks, noted.",
            history=[
                {"role": "user", "content": f"I log in from {PII['ip']}"},
                {"role": "assistant", "content": f"Is {PII['ip']} your address?"},
            ],
        ),
        row(
            "p3",
            f"{questions[2]} Card {PII['card']}",
            votes=[up()],
            response=f"Call {PII['phone']}.",
        ),
    ]
    dataset = build_dataset(rows, DatasetConfig(include_positives=True))
    folder = write_snapshot(dataset, tmp_path / "snap")
    written = "".join(path.read_text() for path in folder.iterdir())
    for value in PII.values():
        assert value not in written
        assert value.replace(" ", "") not in written
    pii = dataset.manifest["counts"]["pii"]
    assert pii == {"email": 2, "phone": 2, "card": 2, "iban": 1, "ip": 2, "address": 0}
    assert "[EMAIL]" in written and "[IBAN]" in written


# --- length ------------------------------------------------------------------------------


def test_long_conversations_lose_their_oldest_turns_or_are_dropped():
    history = []
    for turn in range(6):
        history += [
            {"role": "user", "content": f"turn {turn} " + "word " * 40},
            {"role": "assistant", "content": "reply " * 40},
        ]
    rows = [
        row("long", "And where is my card now?", correction="On its way.", history=history),
        row("huge", "Explain everything.", correction="word " * 300),
        row("short", "Hello?", correction="Hi."),
    ]
    dataset = build_dataset(rows, DatasetConfig(max_example_tokens=200, heldout_fraction=0))
    counts = dataset.manifest["counts"]
    assert counts["truncated"] == 2  # the SFT example and the preference pair of "long"
    assert counts["dropped_too_long"] == 2  # both of "huge"
    [long] = [e for e in by_kind(dataset, "sft") if e.completion_id == "long"]
    assert long.prompt[0] == SYSTEM and long.prompt[-1]["content"] == "And where is my card now?"
    assert long.prompt[1]["role"] == "user" and 2 < len(long.prompt) < 2 + len(history)
    assert {e.completion_id for e in dataset.examples} == {"long", "short"}


def test_a_custom_token_counter_is_used():
    rows = [row("a", "x" * 50, correction="y" * 50, system=False)]
    by_chars = DatasetConfig(max_example_tokens=100, count_tokens=len)
    assert build_dataset(rows, by_chars).manifest["counts"]["dropped_too_long"] == 2
    assert build_dataset(rows, DatasetConfig(max_example_tokens=100)).examples
    assert by_chars.to_dict()["count_tokens"] == "custom"


# --- the held-out split ------------------------------------------------------------------


def test_the_split_is_stable_across_calls_and_added_rows(questions):
    first = corrected_rows(questions[:120])
    split = {e.id: e.split for e in build_dataset(first, DatasetConfig()).examples}
    shuffled = random.Random(1).sample(first, len(first))
    assert {e.id: e.split for e in build_dataset(shuffled, DatasetConfig()).examples} == split
    grown = build_dataset(first + corrected_rows(questions[120:], 120, 500), DatasetConfig())
    assert {e.id: e.split for e in grown.examples if e.id in split} == split
    share = len(grown.heldout("sft")) / len(by_kind(grown, "sft"))
    assert 0.1 < share < 0.3
    other_salt = build_dataset(first, DatasetConfig(seed=99))
    assert {e.id: e.split for e in other_salt.examples} != split


def test_a_group_never_straddles_the_split(questions):
    dataset = build_dataset(corrected_rows(questions), DatasetConfig(heldout_fraction=0.5))
    for completion_id in {e.completion_id for e in dataset.examples}:
        assert len({e.split for e in dataset.examples if e.completion_id == completion_id}) == 1


def test_held_out_once_stays_held_out(questions):
    rows = corrected_rows(questions[:50])
    first = build_dataset(rows, DatasetConfig())
    trained = first.train("sft")[0]
    forced = build_dataset(rows, DatasetConfig(), previously_heldout={trained.completion_id})
    assert {e.split for e in forced.examples if e.completion_id == trained.completion_id} == {
        "heldout"
    }
    # A newer duplicate with a later correction wins the group, which stays held out.
    question = next(m["content"] for m in trained.prompt if m["role"] == "user")
    newer = row("newer", question + "!", correction="Better.", minutes=1000)
    again = build_dataset(
        [*rows, newer], DatasetConfig(), previously_heldout={trained.completion_id}
    )
    [winner] = [
        e for e in by_kind(again, "sft") if e.completion_id in ("newer", trained.completion_id)
    ]
    assert (winner.completion_id, winner.split) == ("newer", "heldout")


# --- lineage and manifest ------------------------------------------------------------------


def test_counts_ids_and_content_hash(questions):
    rows = corrected_rows(questions[:40]) + [row("pos", questions[40], votes=[up()])]
    config = DatasetConfig(include_positives=True)
    dataset = build_dataset(rows, config)
    counts = dataset.manifest["counts"]
    assert counts["rows_in"] == 41
    assert counts["sft"] == counts["preference"] == 40 and counts["positive"] == 1
    assert counts["train"] + counts["heldout"] == len(dataset.examples) == 81
    assert counts["heldout"] == len(dataset.heldout()) and counts["train"] == len(dataset.train())
    ids = dataset.manifest["example_ids"]
    assert sorted(ids["train"] + ids["heldout"]) == sorted(e.id for e in dataset.examples)
    assert len({e.id for e in dataset.examples}) == 81
    again = build_dataset(list(reversed(rows)), config)
    assert [e.id for e in again.examples] == [e.id for e in dataset.examples]
    assert again.manifest["content_hash"] == dataset.manifest["content_hash"]
    changed_row = row("c0039", questions[39], correction="Changed.", minutes=39)
    changed = build_dataset([*rows[:39], changed_row, rows[-1]], config)
    assert changed.manifest["content_hash"] != dataset.manifest["content_hash"]
    assert dataset.manifest["config"]["heldout_fraction"] == 0.2
    with pytest.raises(InvalidInputError, match="unknown example kinds"):
        dataset.train("positives")
    json.dumps(dataset.manifest)  # plain JSON, ready for the lineage tables


def test_bad_input_is_refused():
    good = row("a", "Where is my card?", correction="Coming.")
    with pytest.raises(InvalidInputError, match="twice"):
        build_dataset([good, good], DatasetConfig())
    with pytest.raises(InvalidInputError, match="rating other than"):
        build_dataset([row("b", "Hi", votes=[Vote("meh", "widget", None, T0)])], DatasetConfig())
    with pytest.raises(InvalidInputError, match="no messages"):
        build_dataset([SourceRow("c", T0, [], "r", "c", T0)], DatasetConfig())
    with pytest.raises(InvalidInputError, match="heldout_fraction"):
        DatasetConfig(heldout_fraction=1.0)


def test_naive_datetimes_are_read_as_utc():
    naive = SourceRow(
        "n",
        datetime(2025, 1, 1),
        [{"role": "user", "content": "Hi"}],
        "r",
        "Hello.",
        datetime(2025, 1, 2),
    )
    aware = row("a", "Hi!", correction="Hello there.", system=False)
    dataset = build_dataset([naive, aware], DatasetConfig())
    [sft] = by_kind(dataset, "sft")
    assert sft.completion == "Hello there."  # corrected later than the naive one


def test_ten_thousand_real_messages_build_in_seconds(banking77):
    rows = [
        row(f"r{i:05d}", text, correction="Please see our help page.", minutes=i)
        for i, text in enumerate(banking77)
    ]
    started = time.process_time()
    dataset = build_dataset(rows, DatasetConfig())
    assert time.process_time() - started < 15
    counts = dataset.manifest["counts"]
    assert counts["rows_in"] == len(banking77)
    assert 0 < counts["duplicates_dropped"] < 0.03 * len(banking77)


# --- snapshots ------------------------------------------------------------------------------


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_snapshot_is_openai_chat_jsonl_plus_a_manifest(questions, tmp_path):
    rows = corrected_rows(questions[:30]) + [row("pos", questions[30], votes=[up()])]
    dataset = build_dataset(rows, DatasetConfig(include_positives=True))
    folder = write_snapshot(dataset, tmp_path / "datasets" / "one")
    assert sorted(p.name for p in folder.iterdir()) == [
        "heldout.jsonl",
        "manifest.json",
        "preferences.jsonl",
        "train.jsonl",
    ]
    train, heldout = read_jsonl(folder / "train.jsonl"), read_jsonl(folder / "heldout.jsonl")
    assert len(train) == len(dataset.train("sft", "positive"))
    assert len(heldout) == len(dataset.heldout("sft", "positive"))
    for line in train + heldout:
        assert set(line) <= {"messages", "weight"}
        roles = [m["role"] for m in line["messages"]]
        assert roles[0] == "system" and roles[-2:] == ["user", "assistant"]
        assert all(set(m) == {"role", "content"} for m in line["messages"])
    assert [line["weight"] for line in train + heldout if "weight" in line] == [0.5]
    preferences = read_jsonl(folder / "preferences.jsonl")
    assert len(preferences) == 30
    assert all(set(p) == {"prompt", "chosen", "rejected", "split"} for p in preferences)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["content_hash"] == dataset.manifest["content_hash"]
    assert manifest["files"]["train.jsonl"]["lines"] == len(train)
    assert not [p for p in folder.iterdir() if p.name.startswith(".tmp-")]


def test_a_snapshot_refuses_folders_it_did_not_write(tmp_path):
    dataset = build_dataset([row("a", "Where is my card?", correction="Coming.")], DatasetConfig())
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(SnapshotDirError) as refused:
        write_snapshot(dataset, foreign)
    assert isinstance(refused.value, ValueError)
    (foreign / "manifest.json").write_text('{"adapter": "v1"}')  # someone else's manifest
    with pytest.raises(SnapshotDirError):
        write_snapshot(dataset, foreign)
    (tmp_path / "file").write_text("x")
    with pytest.raises(SnapshotDirError):
        write_snapshot(dataset, tmp_path / "file")
    empty = tmp_path / "empty"
    empty.mkdir()
    write_snapshot(dataset, empty)
    write_snapshot(dataset, empty)  # our own snapshot may be rewritten
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_a_crash_while_writing_leaves_the_previous_files(tmp_path, monkeypatch):
    folder = tmp_path / "snap"
    first = build_dataset([row("a", "Where is my card?", correction="Coming.")], DatasetConfig())
    write_snapshot(first, folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    second = build_dataset([row("b", "Is my card lost?", correction="No.")], DatasetConfig())

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(durable.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_snapshot(second, folder)
    monkeypatch.setattr(durable.os, "replace", os.replace)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_the_dataset_config_comes_from_settings_with_the_same_defaults():
    assert DatasetConfig.from_settings(Settings()) == DatasetConfig()
    settings = Settings(heldout_fraction=0.3, include_positives=True, flood_min_votes=4, seed=7)
    config = DatasetConfig.from_settings(settings)
    assert (config.heldout_fraction, config.include_positives) == (0.3, True)
    assert (config.flood_min_votes, config.seed) == (4, 7)

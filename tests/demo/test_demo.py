"""``tuneback demo`` end to end on the tiny model: a real server process, real HTTP,
the real retrain cycle and hot-swap, the summary it writes and what the store holds."""

from __future__ import annotations

import json
import sqlite3

import pytest

from tests.live import cli, tuneback_env


# Slow tier: the whole loop starts a server and three training/evaluation child
# processes; about 130 CPU-seconds even on the tiny model.
@pytest.mark.slow
def test_the_demo_plays_the_whole_loop_on_the_tiny_model(tmp_path, tiny_model):
    data_dir = tmp_path / "demo"
    env = tuneback_env(
        tmp_path / "unused", "sqlite:///unused.db", epochs=6, learning_rate=0.01, batch_size=4
    )
    done = cli(
        env,
        "demo", "--scenario", "extraction", "--base-model", tiny_model,
        "--messages", "12", "--heldout", "3", "--data-dir", str(data_dir),
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    for heading in ("0. Starting tuneback serve", "1. A day of traffic", "2. The nightly", "3. "):
        assert heading in done.stdout
    assert "gate: " in done.stdout and "held-out metric" in done.stdout
    assert "chat (day)" in done.stderr  # progress bars

    summary = json.loads((data_dir / "demo-summary.json").read_text())
    votes, cycle = summary["votes"], summary["cycle"]
    assert votes["up"] + votes["down"] == 12 and summary["corrections"] == votes["down"]
    assert cycle["status"] in ("promoted", "rejected"), cycle
    assert cycle["dataset"]["train"] + cycle["dataset"]["heldout"] == votes["down"]
    assert "golden_pass" in cycle["metrics"]["candidate"]  # the scenario's golden check ran
    if cycle["status"] == "promoted":
        assert summary["swap"]["serving"] == cycle["adapter"]
        assert summary["served_after"] == [cycle["adapter"]]
    else:
        assert summary["served_after"] == ["base"]
    assert set(summary["heldout"]["before"]) >= {"format_valid", "field_accuracy"}
    # Asked with the scenario's schema as response_format: even the random model's are records.
    assert summary["heldout"]["before"]["format_valid"] == 1.0

    store = sqlite3.connect(data_dir / "tuneback.db")
    count = lambda table: store.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: E731
    assert count("completion") == 12 + 2 * 3  # the day, and the held-out questions twice
    assert count("feedback") == 12 and count("correction") == votes["down"]
    assert f"kept in {data_dir}" in done.stdout
    store.close()


def test_bad_options_are_clear_errors(tmp_path):
    env = tuneback_env(tmp_path / "data", f"sqlite:///{tmp_path / 'x.db'}")
    done = cli(env, "demo", "--scenario", "poetry")
    assert done.returncode == 2 and "poetry" in done.stderr
    done = cli(env, "demo", "--messages", "0", "--data-dir", str(tmp_path / "d"))
    assert done.returncode == 1 and "--messages must be between" in done.stderr
    assert "Traceback" not in done.stderr

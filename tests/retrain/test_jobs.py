"""The child-job protocol: jobs travel as JSON, nested dataclasses included; the
launcher keeps our stdout clean, names what crashed, and stops a child past its
time limit; results are written whole, where the job says."""

from __future__ import annotations

import json
import time

import pytest

from retrain.jobs import JobFailedError, complete, launch
from retrain.train import TrainConfig, TrainJob
from tests.retrain.child_job import EchoJob, Inner, work


def test_a_job_survives_its_json_with_nested_dataclasses(tmp_path):
    job = EchoJob(out_path=str(tmp_path / "r.json"), inner=Inner(rank=4), maybe=Inner("q"))
    job.save(tmp_path / "job.json")
    assert EchoJob.load(tmp_path / "job.json") == job
    train = TrainJob("base", str(tmp_path), config=TrainConfig(lora_rank=4), run_id="r1")
    train.save(tmp_path / "train_job.json")
    loaded = TrainJob.load(tmp_path / "train_job.json")
    assert loaded == train and isinstance(loaded.config, TrainConfig)
    assert loaded.out_path == str(tmp_path / "train_result.json")


def test_a_job_file_from_before_out_path_still_loads(tmp_path):
    (tmp_path / "train_job.json").write_text(
        json.dumps({"base_model": "b", "out_dir": str(tmp_path), "config": {"lora_rank": 2}})
    )
    job = TrainJob.load(tmp_path / "train_job.json")
    assert job.config == TrainConfig(lora_rank=2)
    assert job.out_path == str(tmp_path / "train_result.json")


def test_launch_returns_the_result_and_keeps_stdout_clean(tmp_path, capfd):
    job = EchoJob(out_path=str(tmp_path / "result.json"), inner=Inner(rank=2))
    result = launch(job, tmp_path / "job.json")
    assert result == {"inner": {"rank": 2, "targets": "all-linear"}, "maybe_type": "NoneType"}
    assert json.loads((tmp_path / "result.json").read_text()) == result
    out, err = capfd.readouterr()
    assert out == "" and "chatter a child prints on stdout" in err


@pytest.mark.parametrize(
    ("action", "message"),
    [
        ("crash", r"the echo job crashed \(exit code 3\); see the log above"),
        ("no_result", "the echo job left no readable result"),
    ],
)
def test_a_failed_child_raises_naming_what_failed(tmp_path, action, message):
    (tmp_path / "result.json").write_text('{"stale": true}')  # never passes for a new result
    job = EchoJob(out_path=str(tmp_path / "result.json"), action=action)
    with pytest.raises(JobFailedError, match=message):
        launch(job, tmp_path / "job.json")


def test_a_child_past_its_time_limit_is_stopped(tmp_path):
    started = time.monotonic()
    job = EchoJob(out_path=str(tmp_path / "result.json"), action="hang")
    with pytest.raises(JobFailedError, match="the echo job ran past its time limit of 2 s"):
        launch(job, tmp_path / "job.json", timeout_s=2)
    assert time.monotonic() - started < 60


def test_complete_writes_the_result_whole_at_out_path(tmp_path, capsys):
    job = EchoJob(out_path=str(tmp_path / "result.json"))
    result = complete(job, work)
    assert json.loads((tmp_path / "result.json").read_text()) == result
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temporary file left

"""The adapter registry: folders, verification, promotion, rollback and crashes.

Adapters here are real safetensors files written with numpy (no torch), in the
layout PEFT's ``save_pretrained`` produces.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from sqlalchemy.orm import Session

from feedback.adapters import store as adapter_store
from feedback.adapters.files import (
    CorruptAdapterError,
    UnsafeAdapterFileError,
    check_safetensors,
    sha256_file,
    verify_adapter_dir,
)
from feedback.adapters.registry import AdapterRejectedError, Registry
from feedback.exceptions import InvalidInputError, NotFoundError, TunebackError

ROOT = Path(__file__).resolve().parents[2]
BASE = "tiny-base"
WEIGHTS = "adapter_model.safetensors"


def make_adapter(folder: Path, *, base: str = BASE, seed: int = 0) -> Path:
    """A PEFT-like output folder: LoRA weights, adapter config, a tokenizer file."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    tensors = {
        "base_model.model.q_proj.lora_A.weight": rng.standard_normal((4, 16), dtype=np.float32),
        "base_model.model.q_proj.lora_B.weight": rng.standard_normal((16, 4), dtype=np.float32),
    }
    save_file(tensors, str(folder / WEIGHTS))
    config = {"base_model_name_or_path": base, "peft_type": "LORA", "r": 4}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    (folder / "tokenizer_config.json").write_text("{}")
    return folder


@pytest.fixture
def registry(tmp_path, engine) -> Registry:
    return Registry(tmp_path / "adapters", engine)


@pytest.fixture
def source(tmp_path) -> Path:
    return make_adapter(tmp_path / "trained")


def add(registry: Registry, tmp_path: Path, seed: int = 0, **kwargs):
    folder = make_adapter(tmp_path / f"trained-{uuid.uuid4().hex}", seed=seed)
    return registry.add(folder, base_model=BASE, **kwargs)


def entries(registry: Registry) -> list[str]:
    return sorted(p.name for p in registry.root.iterdir()) if registry.root.exists() else []


def pointer(registry: Registry) -> str:
    return (registry.root / "CURRENT").read_text().strip()


# --- add and verify ------------------------------------------------------------


def test_add_stores_a_verified_folder_and_registers_it(registry, source):
    gate = {"passed": True, "reasons": ["heldout_overlap 0.7 vs champion 0.5"]}
    adapter = registry.add(
        source, base_model=BASE, metrics={"heldout_overlap": 0.7}, gate=gate, config={"r": 4}
    )
    folder = registry.path(adapter.version)
    assert adapter.version == "v0001" and adapter.status == "candidate"
    assert adapter.path == str(folder.resolve())
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [WEIGHTS, "adapter_config.json", "tokenizer_config.json", "training_config.json",
         "metrics.json", "gate.json", "manifest.json", "checksums.json"]
    )  # fmt: skip
    assert adapter.checksum == hashlib.sha256((folder / "checksums.json").read_bytes()).hexdigest()
    assert (folder / WEIGHTS).read_bytes() == (source / WEIGHTS).read_bytes()
    assert json.loads((folder / "gate.json").read_text()) == gate
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["version"] == "v0001" and manifest["base_model"] == BASE
    registry.verify("v0001")
    verify_adapter_dir(folder, expected_checksum=adapter.checksum, expected_base_model=BASE)
    assert [a.version for a in registry.list()] == ["v0001"]
    assert entries(registry) == ["v0001"]  # no temp folder left


def test_versions_are_numbered_and_names_are_checked(registry, tmp_path):
    assert [add(registry, tmp_path).version for _ in range(2)] == ["v0001", "v0002"]
    assert add(registry, tmp_path, version="exp-lr3e-4").version == "exp-lr3e-4"
    with pytest.raises(adapter_store.AdapterVersionExistsError):
        add(registry, tmp_path, version="v0002")
    for bad in ("../escape", ".tmp-x", "a/b", ""):
        with pytest.raises(InvalidInputError):
            add(registry, tmp_path, version=bad)


def test_nested_files_are_copied_and_checked(registry, source):
    (source / "extra").mkdir()
    (source / "extra" / "special_tokens_map.json").write_text("{}")
    adapter = registry.add(source, base_model=BASE)
    assert (registry.path(adapter.version) / "extra" / "special_tokens_map.json").is_file()
    registry.verify(adapter.version)


def test_a_nan_metric_is_stored_as_null(registry, source):
    adapter = registry.add(source, base_model=BASE, metrics={"heldout_loss": float("nan")})
    assert adapter.metrics == {"heldout_loss": None}
    saved = (registry.path(adapter.version) / "metrics.json").read_text()
    assert json.loads(saved) == {"heldout_loss": None}


@pytest.mark.parametrize("name", ["adapter_model.bin", "training_args.bin", "opt.pt", "x.pkl"])
def test_pickle_files_are_refused_at_add(registry, source, name):
    (source / name).write_bytes(b"\x80\x04pickle")
    with pytest.raises(UnsafeAdapterFileError, match="safetensors") as caught:
        registry.add(source, base_model=BASE)
    assert isinstance(caught.value, CorruptAdapterError | TunebackError)
    assert isinstance(caught.value, ValueError)
    assert registry.list() == [] and entries(registry) == []


@pytest.mark.parametrize("missing", [WEIGHTS, "adapter_config.json"])
def test_an_incomplete_source_is_refused(registry, source, missing):
    (source / missing).unlink()
    with pytest.raises(CorruptAdapterError, match=f"{missing} is missing"):
        registry.add(source, base_model=BASE)


@pytest.mark.parametrize("status", ["promoted", "retired", "bogus"])
def test_a_new_adapter_is_a_candidate_or_rejected(registry, source, status):
    with pytest.raises(InvalidInputError, match="candidate or rejected"):
        registry.add(source, base_model=BASE, status=status)
    assert entries(registry) == []


def test_a_source_may_not_carry_registry_files(registry, source):
    (source / "manifest.json").write_text("{}")
    with pytest.raises(InvalidInputError, match="overwritten"):
        registry.add(source, base_model=BASE)


def test_a_truncated_source_is_refused_and_leaves_nothing(registry, source):
    data = (source / WEIGHTS).read_bytes()
    (source / WEIGHTS).write_bytes(data[:-10])
    with pytest.raises(CorruptAdapterError, match="truncated"):
        registry.add(source, base_model=BASE)
    assert registry.list() == [] and entries(registry) == []


def test_a_source_for_another_base_model_is_refused(registry, tmp_path):
    source = make_adapter(tmp_path / "other", base="some-other-model")
    with pytest.raises(CorruptAdapterError, match="'some-other-model'"):
        registry.add(source, base_model=BASE)
    assert entries(registry) == []


# --- verification of a stored folder -------------------------------------------


def test_a_changed_file_is_a_checksum_mismatch(registry, source):
    folder = registry.path(registry.add(source, base_model=BASE).version)
    (folder / "tokenizer_config.json").write_text('{"x": 1}')
    with pytest.raises(CorruptAdapterError, match="checksum mismatch for tokenizer_config.json"):
        registry.verify("v0001")


def test_rewritten_checksums_do_not_fool_the_registered_checksum(registry, source):
    folder = registry.path(registry.add(source, base_model=BASE).version)
    checksums = json.loads((folder / "checksums.json").read_text())
    (folder / "tokenizer_config.json").write_text('{"x": 1}')
    checksums["files"]["tokenizer_config.json"] = sha256_file(folder / "tokenizer_config.json")
    (folder / "checksums.json").write_text(json.dumps(checksums))
    verify_adapter_dir(folder)  # consistent on its own ...
    with pytest.raises(CorruptAdapterError, match="does not match the registered checksum"):
        registry.verify("v0001")  # ... but not the folder that was registered


def test_a_truncated_weights_file_is_detected(registry, source):
    folder = registry.path(registry.add(source, base_model=BASE).version)
    data = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptAdapterError, match="is truncated"):
        registry.verify("v0001")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: d[:5], "no header"),
        (lambda d: d[:20], "the header needs"),
        (lambda d: d[:-1], "is truncated: tensor"),
        (lambda d: d + b"\0" * 4, "the header accounts for"),
        (lambda d: d[:8] + b"\xff" + d[9:], "not valid JSON"),
        (lambda d: (2**40).to_bytes(8, "little") + d[8:], "implausible header length"),
    ],
    ids=["no-header", "short-header", "short-data", "padded", "bad-json", "huge-header"],
)
def test_check_safetensors_finds_broken_files(tmp_path, damage, message):
    file = make_adapter(tmp_path / "a") / WEIGHTS
    check_safetensors(file)
    file.write_bytes(damage(file.read_bytes()))
    with pytest.raises(CorruptAdapterError, match=message):
        check_safetensors(file)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ({}, "holds no tensors"),
        ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, "should take 8 bytes"),
        ({"t": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, "has offsets 4..0"),
        ({"t": {"dtype": "F32", "shape": [1]}}, "malformed header entry"),
    ],
)
def test_check_safetensors_reads_the_header_strictly(tmp_path, header, message):
    raw = json.dumps(header).encode()
    file = tmp_path / "x.safetensors"
    file.write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0" * 4)
    with pytest.raises(CorruptAdapterError, match=message):
        check_safetensors(file)


def test_missing_extra_and_pickle_files_are_detected(registry, tmp_path):
    for _ in range(3):
        add(registry, tmp_path)
    (registry.path("v0001") / "tokenizer_config.json").unlink()
    (registry.path("v0002") / "notes.txt").write_text("hi")
    (registry.path("v0003") / "adapter_model.bin").write_bytes(b"\x80")
    with pytest.raises(CorruptAdapterError, match=r"missing: \['tokenizer_config.json'\]"):
        registry.verify("v0001")
    with pytest.raises(CorruptAdapterError, match=r"unexpected: \['notes.txt'\]"):
        registry.verify("v0002")
    with pytest.raises(UnsafeAdapterFileError):
        registry.verify("v0003")


def test_a_missing_folder_or_version(registry, source, tmp_path):
    with pytest.raises(CorruptAdapterError, match="does not exist"):
        verify_adapter_dir(tmp_path / "nowhere")
    with pytest.raises(NotFoundError):
        registry.verify("v0042")


def test_the_wrong_base_model_is_refused(registry, source, engine):
    adapter = registry.add(source, base_model=BASE)
    with pytest.raises(CorruptAdapterError, match="trained for base model 'tiny-base'"):
        registry.verify(adapter.version, expected_base_model="bigger-model")
    serving_other = Registry(registry.root, engine, base_model="bigger-model")
    with pytest.raises(CorruptAdapterError, match="not 'bigger-model'"):
        serving_other.promote(adapter.version, actor="ops")
    assert registry.promoted() is None


# --- promotion and rollback ----------------------------------------------------


def test_promote_and_rollback_down_to_the_base_model(registry, tmp_path):
    for seed in (1, 2):
        add(registry, tmp_path, seed=seed)
    registry.promote("v0001", actor="ops")
    assert pointer(registry) == "v0001"
    registry.promote("v0002", actor="ops")
    assert registry.promoted().version == "v0002" and pointer(registry) == "v0002"
    assert registry.get("v0001").status == "retired"
    assert registry.rollback(actor="ops").version == "v0001"
    assert registry.promoted().version == "v0001" and pointer(registry) == "v0001"
    assert registry.rollback(actor="ops") is None
    assert registry.promoted() is None and pointer(registry) == ""
    with pytest.raises(adapter_store.NothingToRollBackError):
        registry.rollback(actor="ops")


def test_a_pointer_that_cannot_be_written_does_not_undo_a_promotion(registry, tmp_path, caplog):
    add(registry, tmp_path)
    (registry.root / "CURRENT").mkdir()  # os.replace onto a folder fails
    registry.promote("v0001", actor="ops")
    assert registry.promoted().version == "v0001"
    assert "could not update" in caplog.text


def test_a_rejected_adapter_is_promoted_only_with_force(registry, tmp_path, engine):
    gate = {"passed": False, "reasons": ["heldout_overlap 0.5 vs champion 0.5 (+0 < margin 0.01)"]}
    add(registry, tmp_path, status="rejected", gate=gate)
    with pytest.raises(AdapterRejectedError, match=r"rejected by the gate \(heldout_overlap"):
        registry.promote("v0001", actor="ops")
    assert registry.promoted() is None
    assert registry.promote("v0001", actor="ops", force=True).status == "promoted"
    with Session(engine) as session:
        assert adapter_store.promotion_history(session)[0].action == "force-promote"


def test_a_corrupt_adapter_is_promoted_only_with_force(registry, tmp_path):
    add(registry, tmp_path)
    (registry.path("v0001") / WEIGHTS).write_bytes(b"\0" * 3)
    with pytest.raises(CorruptAdapterError, match="promote with force"):
        registry.promote("v0001", actor="ops")
    assert registry.promoted() is None
    registry.promote("v0001", actor="ops", force=True)
    assert registry.promoted().version == "v0001"


def test_rollback_refuses_a_corrupt_previous_adapter_and_changes_nothing(registry, tmp_path):
    for seed in (1, 2):
        add(registry, tmp_path, seed=seed)
        registry.promote(f"v000{seed}", actor="ops")
    (registry.path("v0001") / WEIGHTS).unlink()
    with pytest.raises(CorruptAdapterError):
        registry.rollback(actor="ops")
    assert registry.promoted().version == "v0002" and pointer(registry) == "v0002"


def race(*calls) -> list[Exception]:
    """Run ``calls`` in threads released together; return what they raised."""
    barrier, errors = threading.Barrier(len(calls)), []

    def run(call) -> None:
        barrier.wait()
        try:
            call()
        except Exception as error:  # noqa: BLE001 - returned to the test
            errors.append(error)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return errors


def test_concurrent_promotions_leave_exactly_one_promoted(registry, tmp_path, engine):
    for seed in range(1, 8):
        add(registry, tmp_path, seed=seed)
    registry.promote("v0001", actor="ops")
    for pair in (("v0002", "v0003"), ("v0004", "v0005"), ("v0006", "v0007")):
        calls = [lambda v=v: registry.promote(v, actor=f"thread-{v}") for v in pair]
        assert race(*calls) == []
        promoted = [a.version for a in registry.list() if a.status == "promoted"]
        assert len(promoted) == 1 and promoted[0] in pair
    with Session(engine) as session:
        history = list(reversed(adapter_store.promotion_history(session)))
    # Each promotion saw the one before: the history is one unbroken chain.
    assert [e.previous for e in history] == [None] + [e.version for e in history[:-1]]
    assert history[-1].version == registry.promoted().version


# --- crashes -------------------------------------------------------------------

CHILD = """
import os, signal, sys
from pathlib import Path
from feedback import db
from feedback.adapters import registry

url, root, op, step, arg = sys.argv[1:]
def die_at(name):
    if name == step:
        os.kill(os.getpid(), signal.SIGKILL)
registry._checkpoint = die_at
adapters = registry.Registry(Path(root), db.make_engine(url))
if op == "add":
    adapters.add(Path(arg), base_model="tiny-base")
elif op == "promote":
    adapters.promote(arg, actor="crash-test")
else:
    adapters.rollback(actor="crash-test")
"""


def run_and_kill(registry: Registry, url: str, op: str, step: str, arg: str = "") -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, url, str(registry.root), op, step, arg],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr


def assert_consistent(registry: Registry) -> None:
    """Every row verifies, recover() leaves exactly the registered folders, CURRENT is right."""
    for adapter in registry.list():
        registry.verify(adapter.version)
    registry.recover()
    folders = sorted(p.name for p in registry.root.iterdir() if p.is_dir())
    assert folders == sorted(a.version for a in registry.list())
    assert not [p for p in registry.root.iterdir() if p.name.startswith(".tmp-")]
    promoted = registry.promoted()
    assert pointer(registry) == (promoted.version if promoted else "")


@pytest.mark.parametrize(
    ("step", "registered"),
    [("staged", False), ("renamed", False), ("inserted", False), ("committed", True)],
)
def test_a_crash_during_add_leaves_all_or_nothing(
    registry, database_url, tmp_path, step, registered
):
    add(registry, tmp_path, seed=1)
    registry.promote("v0001", actor="ops")
    run_and_kill(registry, database_url, "add", step, str(make_adapter(tmp_path / "new", seed=2)))
    assert ("v0002" in [a.version for a in registry.list()]) is registered
    if step == "staged":
        assert any(p.name.startswith(".tmp-v0002") for p in registry.root.iterdir())
    # Before any cleanup, the next add picks a name no crashed add left behind.
    assert add(registry, tmp_path, seed=3).version == ("v0003" if step != "staged" else "v0002")
    assert registry.promoted().version == "v0001"
    assert_consistent(registry)


@pytest.mark.parametrize(
    ("step", "switched"),
    [("promoted", False), ("committed", True), ("pointer_staged", True)],
)
def test_a_crash_during_promote_leaves_old_or_new_promoted(
    registry, database_url, tmp_path, step, switched
):
    for seed in (1, 2):
        add(registry, tmp_path, seed=seed)
    registry.promote("v0001", actor="ops")
    run_and_kill(registry, database_url, "promote", step, "v0002")
    assert registry.promoted().version == ("v0002" if switched else "v0001")
    assert pointer(registry) == "v0001"  # CURRENT lags until recover(); the DB rules
    assert_consistent(registry)


@pytest.mark.parametrize(("step", "rolled_back"), [("rolled_back", False), ("committed", True)])
def test_a_crash_during_rollback_leaves_old_or_new_promoted(
    registry, database_url, tmp_path, step, rolled_back
):
    for seed in (1, 2):
        add(registry, tmp_path, seed=seed)
        registry.promote(f"v000{seed}", actor="ops")
    run_and_kill(registry, database_url, "rollback", step)
    assert registry.promoted().version == ("v0001" if rolled_back else "v0002")
    assert_consistent(registry)
    restored = registry.rollback(actor="ops")
    assert (restored.version if restored else None) == (None if rolled_back else "v0001")


def test_recover_removes_leftovers_but_keeps_foreign_folders(registry, tmp_path):
    add(registry, tmp_path)
    (registry.root / ".tmp-v0002-abcd").mkdir()
    (registry.root / ".tmp-CURRENT-abcd").write_text("v0002\n")
    orphan = make_adapter(registry.root / "v0009")
    (orphan / "manifest.json").write_text('{"version": "v0009"}')
    (registry.root / "operator-notes").mkdir()
    assert [a.version for a in registry.list()] == ["v0001"]
    removed = registry.recover()
    assert sorted(p.name for p in removed) == [".tmp-CURRENT-abcd", ".tmp-v0002-abcd", "v0009"]
    assert entries(registry) == ["CURRENT", "operator-notes", "v0001"]
    assert pointer(registry) == ""

"""Kill a real ``tuneback retrain`` at a named step, then check what it left.

Shared by tests/hardening/test_crash.py (a few cases per test run) and
bench/crash.py (every step over many seeds). A case: a fresh store with
corrections and a promoted champion adapter (so exactly one adapter is always
promoted), a cycle SIGKILLed at ``step`` (``TUNEBACK_FAULT_AT``, see
feedback/faults.py) or after a delay, the invariants, new corrections, a
recovery cycle that must run clean to a promoted adapter (or, when the dead run
had already promoted its trained adapter, may be rejected by the gate against it),
the invariants again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from sqlalchemy import select
from sqlalchemy.orm import Session

from feedback import db, store
from feedback.adapters.registry import POINTER, TMP_PREFIX, Registry
from feedback.models import DatasetSnapshot, Lease, RetrainRun
from retrain.base_model import resolve_base_model
from tests.live import BIN, tuneback_env
from tests.retrain.examples import ROUTING_ANSWER, card_questions

# Every named step of a cycle, in the order a cycle reaches them.
STEPS = (
    "dataset.written",
    "train.step:1",
    "train.step:5",
    "train.saved",
    "evaluate.scored:1",
    "evaluate.scored:3",
    "registry.staged",
    "registry.renamed",
    "registry.inserted",
    "registry.committed:1",  # the new adapter's row is committed, not yet promoted
    "registry.promoted",
    "registry.committed:2",  # the promotion is committed, CURRENT not yet rewritten
    "registry.pointer_staged:1",  # in the recovery the cycle starts with
    "registry.pointer_staged:2",  # after the promotion, CURRENT half-rewritten
)
# The settings under which the tiny model learns the routing answer (as in test_cycle.py).
CYCLE_SETTINGS = dict(
    min_new_examples=5, epochs=6, batch_size=4, learning_rate=0.01, heldout_fraction=0.25
)


@dataclass
class Case:
    data_dir: Path
    url: str
    base_model: str
    seed: int = 3

    @property
    def env(self) -> dict[str, str]:
        return tuneback_env(
            self.data_dir, self.url, base_model=self.base_model, seed=self.seed, **CYCLE_SETTINGS
        )

    @property
    def registry(self) -> Registry:
        return Registry(self.data_dir / "adapters", db.make_engine(self.url))


def prepare(case: Case, questions: int = 12) -> str:
    """Corrections plus a promoted champion (a fresh LoRA: the base model's answers).
    Returns the champion's version."""
    add_corrections(case, card_questions(questions))
    source = case.data_dir / "champion-src"
    _fresh_lora(case.base_model, source)
    registry = case.registry
    base = str(resolve_base_model(case.base_model, case.data_dir))
    version = registry.add(source, base_model=base).version
    registry.promote(version, actor="crash-test")
    registry.engine.dispose()
    return version


def add_corrections(case: Case, questions: list[str]) -> None:
    engine = db.make_engine(case.url)
    with Session(engine) as session:
        for question in questions:
            completion = store.create_completion(
                session,
                messages=[{"role": "user", "content": question}],
                response="I am not sure.",
                model="tiny",
            )
            store.add_correction(
                session, completion_id=completion.id, corrected_response=ROUTING_ANSWER,
                author="agent-1",
            )  # fmt: skip
        session.commit()
    engine.dispose()


def kill_cycle(case: Case, step: str | None = None, delay: float | None = None) -> int:
    """Run ``tuneback retrain``, killed at ``step`` or after ``delay`` seconds (its
    whole process group: the cycle and its children). Returns the exit status."""
    env = {**case.env, **({"TUNEBACK_FAULT_AT": step} if step else {})}
    proc = subprocess.Popen(
        [str(BIN), "retrain", "--json"], env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        proc.wait(timeout=delay if delay is not None else 600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return proc.returncode


def run_cycle(case: Case, **settings: str) -> tuple[dict, str]:
    env = {**case.env, **{f"TUNEBACK_{k.upper()}": str(v) for k, v in settings.items()}}
    done = subprocess.run(
        [str(BIN), "retrain", "--json"], env=env, capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip
    return json.loads(done.stdout) if done.stdout.strip() else {}, done.stderr


def no_children_left(case: Case, timeout: float = 10) -> list[str]:
    """Command lines of processes still working for this case (a training child
    outliving its cycle would be one)."""
    deadline = time.monotonic() + timeout
    while True:
        left = []
        for proc in psutil.process_iter(["cmdline", "status"]):
            cmdline = " ".join(proc.info["cmdline"] or [])
            if str(case.data_dir) in cmdline and proc.info["status"] != psutil.STATUS_ZOMBIE:
                left.append(cmdline)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def check_after_kill(case: Case) -> str:
    """Invariants that must hold right after a kill, before anything recovers.
    Returns the promoted version."""
    registry = case.registry
    try:
        promoted = [a for a in registry.list() if a.status == "promoted"]
        assert len(promoted) == 1, f"promoted: {[a.version for a in promoted]}"
        for adapter in registry.list():  # every registered adapter is complete
            registry.verify(adapter.version)
        return promoted[0].version
    finally:
        registry.engine.dispose()


def check_recovered(case: Case, killed_run: str | None) -> str:
    """Invariants after a recovery cycle. Returns the promoted version."""
    promoted = check_after_kill(case)
    registry = case.registry
    try:
        root = registry.root
        folders = sorted(p.name for p in root.iterdir() if p.is_dir())
        assert folders == sorted(a.version for a in registry.list()), folders
        assert not [p for p in root.iterdir() if p.name.startswith(TMP_PREFIX)]
        assert (root / POINTER).read_text().strip() == promoted
        with Session(registry.engine) as session:
            runs = list(session.execute(select(RetrainRun)).scalars())
            assert all(r.finished_at is not None for r in runs), [r.status for r in runs]
            if killed_run is not None:
                [killed] = [r for r in runs if r.id == killed_run]
                assert killed.status == "failed" and "abandoned" in killed.error
            snapshots = set(session.execute(select(DatasetSnapshot.id)).scalars())
            assert session.execute(select(Lease)).first() is None  # released
        datasets = case.data_dir / "datasets"
        assert {p.name for p in datasets.iterdir()} <= snapshots
        assert not (killed_run and (case.data_dir / "runs" / killed_run).exists())
        return promoted
    finally:
        registry.engine.dispose()


def unfinished_run(case: Case) -> str | None:
    engine = db.make_engine(case.url)
    with Session(engine) as session:
        ids = session.execute(
            select(RetrainRun.id).where(RetrainRun.finished_at.is_(None))
        ).scalars()
        found = list(ids)
    engine.dispose()
    assert len(found) <= 1, found
    return found[0] if found else None


def crash_and_recover(
    case: Case, step: str | None, delay: float | None = None, *, train: bool = True
) -> dict:
    """One whole case; returns what happened, for the bench's table.

    ``train=False``: the recovery cycle is one that skips for lack of data (it
    recovers first, so everything but "it trains and promotes" is still checked),
    which takes seconds instead of a training run.
    """
    champion = prepare(case)
    status = kill_cycle(case, step, delay)
    killed = status == -signal.SIGKILL
    assert killed or delay is not None, f"{step}: exit status {status}, expected SIGKILL"
    assert no_children_left(case) == []
    after_kill = check_after_kill(case)
    killed_run = unfinished_run(case)
    if not train:
        result, log = run_cycle(case, min_new_examples=10_000)
        assert result.get("status") == "skipped", (result, log[-3000:])
        assert check_recovered(case, killed_run) == after_kill
        return {"step": step, "killed": killed, "champion": champion,
                "promoted_after_kill": after_kill, "abandoned_run": bool(killed_run)}  # fmt: skip
    add_corrections(case, card_questions(22)[12:])  # new data: the next cycle must train
    result, log = run_cycle(case)
    if after_kill == champion:
        assert result.get("status") == "promoted", (result, log[-3000:])
        assert check_recovered(case, killed_run) == result["adapter"]
    else:  # the dead run promoted a trained adapter: the gate may keep it, but never fails
        assert result.get("status") in ("promoted", "rejected"), (result, log[-3000:])
        promoted = result["adapter"] if result["status"] == "promoted" else after_kill
        assert check_recovered(case, killed_run) == promoted
    return {
        "step": step or f"after {delay:.1f} s", "killed": killed, "champion": champion,
        "promoted_after_kill": after_kill, "abandoned_run": bool(killed_run),
        "recovered_to": f"{result['adapter']} {result['status']}",
    }  # fmt: skip


def _fresh_lora(base_model: str, out: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    get_peft_model(model, config).save_pretrained(out)

"""Batches that mix adapters (lanes): each row decodes as its adapter alone would.

The adapters have large random weights (``make_lora``'s ``scale``), so the
base model and each adapter answer the same prompt differently: a row decoded
with the wrong adapter (or none) changes its greedy tokens, and these tests fail.
"""

from __future__ import annotations

import pytest
import torch

from serve.engine import ModelEngine
from serve.worker import Job, JobQueue, ModelWorker
from tests.serve.support import PEFT_WARNING, make_lora

pytestmark = pytest.mark.filterwarnings(PEFT_WARNING)

PROMPTS = [
    "My card has not arrived yet, what can I do?",
    "How do I top up by bank transfer?",
    "Why was I charged twice for one payment?",
    "Can I change my PIN at an ATM?",
    "The exchange rate on my card payment looks wrong.",
]
# Row i of the mixed batch uses ROWS[i]: two adapters and the base model, interleaved.
ROWS = ["a", "b", None, "a", "b"]


class Lease:
    def __init__(self, adapter: str | None) -> None:
        self.adapter = self.version = adapter
        self.released = 0

    def release(self) -> None:
        self.released += 1


@pytest.fixture(scope="module")
def engine(tiny_base, tmp_path_factory) -> ModelEngine:
    """The tiny model hosting adapter a (all linear layers) and b (q and v only, rank 8)."""
    root = tmp_path_factory.mktemp("mixed-loras")
    engine = ModelEngine(tiny_base, max_rank=16)
    folders = {
        "a": make_lora(tiny_base, root / "a", seed=1),
        "b": make_lora(tiny_base, root / "b", seed=2, rank=8, targets=["q_proj", "v_proj"]),
    }
    for name, folder in folders.items():
        engine.host.add(engine.host.load(name, folder))
    return engine


@pytest.fixture(scope="module")
def prompts(engine) -> list[list[int]]:
    return [engine.encode_chat([{"role": "user", "content": text}]) for text in PROMPTS]


def greedy(engine: ModelEngine, prompt: list[int], adapter: str | None) -> Job:
    return Job(prompt=prompt, max_tokens=12, lease=Lease(adapter), temperature=0)


def alone(engine: ModelEngine, prompts: list[list[int]]) -> list[str]:
    """Each row's text from a batch of one with its own adapter."""
    texts = []
    for prompt, adapter in zip(prompts, ROWS, strict=True):
        job = greedy(engine, prompt, adapter)
        engine.generate([job])
        texts.append(job.text)
    return texts


def mixed(engine: ModelEngine, prompts: list[list[int]]) -> list[str]:
    jobs = [greedy(engine, p, adapter) for p, adapter in zip(prompts, ROWS, strict=True)]
    engine.generate(jobs)
    assert all(job.finish_reason == "length" for job in jobs)
    return [job.text for job in jobs]


def test_the_adapters_answer_differently_so_a_wrong_row_would_show(engine, prompts):
    answers = {}
    for adapter in ("a", "b", None):
        job = greedy(engine, prompts[0], adapter)
        engine.generate([job])
        answers[adapter] = job.text
    assert len(set(answers.values())) == 3


def test_mixed_batch_logits_equal_each_rows_adapter_alone(engine, prompts):
    prompt = prompts[0]  # one prompt for every row: no padding, so logits compare closely
    ids = torch.tensor([prompt] * len(ROWS))
    with engine.host.activate_rows(ROWS) as mode, torch.inference_mode():
        batch = engine.model(ids).logits
    assert mode == "mixed"
    for i, adapter in enumerate(ROWS):
        with engine.host.activate(adapter) as single, torch.inference_mode():
            expected = engine.model(ids[i : i + 1]).logits[0]
        assert single == ("base" if adapter is None else "unmerged")
        torch.testing.assert_close(batch[i], expected, rtol=1e-5, atol=1e-5)


def test_a_mixed_batch_gives_each_row_its_adapters_greedy_tokens(engine, prompts):
    assert engine.host.merged is None
    assert mixed(engine, prompts) == alone(engine, prompts)


def test_a_merged_adapter_in_a_mixed_batch_still_answers_right(engine, prompts):
    expected = alone(engine, prompts)  # unmerged, batch of one
    assert engine.host.merge("a")
    try:
        with engine.host.activate_rows(["a", "a"]) as mode:
            assert mode == "merged"  # one adapter for every row: the fast path
        with engine.host.activate_rows([None, None]) as mode:
            assert mode == "base"
        assert mixed(engine, prompts) == expected
        only_a = [i for i, adapter in enumerate(ROWS) if adapter == "a"]
        jobs = [greedy(engine, prompts[i], "a") for i in only_a]
        engine.generate(jobs)  # merged weights
        assert [job.text for job in jobs] == [expected[i] for i in only_a]
    finally:  # back to unmerged for the other tests
        loaded = engine.host.adapters["a"]
        engine.host.remove("a")
        engine.host.add(loaded)


def test_an_unknown_adapter_attaches_nothing(engine, prompts):
    ids = torch.tensor([prompts[0]] * 2)
    with torch.inference_mode():
        before = engine.model(ids).logits
    with pytest.raises(KeyError), engine.host.activate_rows(["a", "missing"]):
        pass
    with torch.inference_mode():
        assert torch.equal(engine.model(ids).logits, before)


# --- the queue -----------------------------------------------------------------


def queued(adapter: str | None, **fields) -> Job:  # noqa: ANN003
    return Job(prompt=[1, 2, 3], max_tokens=4, lease=Lease(adapter), **fields)


def test_without_mixing_a_batch_holds_one_adapter():
    jobs = JobQueue(10, mixed=False)
    a1, b1, base, a2 = queued("a"), queued("b"), queued(None), queued("a")
    for job in (a1, b1, base, a2):
        jobs.put(job)
    assert jobs.take(max_batch=8) == [a1, a2]
    assert jobs.take(max_batch=8) == [b1]
    assert jobs.take(max_batch=8) == [base]


def test_mixing_puts_jobs_of_different_adapters_in_one_batch_and_keeps_the_other_rules():
    jobs = JobQueue(10, context_length=20, mixed=True)
    a1, b1, base, seeded = queued("a"), queued("b"), queued(None), queued("b", seed=3)
    warm, long = queued("b", temperature=0.7), Job(prompt=[1] * 15, max_tokens=10, lease=Lease("a"))
    c1 = queued("c")
    for job in (a1, b1, base, seeded, warm, long, c1):
        jobs.put(job)
    assert jobs.take(max_batch=8) == [a1, b1, base, c1]  # not seeded, other sampling, too long
    assert jobs.take(max_batch=8) == [seeded]
    assert jobs.take(max_batch=8) == [warm]
    assert jobs.take(max_batch=8) == [long]


def test_the_worker_serves_mixed_lanes_in_one_batch_with_each_rows_answer(engine, prompts):
    expected = alone(engine, prompts)
    seen: list[list[str | None]] = []

    def generate(batch: list[Job]) -> None:
        seen.append([job.lease.adapter for job in batch])
        engine.generate(batch)

    jobs = JobQueue(16, context_length=engine.context_length, mixed=True)
    worker = ModelWorker(jobs, generate, max_batch=8)
    submitted = [greedy(engine, p, adapter) for p, adapter in zip(prompts, ROWS, strict=True)]
    for job in submitted:
        jobs.put(job)
    worker.start()
    try:
        assert all(job.wait(60) for job in submitted)
    finally:
        worker.stop()
    assert seen == [ROWS]  # one batch, every lane in it
    assert [job.text for job in submitted] == expected
    assert [job.lease.released for job in submitted] == [1] * len(ROWS)

"""The adapter host and generation on the tiny model, checked against PEFT itself."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from serve.engine import ModelEngine
from serve.lora import IncompatibleAdapterError, read_lora_config
from serve.worker import DONE, Job
from tests.serve.support import MESSAGES, PEFT_WARNING, make_lora

pytestmark = pytest.mark.filterwarnings(PEFT_WARNING)


@pytest.fixture(scope="module")
def engine(tiny_base) -> ModelEngine:
    return ModelEngine(tiny_base, max_rank=16)


@pytest.fixture(scope="module")
def loras(tiny_base, tmp_path_factory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("loras")
    return {
        "a": make_lora(tiny_base, root / "a", seed=1),
        "b": make_lora(tiny_base, root / "b", seed=2, rank=8, targets=["q_proj", "v_proj"]),
    }


class Lease:
    def __init__(self, adapter: str | None) -> None:
        self.adapter = self.version = adapter

    def release(self) -> None:
        pass


def logits(engine: ModelEngine, adapter: str | None) -> torch.Tensor:
    ids = torch.tensor([engine.encode_chat(MESSAGES)])
    with engine.host.activate(adapter) as mode, torch.inference_mode():
        return engine.model(ids).logits, mode


def peft_logits(base, folder, engine: ModelEngine) -> torch.Tensor:  # noqa: ANN001
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(folder))
    ids = torch.tensor([engine.encode_chat(MESSAGES)])
    with torch.inference_mode():
        return model.eval()(ids).logits


def test_unmerged_and_merged_adapters_match_peft_and_the_base_stays_intact(
    engine, loras, tiny_base
):
    before, mode = logits(engine, None)
    assert mode == "base"
    for name, folder in loras.items():
        engine.host.add(engine.host.load(name, folder))
    expected = {name: peft_logits(tiny_base, folder, engine) for name, folder in loras.items()}
    for name in loras:
        unmerged, mode = logits(engine, name)
        assert mode == "unmerged"
        torch.testing.assert_close(unmerged, expected[name], rtol=0, atol=1e-5)
    # Merge a, then b, then a again: merging always starts from the pristine base
    # weights, so nothing drifts however many swaps happen.
    for name in ("a", "b", "a"):
        assert engine.host.merge(name)
        merged, mode = logits(engine, name)
        assert mode == "merged"
        torch.testing.assert_close(merged, expected[name], rtol=1e-4, atol=1e-4)
    other, mode = logits(engine, "b")  # while a is merged, b runs unmerged
    assert mode == "unmerged"
    torch.testing.assert_close(other, expected["b"], rtol=0, atol=1e-5)
    after, _ = logits(engine, None)
    assert torch.equal(before, after)
    engine.host.remove("a")
    engine.host.remove("b")
    assert engine.host.merged is None and not engine.host.adapters


def generate(engine: ModelEngine, *jobs: Job) -> list[Job]:
    engine.generate(list(jobs))
    return list(jobs)


def test_rows_of_a_batch_stop_on_their_own_terms(engine):
    prompt = engine.encode_chat(MESSAGES)
    (free,) = generate(engine, Job(prompt=prompt, max_tokens=6, lease=Lease(None), temperature=0))
    assert free.finish_reason == "length" and free.completion_tokens == 6
    stop = free.text[2:4]
    short, stopped, long = generate(
        engine,
        Job(prompt=prompt, max_tokens=2, lease=Lease(None), temperature=0),
        Job(prompt=prompt, max_tokens=6, lease=Lease(None), temperature=0, stops=(stop,)),
        Job(prompt=prompt[:5], max_tokens=6, lease=Lease(None), temperature=0),
    )
    assert (short.finish_reason, short.completion_tokens) == ("length", 2)
    assert stopped.finish_reason == "stop" and stopped.text == free.text[: free.text.find(stop)]
    assert long.completion_tokens == 6


def test_a_seed_makes_sampling_repeatable(engine):
    prompt = engine.encode_chat(MESSAGES)

    def sample(seed: int) -> str:
        (job,) = generate(engine, Job(prompt=prompt, max_tokens=8, lease=Lease(None), seed=seed))
        return job.text

    assert sample(7) == sample(7)
    assert len({sample(seed) for seed in range(4)}) > 1


def test_streaming_jobs_receive_exactly_their_text(engine):
    job = Job(prompt=engine.encode_chat(MESSAGES), max_tokens=8, lease=Lease(None), stream=True)
    generate(engine, job)
    pieces = []
    while (item := job.events.get(timeout=1)) is not DONE:
        pieces.append(item)
    assert "".join(pieces) == job.text


# --- refusals --------------------------------------------------------------------


def edit(folder, tmp_path, *, config=None, tensors=None):  # noqa: ANN001, ANN201
    """A copy of adapter ``folder`` with its config and/or tensors edited."""
    copy = tmp_path / f"edited-{len(list(tmp_path.iterdir()))}"
    shutil.copytree(folder, copy)
    if config is not None:
        data = json.loads((copy / "adapter_config.json").read_text())
        config(data)
        (copy / "adapter_config.json").write_text(json.dumps(data))
    if tensors is not None:
        weights = load_file(str(copy / "adapter_model.safetensors"))
        tensors(weights)
        save_file(weights, str(copy / "adapter_model.safetensors"))
    return copy


def _rename_to_lm_head(weights: dict) -> None:
    for key in [k for k in weights if "layers.0.self_attn.q_proj" in k]:
        weights[key.replace("model.layers.0.self_attn.q_proj", "lm_head")] = weights.pop(key)


@pytest.mark.parametrize(
    ("config", "tensors", "message"),
    [
        (lambda c: c.update(use_dora=True), None, "use_dora"),
        (lambda c: c.update(bias="all"), None, "bias"),
        (lambda c: c.update(peft_type="IA3"), None, "not LoRA"),
        (lambda c: c.update(r=2), None, "r=2"),
        (lambda c: c.update(target_modules=["c_attn"]), None, "c_attn"),
        (None, _rename_to_lm_head, "lm_head"),
        (None, lambda w: w.update(extra=torch.zeros(2)), "unsupported tensor"),
        (None, lambda w: w.pop(next(k for k in w if "lora_B" in k)), "missing"),
        (
            None,
            lambda w: w.update({k: torch.zeros(4, 32) for k in w if "q_proj.lora_A" in k}),
            "do not fit",
        ),
    ],
)
def test_adapters_this_model_cannot_host_are_refused(
    engine, loras, tmp_path, config, tensors, message
):
    folder = edit(loras["a"], tmp_path, config=config, tensors=tensors)
    with pytest.raises(IncompatibleAdapterError, match=message):
        engine.host.load("x", folder)
    assert "x" not in engine.host.adapters


def test_a_rank_above_the_limit_is_refused(engine, tiny_base, tmp_path):
    folder = make_lora(tiny_base, tmp_path / "big", rank=32)
    with pytest.raises(IncompatibleAdapterError, match="SERVE_MAX_LORA_RANK"):
        engine.host.load("big", folder)


def test_lora_config_scaling_follows_peft():
    spec = read_lora_config({"peft_type": "LORA", "r": 8, "lora_alpha": 16})
    assert spec.scaling(8) == 2.0
    rs = read_lora_config({"r": 16, "lora_alpha": 8, "use_rslora": True})
    assert rs.scaling(16) == 2.0

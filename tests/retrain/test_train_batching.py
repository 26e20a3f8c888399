"""Padding-free batching is exact: on the tiny model, a batch laid end to end in
one sequence gives each example the log-probabilities it gets alone, and the
trainer's loss, gradients and whole training run equal those of padded batches."""

from __future__ import annotations

import pytest
import torch

from retrain.padding_free import VARLEN_ATTENTION, use_varlen_attention
from retrain.train import TrainConfig, TrainJob, build_sft_trainer

pytestmark = pytest.mark.filterwarnings(
    # transformers 5 renamed gradient checkpointing; PEFT still asks the old name.
    "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"
)

TURNS = [
    "I am still waiting on my card?",
    "What can I do if my card still hasn't arrived after 2 weeks?",
    "I was charged twice for the same coffee this morning and the second payment is pending.",
    "Why is my top-up not showing?",
    "Can I change my PIN at an ATM or do I need the app for that?",
    "My transfer to my landlord was declined.",
]


def rows() -> list[dict]:
    """Eight examples of quite different lengths: 1 to 3 user turns, short and long answers."""
    made = []
    for i in range(8):
        turns = [TURNS[(i + j) % len(TURNS)] for j in range(1 + i % 3)]
        prompt = []
        for turn in turns:
            if prompt:
                prompt.append({"role": "assistant", "content": "Noted. Anything else?"})
            prompt.append({"role": "user", "content": turn})
        answer = f'You wrote: "{turns[-1]}"' if i % 2 else '{"team": "cards"}'
        made.append({"prompt": prompt, "completion": answer, "kind": "sft"})
    return made


def make_job(tiny_model, tmp_path, **config) -> TrainJob:
    defaults = {"epochs": 2, "batch_size": 4, "learning_rate": 5e-3, "seed": 7}
    return TrainJob(
        base_model=tiny_model,
        out_dir=str(tmp_path),
        sft=rows(),
        config=TrainConfig(**{**defaults, **config}),
        run_id="test",
    )


def trainer_for(tiny_model, tmp_path, *, attn="sdpa", **config):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=attn)
    return build_sft_trainer(make_job(tiny_model, tmp_path, **config), model, tokenizer, tmp_path)


def features(trainer) -> list[dict]:
    data = trainer.train_dataset
    return [{"input_ids": data[i]["input_ids"], "labels": data[i]["labels"]} for i in range(4)]


def randomise_lora(model) -> None:
    """LoRA B starts at zero, which would leave A without gradient and the adapter inert."""
    torch.manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)


def token_logprobs(logits, input_ids) -> torch.Tensor:
    """log p(token t | tokens < t) for t >= 1 of one sequence."""
    logprobs = torch.log_softmax(logits[:-1].float(), dim=-1)
    return logprobs.gather(-1, input_ids[1:, None]).squeeze(-1)


def examples_mixed_up(model, examples, **inputs) -> int:
    """How many examples of a one-row batch get other log-probabilities than alone."""
    with torch.no_grad():
        row = model(**inputs).logits[0]
        start, mixed = 0, 0
        for example in examples:
            ids = torch.tensor(example["input_ids"])
            end = start + len(ids)
            alone = token_logprobs(model(input_ids=ids[None]).logits[0], ids)
            mixed += not torch.allclose(token_logprobs(row[start:end], ids), alone, atol=1e-5)
            start = end
    assert start == inputs["input_ids"].numel()
    return mixed


@pytest.mark.parametrize(
    ("attn", "use_cache", "exact"),
    [
        (VARLEN_ATTENTION, False, True),
        (VARLEN_ATTENTION, True, True),
        ("sdpa", False, True),
        ("eager", False, True),
        # transformers derives the block-diagonal mask from the positions only
        # when no KV cache is built: with one, examples silently see each other.
        ("sdpa", True, False),
        ("eager", True, False),
    ],
)
def test_each_example_of_a_padding_free_row_sees_only_itself(
    tiny_model, tmp_path, attn, use_cache, exact
):
    from transformers import AutoModelForCausalLM

    trainer = trainer_for(tiny_model, tmp_path)
    examples = features(trainer)
    batch = trainer.data_collator(examples)
    batch.pop("labels")
    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa").eval()
    if attn == VARLEN_ATTENTION:
        use_varlen_attention(model)
    else:
        model.set_attn_implementation(attn)
    assert model.config._attn_implementation == attn
    mixed = examples_mixed_up(model, examples, **batch, use_cache=use_cache)
    assert mixed == (0 if exact else len(examples) - 1)
    # Negative control: the same tokens as one document (positions 0..N-1) do
    # mix, every example after the first, so the comparison can see it.
    one_document = examples_mixed_up(model, examples, input_ids=batch["input_ids"])
    assert one_document == len(examples) - 1


def test_padding_free_loss_and_gradients_equal_the_padded_batch(tiny_model, tmp_path):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    trainer = trainer_for(tiny_model, tmp_path)
    model = trainer.model
    randomise_lora(model)
    examples = features(trainer)
    padded = DataCollatorForLanguageModeling(pad_token_id=0)(examples)  # pad to longest
    assert padded["attention_mask"].float().mean() < 0.8  # there is padding to skip

    def loss_and_grads(loss):
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        model.zero_grad()
        return loss.detach(), grads

    # The plain way: padded batch, attention mask, the model's own loss (mean over answer tokens).
    want, want_grads = loss_and_grads(model(**padded).loss)
    got, got_grads = loss_and_grads(trainer.compute_loss(model, trainer.data_collator(examples)))
    assert torch.allclose(got, want, rtol=1e-5)
    assert want_grads.keys() == got_grads.keys() and len(want_grads) > 0
    for name, grad in want_grads.items():
        assert grad.abs().sum() > 0, name
        assert torch.allclose(got_grads[name], grad, rtol=1e-4, atol=1e-7), name


def test_trainer_feeds_unpadded_rows(tiny_model, tmp_path):
    trainer = trainer_for(tiny_model, tmp_path)
    assert trainer.model.config._attn_implementation == VARLEN_ATTENTION
    lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    seen = []
    for batch in trainer.get_train_dataloader():
        assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch
        seen.append(batch["input_ids"].numel())
    assert len(seen) == 2 and sum(seen) == sum(lengths)  # every real token, nothing else


def test_padding_free_training_learns_what_padded_training_learns(tiny_model, tmp_path):
    runs = {}
    for padding_free in (True, False):
        trainer = trainer_for(tiny_model, tmp_path / str(padding_free), padding_free=padding_free)
        trainer.train()
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        lora = {n: p.detach() for n, p in trainer.model.named_parameters() if p.requires_grad}
        runs[padding_free] = losses, lora, trainer.state.num_input_tokens_seen
    (free_losses, free_lora, free_tokens), (padded_losses, padded_lora, padded_tokens) = (
        runs[True],
        runs[False],
    )
    assert len(free_losses) == len(padded_losses) == 4
    assert free_losses == pytest.approx(padded_losses, rel=1e-4)
    assert free_lora.keys() == padded_lora.keys()
    for name, weight in padded_lora.items():
        assert torch.allclose(free_lora[name], weight, atol=1e-5), name
    assert free_tokens < padded_tokens  # the same examples, without the padding


def test_other_forwards_fall_back_to_stock_sdpa(tiny_model):
    """Generation (one query token against a cache) and padded batches are untouched."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model, padding_side="left")
    prompts = tokenizer(["My card has not arrived yet.", "Hi"], padding=True, return_tensors="pt")
    outputs = []
    for varlen in (False, True):
        model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
        if varlen:
            use_varlen_attention(model)
        with torch.no_grad():
            logits = model(**prompts).logits
            tokens = model.generate(**prompts, max_new_tokens=6, do_sample=False)
        outputs.append((logits, tokens))
    (logits, tokens), (varlen_logits, varlen_tokens) = outputs
    assert torch.equal(varlen_logits, logits) and torch.equal(varlen_tokens, tokens)

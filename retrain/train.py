"""Train one LoRA adapter from one dataset, with TRL, in a child process.

``train_adapter`` reads top to bottom: load the base model, build the LoRA
config, supervised fine-tuning on (conversation -> corrected answer) with the
loss on the answer only, then optionally DPO on (corrected over original)
pairs, then save the adapter (safetensors) and a record of the run.

The cycle runs this module as ``python -m retrain.train JOB.json`` (:mod:`retrain.jobs`)
so that a crash or an out-of-memory kill cannot take the scheduler down with it.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from feedback import faults
from retrain.jobs import ChildJob, child_main, complete
from retrain.padding_free import PaddingFreeLoss, use_varlen_attention

if TYPE_CHECKING:
    from feedback.settings import Settings

log = logging.getLogger("retrain.train")


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (saved with the adapter)."""

    lora_rank: int = 8
    lora_alpha: int = 16
    lora_targets: str = "all-linear"
    learning_rate: float = 1e-3
    epochs: float = 5  # the most passes over the examples ...
    max_examples: int = 800  # ... no more than it takes to show this many (0: no cap) ...
    max_answer_tokens: int = 22_000  # ... nor this many answer tokens (0: no cap)
    batch_size: int = 8
    max_length: int = 1024
    seed: int = 1234
    dpo: bool = False
    dpo_beta: float = 0.1
    correction_repeats: int = 1  # > 1 weights corrections above thumbs-up positives
    padding_free: bool = True  # each batch as one unpadded sequence (see build_sft_trainer)

    def epochs_for(self, examples: int, answer_tokens: int = 0) -> float:
        """Passes over ``examples`` rows whose answers hold ``answer_tokens`` tokens in all:
        ``epochs`` for a small set, fewer once they would show more than
        ``max_examples`` rows or ``max_answer_tokens`` answer tokens, never less than one.

        LoRA needs several passes over a few dozen corrections to learn them, but
        every answer token trained on also pulls the model away from what it knew.
        In bench/quality.py the general sanity slice held (within 1 point) after
        22,000 answer tokens of house-style corrections (100 corrections, 5 epochs;
        200 corrections, 2.56 epochs), and fell 5 points after 35,000 (200, 4 epochs),
        while extraction's short JSON answers, 17,000 tokens in 4 epochs of 200,
        left it 5 points above the base model and reached 95.5% field accuracy
        under its schema (2.56 epochs: 93.0%).
        """
        caps = [self.epochs]
        if self.max_examples > 0 and examples > 0:
            caps.append(self.max_examples / examples)
        if self.max_answer_tokens > 0 and answer_tokens > 0:
            caps.append(self.max_answer_tokens / answer_tokens)
        return max(min(self.epochs, 1.0), min(caps))

    @classmethod
    def from_settings(cls, settings: Settings) -> TrainConfig:
        return cls(
            lora_rank=settings.lora_rank,
            lora_alpha=settings.lora_alpha,
            lora_targets=settings.lora_targets,
            learning_rate=settings.learning_rate,
            epochs=settings.epochs,
            max_examples=settings.train_max_examples,
            max_answer_tokens=settings.train_max_answer_tokens,
            batch_size=settings.batch_size,
            max_length=settings.max_example_tokens,
            seed=settings.seed,
            dpo=settings.train_dpo,
            # Weighting only matters when thumbs-up positives share the set.
            correction_repeats=(
                max(1, round(1 / settings.positive_weight)) if settings.include_positives else 1
            ),
        )


@dataclass
class TrainJob(ChildJob):
    """Everything the child process needs; travels as JSON. The adapter goes into
    ``out_dir/adapter``, the run record to ``out_path`` (``out_dir/train_result.json``
    unless given)."""

    module: ClassVar[str] = "retrain.train"
    what: ClassVar[str] = "training"

    base_model: str
    out_dir: str
    sft: list[dict] = field(default_factory=list)  # {"prompt": [...], "completion": str, "kind"}
    preferences: list[dict] = field(default_factory=list)  # {"prompt", "chosen", "rejected"}
    config: TrainConfig = field(default_factory=TrainConfig)
    run_id: str = "-"
    out_path: str = ""

    def __post_init__(self) -> None:
        self.out_path = self.out_path or str(Path(self.out_dir) / "train_result.json")

    @property
    def adapter_dir(self) -> Path:
        return Path(self.out_dir) / "adapter"


def lora_config(config: TrainConfig) -> Any:
    from peft import LoraConfig

    targets = config.lora_targets
    return LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=0.0,
        target_modules=targets if targets == "all-linear" else targets.split(","),
        task_type="CAUSAL_LM",
    )


def _sft_rows(job: TrainJob) -> list[dict]:
    rows = []
    for example in job.sft:
        repeats = job.config.correction_repeats if example.get("kind") == "sft" else 1
        row = {
            "prompt": example["prompt"],
            "completion": [{"role": "assistant", "content": example["completion"]}],
        }
        rows.extend([row] * repeats)
    return rows


def _common_args(config: TrainConfig, out_dir: Path, examples: int, answer_tokens: int = 0) -> dict:
    import torch

    return {
        "output_dir": str(out_dir / "trainer"),
        "num_train_epochs": config.epochs_for(examples, answer_tokens),
        "per_device_train_batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "lr_scheduler_type": "linear",
        "warmup_steps": 0,
        "seed": config.seed,
        "data_seed": config.seed,
        "bf16": False,  # CPU-safe; CUDA runs in float32 too, for reproducibility
        "fp16": False,
        "activation_checkpointing": False,
        "use_cpu": not torch.cuda.is_available(),
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "dataloader_num_workers": 0,
        "include_num_input_tokens_seen": True,
    }


class _LossLogger:
    """Per-step loss in the log, with the run id (a TrainerCallback)."""

    def __init__(self, run_id: str, stage: str) -> None:
        from transformers import TrainerCallback

        outer = self

        class Callback(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
                if logs and "loss" in logs:
                    log.info(
                        "run %s %s step %d/%d loss %.4f",
                        outer.run_id,
                        outer.stage,
                        state.global_step,
                        state.max_steps,
                        logs["loss"],
                    )

            def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
                faults.checkpoint("train.step", parent=True)

        self.run_id, self.stage, self.callback = run_id, stage, Callback()


def build_sft_trainer(job: TrainJob, model: Any, tokenizer: Any, out_dir: Path) -> Any:
    """TRL's SFTTrainer on prompt/completion rows: the loss covers the answer only.

    With ``config.padding_free`` (the default) the examples of a batch are laid
    end to end in one sequence instead of being padded to the longest: no
    compute is spent on pad tokens (:mod:`retrain.padding_free`). The batches,
    the loss and the gradients are those of padded training, so what is learned
    does not change (tests/retrain/test_train_batching.py); bench/train.py
    measures the speed.
    """
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    config, rows = job.config, _sft_rows(job)
    common, answer_tokens = sft_common_args(job, tokenizer, out_dir, rows)
    args = SFTConfig(**common, max_length=config.max_length)
    trainer_class, extra = SFTTrainer, {}
    if config.padding_free:
        use_varlen_attention(model)
        trainer_class = type("PaddingFreeSFTTrainer", (PaddingFreeLoss, SFTTrainer), {})
        # Not `args.padding_free`: TRL then refuses `max_length` without packing,
        # and packing would regroup the examples into other batches.
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        extra["data_collator"] = DataCollatorForLanguageModeling(
            pad_token_id=pad_id, padding_free=True
        )
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora_config(config),
        callbacks=[_LossLogger(job.run_id, "sft").callback],
        **extra,
    )
    trainer.answer_tokens_per_epoch = answer_tokens  # for the run record
    return trainer


def sft_common_args(
    job: TrainJob, tokenizer: Any, out_dir: Path, rows: list[dict] | None = None
) -> tuple[dict, int]:
    """The SFT stage's training arguments, its epochs capped by the number of rows and
    their answer tokens; and those answer tokens (one epoch's worth). ``rows``: the
    job's SFT rows when the caller has built them already."""
    rows = _sft_rows(job) if rows is None else rows
    answers = [row["completion"][0]["content"] for row in rows]
    tokens = sum(len(ids) for ids in tokenizer(answers, add_special_tokens=False)["input_ids"])
    return _common_args(job.config, out_dir, len(rows), tokens), tokens


def _train_sft(job: TrainJob, model: Any, tokenizer: Any, out_dir: Path) -> tuple[Any, dict]:
    trainer = build_sft_trainer(job, model, tokenizer, out_dir)
    result = trainer.train()
    record = _stage_record(trainer, result)
    record["answer_tokens_per_epoch"] = trainer.answer_tokens_per_epoch
    return trainer.model, record


def _train_dpo(job: TrainJob, model: Any, tokenizer: Any, out_dir: Path) -> tuple[Any, dict]:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    config = job.config
    rows = [
        {
            "prompt": p["prompt"],
            "chosen": [{"role": "assistant", "content": p["chosen"]}],
            "rejected": [{"role": "assistant", "content": p["rejected"]}],
        }
        for p in job.preferences
    ]
    args = DPOConfig(
        **_common_args(config, out_dir, len(rows)),
        beta=config.dpo_beta,
        max_length=config.max_length,
    )
    # The model already carries the SFT adapter: DPO keeps training it, with the
    # adapter-disabled base as the reference model.
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[_LossLogger(job.run_id, "dpo").callback],
    )
    result = trainer.train()
    return trainer.model, _stage_record(trainer, result)


def _stage_record(trainer: Any, result: Any) -> dict:
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "epochs": trainer.args.num_train_epochs,
        "steps": trainer.state.global_step,
        "train_loss": result.training_loss,
        "final_loss": losses[-1] if losses else math.nan,
        "losses": losses,
        "tokens_seen": int(trainer.state.num_input_tokens_seen or 0),
        "runtime_s": result.metrics.get("train_runtime"),
    }


def train_adapter(job: TrainJob) -> dict:
    """Train in this process: the adapter into ``job.adapter_dir``, the run record
    (returned too) to ``job.out_path``."""
    return complete(job, _train)


def _train(job: TrainJob) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    if not job.sft:
        raise ValueError("no supervised examples to train on")
    started = time.monotonic()
    set_seed(job.config.seed)
    out_dir = Path(job.out_dir)
    tokenizer = AutoTokenizer.from_pretrained(job.base_model)
    model = AutoModelForCausalLM.from_pretrained(job.base_model, dtype=torch.float32)
    model, sft = _train_sft(job, model, tokenizer, out_dir)
    record = {"sft": sft}
    if job.config.dpo and job.preferences:
        model, record["dpo"] = _train_dpo(job, model, tokenizer, out_dir)
    model.save_pretrained(job.adapter_dir)
    faults.checkpoint("train.saved", parent=True)
    record.update(
        config=asdict(job.config),
        base_model=job.base_model,
        examples={"sft": len(job.sft), "preferences": len(job.preferences)},
        tokens_seen=sum(
            stage["tokens_seen"]
            for stage in record.values()
            if isinstance(stage, dict) and "tokens_seen" in stage
        ),
        duration_s=round(time.monotonic() - started, 2),
        device="cuda" if torch.cuda.is_available() else "cpu",
        adapter_dir=str(job.adapter_dir),
    )
    log.info(
        "run %s trained in %.1f s, final loss %.4f",
        job.run_id,
        record["duration_s"],
        sft["final_loss"],
    )
    return record


def main(argv: list[str] | None = None) -> int:
    return child_main(TrainJob, _train, argv)


if __name__ == "__main__":
    sys.exit(main())

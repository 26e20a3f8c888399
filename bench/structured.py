"""Structured output benchmark: what decoding under a JSON schema costs, and what it buys.

On SmolLM2-135M-Instruct (or ``--base-model``), the extraction scenario's held-out
messages are answered greedily by the serving engine (``serve.engine.ModelEngine``,
batched as the server batches), once freely and once under the scenario's schema
(``response_format``, ``feedback.structured``). Both sides run every round, in
alternating order; the report gives the best round's generated tokens per second
for each side and their ratio (the baseline is free decoding, measured in the same
run), the fastest round's seconds for all answers, the schema's compile time, and
both sides' format validity and field accuracy (the base model, no adapter: its free
answers are rarely JSON at all). Answers under the schema are shorter (they end
with the record), so the same prompt prefill weighs more per generated token::

    .venv/bin/python bench/structured.py [--messages 32] [--rounds 3] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--base-model", help="HF folder or GGUF (default: SmolLM2-135M)")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "tuneback-data")
    args = parser.parse_args(argv)

    import torch

    from retrain.base_model import resolve_base_model
    from retrain.scenarios import get_scenario, messages
    from serve.engine import ModelEngine
    from serve.worker import Job

    if args.threads:
        torch.set_num_threads(args.threads)
    scenario = get_scenario("extraction")
    engine = ModelEngine(resolve_base_model(args.base_model, args.data_dir), device="cpu")
    heldout = list(messages("test")[: args.messages])
    prompts = [engine.encode_chat(scenario.prompt(m)) for m in heldout]
    references = [scenario.reference(m) for m in heldout]

    started = time.perf_counter()
    grammar = engine.grammar(scenario.schema)
    compile_s = time.perf_counter() - started

    class Lease:
        adapter = version = None

        def release(self) -> None:
            pass

    def answer(constrained: bool) -> tuple[list[str], float, int]:
        jobs = [
            Job(prompt=p, max_tokens=scenario.max_tokens, lease=Lease(), temperature=0,
                grammar=grammar if constrained else None)
            for p in prompts
        ]  # fmt: skip
        started = time.perf_counter()
        for i in range(0, len(jobs), args.batch):
            engine.generate(jobs[i : i + args.batch])
        seconds = time.perf_counter() - started
        return [j.text for j in jobs], seconds, sum(j.completion_tokens for j in jobs)

    best = {"free": 0.0, "schema": 0.0}
    fastest = {"free": float("inf"), "schema": float("inf")}
    texts, counts = {}, {}
    for round_ in range(args.rounds):
        order = ["free", "schema"] if round_ % 2 == 0 else ["schema", "free"]
        for side in order:
            answers, seconds, tokens = answer(side == "schema")
            best[side] = max(best[side], tokens / seconds)
            fastest[side] = min(fastest[side], seconds)
            texts[side], counts[side] = answers, tokens
            print(f"round {round_ + 1} {side}: {tokens} tokens in {seconds:.1f} s", flush=True)
    report = {
        "messages": len(heldout),
        "threads": torch.get_num_threads(),
        "compile_s": round(compile_s, 3),
        "answers_s": {side: round(seconds, 2) for side, seconds in fastest.items()},
        "tokens": counts,
        "tokens_per_s": {side: round(rate, 1) for side, rate in best.items()},
        "ratio_schema_to_free": round(best["schema"] / best["free"], 3),
        "quality": {
            side: {
                k: round(v, 3)
                for k, v in scenario.score(answers, references).items()
                if k in ("format_valid", "field_accuracy")
            }
            for side, answers in texts.items()
        },
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

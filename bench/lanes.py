"""Lanes benchmark: mixed-adapter batches against one adapter per batch, on SmolLM2-135M.

Four lanes, each with its own LoRA adapter (rank 8, all linear layers, as
``tuneback retrain`` trains them, with small random weights; registered with the
real registry so they carry checksums and a manifest, and loaded as the swapper
loads them: verify the folder, read and check the weights, attach). Eight client
threads, two per lane, each send ``--requests`` greedy chat requests one after
another (real BANKING77 customer messages, a different one each) through the
serving path: :class:`serve.worker.JobQueue`, :class:`serve.worker.ModelWorker`
and :meth:`serve.engine.ModelEngine.generate`. The same requests run twice:

* mixed: ``JobQueue(mixed=True)`` (``TUNEBACK_SERVE_MIXED_BATCHES=true``), one
  batch holds rows of every lane, each row decoded with its own adapter;
* baseline: ``JobQueue(mixed=False)``, one adapter per batch, so lanes take
  turns (what serving did before lanes).

In both, the first lane's adapter is merged into the weights (the swapper merges
one adapter); batches of that lane alone take the merged fast path. Each round
runs both sides in alternating order; the report gives each side's fastest
round (requests/s and generated tokens/s of wall time) and its best rate of
generated tokens per second of this process's CPU time (what the side itself
costs, however busy a shared machine is), the ratios (target: mixed at least
2x), and whether both sides gave every request the same answer (they should: a
row's greedy tokens do not depend on its batch).

Also measured: memory per added lane (the adapter's tensors, and the process's
RSS growth per lane loaded) and the time to bring an unloaded lane back (verify
its folder, read and check the weights, attach; median of ``--reloads``). Run
it from the repository root; on a shared machine pin the threads::

    OMP_NUM_THREADS=1 .venv/bin/python bench/lanes.py [--requests 3] [--max-tokens 24]
                                                      [--rounds 2] [--max-batch 8] [--quick]

Results go to ``bench/results/lanes.json`` (``lanes-quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BANKING77 = ROOT.parent / "shared" / "data" / "banking77" / "test.csv"

from bench.swap import make_adapters  # noqa: E402 - random adapters like trained ones


class Lease:
    """A lane's adapter for the worker; nothing to release (no swapper here)."""

    def __init__(self, adapter: str | None) -> None:
        self.adapter = self.version = adapter

    def release(self) -> None:
        pass


def customer_messages(count: int) -> list[str]:
    """``count`` real customer messages: BANKING77's test split, or the bundled sample."""
    if BANKING77.is_file():
        with BANKING77.open(newline="", encoding="utf-8") as f:
            texts = [" ".join(row["text"].split()) for row in csv.DictReader(f)]
    else:
        from retrain.scenarios import messages

        texts = [m.text for m in messages("test")]
    step = max(1, len(texts) // count)  # spread over the intents (the file is sorted by them)
    return texts[::step][:count]


def register(base: Path, folders: list[Path], work: Path) -> list[Any]:
    """Store the adapters as registry versions (checksums, manifest); their rows."""
    from feedback import db
    from feedback.adapters.registry import Registry

    url = f"sqlite:///{work / 'bench.db'}"
    db.upgrade(url)
    sql = db.make_engine(url)
    registry = Registry(work / "adapters", sql)
    rows = [registry.add(folder, base_model=str(base)) for folder in folders]
    sql.dispose()
    return rows


def bring_in(engine: Any, row: Any, base: Path, name: str) -> float:
    """Verify, read and attach one adapter as the swapper does; seconds taken."""
    from feedback.adapters.files import verify_adapter_dir

    started = time.perf_counter()
    verify_adapter_dir(
        row.path,
        expected_checksum=row.checksum,
        expected_base_model=str(base),
        expected_version=row.version,
    )
    engine.host.add(engine.host.load(name, Path(row.path)))
    return time.perf_counter() - started


def rss() -> int:
    import psutil

    gc.collect()
    return psutil.Process().memory_info().rss


def serve(engine: Any, plan: list[tuple[str, list[list[int]]]], args, mixed: bool) -> dict:  # noqa: ANN001
    """Every client sends its prompts one after another; all clients at once."""
    from serve.worker import Job, JobQueue, ModelWorker

    jobs = JobQueue(4 * len(plan), context_length=engine.context_length, mixed=mixed)
    sizes: list[int] = []

    def generate(batch: list[Job]) -> None:
        sizes.append(len(batch))
        engine.generate(batch)

    worker = ModelWorker(jobs, generate, max_batch=args.max_batch)
    answers: list[list[Job]] = [[] for _ in plan]
    start = threading.Barrier(len(plan) + 1)

    def client(index: int, lane: str, prompts: list[list[int]]) -> None:
        start.wait()
        for prompt in prompts:
            job = Job(prompt=prompt, max_tokens=args.max_tokens, lease=Lease(lane), temperature=0)
            jobs.put(job)
            job.wait(3600)
            answers[index].append(job)

    threads = [
        threading.Thread(target=client, args=(i, lane, prompts))
        for i, (lane, prompts) in enumerate(plan)
    ]
    worker.start()
    for thread in threads:
        thread.start()
    start.wait()
    started, cpu = time.perf_counter(), time.process_time()
    for thread in threads:
        thread.join()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    worker.stop()
    done = [job for client_jobs in answers for job in client_jobs]
    failed = [job for job in done if job.error is not None]
    if failed:
        raise RuntimeError(f"{len(failed)} requests failed: {failed[0].error!r}")
    tokens = sum(job.completion_tokens for job in done)
    return {
        "seconds": round(seconds, 2),
        "requests": len(done),
        "tokens": tokens,
        "requests_per_s": round(len(done) / seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1),
        "cpu_seconds": round(cpu, 2),
        "tokens_per_cpu_s": round(tokens / cpu, 1),
        "batches": len(sizes),
        "mean_batch": round(statistics.fmean(sizes), 2),
        "texts": [job.text for job in done],
    }


def throughput(engine: Any, lanes: list[str], args) -> dict[str, Any]:  # noqa: ANN001
    """Both sides, ``args.rounds`` rounds in alternating order; each side's best round."""
    texts = customer_messages(args.clients * args.requests)
    prompts = [engine.encode_chat([{"role": "user", "content": t}]) for t in texts]
    plan = [
        (lanes[c % len(lanes)], prompts[c * args.requests : (c + 1) * args.requests])
        for c in range(args.clients)
    ]
    warm = [(lane, prompts[:1]) for lane in lanes]  # first batches allocate caches
    serve(engine, warm, argparse.Namespace(**{**vars(args), "max_tokens": 4}), True)
    runs: dict[str, list[dict]] = {"mixed": [], "one_adapter": []}
    for round_ in range(args.rounds):
        order = list(runs) if round_ % 2 == 0 else list(reversed(runs))
        for side in order:
            result = serve(engine, plan, args, mixed=side == "mixed")
            print(
                f"round {round_ + 1} {side:<11}: {result['requests']} requests, "
                f"{result['tokens']} tokens in {result['seconds']:.1f} s, "
                f"{result['cpu_seconds']:.1f} CPU s (mean batch {result['mean_batch']})",
                flush=True,
            )
            runs[side].append(result)
    # Each side at its quietest moment (fastest round of wall time), and its best
    # rate per second of this process's CPU time: what the side itself costs,
    # whatever else runs on a shared machine.
    best = {}
    for side, results in runs.items():
        fastest = min(results, key=lambda r: r["seconds"])
        best[side] = {**fastest, "tokens_per_cpu_s": max(r["tokens_per_cpu_s"] for r in results)}
    pairs = zip(best["mixed"].pop("texts"), best["one_adapter"].pop("texts"), strict=True)
    same = sum(a == b for a, b in pairs)
    return {**best, "same_answers": f"{same}/{len(texts)}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3, help="per client")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--lanes", type=int, default=4)
    parser.add_argument("--max-batch", type=int, default=8, help="TUNEBACK_SERVE_MAX_BATCH")
    parser.add_argument("--reloads", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="1 request, 12 tokens, 1 round")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--base-model", help="HF folder or GGUF (default: SmolLM2-135M)")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "tuneback-data")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.max_tokens, args.rounds, args.reloads = 1, 12, 1, 3
    args.json = args.json or ROOT / "bench" / "results" / (
        "lanes-quick.json" if args.quick else "lanes.json"
    )
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)  # PEFT on transformers 5
    import torch
    from transformers.utils import logging as hf_logging

    from retrain.base_model import resolve_base_model
    from serve.engine import ModelEngine

    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    chosen = args.base_model or os.environ.get("TUNEBACK_BASE_MODEL")
    base = resolve_base_model(chosen, args.data_dir)
    with tempfile.TemporaryDirectory(prefix="tuneback-lanes-") as tmp:
        work = Path(tmp)
        rows = register(base, make_adapters(base, work / "peft", args.lanes), work)
        engine = ModelEngine(base, device="cpu", max_rank=64, merge=True)
        lanes = [f"lane-{i}" for i in range(args.lanes)]
        before = rss()
        pairs = zip(rows, lanes, strict=True)
        first_loads = [bring_in(engine, row, base, lane) for row, lane in pairs]
        grown = rss() - before
        engine.host.merge(lanes[0])
        results = {"throughput": throughput(engine, lanes, args)}
        reloads = []
        for _ in range(args.reloads):  # the last lane unloaded, then brought back
            engine.host.remove(lanes[-1])
            reloads.append(bring_in(engine, rows[-1], base, lanes[-1]))
    mib = 2**20
    results["memory_per_lane_mib"] = {
        "adapter_tensors": round(engine.host.adapters[lanes[-1]].nbytes / mib, 2),
        "rss_growth": round(grown / args.lanes / mib, 2),
    }
    results["bring_back_ms"] = {
        "p50": round(statistics.median(reloads) * 1000, 1),
        "max": round(max(reloads) * 1000, 1),
        "first_loads_p50": round(statistics.median(first_loads) * 1000, 1),
    }
    results["setup"] = {
        "base_model": str(base),
        "threads": torch.get_num_threads(),
        "load_avg": round(os.getloadavg()[0], 2),
        **{
            k: v
            for k, v in vars(args).items()
            if k not in ("json", "data_dir", "base_model", "threads")
        },
    }
    mixed, single = results["throughput"]["mixed"], results["throughput"]["one_adapter"]
    results["ratio_mixed_to_one_adapter"] = {
        "requests_per_s": round(mixed["requests_per_s"] / single["requests_per_s"], 2),
        "tokens_per_s": round(mixed["tokens_per_s"] / single["tokens_per_s"], 2),
        "tokens_per_cpu_s": round(mixed["tokens_per_cpu_s"] / single["tokens_per_cpu_s"], 2),
    }
    report(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.json.relative_to(ROOT) if args.json.is_relative_to(ROOT) else args.json}")
    return 0


def report(results: dict) -> None:
    setup, tp = results["setup"], results["throughput"]
    print(
        f"\nbase model: {setup['base_model']}  (torch threads {setup['threads']}, "
        f"load average {setup['load_avg']:.1f})"
    )
    print(
        f"{setup['clients']} clients over {setup['lanes']} lanes, {setup['requests']} greedy "
        f"requests each, at most {setup['max_tokens']} tokens, batches of at most "
        f"{setup['max_batch']}"
    )
    print("\n                     requests/s   tokens/s   seconds   mean batch   tokens/CPU-s")
    for side, label in (("mixed", "mixed lanes"), ("one_adapter", "one adapter/batch")):
        r = tp[side]
        print(
            f"  {label:<18}{r['requests_per_s']:>11.2f}{r['tokens_per_s']:>11.1f}"
            f"{r['seconds']:>10.1f}{r['mean_batch']:>13.2f}{r['tokens_per_cpu_s']:>15.1f}"
        )
    ratio = results["ratio_mixed_to_one_adapter"]
    print(
        f"\nmixed / one adapter per batch: {ratio['requests_per_s']:.2f}x requests/s, "
        f"{ratio['tokens_per_s']:.2f}x tokens/s (target >= 2x), "
        f"{ratio['tokens_per_cpu_s']:.2f}x tokens per CPU second; "
        f"same answers on both sides: {tp['same_answers']}"
    )
    memory, back = results["memory_per_lane_mib"], results["bring_back_ms"]
    print(
        f"memory per added lane: {memory['adapter_tensors']:.1f} MiB of adapter tensors, "
        f"{memory['rss_growth']:.1f} MiB RSS growth"
    )
    print(
        f"bring an unloaded lane back (verify + load + attach): p50 {back['p50']:.0f} ms, "
        f"max {back['max']:.0f} ms (first loads p50 {back['first_loads_p50']:.0f} ms)"
    )


if __name__ == "__main__":
    sys.exit(main())

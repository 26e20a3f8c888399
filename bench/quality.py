"""Quality benchmark: does the model get better from agents' corrections, and how many
does it need?

For each built-in scenario (``retrain.scenarios``: structured extraction, house
style), a learning curve: LoRA adapters trained on the first 25, 50, 100 and 200
corrections of real customer messages (BANKING77's training split), each scored
against the base model on held-out messages that are never trained on (BANKING77's
test split):

* extraction: format validity (a JSON object with exactly the right fields and
  kinds), field accuracy (share of fields exactly right; an invalid answer has all
  fields wrong), exact records, and each field's accuracy;
* style: rule adherence (every house rule holds) and each rule's rate;
* a scenario with a JSON schema (extraction) is scored twice: answers decoded
  freely, and decoded under the schema (``schema_*`` metrics), as the server
  answers a client that sends it as ``response_format`` (``feedback.structured``);
* both: the general sanity slice (``retrain.scenarios.sanity``: 300 multiple-choice
  questions outside the scenario, answered by likelihood), which must not drop by
  more than 2 points.

Training is the retrain cycle's own: ``retrain.train`` in a child process, with
``TrainConfig.from_settings`` (the defaults, or ``TUNEBACK_*`` overrides), on
prompt/correction pairs shaped as the cycle shapes them. Answers are greedy, from
``retrain.evaluate.Scorer``, the evaluator the gate uses.

Writes ``bench/results/quality.json`` after every model scored (a run cut short
keeps what it measured) and ``bench/results/quality.png`` (needs the ``bench``
extra: matplotlib). On 2 shared CPU cores the defaults take one to two hours::

    .venv/bin/python bench/quality.py
    .venv/bin/python bench/quality.py --scenarios extraction --sizes 25,100 --heldout 40
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from feedback.settings import Settings  # noqa: E402
from retrain.base_model import resolve_base_model  # noqa: E402
from retrain.jobs import JobFailedError, launch  # noqa: E402
from retrain.scenarios import Scenario, get_scenario, messages, sanity  # noqa: E402
from retrain.train import TrainConfig, TrainJob  # noqa: E402

TARGETS = {
    "extraction_field_accuracy_at_200": 0.95,
    "errors_removed_at_100": 0.5,
    "sanity_max_drop_points": 2.0,
}


MAX_MISSES = 20  # wrong answers kept per model, to see what the errors are
POSITIVE_TOKENS = 160  # room for a whole prose answer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default="extraction,style")
    parser.add_argument("--sizes", default="25,50,100,200", help="corrections per adapter")
    parser.add_argument("--heldout", type=int, default=100, help="held-out messages (<= 200)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--base-model", help="HF folder or GGUF (default: SmolLM2-135M)")
    parser.add_argument(
        "--data-dir", type=Path, default=ROOT / "tuneback-data", help="converted base model cache"
    )
    parser.add_argument(
        "--work", type=Path, help="adapters folder (default: DATA_DIR/quality-bench)"
    )
    parser.add_argument("--batch", type=int, default=16, help="generation batch size")
    parser.add_argument(
        "--positives",
        type=int,
        default=0,
        help="add this many thumbs-up answers from traffic outside the scenario (the base "
        "model's own answers, no system prompt), as the cycle does with "
        "TUNEBACK_INCLUDE_POSITIVES; weighted by TUNEBACK_POSITIVE_WEIGHT",
    )
    parser.add_argument(
        "--threads", type=int, help="torch threads, here and in the training children"
    )
    parser.add_argument(
        "--resume", action="store_true", help="keep what OUT/quality.json already measured"
    )
    parser.add_argument(
        "--plot-only", action="store_true", help="redraw OUT/quality.png from OUT/quality.json"
    )
    args = parser.parse_args(argv)
    args.scenarios = [get_scenario(name).name for name in args.scenarios.split(",")]
    args.sizes = sorted(int(size) for size in args.sizes.split(","))
    if not 1 <= args.heldout <= len(messages("test")):
        parser.error(f"--heldout must be between 1 and {len(messages('test'))}")
    if args.sizes[-1] + args.positives > len(messages("train")):
        parser.error(f"sizes plus --positives must be at most {len(messages('train'))}")
    return args


def positives(count: int, base: Path, work: Path, batch: int) -> list[dict]:
    """Thumbs-up answers from the rest of the day's traffic: the base model's own answers to
    the last ``count`` training-split messages, asked as plain chats (no scenario prompt).

    Only answers that end (a full stop, question or exclamation mark) are kept, as a
    customer would not upvote one cut off mid-sentence. Cached in WORK/positives.
    """
    path = work / "positives" / f"{base.name}-{count}-answers.json"  # per base model
    prompts = [[{"role": "user", "content": m.text}] for m in messages("train")[-count:]]
    label = f"answering {count} general chats with the base model (thumbs-up positives)"
    answers = base_answers(path, prompts, POSITIVE_TOKENS, base, batch, label)
    return [
        {"prompt": prompt, "completion": answer, "kind": "positive"}
        for prompt, answer in zip(prompts, (a.strip() for a in answers), strict=True)
        if answer.endswith((".", "?", "!"))
    ]


def base_answers(
    path: Path, prompts: list[list[dict]], tokens: int, base: Path, batch: int, label: str
) -> list[str]:
    """The base model's greedy answers to ``prompts``, cached in ``path``."""
    if path.exists():
        return json.loads(path.read_text())
    from retrain.evaluate import Scorer

    print(label, flush=True)
    answers = Scorer(str(base), {}).generate(prompts, tokens, batch)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(answers, indent=1, ensure_ascii=False))
    return answers


def served(scenario: Scenario, count: int, base: Path, work: Path, batch: int) -> list[str | None]:
    """What the base model served to the first ``count`` training messages, for scenarios
    whose corrections edit the served answer (style); None each for the others.
    Cached in WORK/served."""
    if not scenario.edits_served:
        return [None] * count
    path = work / "served" / f"{base.name}-{scenario.name}-{count}.json"
    prompts = [scenario.prompt(m) for m in messages("train")[:count]]
    label = f"[{scenario.name}] serving {count} training messages with the base model"
    return base_answers(path, prompts, scenario.max_tokens, base, batch, label)


def train(
    scenario: Scenario,
    size: int,
    base: Path,
    work: Path,
    config: TrainConfig,
    extra: list[dict],
    answers: list[str | None],
) -> dict:
    """One adapter on the first ``size`` corrections of the served ``answers`` (and
    ``extra`` positives), by the cycle's training child."""
    out = work / scenario.name / f"n{size:03d}"
    out.mkdir(parents=True, exist_ok=True)
    rows = [
        {"prompt": scenario.prompt(m), "completion": scenario.reference(m, a), "kind": "sft"}
        for m, a in zip(messages("train")[:size], answers, strict=False)
    ] + extra
    job = TrainJob(str(base), str(out), sft=rows, config=config, run_id=f"{scenario.name}-{size}")
    try:
        record = launch(job, out / "train_job.json")
    except JobFailedError as error:
        raise SystemExit(
            f"training {scenario.name} on {size} corrections failed: {error}"
        ) from None
    return {"adapter": str(out / "adapter"), "train_s": record["duration_s"], "record": record}


def score(scorer, name: str, scenario: Scenario, heldout: list, batch: int) -> dict:  # noqa: ANN001
    """The scenario's metrics and the sanity slice for one model (``base`` or an adapter)."""
    started = time.monotonic()
    with scorer.use(name):
        prompts = [scenario.prompt(m) for m in heldout]
        answers = scorer.generate(prompts, scenario.max_tokens, batch)
        references = [scenario.reference(m, a) for m, a in zip(heldout, answers, strict=True)]
        metrics = scenario.score(answers, references)
        samples = zip(heldout[:3], answers, strict=False)
        out = {"samples": [{"message": m.text, "answer": a} for m, a in samples]}
        out["misses"] = misses(scenario, heldout, answers, references)
        if scenario.schema is not None:
            # As served to a client that sends the schema as response_format.
            answers = scorer.generate(prompts, scenario.max_tokens, batch, schema=scenario.schema)
            for key, value in scenario.score(answers, references).items():
                metrics[f"schema_{key}"] = value
            out["schema_misses"] = misses(scenario, heldout, answers, references)
        metrics.update(sanity.score(scorer.answer_losses, sanity.questions()))
    metrics["eval_s"] = round(time.monotonic() - started, 1)
    return {"metrics": metrics, **out}


def misses(scenario: Scenario, heldout: list, answers: list[str], references: list[str]) -> list:
    """The first wrong answers, to see what the errors are."""
    wrong = [
        {"message": m.text, "answer": a, "reference": r}
        for m, a, r in zip(heldout, answers, references, strict=True)
        if not scenario.passes(a, r)
    ]
    return wrong[:MAX_MISSES]


def run_scenario(args: argparse.Namespace, name: str, base: Path, results: dict) -> None:
    from retrain.evaluate import Scorer

    scenario = get_scenario(name)
    heldout = list(messages("test")[: args.heldout])
    config = TrainConfig.from_settings(Settings(include_positives=args.positives > 0))
    extra = positives(args.positives, base, args.work, args.batch) if args.positives else []
    entry = results["scenarios"].setdefault(name, {"headline": scenario.headline, "adapters": {}})
    entry.setdefault("positives", len(extra))
    entry.setdefault("train_config", asdict(config))
    entry.setdefault("heldout", len(heldout))
    if args.command not in entry.setdefault("commands", []):
        entry["commands"].append(args.command)
    if "base" not in entry:
        print(f"[{name}] scoring the base model on {len(heldout)} held-out messages", flush=True)
        entry["base"] = score(Scorer(str(base), {}), "base", scenario, heldout, args.batch)
        save(args, results)
    if (entry["heldout"], entry["positives"]) != (len(heldout), len(extra)):
        raise SystemExit(f"{name}: --resume with another --heldout or --positives than saved")
    answers = served(scenario, args.sizes[-1], base, args.work, args.batch)
    for size in args.sizes:
        if str(size) in entry["adapters"]:
            continue  # measured by an earlier run (--resume)
        print(f"[{name}] training on {size} corrections", flush=True)
        trained = train(scenario, size, base, args.work, config, extra, answers)
        scorer = Scorer(str(base), {"adapter": trained["adapter"]})
        print(f"[{name}] scoring the adapter trained on {size}", flush=True)
        scored = score(scorer, "adapter", scenario, heldout, args.batch)
        entry["adapters"][str(size)] = {
            **scored,
            "train_s": trained["train_s"],
            "final_loss": trained["record"]["sft"]["final_loss"],
        }
        line = ", ".join(f"{k} {v:.3f}" for k, v in scored["metrics"].items() if k != "eval_s")
        print(f"[{name}] n={size}: {line}", flush=True)
        save(args, results)


def summarise(results: dict) -> None:
    """Check the issue's targets against what has been measured so far."""
    checks = {}
    for name, entry in results["scenarios"].items():
        head, base = entry["headline"], entry["base"]["metrics"]
        for size, adapter in entry["adapters"].items():
            got = adapter["metrics"]
            drop = 100 * (base["sanity_accuracy"] - got["sanity_accuracy"])
            errors = 1 - base[head]
            removed = (got[head] - base[head]) / errors if errors > 0 else None
            adapter["errors_removed"] = removed
            adapter["sanity_drop_points"] = round(drop, 2)
            checks[f"{name} n={size}: sanity drop <= 2 points"] = drop <= 2.0
            if size == "100":
                checks[f"{name}: half the base errors removed by 100"] = (removed or 0) >= 0.5
            if name == "extraction" and size == "200":
                checks["extraction: field accuracy >= 0.95 at 200"] = got[head] >= 0.95
                if f"schema_{head}" in got:
                    checks["extraction: field accuracy >= 0.95 at 200, under the schema"] = (
                        got[f"schema_{head}"] >= 0.95
                    )
    results["targets"] = {"thresholds": TARGETS, "checks": checks}


def save(args: argparse.Namespace, results: dict) -> None:
    """Write OUT/quality.json, keeping the scenarios another run measures meanwhile.

    Two runs may share OUT, one scenario each (on 2 cores, one core each is the
    fastest way to get both curves): under a file lock, each run takes the other
    scenarios from the file and writes back only its own.
    """
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "quality.json"
    with (args.out / ".quality.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        on_disk = json.loads(path.read_text()) if path.exists() else {}
        for name, entry in on_disk.get("scenarios", {}).items():
            if name not in args.scenarios:
                results["scenarios"][name] = entry
        runs = on_disk.get("runs", []) + results.get("runs", [])
        results["runs"] = [json.loads(r) for r in dict.fromkeys(json.dumps(r) for r in runs)]
        summarise(results)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(results, indent=2, ensure_ascii=False))
        tmp.replace(path)
    try:
        plot(results, args.out / "quality.png")
    except ImportError:
        print("matplotlib is missing (pip install -e '.[bench]'): no plot", file=sys.stderr)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = {name: e for name, e in results["scenarios"].items() if e["adapters"]}
    if not scenarios:
        return
    fig, axes = plt.subplots(1, len(scenarios), figsize=(8.5 * len(scenarios), 4.2), squeeze=False)
    for ax, (name, entry) in zip(axes[0], scenarios.items(), strict=True):
        sizes = sorted(entry["adapters"], key=int)
        xs = [int(s) for s in sizes]
        base = entry["base"]["metrics"]
        lines = [(entry["headline"], "C0"), ("sanity_accuracy", "C2")]
        lines.insert(1, ("format_valid", "C1") if name == "extraction" else ("rule_greeting", "C1"))
        if f"schema_{entry['headline']}" in base:
            lines.insert(1, (f"schema_{entry['headline']}", "C3"))
        for metric, colour in lines:
            ys = [100 * entry["adapters"][s]["metrics"][metric] for s in sizes]
            ax.plot(xs, ys, "o-", color=colour, label=f"{metric} (adapter)")
            ax.axhline(100 * base[metric], color=colour, ls="--", lw=1, label=f"{metric} (base)")
        if name == "extraction":
            ax.axhline(95, color="grey", ls=":", lw=1, label="target 95%")
        ax.set_xscale("log")
        ax.set_xticks(xs, labels=[str(x) for x in xs])
        ax.minorticks_off()
        ax.set_ylim(-3, 103)
        ax.set_xlabel("agent corrections trained on")
        ax.set_ylabel("% on held-out messages")
        ax.set_title(f"{name} ({entry['heldout']} held-out messages)")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    model = Path(results["base_model"]).name
    fig.suptitle(f"{model} + LoRA, {results['device']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    if args.threads:
        # On a shared machine, waiting OpenMP threads spin: fewer threads waste less.
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args.plot_only:
        plot(json.loads((args.out / "quality.json").read_text()), args.out / "quality.png")
        return 0
    args.work = args.work or args.data_dir / "quality-bench"
    base = resolve_base_model(args.base_model, args.data_dir)
    path = args.out / "quality.json"
    results = json.loads(path.read_text()) if args.resume and path.exists() else {}
    command = args.command = "bench/quality.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results = results or {
        "base_model": str(base),
        "device": (
            "cuda" if torch.cuda.is_available() else f"cpu, {torch.get_num_threads()} torch threads"
        ),
        "train_config": asdict(TrainConfig.from_settings(Settings())),
        "scenarios": {},
    }
    started = time.monotonic()
    for name in args.scenarios:
        run_scenario(args, name, base, results)
    results.setdefault("runs", []).append(
        {
            "command": command,
            "seconds": round(time.monotonic() - started, 1),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        }
    )
    save(args, results)
    print(json.dumps(results["targets"]["checks"], indent=2))
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

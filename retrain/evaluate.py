"""Score the base model, the champion and the candidate on the same held-out data.

Per model: the mean token loss of the reference (corrected) answers, greedy
answers' exact match and token-overlap F1 against them, the same overlap on
held-out thumbs-up answers (a regression suite), and the pass rate of an
optional golden file (expected answers, required substrings, JSON keys,
or a named scenario check such as ``"check": "extraction"``).
The gate (``retrain.gate``) turns these numbers into a decision.

Runs as ``python -m retrain.evaluate JOB.json`` in a child process (:mod:`retrain.jobs`):
a crash leaves no result file, and the cycle then fails closed.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from feedback import faults
from feedback.exceptions import TunebackError
from retrain.jobs import ChildJob, child_main
from retrain.text import token_f1

log = logging.getLogger("retrain.evaluate")
BASE = "base"


@dataclass
class EvalJob(ChildJob):
    """What ``python -m retrain.evaluate JOB.json`` runs: the models and the cases."""

    module: ClassVar[str] = "retrain.evaluate"
    what: ClassVar[str] = "evaluation"

    base_model: str
    out_path: str
    adapters: dict[str, str] = field(default_factory=dict)  # name -> adapter folder
    heldout: list[dict] = field(default_factory=list)  # {"prompt": [...], "completion": str}
    positives: list[dict] = field(default_factory=list)
    golden: list[dict] = field(default_factory=list)
    # The lane's answer schema: every answer is then decoded under it, as served.
    response_schema: dict[str, Any] | None = None
    max_new_tokens: int = 96
    batch_size: int = 8
    run_id: str = "-"


# --- pure scoring helpers ------------------------------------------------------------


def read_golden(path: Path | None) -> list[dict]:
    """The golden cases of a JSONL file (``TUNEBACK_GOLDEN_SET``); none without one."""
    if path is None:
        return []
    try:
        lines = path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    except (OSError, ValueError) as error:
        raise TunebackError(f"cannot read the golden set {path}: {error}") from error


def golden_passes(answer: str, case: dict) -> bool:
    """A golden case passes when every check it names holds."""
    if "expected" in case and answer.strip() != case["expected"].strip():
        return False
    if "contains" in case and case["contains"].lower() not in answer.lower():
        return False
    if "check" in case and not _named_check(case["check"])(answer, case):
        return False
    if "json_keys" in case:
        try:
            parsed = json.loads(answer)
        except ValueError:
            return False
        if not isinstance(parsed, dict) or not set(case["json_keys"]) <= set(parsed):
            return False
    return True


def _named_check(name: str) -> Any:
    """A scenario's answer check, named by a golden case's ``check`` (``retrain.scenarios``):
    the extension point for scenario-specific correctness, e.g. an extraction
    record with every field right, or an answer in the house style."""
    from retrain.scenarios import golden_check

    return golden_check(name)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


# --- model side ---------------------------------------------------------------------


class Scorer:
    """A base model with named adapters, scored one configuration at a time."""

    def __init__(self, base_model: str, adapters: dict[str, str]) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(base_model)
        self.tokenizer.padding_side = "left"
        model = base = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
        if adapters:
            from peft import PeftModel

            (first, path), *rest = adapters.items()
            model = PeftModel.from_pretrained(model, path, adapter_name=first)
            for name, path in rest:
                model.load_adapter(path, adapter_name=name)
        self.model = model.to(self.device).eval()
        self.has_adapters = bool(adapters)
        # transformers 5 renamed ``past_key_values`` (argument and output) to ``cache``.
        forward = inspect.signature(type(base).forward).parameters
        self.cache_kwarg = "cache" if "cache" in forward else "past_key_values"
        self._grammar_cache = None

    def use(self, name: str) -> Any:
        """A context in which the model answers as ``name`` (``base``: no adapter)."""
        from contextlib import nullcontext

        if name == BASE:
            return self.model.disable_adapter() if self.has_adapters else nullcontext()
        self.model.set_adapter(name)
        return nullcontext()

    def _prompt_ids(self, messages: list[dict]) -> list[int]:
        return self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]

    def answer_losses(self, pairs: list[tuple[list[dict], str]]) -> list[float]:
        """Mean negative log-likelihood per token of each ``answer`` after its ``messages``.

        ``pairs`` are ``(messages, answer)``; the answer's tokens are those the chat
        template adds for the assistant's turn, its closing tokens included.

        Answers to the same messages (the options of a multiple-choice question) share
        one pass over the prompt: its key/value cache is repeated for each answer,
        which is scored as if the whole sequence were run alone.
        """
        groups: dict[str, list[int]] = {}
        for index, (messages, _) in enumerate(pairs):
            groups.setdefault(json.dumps(messages, sort_keys=True), []).append(index)
        losses = [math.nan] * len(pairs)
        for indices in groups.values():
            prompt = self._prompt_ids(pairs[indices[0]][0])
            tails = [self._answer_ids(*pairs[i], prompt) for i in indices]
            for i, loss in zip(indices, self._continuation_losses(prompt, tails), strict=True):
                losses[i] = loss
        return losses

    def _answer_ids(self, messages: list[dict], answer: str, prompt: list[int]) -> list[int]:
        full = self.tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": answer}], tokenize=True, return_dict=True
        )["input_ids"]
        if full[: len(prompt)] != prompt:
            raise ValueError("the chat template does not extend the prompt with the answer")
        return full[len(prompt) :]

    def _continuation_losses(self, prompt: list[int], tails: list[list[int]]) -> list[float]:
        """Mean token loss of each tail after ``prompt``: the prompt once, the tails batched."""
        torch = self.torch
        width = max(len(t) for t in tails)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.tensor([t + [pad] * (width - len(t)) for t in tails], device=self.device)
        mask = torch.tensor(
            [[1] * (len(prompt) + len(t)) + [0] * (width - len(t)) for t in tails],
            device=self.device,
        )
        with torch.no_grad():
            first = self.model(
                input_ids=torch.tensor([prompt], device=self.device),
                use_cache=True,
                logits_to_keep=1,
            )
            cache = getattr(first, self.cache_kwarg)
            cache.batch_repeat_interleave(len(tails))
            rest = self.model(input_ids=ids, attention_mask=mask, **{self.cache_kwarg: cache})
        # Tail token j is predicted by the prompt's last logits (j = 0) or by tail token j - 1.
        logits = torch.cat(
            [first.logits[:, -1:].expand(len(tails), 1, -1), rest.logits[:, :-1]], dim=1
        ).float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids, reduction="none")
        counted = mask[:, len(prompt) :].float()
        return ((nll * counted).sum(1) / counted.sum(1)).tolist()

    def _grammars(self) -> Any:
        if self._grammar_cache is None:
            from feedback.structured import Grammars

            eos = self.model.generation_config.eos_token_id
            eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
            self._grammar_cache = Grammars(self.tokenizer, eos_ids or {self.tokenizer.eos_token_id})
        return self._grammar_cache

    def _constraint(self, index: Any, rows: int) -> Any:
        from transformers import LogitsProcessorList

        if index is None:
            return LogitsProcessorList()
        return LogitsProcessorList([self._grammars().processor([index] * rows)])

    def budget(self, cases: list[dict], ceiling: int) -> int:
        """New tokens to generate: enough for the longest reference, and no more."""
        refs = [c["completion"] for c in cases if "completion" in c]
        if len(refs) < len(cases):
            return ceiling
        longest = max(len(self.tokenizer(r, add_special_tokens=False)["input_ids"]) for r in refs)
        return min(ceiling, longest + 8)

    def generate(
        self,
        prompts: list[list[dict]],
        max_new_tokens: int,
        batch: int,
        schema: dict[str, Any] | None = None,
    ) -> list[str]:
        """Greedy answers, batched with left padding; with a JSON ``schema``, decoded
        under it as the server decodes a request whose ``response_format`` names it."""
        constraint = self._grammars().index(schema) if schema is not None else None
        answers = []
        for start in range(0, len(prompts), batch):
            texts = [
                self.tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False)
                for p in prompts[start : start + batch]
            ]
            enc = self.tokenizer(
                texts, return_tensors="pt", padding=True, add_special_tokens=False
            ).to(self.device)
            with self.torch.no_grad():
                out = self.model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id,
                    logits_processor=self._constraint(constraint, len(texts)),
                )
            new = out[:, enc["input_ids"].shape[1] :]
            answers += self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return [a.strip() for a in answers]


def score_model(scorer: Scorer, name: str, job: EvalJob) -> dict[str, float]:
    """Every metric for one model configuration."""
    metrics: dict[str, float] = {"heldout_count": len(job.heldout)}

    def answers(cases: list[dict]) -> list[str]:
        prompts = [_messages(case["prompt"]) for case in cases]
        budget = scorer.budget(cases, job.max_new_tokens)
        return scorer.generate(prompts, budget, job.batch_size, schema=job.response_schema)

    with scorer.use(name):
        if job.heldout:
            pairs = list(zip(answers(job.heldout), job.heldout, strict=True))
            metrics["heldout_loss"] = _mean(
                scorer.answer_losses(
                    [(_messages(c["prompt"]), c["completion"]) for c in job.heldout]
                )
            )
            metrics["heldout_exact"] = _mean(
                [float(a == c["completion"].strip()) for a, c in pairs]
            )
            metrics["heldout_overlap"] = _mean([token_f1(a, c["completion"]) for a, c in pairs])
        if job.positives:
            pairs = zip(answers(job.positives), job.positives, strict=True)
            metrics["positives_overlap"] = _mean([token_f1(a, c["completion"]) for a, c in pairs])
        if job.golden:
            pairs = zip(answers(job.golden), job.golden, strict=True)
            metrics["golden_pass"] = _mean([float(golden_passes(a, c)) for a, c in pairs])
    return metrics


def _messages(prompt: str | list[dict]) -> list[dict]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def evaluate(job: EvalJob) -> dict[str, dict[str, float]]:
    scorer = Scorer(job.base_model, job.adapters)
    results = {}
    for name in (BASE, *job.adapters):
        log.info("run %s evaluating %s on %d held-out examples", job.run_id, name, len(job.heldout))
        results[name] = score_model(scorer, name, job)
        faults.checkpoint("evaluate.scored", parent=True)
    return results


def main(argv: list[str] | None = None) -> int:
    return child_main(EvalJob, evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())

"""The served model: tokenizer, weights, adapter host, and batched generation.

Generation is Hugging Face's ``generate`` (sampling, KV cache, left padding),
with one stopping criterion that does each row's bookkeeping per token: it
feeds the row's :class:`~serve.text.TextStream` (stop sequences, streamed
text), enforces the row's own ``max_tokens``, notices end-of-sequence and
cancellation, and stops exactly the rows that are finished. So jobs with
different prompts, lengths and stop sequences share one batch, and so do
jobs of different adapters (each row decodes with its own).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import torch
from jinja2 import TemplateError
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.utils import logging as hf_logging

from feedback.structured import CompileBusyError, CompileLimits, Grammars, SchemaError
from serve.lora import AdapterHost
from serve.schemas import ChatRequestError, OverloadedError
from serve.text import TextStream
from serve.worker import Job

log = logging.getLogger(__name__)


def pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


class ModelEngine:
    """A causal LM from a local Hugging Face folder, ready to serve chats."""

    def __init__(
        self,
        model_dir: Path,
        *,
        device: str = "auto",
        max_rank: int = 64,
        merge: bool = True,
        schema_limits: CompileLimits | None = None,
    ) -> None:
        hf_logging.disable_progress_bar()
        self.model_dir = Path(model_dir)
        self.device = pick_device(device)
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dtype)
        self.model = model.to(self.device).eval()
        self.model.requires_grad_(False)
        self.host = AdapterHost(self.model, max_rank=max_rank, merge=merge)
        self.eos_ids = _eos_ids(self.model.generation_config, self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = min(self.eos_ids)
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self.grammars = Grammars(self.tokenizer, self.eos_ids, schema_limits)
        # Fast tokenizers may refuse concurrent use ("Already borrowed"); requests
        # encode and the worker decodes, so both go through this lock.
        self._tokenizer_lock = threading.Lock()

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """The prompt's token ids, with the model's chat template and the assistant's cue.

        OpenAI's ``developer`` role is what chat templates call ``system``.
        """
        turns = [
            {**m, "role": "system" if m["role"] == "developer" else m["role"]} for m in messages
        ]
        with self._tokenizer_lock:
            try:
                text = self.tokenizer.apply_chat_template(
                    turns, tokenize=False, add_generation_prompt=True
                )
            except TemplateError as error:
                message = f"the model's chat template refused the messages: {error}"
                raise ChatRequestError(message) from None
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def grammar(self, schema: dict[str, Any] | None) -> Any:
        """The compiled constraint for a request's ``response_format`` schema (None: free).

        A schema that cannot be compiled, or costs too much to, is a 400; one that is
        not cached while another compiles is a 503 with Retry-After, not a wait, so
        one slow schema holds up no other request.
        """
        if schema is None:
            return None
        try:
            return self.grammars.index(schema, wait=False)
        except SchemaError as error:
            raise ChatRequestError(f"response_format: {error}") from None
        except CompileBusyError as error:
            raise OverloadedError(f"response_format: {error}", error.retry_after) from None

    def decode(self, ids: list[int]) -> str:
        with self._tokenizer_lock:
            return self.tokenizer.decode(
                ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
            )

    def generate(self, jobs: list[Job]) -> None:
        """Generate every job of a batch (same sampling settings); finish each.

        Each row decodes with its own job's adapter (``job.lease.adapter``): a
        batch may mix lanes (see :meth:`serve.lora.AdapterHost.activate_rows`).
        """
        first = jobs[0]
        rows = _Rows(jobs, self)
        input_ids, mask = self._left_pad([job.prompt for job in jobs])
        if first.seed is not None:
            torch.manual_seed(first.seed)
        adapters = [job.lease.adapter for job in jobs]
        with self.host.activate_rows(adapters), torch.inference_mode():
            self.model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                generation_config=self._config(first, max(job.max_tokens for job in jobs)),
                stopping_criteria=StoppingCriteriaList([rows]),
                logits_processor=_constraints(self.grammars, jobs),
            )
        rows.finish_all()

    def _left_pad(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            ids[i, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[i, width - len(prompt) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def _config(self, job: Job, max_new_tokens: int) -> GenerationConfig:
        sample = job.temperature > 0
        return GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=sample,
            temperature=job.temperature if sample else None,
            top_p=job.top_p if sample else None,
            top_k=0 if sample else None,  # OpenAI's sampling has no top-k
            pad_token_id=self.pad_id,
            eos_token_id=sorted(self.eos_ids),
        )


def _constraints(grammars: Grammars, jobs: list[Job]) -> LogitsProcessorList | None:
    """Each row decoded under its own schema, if any job of the batch has one."""
    processor = grammars.processor([job.grammar for job in jobs])
    return None if processor is None else LogitsProcessorList([processor])


class _Rows(StoppingCriteria):
    """Per-row bookkeeping, called by ``generate`` after every new token."""

    def __init__(self, jobs: list[Job], engine: ModelEngine) -> None:
        self.jobs, self.eos = jobs, engine.eos_ids
        self.texts = [TextStream(engine.decode, job.stops) for job in jobs]
        self.counts = [0] * len(jobs)
        self.done = [False] * len(jobs)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        for i, token in enumerate(input_ids[:, -1].tolist()):
            if not self.done[i]:
                self._step(i, token)
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)

    def _step(self, i: int, token: int) -> None:
        job, text = self.jobs[i], self.texts[i]
        self.counts[i] += 1
        if token in self.eos:
            self._finish(i, "stop")
            return
        job.emit(text.push(token))
        if text.stopped:
            self._finish(i, "stop")
        elif self.counts[i] >= job.max_tokens:
            self._finish(i, "length")
        elif job.cancelled:
            self._finish(i, "cancelled")

    def _finish(self, i: int, reason: str) -> None:
        self.done[i] = True
        job, text = self.jobs[i], self.texts[i]
        job.emit(text.flush())
        job.finish(reason, text.text, self.counts[i])

    def finish_all(self) -> None:
        """Rows ``generate`` ended without our criterion (its own length limit)."""
        for i, done in enumerate(self.done):
            if not done:
                self._finish(i, "length")


def _eos_ids(generation_config: GenerationConfig, tokenizer) -> set[int]:  # noqa: ANN001
    eos = generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids

"""Chat completions from the local model: admission, waiting, streaming, logging.

A request is admitted in its own thread, before any response is started, so
every refusal has its proper status: the prompt is tokenized and checked
against the context length, the adapter lease is taken, and the job enters the
bounded queue (or the request gets a 503). Then the thread waits for the
worker, logs the completion under the id chosen up front, and answers.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from feedback.settings import Settings
from serve.responses import (
    SSE_DONE,
    Call,
    chunk,
    completion_body,
    log_completion,
    sse,
    sse_error,
    usage,
)
from serve.schemas import ChatRequest, ContextLengthError, ModelNotFoundError, OverloadedError
from serve.worker import DONE, Job, JobQueue, ModelWorker

if TYPE_CHECKING:
    from feedback.structured import CompileLimits

log = logging.getLogger(__name__)
DEFAULT_MODEL = "default"


class LocalBackend:
    """The base model with its promoted adapter, served by one worker thread."""

    def __init__(self, settings: Settings, engine: Any, swapper: Any, *, model_name: str) -> None:
        self.settings, self.engine, self.swapper = settings, engine, swapper
        self.model_name = model_name
        self.jobs = JobQueue(settings.serve_queue_size, context_length=engine.context_length)
        self.worker = ModelWorker(self.jobs, engine.generate, max_batch=settings.serve_max_batch)

    @classmethod
    def build(cls, settings: Settings, base_model_dir: Path, sql: Engine, **hooks: Any):  # noqa: ANN206
        """Load the model, catch up with the store, start the worker and the watcher."""
        from serve.engine import ModelEngine
        from serve.swap import Swapper

        base_model_dir = Path(base_model_dir).resolve()
        engine = ModelEngine(
            base_model_dir,
            device=settings.serve_device,
            max_rank=settings.serve_max_lora_rank,
            merge=settings.serve_merge,
            schema_limits=schema_limits(settings),
        )
        swapper = Swapper(
            sql,
            engine.host,
            base_model=str(base_model_dir),
            slots=settings.serve_adapter_slots,
            poll_seconds=settings.serve_poll_seconds,
            wait_seconds=settings.serve_swap_wait_seconds,
            **hooks,
        )
        swapper.sync()  # start on the promoted adapter, or say why not
        backend = cls(
            settings, engine, swapper, model_name=settings.serve_model_name or base_model_dir.name
        )
        backend.worker.start()
        swapper.start()
        return backend

    def close(self) -> None:
        self.swapper.stop()
        self.worker.stop()

    # --- the API ------------------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        created = int(self.engine.model_dir.stat().st_mtime)
        return [
            _model(DEFAULT_MODEL, created, adapter=self.swapper.serving or "base"),
            _model(self.model_name, created, adapter="base"),
        ]

    def status(self) -> dict[str, Any]:
        stats, merged = self.swapper.stats, self.engine.host.merged
        return {
            "serving": self.swapper.serving or "base",
            "loaded": self.swapper.loaded,
            "merged": merged.partition("#")[0] if merged else None,  # host names are v0001#3
            "queue": len(self.jobs),
            "swaps": stats.swaps,
            "refused": stats.refused,
            "last_swap_ms": stats.last_swap_ms,
        }

    def complete(self, request: ChatRequest, call: Call) -> dict[str, Any]:
        job, messages = self._admit(request, call)
        if not job.wait(self.settings.serve_request_timeout):
            job.cancel()
            raise OverloadedError("the answer took too long; retry later", retry_after=5)
        if job.error is not None:
            raise job.error
        self._log(request, call, job, messages)
        return completion_body(
            call,
            text=job.text,
            finish_reason=job.finish_reason or "stop",
            fingerprint=_fingerprint(job),
            usage=usage(len(job.prompt), job.completion_tokens),
        )

    def start_stream(self, request: ChatRequest, call: Call) -> Iterator[bytes]:
        """Admit now (errors are still plain HTTP errors); return the event stream."""
        job, messages = self._admit(request, call, stream=True)
        return self._events(request, call, job, messages)

    # --- internals ----------------------------------------------------------------

    def _admit(
        self, request: ChatRequest, call: Call, *, stream: bool = False
    ) -> tuple[Job, list[dict[str, str]]]:
        if request.model not in (DEFAULT_MODEL, self.model_name):
            raise ModelNotFoundError(
                f"model {request.model!r} does not exist; use {DEFAULT_MODEL!r} (the promoted "
                f"adapter) or {self.model_name!r} (the base model)"
            )
        messages = request.plain_messages()
        prompt = self.engine.encode_chat(messages)
        max_tokens = self._budget(request, len(prompt))
        grammar = self.engine.grammar(request.output_schema)
        lease = (
            self.swapper.lease_default()
            if request.model == DEFAULT_MODEL
            else self.swapper.lease_base()
        )
        job = Job(
            prompt=prompt,
            max_tokens=max_tokens,
            lease=lease,
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            seed=request.seed,
            stops=request.stops,
            grammar=grammar,
            stream=stream,
        )
        try:
            self.jobs.put(job)
        except BaseException:
            lease.release()
            raise
        return job, messages

    def _budget(self, request: ChatRequest, prompt_tokens: int) -> int:
        """Tokens this answer may have; a prompt that leaves no room is a 400."""
        room = self.engine.context_length - prompt_tokens
        asked = request.requested_tokens
        if room < 1 or (asked is not None and asked > room):
            raise ContextLengthError(
                f"this model's maximum context length is {self.engine.context_length} tokens; "
                f"the messages take {prompt_tokens}"
                + (f" and {asked} were requested for the answer" if asked else "")
            )
        return min(asked or room, room, self.settings.serve_max_tokens)

    def _events(
        self, request: ChatRequest, call: Call, job: Job, messages: list[dict[str, str]]
    ) -> Iterator[bytes]:
        fingerprint = _fingerprint(job)
        deadline = time.monotonic() + self.settings.serve_request_timeout
        try:
            role = {"role": "assistant", "content": ""}
            yield sse(chunk(call, fingerprint=fingerprint, delta=role))
            while (item := _next(job, deadline)) is not DONE:
                yield sse(chunk(call, fingerprint=fingerprint, delta={"content": item}))
            if job.error is not None:
                log.error("streamed generation failed: %s", job.error)
                yield sse_error("internal", "the generation failed; it has been logged")
                return
            try:
                self._log(request, call, job, messages)
            except Exception:  # noqa: BLE001 - the status line is sent: say it in the stream
                log.exception("could not log a streamed completion")
                yield sse_error("internal", "the completion could not be logged; retry later")
                return
            reason = job.finish_reason or "stop"
            yield sse(chunk(call, fingerprint=fingerprint, finish_reason=reason))
            if request.include_usage:
                used = usage(len(job.prompt), job.completion_tokens)
                yield sse(chunk(call, fingerprint=fingerprint, usage=used))
            yield SSE_DONE
        except queue.Empty:
            yield sse_error("timeout", "the answer took too long; retry later")
        finally:
            if not job.done:
                job.cancel()  # the client went away, or we timed out: free the model

    def _log(self, request: ChatRequest, call: Call, job: Job, messages: list[dict]) -> None:
        metadata: dict[str, Any] = {
            "source": "tuneback-serve",
            "requested_model": request.model,
            "finish_reason": job.finish_reason,
            "usage": usage(len(job.prompt), job.completion_tokens),
            "sampling": {
                "temperature": job.temperature,
                "top_p": job.top_p,
                "max_tokens": job.max_tokens,
                "seed": job.seed,
                "stop": list(job.stops),
            },
        }
        if request.output_schema is not None:
            fmt = request.response_format
            metadata["response_format"] = {"type": fmt.type} | (
                {"name": fmt.json_schema.name} if fmt.json_schema else {}
            )
        log_completion(
            call,
            user=request.user,
            request_metadata=request.metadata,
            messages=messages,
            response=job.text,
            model=self.model_name,
            adapter_version=job.lease.version,
            metadata=metadata,
        )


def schema_limits(settings: Settings) -> CompileLimits:
    """What compiling one ``response_format`` schema may cost, from the settings."""
    from feedback.structured import MIB, CompileLimits

    return CompileLimits(
        memory_bytes=settings.serve_schema_memory_mb * MIB,
        index_bytes=settings.serve_schema_index_mb * MIB,
        cache_bytes=settings.serve_schema_cache_mb * MIB,
    )


def _next(job: Job, deadline: float) -> object:
    """The job's next piece of text (or DONE); ``queue.Empty`` once the deadline passes."""
    return job.events.get(timeout=max(0.0, deadline - time.monotonic()))


def _fingerprint(job: Job) -> str:
    return job.lease.version or "base"


def _model(model_id: str, created: int, **extra: Any) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "tuneback", **extra}

"""Chat completions from the local model: routing, admission, waiting, streaming, logging.

A request's ``model`` names what answers it: ``default`` or another lane's name
(that lane's promoted adapter, or the base model while it has none), or the
base model's own served name (the bare base model; it wins over a lane of the
same name). Anything else is a 404 listing the lanes. The lanes are read from
the store and cached a couple of seconds (:class:`serve.lanes.LaneDirectory`),
so a new lane is served without a restart.

A request is admitted in its own thread, before any response is started, so
every refusal has its proper status: the prompt is tokenized and checked
against the context length, the lane's adapter lease is taken, and the job
enters the bounded queue (or the request gets a 503). Then the thread waits
for the worker, logs the completion (with its lane) under the id chosen up
front, and answers. ``system_fingerprint`` says what answered:
``"<lane>:<version or 'base'>"``, or ``"base"`` for the bare base model.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from feedback.models import DEFAULT_LANE
from feedback.settings import Settings
from serve.lanes import LaneDirectory, LaneInfo
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
DEFAULT_MODEL = DEFAULT_LANE


@dataclass
class Admitted:
    """A job in the queue, with what it was admitted as."""

    job: Job
    messages: list[dict[str, str]]
    lane: LaneInfo | None  # None: the bare base model
    lane_schema: bool = False  # the lane's response_schema applies (the request set none)


class LocalBackend:
    """The base model with every lane's promoted adapter, served by one worker thread."""

    def __init__(self, settings: Settings, engine: Any, swapper: Any, *, model_name: str) -> None:
        self.settings, self.engine, self.swapper = settings, engine, swapper
        self.model_name = model_name
        self.lanes = LaneDirectory(swapper.sql)
        self.jobs = JobQueue(
            settings.serve_queue_size,
            context_length=engine.context_length,
            mixed=settings.serve_mixed_batches,
        )
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
            max_adapters=settings.serve_max_adapters,
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
        """Every lane (with the version it serves and its description), then the base model."""
        created = int(self.engine.model_dir.stat().st_mtime)
        states = self.swapper.lane_states()
        lanes = [
            _model(
                lane.name,
                created,
                adapter=states.get(lane.name, {}).get("serving") or "base",
                description=lane.description,
            )  # fmt: skip
            for lane in self.lanes.all()
        ]
        return [*lanes, _model(self.model_name, created, adapter="base")]

    def status(self) -> dict[str, Any]:
        stats, merged = self.swapper.stats, self.engine.host.merged
        return {
            "serving": self.swapper.serving or "base",
            "lanes": self.swapper.lane_states(),
            "max_adapters": self.swapper.max_adapters,
            "unloads": stats.unloads,
            "loaded": self.swapper.loaded,
            "merged": merged.partition("#")[0] if merged else None,  # host names are v0001#3
            "queue": len(self.jobs),
            "swaps": stats.swaps,
            "refused": stats.refused,
            "last_swap_ms": stats.last_swap_ms,
        }

    def complete(self, request: ChatRequest, call: Call) -> dict[str, Any]:
        admitted = self._admit(request, call)
        job = admitted.job
        if not job.wait(self.settings.serve_request_timeout):
            job.cancel()
            raise OverloadedError("the answer took too long; retry later", retry_after=5)
        if job.error is not None:
            raise job.error
        self._log(request, call, admitted)
        return completion_body(
            call,
            text=job.text,
            finish_reason=job.finish_reason or "stop",
            fingerprint=job.lease.fingerprint,
            usage=usage(len(job.prompt), job.completion_tokens),
        )

    def start_stream(self, request: ChatRequest, call: Call) -> Iterator[bytes]:
        """Admit now (errors are still plain HTTP errors); return the event stream."""
        return self._events(request, call, self._admit(request, call, stream=True))

    # --- internals ----------------------------------------------------------------

    def _route(self, model: str) -> LaneInfo | None:
        """The lane ``model`` names (None: the bare base model); a 404 listing lanes if none."""
        if model == self.model_name:
            return None
        lane = self.lanes.find(model)
        if lane is None:
            raise ModelNotFoundError(
                f"model {model!r} does not exist; name a lane ({', '.join(self.lanes.names())}) "
                f"or {self.model_name!r} (the base model)"
            )
        return lane

    def _admit(self, request: ChatRequest, call: Call, *, stream: bool = False) -> Admitted:
        lane = self._route(request.model)
        messages = request.plain_messages()
        prompt = self.engine.encode_chat(messages)
        max_tokens = self._budget(request, len(prompt))
        schema, lane_schema = request.output_schema, False
        if request.response_format is None and lane is not None and lane.response_schema:
            schema, lane_schema = lane.response_schema, True
        grammar = self.engine.grammar(schema)
        lease = self.swapper.lease_lane(lane.name) if lane else self.swapper.lease_base()
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
        return Admitted(job, messages, lane, lane_schema)

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

    def _events(self, request: ChatRequest, call: Call, admitted: Admitted) -> Iterator[bytes]:
        job = admitted.job
        fingerprint = job.lease.fingerprint
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
                self._log(request, call, admitted)
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

    def _log(self, request: ChatRequest, call: Call, admitted: Admitted) -> None:
        job, lane = admitted.job, admitted.lane
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
        elif admitted.lane_schema:
            metadata["response_format"] = {"type": "json_schema", "from": "lane"}
        log_completion(
            call,
            user=request.user,
            request_metadata=request.metadata,
            messages=admitted.messages,
            response=job.text,
            model=self.model_name,
            adapter_version=job.lease.version,
            metadata=metadata,
            lane=lane.name if lane else DEFAULT_LANE,
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


def _model(model_id: str, created: int, **extra: Any) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "tuneback", **extra}

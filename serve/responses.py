"""OpenAI response shapes, server-sent events, and logging each completion in the store.

The completion's id is chosen before generation starts, so a stream can carry
it from its first chunk; the row is written once the answer is complete and
before the client is told it is (the last chunk, or the JSON body), so a vote
on that id can never arrive before its completion exists.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from feedback import store
from feedback.db import write_session
from feedback.models import DEFAULT_LANE, new_id


@dataclass
class Call:
    """One chat request's identity: who asked, which id its answer gets, where to log it."""

    sql: Engine
    api_key_id: str | None
    model: str  # as the client asked for it
    metrics: Any = None
    lane_header: str | None = None  # X-Tuneback-Lane (the capture proxy's lane)
    id: str = field(default_factory=new_id)
    created: int = field(default_factory=lambda: int(time.time()))


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_body(
    call: Call, *, text: str, finish_reason: str, fingerprint: str, usage: dict[str, int]
) -> dict[str, Any]:
    return {
        "id": call.id,
        "object": "chat.completion",
        "created": call.created,
        "model": call.model,
        "system_fingerprint": fingerprint,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage,
    }


def chunk(
    call: Call,
    *,
    fingerprint: str,
    delta: dict[str, Any] | None = None,
    finish_reason: str | None = None,
    usage: dict[str, int] | None = None,
) -> dict[str, Any]:
    """A ``chat.completion.chunk``; with ``usage`` it is the final, choice-less usage chunk."""
    body: dict[str, Any] = {
        "id": call.id,
        "object": "chat.completion.chunk",
        "created": call.created,
        "model": call.model,
        "system_fingerprint": fingerprint,
        "choices": [],
    }
    if usage is not None:
        body["usage"] = usage
    else:
        body["choices"] = [
            {"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish_reason}
        ]
    return body


def sse(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


SSE_DONE = b"data: [DONE]\n\n"


def sse_error(code: str, message: str) -> bytes:
    """An error in the middle of a stream (the status line is long gone); clients raise it."""
    return sse({"error": {"code": code, "message": message}})


def log_completion(
    call: Call,
    *,
    messages: list[dict[str, Any]],
    response: str,
    model: str,
    adapter_version: str | None,
    metadata: dict[str, Any],
    user: str | None = None,
    request_metadata: dict[str, Any] | None = None,
    lane: str = DEFAULT_LANE,
) -> None:
    """Store the served completion under ``call.id`` (one short write transaction),
    in ``lane``, with the caller's ``user`` and ``metadata`` request fields when given."""
    if user is not None:
        metadata = {**metadata, "user": user}
    if request_metadata:
        metadata = {**metadata, "request_metadata": request_metadata}
    with write_session(call.sql) as session:
        store.create_completion(
            session,
            completion_id=call.id,
            messages=messages,
            response=response,
            model=model,
            adapter_version=adapter_version,
            metadata=metadata,
            api_key_id=call.api_key_id,
            lane=lane,
        )
        session.commit()
    if call.metrics is not None:
        call.metrics.completions.inc(lane=lane)

"""Capture proxy: forward chats to any OpenAI-compatible server and log what it answered.

With ``TUNEBACK_UPSTREAM_URL`` set, ``/v1/chat/completions`` sends each
validated request on through the official ``openai`` client, logs the answer in
the store like a locally generated one, and returns the upstream's response
with its ``id`` replaced by the logged completion's, so thumbs and corrections
work for a model Tuneback does not host. Streams are passed through chunk by
chunk; the final chunk is held back until the completion is logged.

Only the models ``TUNEBACK_UPSTREAM_MODELS`` names are forwarded (any other
``model`` is a 404 here), and every request carries a token cap no larger than
``TUNEBACK_SERVE_MAX_TOKENS``, as the local engine applies: a client cannot spend
the operator's upstream budget on another model or on a million-token answer.

Each logged completion goes into a lane: the one the request's
``X-Tuneback-Lane`` header names; else the one ``TUNEBACK_UPSTREAM_LANES``
maps the requested upstream model to (``gpt-4o-mini=ticket-router,...``); else
``default``. The lane is checked before anything is forwarded: a bad name is a
422, an unknown lane a 404 ``lane_not_found`` listing the lanes.

Upstream failures keep their status where it means something to the caller
(400, 404, 429 with Retry-After...), become 502 when our own upstream key is
refused or the upstream cannot be reached, and 504 when it times out.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import openai

from feedback.lanes import check_name
from feedback.models import DEFAULT_LANE
from feedback.settings import Settings
from serve.lanes import LaneDirectory, parse_lane_map
from serve.responses import SSE_DONE, Call, log_completion, sse, sse_error
from serve.schemas import ChatRequest, ModelNotFoundError, OverloadedError, UpstreamError

log = logging.getLogger(__name__)
# Ours, not the upstream's: stored with the completion, never forwarded.
LOCAL_FIELDS = {"messages", "metadata"}


class ProxyBackend:
    """Chat completions served by an upstream OpenAI-compatible server."""

    def __init__(
        self, settings: Settings, client: openai.OpenAI | None = None, *, sql: Any = None
    ) -> None:
        """``sql`` is the store's engine, to check lanes before forwarding (without it,
        only the lane's name is checked here; the store refuses an unknown one)."""
        self.settings = settings
        self.lane_map = parse_lane_map(settings.upstream_lanes)
        self.lanes = LaneDirectory(sql) if sql is not None else None
        self.client = client or openai.OpenAI(
            base_url=settings.upstream_url,
            api_key=settings.upstream_api_key or "unused",
            timeout=settings.serve_request_timeout,
            max_retries=0,  # the caller decides about retries, with our Retry-After
        )
        limit = settings.serve_queue_size + settings.serve_max_batch
        self.limit, self._in_flight = limit, threading.BoundedSemaphore(limit)

    def close(self) -> None:
        self.client.close()

    def models(self) -> list[dict[str, Any]]:
        """The upstream's models that clients may use here."""
        allowed = self.settings.upstream_model_names
        listed = _upstream(lambda: list(self.client.models.list()))
        return [model.to_dict() for model in listed if model.id in allowed]

    def status(self) -> dict[str, Any]:
        return {
            "mode": "proxy",
            "upstream": self.settings.upstream_url,
            "limit": self.limit,
            "lanes": self.lane_map,
        }

    def complete(self, request: ChatRequest, call: Call) -> dict[str, Any]:
        args, lane = self._args(request), self._lane(request, call)
        with self._slot():
            response = _upstream(lambda: self.client.chat.completions.create(**args))
            choice = response.choices[0] if response.choices else None
            text = (choice.message.content or "") if choice else ""
            finish = choice.finish_reason if choice else None
            self._log(request, call, text, response, finish, lane)
        body = response.to_dict()
        body["id"] = call.id
        return body

    def start_stream(self, request: ChatRequest, call: Call) -> Iterator[bytes]:
        """Open the upstream stream now, so its refusal is still a plain HTTP error."""
        args, lane = self._args(request), self._lane(request, call)
        self._acquire()
        try:
            stream = _upstream(lambda: self.client.chat.completions.create(**args))
        except BaseException:
            self._in_flight.release()
            raise
        return self._events(request, call, stream, lane)

    def lane_for(self, model: str, header: str | None) -> str:
        """The lane a completion is logged in: the header's, else the model's mapped one,
        else ``default`` (see the module docstring); not checked against the store."""
        return header if header is not None else self.lane_map.get(model, DEFAULT_LANE)

    # --- internals ----------------------------------------------------------------

    def _lane(self, request: ChatRequest, call: Call) -> str:
        """The request's lane, checked: 422 for a bad name, 404 for an unknown lane."""
        lane = self.lane_for(request.model, call.lane_header)
        if self.lanes is None:
            return check_name(lane)
        return self.lanes.get(lane).name

    def _args(self, request: ChatRequest) -> dict[str, Any]:
        """What is sent upstream: the allowed model, the capped token budget."""
        allowed = self.settings.upstream_model_names
        if request.model not in allowed:
            raise ModelNotFoundError(
                f"model {request.model!r} is not served here; use one of: {', '.join(allowed)}"
            )
        args = request.model_dump(exclude=LOCAL_FIELDS, exclude_none=True, by_alias=True)
        if not args.get("stream"):
            args.pop("stream", None)
        args["messages"] = request.plain_messages()
        # The name the client used; OpenAI's current one when it gave none (its newer
        # models refuse max_tokens).
        cap = self.settings.serve_max_tokens
        name = (
            "max_tokens"
            if request.max_tokens and not request.max_completion_tokens
            else ("max_completion_tokens")
        )
        args.pop("max_tokens", None)
        args[name] = min(request.requested_tokens or cap, cap)
        return args

    @contextmanager
    def _slot(self) -> Iterator[None]:
        self._acquire()
        try:
            yield
        finally:
            self._in_flight.release()

    def _acquire(self) -> None:
        if not self._in_flight.acquire(blocking=False):
            raise OverloadedError(
                f"the server is busy ({self.limit} upstream requests in flight); retry later",
                retry_after=1,
            )

    def _events(self, request: ChatRequest, call: Call, stream: Any, lane: str) -> Iterator[bytes]:
        held, text, last, finish = [], [], None, None
        try:
            for chunk in stream:
                last, data = chunk, chunk.to_dict()
                data["id"] = call.id
                text.extend(c.delta.content or "" for c in chunk.choices if c.delta)
                finish = next((c.finish_reason for c in chunk.choices if c.finish_reason), finish)
                if finish is not None or not chunk.choices:
                    held.append(data)  # the end: sent once the completion is logged
                else:
                    yield sse(data)
            if last is None:
                raise UpstreamError("the upstream stream ended without a chunk", status=502)
            self._log(request, call, "".join(text), last, finish, lane)
            for data in held:
                yield sse(data)
            yield SSE_DONE
        except (openai.APIError, UpstreamError) as error:
            log.warning("upstream stream failed: %s", error)
            yield sse_error("upstream_error", f"the upstream stream failed: {error}")
        finally:
            stream.close()
            self._in_flight.release()

    def _log(
        self, request: ChatRequest, call: Call, text: str, response: Any, finish: Any, lane: str
    ) -> None:
        usage, cap = getattr(response, "usage", None), self.settings.serve_max_tokens
        metadata: dict[str, Any] = {
            "source": "tuneback-proxy",
            "upstream_id": response.id,
            "upstream_fingerprint": getattr(response, "system_fingerprint", None),
            "finish_reason": finish,
            "usage": usage.to_dict() if usage is not None else None,
            "sampling": request.model_dump(
                include={"temperature", "top_p", "seed", "stop"}, exclude_none=True
            )
            | {"max_tokens": min(request.requested_tokens or cap, cap)},
        }
        log_completion(
            call,
            user=request.user,
            request_metadata=request.metadata,
            messages=request.plain_messages(),
            response=text,
            model=response.model or request.model,
            adapter_version=None,
            metadata=metadata,
            lane=lane,
        )


def _upstream(call: Callable[[], Any]) -> Any:
    """Run an upstream call, turning its failures into :class:`UpstreamError`."""
    try:
        return call()
    except openai.APIStatusError as error:
        raise _status_error(error) from None
    except openai.APITimeoutError:
        raise UpstreamError(
            "the upstream server timed out", status=504, code="upstream_timeout"
        ) from None
    except openai.APIConnectionError as error:
        raise UpstreamError(
            f"cannot reach the upstream server: {error}", status=502, code="upstream_unavailable"
        ) from None


def _status_error(error: openai.APIStatusError) -> UpstreamError:
    body = error.body if isinstance(error.body, dict) else {}
    message = str(body.get("message") or error.message)
    status = error.status_code
    if status in (401, 403):  # our upstream key, not the caller's: a gateway problem
        return UpstreamError(
            f"the upstream server refused Tuneback's key: {message}",
            status=502,
            code="upstream_auth_failed",
        )
    retry = error.response.headers.get("Retry-After")
    return UpstreamError(
        message,
        status=status if 400 <= status < 600 else 502,
        code=str(body.get("code") or "upstream_error"),
        retry_after=int(retry) if retry and retry.isdigit() else None,
    )

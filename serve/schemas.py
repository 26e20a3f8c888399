"""Chat request bodies, validated where they enter, and the errors chat answers with.

The accepted fields are those of OpenAI's chat completions API that this server
honours; anything else is a 400, as OpenAI itself answers an unknown argument.
Errors keep the feedback API's shape, ``{"error": {"code", "message"}}``, with
OpenAI's status codes (400 for a bad request, 404 for an unknown model).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from feedback.exceptions import TunebackError
from feedback.schemas import MAX_TEXT, ShortText, Text, UserRef

MAX_MESSAGES = 500
MAX_STOPS = 4
# OpenAI arguments that clients send by default. Their neutral values change nothing
# here and are accepted (then dropped); any other value changes the answer in a way
# this server does not support, and is refused by name.
NEUTRAL_ARGUMENTS: dict[str, tuple[Any, ...]] = {
    "logprobs": (False,),
    "top_logprobs": (0,),
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
    "logit_bias": ({},),
    "tools": ([],),
    "tool_choice": ("none", "auto"),
    "parallel_tool_calls": (True, False),
    "modalities": (["text"],),
    "service_tier": ("auto",),  # another tier changes who serves and bills, upstream
    "store": (False,),  # true asks an upstream to keep the completion
}


class ChatRequestError(TunebackError, ValueError):
    """The chat request is malformed: wrong types, unknown fields, empty messages."""

    code, status = "invalid_request", 400


class ContextLengthError(ChatRequestError):
    """The prompt (plus the requested answer) does not fit the model's context."""

    code = "context_length_exceeded"


class ModelNotFoundError(TunebackError, LookupError):
    code, status = "model_not_found", 404


class OverloadedError(TunebackError, RuntimeError):
    """The request queue is full, or a request ran out of time: retry later."""

    code, status = "overloaded", 503

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # feedback.errors turns this into Retry-After


class UpstreamError(TunebackError, RuntimeError):
    """The upstream server of the capture proxy failed; ``status`` is what it answered."""

    code = "upstream_error"

    def __init__(
        self, message: str, *, status: int, code: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.status, self.retry_after = status, retry_after


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Strict):
    type: Literal["text"]
    text: Annotated[str, Field(max_length=MAX_TEXT)]


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart] | None = None  # None only for an assistant: see _check
    name: ShortText | None = None

    @model_validator(mode="after")
    def _check(self) -> ChatMessage:
        # OpenAI clients send an assistant turn without text as ``content: null``.
        if self.content is None and self.role != "assistant":
            raise ValueError("content: is required (null only for an assistant message)")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


class JsonSchemaFormat(_Strict):
    """``response_format.json_schema``: the schema the answer must follow."""

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    description: Text | None = None
    # ``schema`` would shadow a BaseModel attribute; the JSON key is still "schema".
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    """OpenAI's ``response_format``: free text, any JSON object, or a JSON schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _check(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError('json_schema: required when type is "json_schema", and only then')
        return self


class ChatRequest(_Strict):
    """The body of ``POST /v1/chat/completions``."""

    model: ShortText
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: Text | list[Text] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Literal[1] | None = None
    response_format: ResponseFormat | None = None
    user: UserRef | None = None
    metadata: dict[ShortText, Annotated[str, Field(max_length=512)]] | None = None

    @model_validator(mode="after")
    def _check(self) -> ChatRequest:
        if isinstance(self.stop, list) and len(self.stop) > MAX_STOPS:
            raise ValueError(f"stop: at most {MAX_STOPS} sequences")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options: only allowed when stream is true")
        if not any(m.text() for m in self.messages):
            raise ValueError("messages: every message is empty")
        return self

    @property
    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def requested_tokens(self) -> int | None:
        """``max_completion_tokens`` (the current name) or else ``max_tokens``."""
        return self.max_completion_tokens or self.max_tokens

    @property
    def output_schema(self) -> dict[str, Any] | None:
        """The JSON schema the answer must follow (``{"type": "object"}`` for
        ``json_object``), or None for free text."""
        fmt = self.response_format
        if fmt is None or fmt.type == "text":
            return None
        if fmt.json_schema is None or fmt.json_schema.schema_ is None:
            return {"type": "object"}
        return fmt.json_schema.schema_

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def plain_messages(self) -> list[dict[str, str]]:
        """The conversation as ``{"role", "content"}`` dicts, as the store keeps it."""
        out = []
        for message in self.messages:
            item = {"role": message.role, "content": message.text()}
            if message.name is not None:
                item["name"] = message.name
            out.append(item)
        return out


def parse_chat_request(body: Any) -> ChatRequest:
    """Validate a decoded JSON body; raise :class:`ChatRequestError` with every problem."""
    if not isinstance(body, dict):
        raise ChatRequestError("the body must be a JSON object")
    body = _without_neutral_arguments(body)
    try:
        return ChatRequest.model_validate(body)
    except ValidationError as error:
        raise ChatRequestError(describe(error)) from None


def _without_neutral_arguments(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` less the :data:`NEUTRAL_ARGUMENTS` that hold a neutral value (or null);
    a :class:`ChatRequestError` naming the first one that does not."""
    kept = dict(body)
    for name, neutral in NEUTRAL_ARGUMENTS.items():
        if name not in kept:
            continue
        value = kept.pop(name)
        if value is not None and not any(_same(value, n) for n in neutral):
            allowed = " or ".join(json.dumps(n) for n in neutral)
            raise ChatRequestError(
                f"{name}: {json.dumps(value)[:80]} is not supported by this server "
                f"(only {allowed}, or leave it out)"
            )
    return kept


def _same(value: Any, neutral: Any) -> bool:
    """Equal and of the same kind: ``false`` is not ``0``, but ``0.0`` is ``0``."""
    number = (int, float)
    if isinstance(neutral, bool) or isinstance(value, bool):
        return type(value) is type(neutral) and value == neutral
    if isinstance(neutral, number):
        return isinstance(value, number) and value == neutral
    return type(value) is type(neutral) and value == neutral


def describe(error: ValidationError) -> str:
    """One readable line per problem, naming the field as OpenAI does (``messages.0.role``)."""
    parts = []
    for problem in error.errors(include_url=False):
        where = ".".join(str(p) for p in problem["loc"] if not _is_union_tag(p))
        if problem["type"] == "extra_forbidden":
            parts.append(f"unrecognized request argument supplied: {where}")
        elif problem["type"] == "missing":
            parts.append(f"{where}: is required")
        else:
            message = problem["msg"].removeprefix("Value error, ")  # pydantic's wording
            parts.append(f"{where}: {message}" if where else message)
    return "; ".join(dict.fromkeys(parts)) or "the request is not valid"


def _is_union_tag(part: Any) -> bool:
    # pydantic names the union member it tried (``str``, ``list[TextPart]``) in the path.
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool"))

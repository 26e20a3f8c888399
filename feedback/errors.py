"""Every error leaves the API as ``{"error": {"code": ..., "message": ...}}``.

Domain errors (:mod:`feedback.exceptions`) carry their own code and status;
HTTP errors from Flask, Werkzeug, APIFlask and Flask-Limiter are mapped to a
stable code here; anything unexpected is logged and answered with a JSON 500
that reveals nothing.
"""

from __future__ import annotations

import logging
from typing import IO, Any

from apiflask import APIFlask
from apiflask.exceptions import HTTPError
from flask import Request, current_app, jsonify
from werkzeug.exceptions import BadRequest, HTTPException, RequestEntityTooLarge
from werkzeug.utils import cached_property
from werkzeug.wsgi import LimitedStream

from feedback.exceptions import TunebackError

log = logging.getLogger(__name__)

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    411: "length_required",
    413: "body_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "rate_limited",
    431: "headers_too_large",
    503: "unavailable",
}


class InvalidJSONError(BadRequest):
    """The body could not be parsed as JSON."""


class JSONRequest(Request):
    """A request whose JSON parse failures say so (Flask's only do in debug),
    and whose chunked bodies over the limit are a 413, not silently cut short."""

    @cached_property
    def max_content_length(self) -> int | None:  # type: ignore[override]
        # Flask looks the limit up through current_app on every read, and a
        # body read reads it several times: once per request is enough. (Set
        # per request, as Flask 3.1 allows, it still takes the new value.)
        return super().max_content_length

    @cached_property
    def stream(self) -> IO[bytes]:
        """The body, read at most up to its Content-Length.

        Werkzeug bounds the input of a server that ends it itself (gunicorn)
        by ``max_content_length`` instead, and then reads it in a loop that
        needs one more read to find the end; bounding it by the length it
        declares is what werkzeug does for other servers, and reads it once.
        """
        length = self.content_length
        if length is None:  # chunked: werkzeug's stream, bounded by the limit
            return super().stream
        limit = self.max_content_length
        if limit is not None and length > limit:
            raise RequestEntityTooLarge()
        return LimitedStream(self.environ["wsgi.input"], length)

    def get_data(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        data = super().get_data(*args, **kwargs)
        limit = self.max_content_length
        # Werkzeug stops reading a chunked body at the limit without saying so;
        # one more byte waiting on the wire means the body was too large.
        if limit is not None and len(data) >= limit and self.content_length is None:
            if self.environ["wsgi.input"].read(1):
                raise RequestEntityTooLarge()
        return data

    def on_json_loading_failed(self, e: ValueError | None):  # noqa: ANN201
        raise InvalidJSONError() from e


def error_response(status: int, code: str, message: str, headers: dict | None = None):
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _validation_message(detail: dict) -> str:
    parts = []
    for location, fields in (detail or {}).items():
        for field, messages in (fields or {}).items():
            where = field if field != "_schema" else location
            parts.append(f"{where}: {'; '.join(messages)}")
    return "; ".join(parts) or "the request is not valid"


NO_NUL = "^[^\\u0000]*$"
# Fields the views cut to the deployment's max_text_chars (``limit_text``).
LIMITED_TEXT = frozenset({"response", "comment", "corrected_response", "note"})
# Free-form metadata: any JSON whose strings and keys hold no NUL.
JSON_VALUE = {
    "anyOf": [
        {"type": "string", "pattern": NO_NUL},
        {"type": ["number", "boolean", "null"]},
        {"type": "array", "items": {"$ref": "#/components/schemas/JSONValue"}},
        {
            "type": "object",
            "propertyNames": {"pattern": NO_NUL},
            "additionalProperties": {"$ref": "#/components/schemas/JSONValue"},
        },
    ]
}


def document_input_rules(spec: dict[str, Any]) -> dict[str, Any]:
    """Make /openapi.json state the input rules the handlers enforce.

    Without this the spec calls bodies optional (a POST without one is a 400),
    allows NUL characters and texts up to the schema's ceiling rather than this
    deployment's ``max_text_chars`` (both 422). A client, or a fuzzer, that
    follows the spec should never meet a refusal the spec did not announce.
    """
    schemas = spec.get("components", {}).get("schemas", {})
    limit = current_app.extensions["tuneback"].settings.max_text_chars
    inputs: set[str] = set()
    for operations in spec.get("paths", {}).values():
        for operation in operations.values():
            body = operation.get("requestBody") if isinstance(operation, dict) else None
            if body:
                body["required"] = True
                _collect_refs(body, schemas, inputs)
    for name in inputs:
        _tighten_strings(schemas[name], limit)
        meta = schemas[name].get("properties", {}).get("metadata")
        if meta is not None and meta.get("additionalProperties") is True:
            schemas["JSONValue"] = JSON_VALUE
            meta["propertyNames"] = {"pattern": NO_NUL}
            meta["additionalProperties"] = {"$ref": "#/components/schemas/JSONValue"}
    return spec


def _collect_refs(node: Any, schemas: dict[str, Any], seen: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref", "")
        name = ref.rsplit("/", 1)[-1] if ref.startswith("#/components/schemas/") else None
        if name and name not in seen and name in schemas:
            seen.add(name)
            _collect_refs(schemas[name], schemas, seen)
        for value in node.values():
            _collect_refs(value, schemas, seen)
    elif isinstance(node, list):
        for value in node:
            _collect_refs(value, schemas, seen)


def _tighten_strings(node: Any, limit: int, field: str = "") -> None:
    """Free-text strings of a request schema: no NUL; the fields the views
    limit at most ``limit`` characters."""
    if isinstance(node, dict):
        if node.get("type") == "string" and "enum" not in node and "format" not in node:
            node.setdefault("pattern", NO_NUL)
            if field in LIMITED_TEXT and node.get("maxLength", 0) > limit:
                node["maxLength"] = limit
        for key, value in node.items():
            _tighten_strings(value, limit, field if key in ("anyOf", "oneOf") else key)
    elif isinstance(node, list):
        for value in node:
            _tighten_strings(value, limit, field)


def register_error_handlers(app: APIFlask) -> None:
    app.spec_processor(document_input_rules)

    @app.errorhandler(TunebackError)
    def _domain(error: TunebackError):
        retry_after = getattr(error, "retry_after", None)
        headers = {"Retry-After": str(retry_after)} if retry_after else None
        return error_response(error.status, error.code, error.message, headers)

    @app.errorhandler(HTTPError)
    def _apiflask(error: HTTPError):
        if error.status_code == 422 and error.detail:
            return error_response(422, "invalid_input", _validation_message(error.detail))
        code = HTTP_CODES.get(error.status_code, "error")
        return error_response(error.status_code, code, error.message or code, error.headers)

    @app.errorhandler(HTTPException)
    def _werkzeug(error: HTTPException):
        status = error.code or 500
        headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
        message = error.description or error.name
        if isinstance(error, InvalidJSONError):
            return error_response(400, "invalid_json", "the body is not valid JSON")
        if status == 413:
            message = "the request body is larger than this server accepts"
        if status == 429:
            message = f"rate limit exceeded ({error.description}); retry later"
        return error_response(status, HTTP_CODES.get(status, "error"), message, headers)

    @app.errorhandler(RecursionError)
    def _too_deep(_error: RecursionError):
        # Valid JSON, but deeper than the parser goes: refused like any over-deep input.
        return error_response(422, "invalid_input", "the JSON body is nested too deeply")

    @app.errorhandler(Exception)
    def _unexpected(error: Exception):
        log.exception("unhandled error", exc_info=error)
        return error_response(500, "internal", "internal error; it has been logged")

"""OpenAI Chat Completions JSON <-> Tollway gateway messages. Pure functions, no I/O."""

from __future__ import annotations

import json
import time
from typing import Any

import grpc

from tollway.common import codec
from tollway.common.caching import CacheMode
from tollway.common.v1 import common_pb2
from tollway.gateway.v1 import gateway_pb2
from tollway.mesh.errors import InvalidArgument


def finish(value: int) -> str:
    """OpenAI's finish_reason for a proto one (Tollway's names are OpenAI's)."""
    return codec.finish_reason_from_proto(value, "stop")


def tier(value: int) -> str:
    """The ``x-tollway-cache-tier`` header value: the tier's name, or "none" when the cache was not asked."""
    return codec.cache_tier_from_proto(value).value or "none"


# gRPC status -> (HTTP status, OpenAI error type), as OpenAI clients expect them.
HTTP_ERRORS: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout"),
}


def _content(value: Any, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for i, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise InvalidArgument(
                    f"{where}[{i}]: only text content parts are supported",
                    [(f"{where}[{i}].type", "only 'text' parts are supported")],
                )
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise InvalidArgument(f"{where} must be a string or a list of text parts", [(where, "string or list")])


def chat_request(body: Any) -> tuple[gateway_pb2.GenerateRequest, bool, bool]:
    """Translates a chat-completions body.

    Returns:
        The gateway request, whether the client asked for a stream, and whether it asked
        for a final usage chunk (``stream_options.include_usage``).

    Raises:
        InvalidArgument: The body is not a chat-completions request Tollway can serve.
    """
    if not isinstance(body, dict):
        raise InvalidArgument("the request body must be a JSON object", [("body", "JSON object")])
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise InvalidArgument("'messages' is required and must be a list", [("messages", "list of messages")])
    if body.get("n", 1) != 1:
        raise InvalidArgument("only n=1 is supported", [("n", "must be 1")])
    req = gateway_pb2.GenerateRequest(model=str(body.get("model") or ""))
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise InvalidArgument(f"messages[{i}] must be an object", [(f"messages[{i}]", "object")])
        req.messages.add(
            role=str(m.get("role", "")),
            content=_content(m.get("content"), f"messages[{i}].content"),
            name=str(m.get("name") or ""),
        )
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        if not isinstance(max_tokens, int):
            raise InvalidArgument("max_tokens must be an integer", [("max_tokens", "integer")])
        req.max_tokens = max_tokens
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None:
            if not isinstance(value, int | float):
                raise InvalidArgument(f"{name} must be a number", [(name, "number")])
            setattr(req, name, float(value))
    stop = body.get("stop")
    if stop is not None:
        req.stop.extend([stop] if isinstance(stop, str) else [str(s) for s in stop])
    if isinstance(body.get("seed"), int):
        req.seed = body["seed"]
    req.user = str(body.get("user") or "")
    metadata = body.get("metadata") or {}
    if isinstance(metadata, dict):
        req.feature = str(metadata.get("feature", ""))
    stream = bool(body.get("stream"))
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    return req, stream, include_usage


# The header names a mode as CacheMode does; "default" (or nothing) is the normal mode.
_HEADER_MODES = {
    **{m.value: codec.cache_mode_to_proto(m) for m in CacheMode},
    "default": common_pb2.CACHE_MODE_UNSPECIFIED,
}


def apply_cache_headers(req: gateway_pb2.GenerateRequest, headers: Any) -> None:
    """Reads ``x-tollway-cache-mode`` and ``x-tollway-cache-namespace`` (the OpenAI body has no place for them).

    Raises:
        InvalidArgument: The mode is not default, bypass or refresh.
    """
    mode = headers.get("x-tollway-cache-mode", "").strip().lower()
    if mode not in _HEADER_MODES:
        raise InvalidArgument(
            f"x-tollway-cache-mode is {mode!r}; use default, bypass or refresh",
            [("x-tollway-cache-mode", "default, bypass or refresh")],
        )
    req.cache_policy.mode = _HEADER_MODES[mode]
    req.cache_policy.namespace = headers.get("x-tollway-cache-namespace", "").strip()


def complete_request(req: gateway_pb2.GenerateRequest) -> gateway_pb2.CompleteRequest:
    """The same request, for the unary RPC (the two messages share field numbers)."""
    return gateway_pb2.CompleteRequest.FromString(req.SerializeToString())


def usage_json(usage: common_pb2.Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
    }


def completion_json(reply: gateway_pb2.CompleteResponse) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{reply.request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": reply.model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish(reply.finish_reason),
            }
        ],
        "usage": usage_json(reply.usage),
    }


def chunk_bytes(chunk_id: str, model: str, created: int, delta: dict[str, Any], finish: str | None) -> bytes:
    payload = {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def usage_chunk_bytes(chunk_id: str, model: str, created: int, usage: common_pb2.Usage) -> bytes:
    payload = {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage_json(usage),
    }
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def error_json(message: str, kind: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}

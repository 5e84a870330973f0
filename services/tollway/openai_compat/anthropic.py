"""Anthropic Messages (``POST /v1/messages``, ``/v1/messages/count_tokens``) <-> the gateway.

So that the official ``anthropic`` SDK pointed at Tollway works against any model of the
catalog: the key may come as ``x-api-key`` (what the SDK sends) or a bearer token; answers
are Anthropic's message object, or its event stream (``message_start``, ``content_block_start``,
``ping``, ``content_block_delta``..., ``content_block_stop``, ``message_delta``, ``message_stop``);
errors are Anthropic's ``{"type": "error", ...}`` with the matching status.

What the gateway cannot carry yet (tool definitions and tool blocks, images, extended thinking,
``top_k``) is refused with a 400 naming the field, never dropped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from tollway.common.tokens import count_prompt_tokens
from tollway.common.v1 import common_pb2
from tollway.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from tollway.mesh.errors import InvalidArgument
from tollway.openai_compat import http, translate
from tollway.openai_compat.errors import ApiError, anthropic_body, from_invalid, from_rpc, sse, stream_failure
from tollway.openai_compat.fields import bad as _bad
from tollway.openai_compat.fields import integer as _integer
from tollway.openai_compat.fields import string as _string

# Tollway's finish reasons in Anthropic's words.
STOP_REASONS = {
    common_pb2.FINISH_REASON_STOP: "end_turn",
    common_pb2.FINISH_REASON_LENGTH: "max_tokens",
    common_pb2.FINISH_REASON_TOOL_CALLS: "tool_use",
    common_pb2.FINISH_REASON_CONTENT_FILTER: "refusal",
}
_KEYS = frozenset(
    {
        "model", "messages", "max_tokens", "system", "stop_sequences", "temperature", "top_p", "top_k",
        "stream", "metadata", "tools", "tool_choice", "thinking", "service_tier", "container", "mcp_servers",
    }
)  # fmt: skip
# Parameters of the API that the gateway cannot carry yet: refused, naming what would be lost.
_NOT_CARRIED = {
    "tools": "tool definitions",
    "tool_choice": "a tool choice",
    "thinking": "extended thinking",
    "top_k": "top_k sampling",
    "container": "code-execution containers",
    "mcp_servers": "MCP servers",
}
# A failure inside a stream, by gRPC code, as the HTTP status whose error type Anthropic would send.
_STREAM_STATUS = {8: 429, 14: 529, 4: 504}
_COUNT_KEYS = frozenset({"model", "messages", "system", "tools", "tool_choice", "thinking"})


def _text_blocks(value: Any, where: str) -> str:
    """The text of a content value: a string, or a list of text blocks (others refused)."""
    if type(value) is str:
        return value
    if type(value) is not list:
        raise _bad(where, "a string or an array of content blocks", value)
    parts = []
    for i, block in enumerate(value):
        if type(block) is not dict:
            raise _bad(f"{where}[{i}]", "a content block object", block)
        kind = block.get("type")
        if kind != "text":
            raise InvalidArgument(
                f"{where}[{i}] is a {kind!r} block; Tollway's Messages API carries text blocks only "
                "(tool, image and document blocks are not supported yet)",
                [(f"{where}[{i}].type", "only 'text' blocks are supported")],
                reason="CAPABILITY_UNSUPPORTED",
            )
        text = block.get("text")
        if type(text) is not str:
            raise _bad(f"{where}[{i}].text", "a string", text)
        parts.append(text)
    return "".join(parts)


def _refuse_unknown(body: dict[str, Any], known: frozenset[str]) -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        raise InvalidArgument(
            f"{', '.join(map(repr, unknown))}: Extra inputs are not permitted",
            [(k, "unknown parameter") for k in unknown],
        )
    for key, what in _NOT_CARRIED.items():
        if body.get(key) is not None:
            raise InvalidArgument(
                f"{key!r} ({what}) is not supported by Tollway's Messages API yet; the request was not sent. "
                "Remove the parameter (Tollway never answers without honouring it)",
                [(key, f"{what}: not supported")],
                reason="CAPABILITY_UNSUPPORTED",
            )


def _turns(body: dict[str, Any]) -> list[tuple[str, str]]:
    """``(role, text)`` of the system prompt and the messages, in order."""
    turns: list[tuple[str, str]] = []
    system = body.get("system")
    if system is not None:
        text = _text_blocks(system, "system")
        if text:
            turns.append(("system", text))
    messages = body.get("messages")
    if type(messages) is not list or not messages:
        raise InvalidArgument("'messages' is required: a non-empty array", [("messages", "a non-empty array")])
    for i, m in enumerate(messages):
        if type(m) is not dict:
            raise _bad(f"messages[{i}]", "an object", m)
        role = m.get("role")
        if role not in ("user", "assistant"):
            raise InvalidArgument(
                f"messages[{i}].role is {role!r}; use 'user' or 'assistant' (the system prompt goes in 'system')",
                [(f"messages[{i}].role", "user or assistant")],
            )
        turns.append((role, _text_blocks(m.get("content"), f"messages[{i}].content")))
    return turns


def messages_request(body: Any) -> tuple[gateway_pb2.GenerateRequest, bool]:
    """Translates a Messages body.

    Returns:
        The gateway request and whether the client asked for a stream.

    Raises:
        InvalidArgument: Not a request Tollway can serve; names the field.
    """
    if type(body) is not dict:
        raise InvalidArgument("the request body must be a JSON object", [("body", "JSON object")])
    _refuse_unknown(body, _KEYS)
    model = body.get("model")
    if type(model) is not str or not model:
        raise InvalidArgument("'model' is required: a model from GET /v1/models", [("model", "a model name")])
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise InvalidArgument("'max_tokens' is required", [("max_tokens", "an integer, 1 or more")])
    req = gateway_pb2.GenerateRequest(model=model, max_tokens=_integer(max_tokens, "max_tokens", 1, 2**31 - 1))
    for role, text in _turns(body):
        req.messages.add(role=role, content=text)
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None:
            if type(value) is not float and type(value) is not int:
                raise _bad(name, "a number", value)
            setattr(req, name, float(value))
    stops = body.get("stop_sequences")
    if stops is not None:
        if type(stops) is not list:
            raise _bad("stop_sequences", "an array of strings", stops)
        for i, s in enumerate(stops):
            if type(s) is not str:
                raise _bad(f"stop_sequences[{i}]", "a string", s)
        req.stop.extend(stops)
    metadata = body.get("metadata")
    if metadata is not None:
        if type(metadata) is not dict:
            raise _bad("metadata", "an object", metadata)
        req.user = _string(metadata.get("user_id"), "metadata.user_id")
    stream = body.get("stream")
    if stream is not None and type(stream) is not bool:
        raise _bad("stream", "a boolean", stream)
    return req, stream is True


def count_tokens_request(body: Any) -> tuple[str, int]:
    """``(model, input tokens)`` of a count_tokens body, counted as the gateway budgets a prompt.

    Raises:
        InvalidArgument: Not a request Tollway can count; names the field.
    """
    if type(body) is not dict:
        raise InvalidArgument("the request body must be a JSON object", [("body", "JSON object")])
    _refuse_unknown(body, _COUNT_KEYS)
    model = body.get("model")
    if type(model) is not str or not model:
        raise InvalidArgument("'model' is required: a model from GET /v1/models", [("model", "a model name")])
    return model, count_prompt_tokens(_turns(body))


def usage_json(usage: common_pb2.Usage) -> dict[str, int]:
    """Anthropic's usage: its ``input_tokens`` leave out the tokens read from the prompt cache."""
    return {
        "input_tokens": usage.input_tokens - usage.cached_input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": usage.cached_input_tokens,
    }


def message_json(reply: gateway_pb2.CompleteResponse) -> dict[str, Any]:
    return {
        "id": f"msg_{reply.request_id}",
        "type": "message",
        "role": "assistant",
        "model": reply.model,
        "content": [{"type": "text", "text": reply.text}],
        "stop_reason": STOP_REASONS.get(reply.finish_reason, "end_turn"),
        "stop_sequence": None,
        "usage": usage_json(reply.usage),
    }


async def events(call: Any, started: gateway_pb2.Started) -> AsyncIterator[bytes]:
    """Anthropic's event sequence for one Generate stream; a failure after the start is an
    ``error`` event (as Anthropic sends one mid-stream). The call is cancelled on every exit,
    so a client that leaves cancels the provider call."""
    message = {
        "id": f"msg_{started.request_id}",
        "type": "message",
        "role": "assistant",
        "model": started.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0},
    }
    try:
        yield sse("message_start", {"type": "message_start", "message": message})
        yield sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        )
        yield sse("ping", {"type": "ping"})
        while (event := await call.read()) is not grpc.aio.EOF:
            kind = event.WhichOneof("event")
            if kind == "delta":
                delta = {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": event.delta.text},
                }
                yield sse("content_block_delta", delta)
            elif kind == "completed":
                c = event.completed
                yield sse("content_block_stop", {"type": "content_block_stop", "index": 0})
                stop = {"stop_reason": STOP_REASONS.get(c.finish_reason, "end_turn"), "stop_sequence": None}
                yield sse("message_delta", {"type": "message_delta", "delta": stop, "usage": usage_json(c.usage)})
                yield sse("message_stop", {"type": "message_stop"})
            elif kind == "error":
                yield sse("error", anthropic_body(_STREAM_STATUS.get(event.error.code, 500), event.error.message))
                return
    except grpc.aio.AioRpcError as err:
        message_text, _ = stream_failure(err)
        yield sse("error", anthropic_body(500, message_text))
    finally:
        call.cancel()


def _request_headers(request: Request) -> None:
    """Anthropic's API requires ``anthropic-version``; its SDK always sends it.

    Raises:
        ApiError: 400 when it is missing.
    """
    if not request.headers.get("anthropic-version"):
        raise ApiError(
            400,
            "anthropic-version: header is required (for example 'anthropic-version: 2023-06-01')",
            "invalid_request_error",
        )


async def handle_messages(stub: gateway_pb2_grpc.GatewayServiceStub, request: Request, max_body_bytes: int) -> Response:
    """``POST /v1/messages``."""
    try:
        _request_headers(request)
        body = await http.json_body(request, max_body_bytes)
        metadata = http.metadata(request, api_key_header=True)
        try:
            req, stream = messages_request(body)
            translate.apply_cache_headers(req, request.headers)
            http.apply_budget_headers(req, request)
        except InvalidArgument as exc:
            raise from_invalid(exc) from None
        if not stream:
            reply, headers = await http.complete(stub, translate.complete_request(req), metadata, request)
            return JSONResponse(message_json(reply), headers={"request-id": f"req_{reply.request_id}", **headers})
        call, started, headers = await http.open_stream(stub, req, metadata)
    except ApiError as exc:
        return exc.anthropic()
    except http.ClientGone:
        return Response(status_code=499)
    return StreamingResponse(
        events(call, started),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "request-id": f"req_{started.request_id}", **headers},
    )


async def handle_count_tokens(
    stub: gateway_pb2_grpc.GatewayServiceStub, request: Request, max_body_bytes: int
) -> Response:
    """``POST /v1/messages/count_tokens``: the key is checked and the model looked up in the
    catalog (through the gateway); the count is Tollway's, the one the budget reserves."""
    try:
        _request_headers(request)
        body = await http.json_body(request, max_body_bytes)
        metadata = http.metadata(request, api_key_header=True)
        try:
            model, tokens = count_tokens_request(body)
        except InvalidArgument as exc:
            raise from_invalid(exc) from None
        try:
            catalog = await stub.ListModels(gateway_pb2.ListModelsRequest(), metadata=metadata)
        except grpc.aio.AioRpcError as err:
            raise from_rpc(err) from None
        if all(m.name != model for m in catalog.models) and model != "auto":
            known = ", ".join(m.name for m in catalog.models)
            raise ApiError(404, f"model: {model!r} is not in the catalog; known models: {known}", "not_found_error")
    except ApiError as exc:
        return exc.anthropic()
    return JSONResponse({"input_tokens": tokens})

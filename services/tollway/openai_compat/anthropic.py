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

import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from tollway.common.tokens import count_prompt_tokens, count_tokens
from tollway.common.v1 import common_pb2
from tollway.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from tollway.mesh.errors import InvalidArgument
from tollway.openai_compat import http, tools, translate
from tollway.openai_compat.errors import ApiError, anthropic_body, from_invalid, from_rpc, stream_failure
from tollway.openai_compat.fields import bad as _bad
from tollway.openai_compat.fields import integer as _integer
from tollway.openai_compat.fields import string as _string
from tollway.openai_compat.json_response import JsonResponse
from tollway.openai_compat.translate import sse

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
        "cache", "feature", "priority", "retrieval",
    }
)  # fmt: skip
# Parameters of the API that the gateway cannot carry yet: refused, naming what would be lost.
_NOT_CARRIED = {
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


@dataclasses.dataclass
class _Turn:
    role: str
    text: str
    calls: list[common_pb2.ToolCall] = dataclasses.field(default_factory=list)
    call_id: str = ""


def _message_turns(role: str, content: Any, where: str) -> list[_Turn]:
    """The turns of one message: its text, the tool_use blocks of an assistant message as its
    calls, the tool_result blocks of a user message as "tool" turns (before the user's text)."""
    if type(content) is str:
        return [_Turn(role, content)]
    if type(content) is not list:
        raise _bad(where, "a string or an array of content blocks", content)
    texts: list[str] = []
    calls: list[common_pb2.ToolCall] = []
    results: list[_Turn] = []
    for i, block in enumerate(content):
        at = f"{where}[{i}]"
        kind = block.get("type") if type(block) is dict else None
        if kind == "tool_use" and role == "assistant":
            arguments = block.get("input", {})
            if type(arguments) is not dict:
                raise _bad(f"{at}.input", "an object", arguments)
            calls.append(
                common_pb2.ToolCall(
                    id=_string(block.get("id"), f"{at}.id"),
                    name=_string(block.get("name"), f"{at}.name"),
                    arguments_json=json.dumps(arguments, separators=(",", ":")),
                    index=len(calls),
                )
            )
        elif kind == "tool_result" and role == "user":
            value = block.get("content", "")
            text = value if type(value) is str else _text_blocks(value, f"{at}.content")
            results.append(_Turn("tool", text, call_id=_string(block.get("tool_use_id"), f"{at}.tool_use_id")))
        elif kind == "text":
            texts.append(_string(block.get("text"), f"{at}.text"))
        else:
            raise InvalidArgument(
                f"{at} is a {kind!r} block in a {role} message; Tollway's Messages API carries text, "
                "tool_use (assistant) and tool_result (user) blocks (images and documents are not supported yet)",
                [(f"{at}.type", "text, tool_use or tool_result")],
                reason="CAPABILITY_UNSUPPORTED",
            )
    text = "".join(texts)
    if role == "assistant":
        return [_Turn(role, text, calls)]
    return [*results, _Turn(role, text)] if text or not results else results


def _turns(body: dict[str, Any]) -> list[_Turn]:
    """The turns of the system prompt and the messages, in order."""
    turns: list[_Turn] = []
    system = body.get("system")
    if system is not None:
        text = _text_blocks(system, "system")
        if text:
            turns.append(_Turn("system", text))
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
        turns.extend(_message_turns(role, m.get("content"), f"messages[{i}].content"))
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
    for turn in _turns(body):
        req.messages.add(role=turn.role, content=turn.text)
        if turn.calls or turn.call_id:
            extras = req.message_extras.add(message_index=len(req.messages) - 1, tool_call_id=turn.call_id)
            extras.tool_calls.extend(turn.calls)
    if body.get("tools"):
        req.tools.extend(tools.anthropic_tools(body["tools"]))
        if body.get("tool_choice") is not None:
            req.tool_choice.CopyFrom(tools.anthropic_tool_choice(body["tool_choice"]))
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
    # Tollway's own options (the SDK sends them with extra_body), as on the OpenAI surfaces.
    translate.tollway_options(body, req)
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
    turns = _turns(body)
    tokens = count_prompt_tokens((t.role, t.text) for t in turns)
    # Tool calls, results' ids and tool schemas are billed as input too.
    tokens += sum(count_tokens(c.name) + count_tokens(c.arguments_json) for t in turns for c in t.calls)
    if body.get("tools"):
        tokens += sum(
            count_tokens(t.name) + count_tokens(t.description) + count_tokens(t.parameters_json)
            for t in tools.anthropic_tools(body["tools"])
        )
    return model, tokens


def usage_json(usage: common_pb2.Usage) -> dict[str, int]:
    """Anthropic's usage: its ``input_tokens`` leave out the tokens read from and written to the
    prompt cache, which it reports apart."""
    return {
        "input_tokens": usage.input_tokens - usage.cached_input_tokens - usage.cache_write_input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_creation_input_tokens": usage.cache_write_input_tokens,
        "cache_read_input_tokens": usage.cached_input_tokens,
    }


def content_json(text: str, calls: Any) -> list[dict[str, Any]]:
    """The content blocks of an answer: its text (unless it is only tool calls), then a tool_use per call."""
    blocks: list[dict[str, Any]] = [{"type": "text", "text": text}] if text or not calls else []
    for c in calls:
        blocks.append({"type": "tool_use", "id": c.id, "name": c.name, "input": json.loads(c.arguments_json or "{}")})
    return blocks


def message_json(reply: gateway_pb2.CompleteResponse) -> dict[str, Any]:
    return {
        "id": f"msg_{reply.request_id}",
        "type": "message",
        "role": "assistant",
        "model": reply.model,
        "content": content_json(reply.text, reply.tool_calls),
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
    # Tool call index -> its content block (the text block is 0; each call opens the next).
    blocks: dict[int, int] = {}
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
            elif kind == "tool_call":
                piece = event.tool_call
                if piece.index not in blocks:
                    yield sse("content_block_stop", {"type": "content_block_stop", "index": len(blocks)})
                    blocks[piece.index] = len(blocks) + 1
                    block = {"type": "tool_use", "id": piece.id, "name": piece.name, "input": {}}
                    start = {"type": "content_block_start", "index": blocks[piece.index], "content_block": block}
                    yield sse("content_block_start", start)
                if piece.arguments_fragment:
                    delta = {"type": "input_json_delta", "partial_json": piece.arguments_fragment}
                    payload = {"type": "content_block_delta", "index": blocks[piece.index], "delta": delta}
                    yield sse("content_block_delta", payload)
            elif kind == "completed":
                c = event.completed
                yield sse("content_block_stop", {"type": "content_block_stop", "index": len(blocks)})
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
            return JsonResponse(message_json(reply), headers={"request-id": f"req_{reply.request_id}", **headers})
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
    return JsonResponse({"input_tokens": tokens})

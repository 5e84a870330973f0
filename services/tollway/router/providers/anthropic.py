"""Anthropic Messages wire format (``POST /v1/messages``).

The stream is ``message_start`` (input and cache usage), then per content block
``content_block_start`` / ``content_block_delta``* / ``content_block_stop``, then
``message_delta`` (stop reason, output usage) and ``message_stop``; ``ping`` may come
anywhere and ``error`` ends it. System turns become the top-level ``system`` blocks, tool
results become ``tool_result`` blocks in a user turn, and ``cache_breakpoint`` becomes
``cache_control: {type: ephemeral}`` on the block it marks.

Anthropic has no ``response_format``: a JSON answer is obtained by forcing a single tool
whose input schema is the requested schema, and that tool's input is passed on as the
answer text.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator
from typing import Any

from tollway.common.catalog import Deployment
from tollway.common.chat import ChatRequest, FinishReason, TextDelta, Usage
from tollway.mesh.httpclient import HttpClient, Response
from tollway.router.providers.wire import (
    new_client,
    parse_json,
    parses_answer,
    post_whole,
    sse_events,
    stream_call,
    stream_cut,
)
from tollway.router.tools import ToolCallAssembler, ToolCallError
from tollway.router.types import (
    Completion,
    ErrorKind,
    ProviderError,
    StreamEnd,
    StreamEvent,
    ToolCallDelta,
    UsageUpdate,
)

API_VERSION = "2023-06-01"
_EPHEMERAL = {"type": "ephemeral"}

_STOP: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# Error types Anthropic reports, in a body or as a mid-stream `error` event.
_ERROR_KINDS = {
    "invalid_request_error": ErrorKind.BAD_REQUEST,
    "request_too_large": ErrorKind.BAD_REQUEST,
    "authentication_error": ErrorKind.AUTH,
    "permission_error": ErrorKind.AUTH,
    "not_found_error": ErrorKind.NOT_FOUND,
    "rate_limit_error": ErrorKind.RATE_LIMITED,
    "overloaded_error": ErrorKind.OVERLOADED,
    "api_error": ErrorKind.SERVER_ERROR,
    "timeout_error": ErrorKind.TIMEOUT,
}


def json_tool_name(request: ChatRequest) -> str:
    """The forced tool that carries a JSON answer, or "" when the answer is plain text."""
    if not request.response_format.wants_json or request.tools:
        return ""
    return request.response_format.name or "answer"


def _text_block(text: str, cache: bool) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": text}
    if cache:
        block["cache_control"] = _EPHEMERAL
    return block


def request_body(request: ChatRequest, deployment: Deployment, *, stream: bool = True) -> dict[str, Any]:
    """The JSON body of a Messages call."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for m in request.messages:
        if m.role == "system":
            system.append(_text_block(m.content, m.cache_breakpoint))
            continue
        if m.role == "tool":
            role = "user"
            block: dict[str, Any] = {"type": "tool_result", "tool_use_id": m.tool_call_id, "content": m.content}
            if m.cache_breakpoint:
                block["cache_control"] = _EPHEMERAL
            blocks = [block]
        else:
            role = "assistant" if m.role == "assistant" else "user"
            blocks = [_text_block(m.content, m.cache_breakpoint and not m.tool_calls)] if m.content else []
            for i, call in enumerate(m.tool_calls):
                use: dict[str, Any] = {
                    "type": "tool_use",
                    "id": call.id,
                    "name": call.name,
                    "input": json.loads(call.arguments or "{}"),
                }
                if m.cache_breakpoint and i == len(m.tool_calls) - 1:
                    use["cache_control"] = _EPHEMERAL
                blocks.append(use)
        # The API wants strictly alternating roles: consecutive turns of one role merge.
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    body: dict[str, Any] = {
        "model": deployment.upstream_model,
        "messages": turns,
        "max_tokens": request.max_tokens or deployment.default_max_tokens,
    }
    if stream:
        body["stream"] = True
    if system:
        body["system"] = system
    if request.temperature is not None:
        # Anthropic's range is [0, 1]; OpenAI-style values up to 2 are scaled down.
        body["temperature"] = min(1.0, request.temperature)
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop:
        body["stop_sequences"] = list(request.stop)
    if request.tenant:
        body["metadata"] = {"user_id": request.tenant}
    tools: list[dict[str, Any]] = []
    for t in request.tools:
        tool: dict[str, Any] = {"name": t.name, "description": t.description, "input_schema": t.parameters}
        if t.cache_breakpoint:
            tool["cache_control"] = _EPHEMERAL
        tools.append(tool)
    forced = json_tool_name(request)
    if forced:
        schema = request.response_format.schema or {"type": "object"}
        tools = [{"name": forced, "description": "Return the answer as this JSON object.", "input_schema": schema}]
        body["tool_choice"] = {"type": "tool", "name": forced}
    elif request.tools:
        choice = request.tool_choice
        body["tool_choice"] = (
            {"type": "tool", "name": choice.name}
            if choice.mode == "tool"
            else {"type": {"auto": "auto", "none": "none", "required": "any"}[choice.mode]}
        )
    if tools:
        body["tools"] = tools
    return body


def _usage(u: dict[str, Any], base: Usage | None = None) -> Usage:
    """Unified usage from Anthropic's, where ``input_tokens`` excludes cache reads and writes."""
    base = base or Usage()
    plain = int(u.get("input_tokens") if u.get("input_tokens") is not None else -1)
    read = u.get("cache_read_input_tokens")
    write = u.get("cache_creation_input_tokens")
    read_n = int(read) if read is not None else base.cached_input_tokens
    write_n = int(write) if write is not None else base.cache_write_input_tokens
    total_in = plain + read_n + write_n if plain >= 0 else base.input_tokens
    out = u.get("output_tokens")
    return Usage(
        input_tokens=total_in,
        output_tokens=int(out) if out is not None else base.output_tokens,
        cached_input_tokens=read_n,
        cache_write_input_tokens=write_n,
    )


def _error_kind(body: dict[str, Any]) -> tuple[ErrorKind, str]:
    err = body.get("error") or {}
    return _ERROR_KINDS.get(str(err.get("type")), ErrorKind.SERVER_ERROR), str(err.get("message") or err)


class AnthropicAdapter:
    """One pooled HTTP client for every Anthropic deployment."""

    def __init__(self, client: HttpClient | None = None) -> None:
        self._client = client or new_client()

    async def aclose(self) -> None:
        await self._client.aclose()

    @staticmethod
    def _headers(request: ChatRequest, deployment: Deployment, stream: bool) -> dict[str, str]:
        headers = {
            "accept": "text/event-stream" if stream else "application/json",
            "anthropic-version": API_VERSION,
        }
        if deployment.api_key:
            headers["x-api-key"] = deployment.api_key
        if request.request_id:
            headers["x-request-id"] = request.request_id
        return headers

    def stream(self, request: ChatRequest, deployment: Deployment) -> AsyncGenerator[StreamEvent, None]:
        url = deployment.base_url.rstrip("/") + "/v1/messages"
        headers = self._headers(request, deployment, True)
        json_tool = json_tool_name(request)
        return stream_call(
            self._client,
            deployment,
            url,
            request_body(request, deployment),
            headers,
            lambda response: self._events(response, deployment.provider, json_tool),
        )

    async def _events(self, response: Response, provider: str, json_tool: str) -> AsyncGenerator[StreamEvent, None]:
        usage = Usage()
        finish: FinishReason = ""
        # Content block index -> tool call number; text blocks are not tool calls.
        tool_blocks: dict[int, int] = {}
        json_blocks: set[int] = set()
        async with contextlib.aclosing(sse_events(response.aiter_bytes())) as events:
            async for sse in events:
                doc = parse_json(provider, sse.data)
                kind = doc.get("type") if isinstance(doc, dict) else None
                if kind == "message_start":
                    usage = _usage((doc.get("message") or {}).get("usage") or {}, usage)
                    yield UsageUpdate(usage)
                elif kind == "content_block_start":
                    block = doc.get("content_block") or {}
                    index = int(doc.get("index") or 0)
                    if block.get("type") == "tool_use":
                        if json_tool and block.get("name") == json_tool:
                            json_blocks.add(index)
                            continue
                        tool_blocks[index] = len(tool_blocks)
                        yield ToolCallDelta(tool_blocks[index], id=block.get("id") or "", name=block.get("name") or "")
                    elif block.get("type") == "text" and block.get("text"):
                        yield TextDelta(block["text"])
                elif kind == "content_block_delta":
                    delta = doc.get("delta") or {}
                    index = int(doc.get("index") or 0)
                    if delta.get("type") == "text_delta" and delta.get("text"):
                        yield TextDelta(delta["text"])
                    elif delta.get("type") == "input_json_delta":
                        fragment = delta.get("partial_json") or ""
                        if index in json_blocks:
                            if fragment:
                                yield TextDelta(fragment)
                        elif index in tool_blocks and fragment:
                            yield ToolCallDelta(tool_blocks[index], arguments=fragment)
                    # thinking_delta and signature_delta are not part of the answer.
                elif kind == "message_delta":
                    stop = (doc.get("delta") or {}).get("stop_reason")
                    if stop:
                        finish = _STOP.get(stop, "stop")
                        if finish == "tool_calls" and not tool_blocks:
                            finish = "stop"  # the forced JSON tool is the answer, not a call
                    usage = _usage(doc.get("usage") or {}, usage)
                    yield UsageUpdate(usage)
                elif kind == "message_stop":
                    yield StreamEnd(finish or "stop", usage)
                    return
                elif kind == "error":
                    err_kind, message = _error_kind(doc)
                    raise ProviderError(provider, f"stream error: {message}", kind=err_kind)
                elif kind is None:
                    raise ProviderError(provider, f"malformed SSE data: {sse.data[:200]!r}", kind=ErrorKind.MALFORMED)
        raise stream_cut(provider, "message_stop")

    @parses_answer
    async def complete(self, request: ChatRequest, deployment: Deployment) -> Completion:
        url = deployment.base_url.rstrip("/") + "/v1/messages"
        body = request_body(request, deployment, stream=False)
        raw = await post_whole(self._client, deployment, url, body, self._headers(request, deployment, False))
        doc = parse_json(deployment.provider, raw)
        if not isinstance(doc, dict) or not isinstance(doc.get("content"), list):
            raise ProviderError(deployment.provider, f"answer without content: {raw[:200]!r}", kind=ErrorKind.MALFORMED)
        forced = json_tool_name(request)
        text: list[str] = []
        calls = ToolCallAssembler()
        for block in doc["content"]:
            if block.get("type") == "text":
                text.append(block.get("text") or "")
            elif block.get("type") == "tool_use":
                args = json.dumps(block.get("input") or {})
                if forced and block.get("name") == forced:
                    text.append(args)
                else:
                    calls.add(ToolCallDelta(len(calls), block.get("id") or "", block.get("name") or "", args))
        try:
            tool_calls = calls.calls()
        except ToolCallError as exc:
            raise ProviderError(deployment.provider, str(exc), kind=ErrorKind.MALFORMED) from None
        finish = _STOP.get(str(doc.get("stop_reason")), "stop")
        if finish == "tool_calls" and not tool_calls:
            finish = "stop"
        return Completion(
            "".join(text), tool_calls, finish, _usage(doc.get("usage") or {}) if doc.get("usage") else None
        )

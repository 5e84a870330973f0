"""OpenAI Chat Completions wire format: OpenAI itself, llama.cpp, vLLM, Ollama.

Streams with ``stream: true`` and ``stream_options.include_usage`` and parses the
Server-Sent Events incrementally, so each delta is passed on the moment its line
arrives. Tool calls arrive as fragments keyed by ``index``; they are passed on as
ToolCallDelta for the router to reassemble. Servers that ignore ``include_usage``
(llama.cpp) end without usage; the router then counts tokens itself.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator
from typing import Any

from tollway.common.catalog import Deployment
from tollway.common.chat import ChatMessage, ChatRequest, FinishReason, TextDelta, Usage
from tollway.mesh.httpclient import HttpClient, Response
from tollway.router.providers.wire import (
    new_client,
    parse_json,
    parses_answer,
    post_whole,
    sse_batches,
    stream_call,
    stream_cut,
)
from tollway.router.tools import ToolCallAssembler, ToolCallError
from tollway.router.types import Completion, ErrorKind, ProviderError, StreamEnd, StreamEvent, ToolCallDelta

# Providers (catalog names) served by llama-cpp-python, which takes a schema as
# {"type": "json_object", "schema": ...} instead of OpenAI's json_schema shape.
SCHEMA_AS_JSON_OBJECT = frozenset({"local"})

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


def _message(m: ChatMessage) -> dict[str, Any]:
    if m.role == "tool":
        return {"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content}
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.name:
        out["name"] = m.name
    if m.tool_calls:
        out["content"] = m.content or None
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in m.tool_calls
        ]
    return out


def request_body(request: ChatRequest, deployment: Deployment, *, stream: bool = True) -> dict[str, Any]:
    """The JSON body of a chat-completions call."""
    body: dict[str, Any] = {
        "model": deployment.upstream_model,
        "messages": [_message(m) for m in request.messages],
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    if request.max_tokens:
        body["max_tokens"] = request.max_tokens
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop:
        body["stop"] = list(request.stop)
    if request.seed is not None:
        body["seed"] = request.seed
    if request.tools:
        body["tools"] = [
            {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}
            for t in request.tools
        ]
        choice = request.tool_choice
        if choice.mode == "tool":
            body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        else:
            body["tool_choice"] = choice.mode
    fmt = request.response_format
    if fmt.type == "json_schema" and deployment.provider in SCHEMA_AS_JSON_OBJECT:
        # llama-cpp-python's server knows only "text" and "json_object" (its request model
        # refuses "json_schema" with a 422) and compiles a "schema" given with json_object
        # into a grammar, so the schema is still enforced token by token.
        body["response_format"] = {"type": "json_object", "schema": fmt.schema or {"type": "object"}}
    elif fmt.type == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif fmt.type == "json_schema":
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": fmt.name, "schema": fmt.schema or {"type": "object"}, "strict": fmt.strict},
        }
    return body


def _usage(u: dict[str, Any]) -> Usage:
    cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return Usage(
        input_tokens=int(u.get("prompt_tokens") or 0),
        output_tokens=int(u.get("completion_tokens") or 0),
        cached_input_tokens=int(cached),
    )


class OpenAICompatAdapter:
    """One pooled HTTP client for every deployment of this wire format."""

    def __init__(self, name: str = "openai", client: HttpClient | None = None) -> None:
        self.name = name
        self._client = client or new_client()

    async def aclose(self) -> None:
        await self._client.aclose()

    @staticmethod
    def _headers(request: ChatRequest, deployment: Deployment, stream: bool) -> dict[str, str]:
        headers = {"accept": "text/event-stream" if stream else "application/json"}
        if deployment.api_key:
            headers["authorization"] = f"Bearer {deployment.api_key}"
        if request.request_id:
            headers["x-request-id"] = request.request_id
        return headers

    def stream(self, request: ChatRequest, deployment: Deployment) -> AsyncGenerator[StreamEvent, None]:
        url = deployment.base_url.rstrip("/") + "/chat/completions"
        headers = self._headers(request, deployment, True)
        return stream_call(
            self._client,
            deployment,
            url,
            request_body(request, deployment),
            headers,
            lambda response: self._events(response, deployment.provider),
        )

    async def _events(self, response: Response, provider: str) -> AsyncGenerator[StreamEvent, None]:
        finish: FinishReason = ""
        usage: Usage | None = None
        async with contextlib.aclosing(sse_batches(response.aiter_bytes())) as batches:
            async for batch in batches:
                # The text of one read leaves as one delta: the events came together anyway. What
                # came before a bad event still leaves first, so the failure is one mid-answer.
                text: list[str] = []
                try:
                    for sse in batch:
                        if sse.data == "[DONE]":
                            if text:
                                yield TextDelta("".join(text))
                            yield StreamEnd(finish, usage)
                            return
                        chunk = parse_json(provider, sse.data)
                        if not isinstance(chunk, dict):
                            raise ProviderError(
                                provider, f"malformed SSE data: {sse.data[:200]!r}", kind=ErrorKind.MALFORMED
                            )
                        if "error" in chunk:
                            err = chunk["error"]
                            message = err.get("message") if isinstance(err, dict) else err
                            raise ProviderError(provider, f"stream error: {message}", kind=ErrorKind.SERVER_ERROR)
                        for choice in chunk.get("choices") or ():
                            delta = choice.get("delta") or {}
                            if delta.get("content"):
                                text.append(delta["content"])
                            for call in delta.get("tool_calls") or ():
                                fn = call.get("function") or {}
                                yield ToolCallDelta(
                                    index=int(call.get("index") or 0),
                                    id=call.get("id") or "",
                                    name=fn.get("name") or "",
                                    arguments=fn.get("arguments") or "",
                                )
                            if choice.get("finish_reason"):
                                finish = _FINISH.get(choice["finish_reason"], "stop")
                        if chunk.get("usage"):
                            usage = _usage(chunk["usage"])
                except Exception:
                    if text:
                        yield TextDelta("".join(text))
                    raise
                if text:
                    yield TextDelta("".join(text))
        if finish:
            # Some servers close after the finishing chunk without `[DONE]`: the answer is whole.
            yield StreamEnd(finish, usage)
            return
        raise stream_cut(provider, "[DONE]")

    @parses_answer
    async def complete(self, request: ChatRequest, deployment: Deployment) -> Completion:
        url = deployment.base_url.rstrip("/") + "/chat/completions"
        body = request_body(request, deployment, stream=False)
        raw = await post_whole(self._client, deployment, url, body, self._headers(request, deployment, False))
        doc = parse_json(deployment.provider, raw)
        try:
            choice = doc["choices"][0]
            message = choice.get("message") or {}
        except (KeyError, IndexError, TypeError, AttributeError):
            raise ProviderError(
                deployment.provider, f"answer without choices: {raw[:200]!r}", kind=ErrorKind.MALFORMED
            ) from None
        calls = ToolCallAssembler()
        for i, call in enumerate(message.get("tool_calls") or ()):
            fn = call.get("function") or {}
            args = fn.get("arguments")
            calls.add(
                ToolCallDelta(
                    i, call.get("id") or "", fn.get("name") or "", args if isinstance(args, str) else json.dumps(args)
                )
            )
        try:
            tool_calls = calls.calls()
        except ToolCallError as exc:
            raise ProviderError(deployment.provider, str(exc), kind=ErrorKind.MALFORMED) from None
        usage = _usage(doc["usage"]) if doc.get("usage") else None
        return Completion(
            text=message.get("content") or "",
            tool_calls=tool_calls,
            finish_reason=_FINISH.get(choice.get("finish_reason") or "", "stop"),
            usage=usage,
        )

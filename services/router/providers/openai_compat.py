"""OpenAI Chat Completions wire format: OpenAI itself, llama.cpp, vLLM, Ollama.

Streams with ``stream: true`` and ``stream_options.include_usage`` and parses the
Server-Sent Events incrementally, so each delta is passed on the moment its line
arrives. Servers that ignore ``include_usage`` (llama.cpp) end without usage; the
router then counts tokens itself.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from tollway.router.providers.base import Deployment
from tollway.router.types import (
    ChatRequest,
    FinishReason,
    ProviderError,
    StreamEnd,
    StreamEvent,
    TextDelta,
    Usage,
    is_retryable_status,
    parse_retry_after,
)

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


def request_body(request: ChatRequest, deployment: Deployment) -> dict[str, Any]:
    """The JSON body of a streaming chat-completions call."""
    body: dict[str, Any] = {
        "model": deployment.upstream_model,
        "messages": [
            {"role": m.role, "content": m.content, **({"name": m.name} if m.name else {})}
            for m in request.messages
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
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
    return body


def _error_message(raw: bytes) -> str:
    try:
        err = json.loads(raw).get("error")
    except (ValueError, AttributeError):
        return raw.decode(errors="replace")[:500]
    if isinstance(err, dict):
        return str(err.get("message") or err)
    return str(err or raw[:500])


class OpenAICompatAdapter:
    """One pooled HTTP client for every deployment of this wire format."""

    def __init__(self, name: str = "openai", client: httpx.AsyncClient | None = None) -> None:
        self.name = name
        self._client = client or httpx.AsyncClient(
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=128),
            timeout=httpx.Timeout(60.0, connect=2.0),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def stream(self, request: ChatRequest, deployment: Deployment) -> AsyncIterator[StreamEvent]:
        headers = {"accept": "text/event-stream"}
        if deployment.api_key:
            headers["authorization"] = f"Bearer {deployment.api_key}"
        if request.request_id:
            headers["x-request-id"] = request.request_id
        url = deployment.base_url.rstrip("/") + "/chat/completions"
        timeout = httpx.Timeout(deployment.timeout_s, connect=min(2.0, deployment.timeout_s))
        try:
            async with self._client.stream(
                "POST", url, json=request_body(request, deployment), headers=headers, timeout=timeout
            ) as response:
                if response.status_code != 200:
                    raw = await response.aread()
                    raise ProviderError(
                        deployment.provider,
                        f"HTTP {response.status_code}: {_error_message(raw)}",
                        status=response.status_code,
                        retryable=is_retryable_status(response.status_code),
                        retry_after_s=parse_retry_after(response.headers.get("retry-after")),
                    )
                async for event in self._events(response, deployment.provider):
                    yield event
        except httpx.TimeoutException as exc:
            raise ProviderError(
                deployment.provider, f"timed out calling {url}: {type(exc).__name__}", retryable=True
            ) from exc
        except httpx.TransportError as exc:
            raise ProviderError(
                deployment.provider, f"cannot reach {url}: {type(exc).__name__}: {exc}", retryable=True
            ) from exc

    async def _events(self, response: httpx.Response, provider: str) -> AsyncIterator[StreamEvent]:
        finish: FinishReason = ""
        usage: Usage | None = None
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue  # blank separators, comments and `event:` lines carry nothing here
            data = line[5:].strip()
            if data == "[DONE]":
                yield StreamEnd(finish, usage)
                return
            try:
                chunk = json.loads(data)
            except ValueError as exc:
                raise ProviderError(provider, f"malformed SSE data: {data[:200]!r}", retryable=True) from exc
            if "error" in chunk:
                raise ProviderError(provider, f"stream error: {_error_message(data.encode())}", retryable=True)
            for choice in chunk.get("choices") or ():
                text = (choice.get("delta") or {}).get("content")
                if text:
                    yield TextDelta(text)
                if choice.get("finish_reason"):
                    finish = _FINISH.get(choice["finish_reason"], "stop")
            if chunk.get("usage"):
                u = chunk["usage"]
                cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
                usage = Usage(
                    input_tokens=int(u.get("prompt_tokens") or 0),
                    output_tokens=int(u.get("completion_tokens") or 0),
                    cached_input_tokens=int(cached),
                )
        raise ProviderError(provider, "stream ended before [DONE] (connection cut mid-stream)", retryable=True)

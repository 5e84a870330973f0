"""Google Gemini wire format: ``models/{model}:generateContent`` and
``models/{model}:streamGenerateContent?alt=sse``.

Each SSE event is a whole ``GenerateContentResponse``; there is no end marker, so a
stream is complete only when a candidate carried a ``finishReason``. Function calls
arrive whole (one part each), not in fragments. Assistant turns are ``model`` turns,
system turns become ``systemInstruction``, and tool results become
``functionResponse`` parts (which name the function, so the call's name is looked up
from the assistant turn that made it).
"""

from __future__ import annotations

import contextlib
import json
import re
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

_FILTERED = {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


def _finish(reason: str, has_calls: bool) -> FinishReason:
    if reason == "MAX_TOKENS":
        return "length"
    if reason in _FILTERED:
        return "content_filter"
    return "tool_calls" if has_calls else "stop"


def _response_object(content: str) -> dict[str, Any]:
    # functionResponse.response must be an object; plain text results are wrapped.
    try:
        value = json.loads(content)
    except ValueError:
        return {"result": content}
    return value if isinstance(value, dict) else {"result": value}


def request_body(request: ChatRequest) -> dict[str, Any]:
    """The JSON body of a generateContent call (the model is in the URL)."""
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}
    for m in request.messages:
        if m.role == "system":
            system.append({"text": m.content})
            continue
        if m.role == "tool":
            role = "user"
            name = call_names.get(m.tool_call_id, m.name or m.tool_call_id)
            parts: list[dict[str, Any]] = [
                {"functionResponse": {"name": name, "response": _response_object(m.content)}}
            ]
        else:
            role = "model" if m.role == "assistant" else "user"
            parts = [{"text": m.content}] if m.content else []
            for call in m.tool_calls:
                call_names[call.id] = call.name
                parts.append({"functionCall": {"name": call.name, "args": json.loads(call.arguments or "{}")}})
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    config: dict[str, Any] = {}
    if request.max_tokens:
        config["maxOutputTokens"] = request.max_tokens
    if request.temperature is not None:
        config["temperature"] = request.temperature
    if request.top_p is not None:
        config["topP"] = request.top_p
    if request.stop:
        config["stopSequences"] = list(request.stop)
    if request.seed is not None:
        config["seed"] = request.seed
    fmt = request.response_format
    if fmt.wants_json:
        config["responseMimeType"] = "application/json"
        if fmt.type == "json_schema" and fmt.schema:
            config["responseJsonSchema"] = fmt.schema
    if config:
        body["generationConfig"] = config
    if request.tools:
        body["tools"] = [
            {
                "functionDeclarations": [
                    {"name": t.name, "description": t.description, "parameters": t.parameters} for t in request.tools
                ]
            }
        ]
        choice = request.tool_choice
        mode = {"auto": "AUTO", "none": "NONE", "required": "ANY", "tool": "ANY"}[choice.mode]
        fc: dict[str, Any] = {"mode": mode}
        if choice.mode == "tool":
            fc["allowedFunctionNames"] = [choice.name]
        body["toolConfig"] = {"functionCallingConfig": fc}
    return body


def _usage(u: dict[str, Any]) -> Usage:
    return Usage(
        input_tokens=int(u.get("promptTokenCount") or 0) + int(u.get("toolUsePromptTokenCount") or 0),
        output_tokens=int(u.get("candidatesTokenCount") or 0) + int(u.get("thoughtsTokenCount") or 0),
        cached_input_tokens=int(u.get("cachedContentTokenCount") or 0),
    )


def retry_delay(raw: bytes) -> float | None:
    """The ``RetryInfo.retryDelay`` ("7s", "0.5s") in a Gemini error body, if any."""
    try:
        details = (json.loads(raw).get("error") or {}).get("details") or ()
    except (ValueError, AttributeError):
        return None
    for detail in details:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            m = _DURATION.match(str(detail.get("retryDelay", "")))
            if m:
                return float(m.group(1))
    return None


class GeminiAdapter:
    """One pooled HTTP client for every Gemini deployment."""

    def __init__(self, client: HttpClient | None = None) -> None:
        self._client = client or new_client()

    async def aclose(self) -> None:
        await self._client.aclose()

    @staticmethod
    def _headers(request: ChatRequest, deployment: Deployment, stream: bool) -> dict[str, str]:
        headers = {"accept": "text/event-stream" if stream else "application/json"}
        if deployment.api_key:
            headers["x-goog-api-key"] = deployment.api_key
        if request.request_id:
            headers["x-request-id"] = request.request_id
        return headers

    @staticmethod
    def _url(deployment: Deployment, method: str) -> str:
        return f"{deployment.base_url.rstrip('/')}/models/{deployment.upstream_model}:{method}"

    def stream(self, request: ChatRequest, deployment: Deployment) -> AsyncGenerator[StreamEvent, None]:
        url = self._url(deployment, "streamGenerateContent") + "?alt=sse"
        headers = self._headers(request, deployment, True)
        return stream_call(
            self._client,
            deployment,
            url,
            request_body(request),
            headers,
            lambda response: self._events(response, deployment.provider),
            retry_delay,
        )

    async def _events(self, response: Response, provider: str) -> AsyncGenerator[StreamEvent, None]:
        usage: Usage | None = None
        finish = ""
        calls = 0
        async with contextlib.aclosing(sse_events(response.aiter_bytes())) as events:
            async for sse in events:
                doc = parse_json(provider, sse.data)
                if not isinstance(doc, dict):
                    raise ProviderError(provider, f"malformed SSE data: {sse.data[:200]!r}", kind=ErrorKind.MALFORMED)
                if "error" in doc:
                    err = doc["error"] or {}
                    status = int(err.get("code") or 500)
                    raise ProviderError.from_status(provider, status, str(err.get("message") or err))
                if doc.get("usageMetadata"):
                    usage = _usage(doc["usageMetadata"])
                    yield UsageUpdate(usage)
                blocked = (doc.get("promptFeedback") or {}).get("blockReason")
                if blocked and not doc.get("candidates"):
                    yield StreamEnd("content_filter", usage)
                    return
                for candidate in (doc.get("candidates") or ())[:1]:
                    for part in (candidate.get("content") or {}).get("parts") or ():
                        if part.get("thought"):
                            continue
                        if part.get("text"):
                            yield TextDelta(part["text"])
                        elif part.get("functionCall"):
                            fc = part["functionCall"]
                            yield ToolCallDelta(
                                calls,
                                id=fc.get("id") or f"call_{calls}",
                                name=fc.get("name") or "",
                                arguments=json.dumps(fc.get("args") or {}),
                            )
                            calls += 1
                    if candidate.get("finishReason"):
                        finish = str(candidate["finishReason"])
                        if finish == "MALFORMED_FUNCTION_CALL":
                            raise ProviderError(
                                provider, "the model produced a malformed function call", kind=ErrorKind.MALFORMED
                            )
        if finish:
            yield StreamEnd(_finish(finish, calls > 0), usage)
            return
        raise stream_cut(provider, "a finishReason")

    @parses_answer
    async def complete(self, request: ChatRequest, deployment: Deployment) -> Completion:
        url = self._url(deployment, "generateContent")
        headers = self._headers(request, deployment, False)
        raw = await post_whole(self._client, deployment, url, request_body(request), headers, retry_delay)
        doc = parse_json(deployment.provider, raw)
        if not isinstance(doc, dict):
            raise ProviderError(deployment.provider, f"malformed answer: {raw[:200]!r}", kind=ErrorKind.MALFORMED)
        usage = _usage(doc["usageMetadata"]) if doc.get("usageMetadata") else None
        candidates = doc.get("candidates") or ()
        if not candidates:
            return Completion("", (), "content_filter", usage)
        candidate = candidates[0]
        text: list[str] = []
        calls = ToolCallAssembler()
        for part in (candidate.get("content") or {}).get("parts") or ():
            if part.get("thought"):
                continue
            if part.get("text"):
                text.append(part["text"])
            elif part.get("functionCall"):
                fc = part["functionCall"]
                n = len(calls)
                calls.add(
                    ToolCallDelta(
                        n, fc.get("id") or f"call_{n}", fc.get("name") or "", json.dumps(fc.get("args") or {})
                    )
                )
        try:
            tool_calls = calls.calls()
        except ToolCallError as exc:
            raise ProviderError(deployment.provider, str(exc), kind=ErrorKind.MALFORMED) from None
        reason = str(candidate.get("finishReason") or "STOP")
        if reason == "MALFORMED_FUNCTION_CALL":
            raise ProviderError(
                deployment.provider, "the model produced a malformed function call", kind=ErrorKind.MALFORMED
            )
        return Completion("".join(text), tool_calls, _finish(reason, bool(tool_calls)), usage)

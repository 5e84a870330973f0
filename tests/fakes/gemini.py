"""A wire-exact fake of Google's Gemini API (``models/{model}:generateContent`` and
``models/{model}:streamGenerateContent``, with ``alt=sse`` or the default JSON array).

The model name in the URL picks the scenario (see :mod:`tests.fakes.scenarios`). It
checks what the real API rejects and the adapter could get wrong (roles other than
user/model, a ``functionResponse`` without a name or with a non-object response,
unknown ``generationConfig`` keys), sends ``usageMetadata`` on every chunk and a
``finishReason`` on the last, separates events with CRLF as Google's servers do, and
puts the retry delay of a 429 in a ``google.rpc.RetryInfo`` detail.

Run alone: ``python -m tests.fakes.gemini --port 8097``.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

from tests.fakes.http import FakeHTTPServer, Request, Response, main
from tests.fakes.scenarios import TOOL_CALLS, SeenRequests, parse, play_whole, prompt_tokens, stall_forever

_seen = SeenRequests()
_ROUTE = re.compile(r"^/(v1|v1beta)/models/(?P<model>[^/:]+):(?P<method>generateContent|streamGenerateContent)$")
_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_CONFIG_KEYS = {
    "maxOutputTokens",
    "temperature",
    "topP",
    "topK",
    "stopSequences",
    "seed",
    "candidateCount",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "presencePenalty",
    "frequencyPenalty",
    "thinkingConfig",
}


def _error_body(status: int, message: str) -> dict[str, Any]:
    err: dict[str, Any] = {"code": status, "message": message, "status": _STATUS.get(status, "UNKNOWN")}
    if status == 429:
        err["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}]
    return {"error": err}


def _error(status: int, message: str) -> Response:
    return Response(status=status, body=json.dumps(_error_body(status, message)).encode())


def outage(status: int = 503) -> Any:
    """A handler for :attr:`FakeHTTPServer.override`: every call fails with ``status``."""

    async def handler(request: Request) -> Response:
        return _error(status, "The model is overloaded. Please try again later.")

    return handler


def _check(body: dict[str, Any]) -> str:
    contents = body.get("contents")
    if not contents:
        return "* GenerateContentRequest.contents: contents is not specified"
    for i, c in enumerate(contents):
        if c.get("role") not in ("user", "model"):
            return f"* GenerateContentRequest.contents[{i}].role: Please use a valid role: user, model."
        if not c.get("parts"):
            return f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty."
        for part in c["parts"]:
            fr = part.get("functionResponse")
            if fr is not None and (not fr.get("name") or not isinstance(fr.get("response"), dict)):
                return f"* GenerateContentRequest.contents[{i}].parts: functionResponse needs a name and an object"
    unknown = set(body.get("generationConfig") or {}) - _CONFIG_KEYS
    if unknown:
        return f"Invalid JSON payload received. Unknown name \"{sorted(unknown)[0]}\" at 'generation_config'."
    return ""


def _texts(body: dict[str, Any]) -> list[str]:
    texts = [p.get("text", "") for p in (body.get("systemInstruction") or {}).get("parts") or ()]
    for c in body["contents"]:
        texts += [p.get("text") or json.dumps(p.get("functionResponse") or "") for p in c["parts"]]
    return texts


def _chunk(parts: list[dict[str, Any]], usage: dict[str, Any], finish: str | None, model: str) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model, "responseId": "fake-resp"}


async def handle(request: Request) -> Response:
    m = _ROUTE.match(request.route)
    if not m or request.method != "POST":
        return _error(404, f"The requested URL {request.route} was not found on this server.")
    try:
        body = request.json()
    except ValueError:
        return _error(400, "Invalid JSON payload received.")
    problem = _check(body)
    if problem:
        return _error(400, problem)
    model, method = m.group("model"), m.group("method")
    sc = parse(model)
    if sc.status and (not sc.then_ok or _seen.first_time(request.headers.get("x-request-id", ""))):
        return _error(sc.status, f"scenario {model}")
    if sc.slow_ms:
        await asyncio.sleep(sc.slow_ms / 1000)
    config = body.get("generationConfig") or {}
    schema = config.get("responseJsonSchema") or config.get("responseSchema")
    json_mode = config.get("responseMimeType") == "application/json"
    words = sc.words(schema) if not json_mode or sc.bad_json else parse("fake-json").words(schema)
    limit = config.get("maxOutputTokens") or 10_000
    finish = "MAX_TOKENS" if len(words) > limit or sc.length else "STOP"
    words = words[:limit]
    calls = TOOL_CALLS if sc.tools and body.get("tools") else ()
    prompt = prompt_tokens(_texts(body))
    cached = prompt // 2 if sc.cached else 0

    def usage(n: int) -> dict[str, Any]:
        u: dict[str, Any] = {"promptTokenCount": prompt, "totalTokenCount": prompt + n}
        if n:
            u["candidatesTokenCount"] = n
        if cached:
            u["cachedContentTokenCount"] = cached
        return u

    call_parts = [{"functionCall": {"name": name, "args": args}} for _, name, args in calls]
    if method == "generateContent":
        parts = call_parts or [{"text": "".join(words)}]
        whole = json.dumps(_chunk(parts, usage(len(words) + 12 * len(calls)), finish, model)).encode()
        return await play_whole(sc, len(words), whole, _error(500, "An internal error has occurred."))

    if request.query.get("alt") != "sse":
        # Without alt=sse the API streams one JSON array of responses.
        chunks = [_chunk([{"text": w}], usage(i + 1), None, model) for i, w in enumerate(words)]
        if chunks:
            chunks[-1]["candidates"][0]["finishReason"] = finish
        return Response(body=json.dumps(chunks).encode())

    async def events() -> AsyncIterator[bytes]:
        def sse(doc: dict[str, Any]) -> bytes:
            return b"data: " + json.dumps(doc).encode() + b"\r\n\r\n"

        if calls:
            yield sse(_chunk(call_parts, usage(12 * len(calls)), finish, model))
            return
        for i, word in enumerate(words):
            if sc.gap_ms:
                await asyncio.sleep(sc.gap_ms / 1000)
            if i == sc.stall_after:
                await stall_forever()
            if i == sc.cut_after:
                return
            if i == sc.malformed_after:
                yield b"data: {not json\r\n\r\n"
                return
            if i == sc.error_after:
                yield sse(_error_body(500, "An internal error has occurred."))
                return
            last = i == len(words) - 1
            u = usage(i + 1) if sc.usage else {}
            yield sse(_chunk([{"text": word}], u, finish if last else None, model))
        if not words:
            yield sse(_chunk([{"text": ""}], usage(0), finish, model))

    return Response(
        headers={"content-type": "text/event-stream", "x-content-type-options": "nosniff"},
        stream=events(),
        cut=sc.cut_after >= 0,
        reset=sc.reset,
    )


def make_server() -> FakeHTTPServer:
    return FakeHTTPServer(handle)


if __name__ == "__main__":
    main(handle, __doc__.splitlines()[0])

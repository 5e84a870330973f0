"""A wire-exact fake of OpenAI's Chat Completions API; the model name picks the scenario.

Scenarios are listed in :mod:`tests.fakes.scenarios` (fake-ok, fake-words-<n>,
fake-slow-<ms>, fake-gap-<ms>, fake-cut-mid-stream, fake-reset-mid-stream,
fake-malformed-sse, fake-stream-error, fake-<status>[-then-ok], fake-no-usage,
fake-tools, fake-json, fake-bad-json, fake-cached, fake-long).

Run alone: ``python -m tests.fakes.openai --port 8099``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from tests.fakes.http import FakeHTTPServer, Request, Response, main
from tests.fakes.scenarios import (
    TOOL_CALLS,
    SeenRequests,
    parse,
    play_whole,
    prompt_tokens,
    split_awkwardly,
    stall_forever,
)

_seen = SeenRequests()


def _error(status: int, message: str, kind: str) -> Response:
    headers = {"retry-after": "1"} if status in (429, 503, 529) else {}
    code = "rate_limit_exceeded" if status == 429 else None
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})
    return Response(status=status, body=body.encode(), headers=headers)


def outage(status: int = 503) -> Any:
    """A handler for :attr:`FakeHTTPServer.override`: every call fails with ``status``."""

    async def handler(request: Request) -> Response:
        return _error(status, f"The server is currently unavailable (outage {status})", "server_error")

    return handler


def _chunk(cid: str, model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    payload = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _check(body: dict[str, Any]) -> str:
    """What OpenAI would reject in this body, or ""."""
    if not body.get("messages"):
        return "'messages' is a required property"
    for i, m in enumerate(body["messages"]):
        if m.get("role") not in ("system", "user", "assistant", "tool", "developer"):
            return f"Invalid value for 'messages[{i}].role': {m.get('role')!r}"
        if m.get("role") == "tool" and not m.get("tool_call_id"):
            return f"Missing required parameter: 'messages[{i}].tool_call_id'."
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema" and not (fmt.get("json_schema") or {}).get("name"):
        return "Missing required parameter: 'response_format.json_schema.name'."
    if "tool_choice" in body and not body.get("tools"):
        return "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified."
    return ""


async def handle(request: Request) -> Response:
    if request.route.rstrip("/").endswith("/models"):
        return Response(body=b'{"object":"list","data":[{"id":"fake","object":"model","owned_by":"tollway"}]}')
    if not request.route.endswith("/chat/completions") or request.method != "POST":
        return _error(404, f"Unknown request URL: {request.method} {request.path}", "invalid_request_error")
    try:
        body = request.json()
    except ValueError:
        return _error(400, "We could not parse the JSON body of your request.", "invalid_request_error")
    problem = _check(body)
    if problem:
        return _error(400, problem, "invalid_request_error")
    model = str(body.get("model", ""))
    sc = parse(model)
    if sc.status and (not sc.then_ok or _seen.first_time(request.headers.get("x-request-id", ""))):
        return _error(sc.status, f"scenario {model}", "server_error" if sc.status >= 500 else "invalid_request_error")
    if sc.slow_ms:
        await asyncio.sleep(sc.slow_ms / 1000)
    fmt = body.get("response_format") or {}
    schema = (fmt.get("json_schema") or {}).get("schema")
    # A real model asked for JSON answers JSON (fake-bad-json plays the one that does not).
    wants_json = fmt.get("type") in ("json_schema", "json_object") and not sc.bad_json
    words = parse("fake-json").words(schema) if wants_json else sc.words(schema)
    prompt = prompt_tokens([str(m.get("content") or "") for m in body["messages"]])
    cached = prompt // 2 if sc.cached else 0
    cid = f"chatcmpl-{int(time.time() * 1000)}"
    include_usage = (body.get("stream_options") or {}).get("include_usage") and sc.usage
    limit = body.get("max_tokens") or 10_000
    finish = "length" if len(words) > limit or sc.length else "stop"
    words = words[:limit]
    calls = TOOL_CALLS if sc.tools and body.get("tools") else ()
    if calls:
        finish = "tool_calls"
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": len(words) + 12 * len(calls),
        "total_tokens": prompt + len(words) + 12 * len(calls),
        "prompt_tokens_details": {"cached_tokens": cached},
    }

    if not body.get("stream"):
        message: dict[str, Any] = {"role": "assistant", "content": None if calls else "".join(words)}
        if calls:
            message["tool_calls"] = [
                {"id": cid_, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
                for cid_, name, args in calls
            ]
        payload = {
            "id": cid,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage,
        }
        error = _error(500, "The server had an error while processing your request.", "server_error")
        return await play_whole(sc, len(words), json.dumps(payload).encode(), error)

    async def events() -> AsyncIterator[bytes]:
        yield _chunk(cid, model, {"role": "assistant", "content": ""})
        if calls:
            for index, (call_id, name, _) in enumerate(calls):
                first = {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
                yield _chunk(cid, model, {"tool_calls": [first]})
            # Fragments of both calls interleaved: only the index ties a fragment to its call.
            pieces = [split_awkwardly(json.dumps(args)) for _, _, args in calls]
            for index_pieces in itertools.zip_longest(*pieces):
                for index, piece in enumerate(index_pieces):
                    if piece:
                        yield _chunk(cid, model, {"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
        for i, word in enumerate(words):
            if sc.gap_ms:
                await asyncio.sleep(sc.gap_ms / 1000)
            if i == sc.stall_after:
                await stall_forever()
            if i == sc.cut_after:
                return
            if i == sc.malformed_after:
                yield b"data: {not json\n\n"
                return
            if i == sc.error_after:
                err = {
                    "error": {
                        "message": "The server had an error while processing your request.",
                        "type": "server_error",
                    }
                }
                yield b"data: " + json.dumps(err).encode() + b"\n\n"
                return
            yield _chunk(cid, model, {"content": word})
        yield _chunk(cid, model, {}, finish)
        if include_usage:
            payload = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [],
                "usage": usage,
            }
            yield b"data: " + json.dumps(payload).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    return Response(
        headers={"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"},
        stream=events(),
        cut=sc.cut_after >= 0,
        reset=sc.reset,
    )


def make_server() -> FakeHTTPServer:
    return FakeHTTPServer(handle)


if __name__ == "__main__":
    main(handle, __doc__.splitlines()[0])

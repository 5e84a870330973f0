"""A wire-exact fake of Anthropic's Messages API (``POST /v1/messages``).

The model name picks the scenario (see :mod:`tests.fakes.scenarios`). It checks what
the real API checks and the adapter could get wrong (``anthropic-version``, a
``max_tokens``, user/assistant alternation starting with a user turn, ``tool_result``
blocks answering a ``tool_use``), streams the exact event sequence (``message_start``,
``content_block_*``, ``ping``, ``message_delta``, ``message_stop``), and reports prompt
caching: a request with ``cache_control`` writes its prefix to the cache
(``cache_creation_input_tokens``), and ``fake-cached`` reads it
(``cache_read_input_tokens``).

Run alone: ``python -m tests.fakes.anthropic --port 8098``.
"""

from __future__ import annotations

import asyncio
import dataclasses
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
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "api_error",
    529: "overloaded_error",
}


def _error(status: int, message: str) -> Response:
    headers = {"retry-after": "1"} if status in (429, 503, 529) else {}
    body = {"type": "error", "error": {"type": _ERROR_TYPES.get(status, "api_error"), "message": message}}
    return Response(status=status, body=json.dumps(body).encode(), headers=headers)


def outage(status: int = 529) -> Any:
    """A handler for :attr:`FakeHTTPServer.override`: every call fails with ``status``."""

    async def handler(request: Request) -> Response:
        return _error(status, "Overloaded" if status == 529 else f"outage {status}")

    return handler


def _sse(kind: str, payload: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(payload)}\n\n".encode()


def _blocks(content: Any) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])


def _check(request: Request, body: dict[str, Any]) -> str:
    """What the real API would reject, or ""."""
    if not request.headers.get("anthropic-version"):
        return "anthropic-version: header is required"
    if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
        return "max_tokens: Field required"
    messages = body.get("messages")
    if not messages:
        return "messages: at least one message is required"
    if messages[0].get("role") != "user":
        return 'messages: first message must use the "user" role'
    open_calls: set[str] = set()
    for i, m in enumerate(messages):
        if m.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if i and messages[i - 1].get("role") == m.get("role"):
            return 'messages: roles must alternate between "user" and "assistant"'
        for block in _blocks(m.get("content")):
            if block.get("type") == "tool_use":
                open_calls.add(block.get("id"))
                if not isinstance(block.get("input"), dict):
                    return f"messages.{i}.content: tool_use.input: Input should be a valid dictionary"
            if block.get("type") == "tool_result" and block.get("tool_use_id") not in open_calls:
                return f"messages.{i}.content: unexpected `tool_use_id` found in `tool_result` blocks"
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        return "system: Input should be a valid string or list"
    for t in body.get("tools") or ():
        if "input_schema" not in t:
            return "tools.0.input_schema: Field required"
    return ""


def _prompt_texts(body: dict[str, Any]) -> list[str]:
    texts = [b.get("text", "") for b in _blocks(body.get("system"))]
    for m in body["messages"]:
        for b in _blocks(m.get("content")):
            texts.append(b.get("text") or str(b.get("content") or ""))
    return texts


def _has_cache_control(body: dict[str, Any]) -> bool:
    return "cache_control" in json.dumps(body)


async def handle(request: Request) -> Response:
    if request.route.rstrip("/") != "/v1/messages" or request.method != "POST":
        return _error(404, f"Not found: {request.method} {request.path}")
    try:
        body = request.json()
    except ValueError:
        return _error(400, "There was an error parsing the body of your request as JSON.")
    problem = _check(request, body)
    if problem:
        return _error(400, problem)
    model = str(body.get("model", ""))
    sc = parse(model)
    if sc.status and (not sc.then_ok or _seen.first_time(request.headers.get("x-request-id", ""))):
        return _error(sc.status, f"scenario {model}")
    if sc.slow_ms:
        await asyncio.sleep(sc.slow_ms / 1000)

    forced = (body.get("tool_choice") or {}).get("type") == "tool"
    schema = None
    if forced:
        name = body["tool_choice"]["name"]
        schema = next((t["input_schema"] for t in body.get("tools") or () if t["name"] == name), None)
    json_answer = forced and not sc.tools
    # A forced tool is how a JSON answer is asked for: a real model then answers JSON.
    words = dataclasses.replace(sc, json=True).words(schema) if json_answer and not sc.bad_json else sc.words(schema)
    calls = TOOL_CALLS if sc.tools and body.get("tools") else ()
    limit = body["max_tokens"]
    stop = "max_tokens" if len(words) > limit or sc.length else ("tool_use" if calls or json_answer else "end_turn")
    words = words[:limit]

    total = prompt_tokens(_prompt_texts(body))
    read = write = 0
    if _has_cache_control(body):
        if sc.cached:
            read = total - 3
        else:
            write = total - 3
    elif sc.cached:
        read = total // 2
    plain = total - read - write
    usage_start = {
        "input_tokens": plain,
        "cache_creation_input_tokens": write,
        "cache_read_input_tokens": read,
        "output_tokens": 1,
    }
    output_tokens = len(words) + 12 * len(calls)
    mid = f"msg_fake{int(time.time() * 1000)}"

    if not body.get("stream"):
        content: list[dict[str, Any]] = []
        if json_answer:
            content.append(
                {
                    "type": "tool_use",
                    "id": "toolu_json",
                    "name": body["tool_choice"]["name"],
                    "input": {} if sc.bad_json else json.loads("".join(words)),
                }
            )
        elif words and not calls:
            content.append({"type": "text", "text": "".join(words)})
        for call_id, name, args in calls:
            content.append({"type": "tool_use", "id": call_id, "name": name, "input": args})
        payload = {
            "id": mid,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {**usage_start, "output_tokens": output_tokens},
        }
        return await play_whole(sc, len(words), json.dumps(payload).encode(), _error(500, "Internal server error"))

    async def events() -> AsyncIterator[bytes]:
        message = {
            "id": mid,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage_start,
        }
        yield _sse("message_start", {"type": "message_start", "message": message})
        index = 0
        if not calls:
            if json_answer:
                block = {"type": "tool_use", "id": "toolu_json", "name": body["tool_choice"]["name"], "input": {}}
            else:
                block = {"type": "text", "text": ""}
            yield _sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block})
            yield _sse("ping", {"type": "ping"})
            for i, word in enumerate(words):
                if sc.gap_ms:
                    await asyncio.sleep(sc.gap_ms / 1000)
                if i == sc.stall_after:
                    await stall_forever()
                if i == sc.cut_after:
                    return
                if i == sc.malformed_after:
                    yield b"event: content_block_delta\ndata: {not json\n\n"
                    return
                if i == sc.error_after:
                    err = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
                    yield _sse("error", err)
                    return
                delta = (
                    {"type": "input_json_delta", "partial_json": word}
                    if json_answer
                    else {"type": "text_delta", "text": word}
                )
                yield _sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
            yield _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
            index = 1
        else:
            text_block = {"type": "text", "text": ""}
            yield _sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": text_block})
            yield _sse(
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me check."}},
            )
            yield _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
            index = 1
            for call_id, name, args in calls:
                block = {"type": "tool_use", "id": call_id, "name": name, "input": {}}
                yield _sse(
                    "content_block_start", {"type": "content_block_start", "index": index, "content_block": block}
                )
                yield _sse(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": ""},
                    },
                )
                for piece in split_awkwardly(json.dumps(args)):
                    delta = {"type": "input_json_delta", "partial_json": piece}
                    yield _sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
                yield _sse("content_block_stop", {"type": "content_block_stop", "index": index})
                index += 1
        usage = {"output_tokens": output_tokens} if sc.usage else {}
        yield _sse(
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None}, "usage": usage},
        )
        yield _sse("message_stop", {"type": "message_stop"})

    return Response(
        headers={
            "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-cache",
            "request-id": f"req_{mid}",
        },
        stream=events(),
        cut=sc.cut_after >= 0,
        reset=sc.reset,
    )


def make_server() -> FakeHTTPServer:
    return FakeHTTPServer(handle)


if __name__ == "__main__":
    main(handle, __doc__.splitlines()[0])

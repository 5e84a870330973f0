"""A wire-exact fake of OpenAI's Chat Completions API; the model name picks the scenario.

Scenarios (``model`` in the request body):
    anything else            a normal answer: "Hello from <model>." word by word
    fake-words-<n>           a normal answer of n words
    fake-slow-<ms>           waits <ms> before the first byte
    fake-gap-<ms>            waits <ms> between chunks (for cancellation tests)
    fake-cut-mid-stream      sends 3 chunks, then drops the connection
    fake-malformed-sse       sends a chunk that is not JSON
    fake-<status>            answers with that HTTP status and an OpenAI error body
                             (429 and 503 carry ``retry-after: 1``)
    fake-no-usage            never sends usage (like llama.cpp)

Run alone: ``python -m tests.fakes.openai --port 8099``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from tests.fakes.http import FakeHTTPServer, Request, Response


def _error(status: int, message: str, kind: str) -> Response:
    headers = {"retry-after": "1"} if status in (429, 503) else {}
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}})
    return Response(status=status, body=body.encode(), headers=headers)


def _words(model: str) -> list[str]:
    m = re.fullmatch(r"fake-words-(\d+)", model)
    if m:
        return [f"w{i} " for i in range(int(m.group(1)))]
    return ["Hello", " from", f" {model}", "."]


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


async def handle(request: Request) -> Response:
    if request.path.rstrip("/").endswith("/models"):
        return Response(body=b'{"object":"list","data":[{"id":"fake","object":"model","owned_by":"tollway"}]}')
    if not request.path.endswith("/chat/completions") or request.method != "POST":
        return _error(404, f"Unknown request URL: {request.method} {request.path}", "invalid_request_error")
    try:
        body = request.json()
    except ValueError:
        return _error(400, "We could not parse the JSON body of your request.", "invalid_request_error")
    model = str(body.get("model", ""))
    if not body.get("messages"):
        return _error(400, "'messages' is a required property", "invalid_request_error")
    status = re.fullmatch(r"fake-(\d{3})", model)
    if status:
        return _error(int(status.group(1)), f"scenario {model}", "server_error")
    slow = re.fullmatch(r"fake-slow-(\d+)", model)
    if slow:
        await asyncio.sleep(int(slow.group(1)) / 1000)
    gap = re.fullmatch(r"fake-gap-(\d+)", model)
    gap_s = int(gap.group(1)) / 1000 if gap else 0.0
    words = _words(model) if not gap else [f"tick{i} " for i in range(1000)]
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body["messages"]) + 7
    cid = f"chatcmpl-{int(time.time() * 1000)}"
    include_usage = (body.get("stream_options") or {}).get("include_usage") and model != "fake-no-usage"
    limit = body.get("max_tokens") or 10_000
    finish = "length" if len(words) > limit else "stop"
    words = words[:limit]

    if not body.get("stream"):
        text = "".join(words)
        payload = {
            "id": cid,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(words),
                "total_tokens": prompt_tokens + len(words),
            },
        }
        return Response(body=json.dumps(payload).encode())

    async def events() -> AsyncIterator[bytes]:
        yield _chunk(cid, model, {"role": "assistant", "content": ""})
        for i, word in enumerate(words):
            if gap_s:
                await asyncio.sleep(gap_s)
            if model == "fake-cut-mid-stream" and i == 3:
                return
            if model == "fake-malformed-sse" and i == 2:
                yield b"data: {not json\n\n"
                return
            yield _chunk(cid, model, {"content": word})
        yield _chunk(cid, model, {}, finish)
        if include_usage:
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(words),
                "total_tokens": prompt_tokens + len(words),
                "prompt_tokens_details": {"cached_tokens": 0},
            }
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
        cut=model in ("fake-cut-mid-stream",),
    )


def make_server() -> FakeHTTPServer:
    return FakeHTTPServer(handle)


async def _main(port: int) -> None:
    server = make_server()
    bound = await server.start(port)
    print(f"LISTENING {bound}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(_main(parser.parse_args().port))

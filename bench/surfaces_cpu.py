"""CPU per request of each HTTP API surface's own layer (issue 16), without the network or the gateway.

    .venv/bin/python bench/surfaces_cpu.py [-n 3000] [--repeats 3]

Calls the openai_compat ASGI application in-process (no socket, no uvicorn) with a canned gateway
(the same answer the overhead bench's upstream gives: 20 words, or a 384-value vector), and
reports the CPU time (``time.process_time``) per request of each surface: body parsing, checks,
translation to the gateway request, and the answer in the API's own shape (JSON, or every SSE
event of a 20-delta stream). CPU time, unlike wall time, is barely moved by other processes on a
loaded machine, so the surfaces can be compared with each other on a busy 2-core box. It is not
the whole added latency (the HTTP hop through uvicorn and Envoy is the same for every surface and
is in bench/overhead.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import uvloop  # noqa: E402

from tollway.common.v1 import common_pb2  # noqa: E402
from tollway.gateway.v1 import gateway_pb2  # noqa: E402
from tollway.openai_compat.service import OpenAICompatApp  # noqa: E402

WORDS = [f"w{i} " for i in range(20)]
HI = [{"role": "user", "content": "Say hello in one short sentence."}]


class _Unary:
    def __init__(self, reply: Any) -> None:
        self.reply = reply

    def __await__(self) -> Any:
        async def answer() -> Any:
            return self.reply

        return answer().__await__()

    async def initial_metadata(self) -> tuple[()]:
        return ()


class _Stream:
    def __init__(self) -> None:
        self.events = [
            gateway_pb2.GenerateResponse(started=gateway_pb2.Started(request_id="r", model="m", provider="p"))
        ]
        self.events += [gateway_pb2.GenerateResponse(delta=gateway_pb2.Delta(text=w)) for w in WORDS]
        done = gateway_pb2.Completed(finish_reason=common_pb2.FINISH_REASON_STOP)
        done.usage.input_tokens, done.usage.output_tokens = 12, 20
        self.events.append(gateway_pb2.GenerateResponse(completed=done))

    async def read(self) -> Any:
        return self.events.pop(0) if self.events else grpc.aio.EOF

    async def initial_metadata(self) -> tuple[()]:
        return ()

    def cancel(self) -> None:
        pass


class CannedGateway:
    """Answers as the gateway would, at no cost."""

    def __init__(self) -> None:
        self.complete = gateway_pb2.CompleteResponse(
            request_id="r", model="m", provider="p", text="".join(WORDS), finish_reason=common_pb2.FINISH_REASON_STOP
        )
        self.complete.usage.input_tokens, self.complete.usage.output_tokens = 12, 20
        self.embed = gateway_pb2.EmbedResponse(request_id="r", model="m", dimensions=384)
        self.embed.embeddings.add(values=[((i * 37) % 200 - 100) / 1000 for i in range(384)])
        self.embed.usage.input_tokens = 9

    def Complete(self, request: Any, metadata: Any = None) -> _Unary:
        return _Unary(self.complete)

    def Generate(self, request: Any, metadata: Any = None) -> _Stream:
        return _Stream()

    def Embed(self, request: Any, metadata: Any = None) -> _Unary:
        return _Unary(self.embed)


CASES: dict[str, tuple[str, dict[str, Any], tuple[tuple[bytes, bytes], ...]]] = {
    "openai chat": ("/v1/chat/completions", {"model": "m", "messages": HI, "max_tokens": 32}, ()),
    "openai chat stream": (
        "/v1/chat/completions",
        {"model": "m", "messages": HI, "max_tokens": 32, "stream": True, "stream_options": {"include_usage": True}},
        (),
    ),
    "anthropic messages": ("/v1/messages", {"model": "m", "messages": HI, "max_tokens": 32}, ()),
    "anthropic messages stream": ("/v1/messages", {"model": "m", "messages": HI, "max_tokens": 32, "stream": True}, ()),
    "responses": ("/v1/responses", {"model": "m", "input": HI[0]["content"], "max_output_tokens": 32}, ()),
    "responses stream": (
        "/v1/responses",
        {"model": "m", "input": HI[0]["content"], "max_output_tokens": 32, "stream": True},
        (),
    ),
    "embeddings float": ("/v1/embeddings", {"model": "m", "input": "hello", "encoding_format": "float"}, ()),
    "embeddings base64": ("/v1/embeddings", {"model": "m", "input": "hello", "encoding_format": "base64"}, ()),
}


async def call(app: Any, path: str, body: bytes) -> int:
    headers = [
        (b"content-type", b"application/json"),
        (b"authorization", b"Bearer tw-x"),
        (b"anthropic-version", b"2023-06-01"),
        (b"content-length", str(len(body)).encode()),
    ]
    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": headers, "http_version": "1.1", "scheme": "http", "server": ("t", 80), "client": ("c", 1),
             "root_path": "", "asgi": {"version": "3.0"}}  # fmt: skip
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)  # the client never leaves
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def measure(n: int, repeats: int) -> dict[str, list[float]]:
    compat = OpenAICompatApp("127.0.0.1:1", 1 << 20)
    compat.stub = CannedGateway()  # type: ignore[assignment]
    out: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(repeats):
        for name, (path, body, _) in CASES.items():
            raw = json.dumps(body).encode()
            for _ in range(n // 10):  # warm-up
                await call(compat.app, path, raw)
            start = time.process_time()
            for _ in range(n):
                status = await call(compat.app, path, raw)
                assert status == 200, (name, status)
            out[name].append((time.process_time() - start) / n * 1e6)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    load = os.getloadavg()
    results = uvloop.run(measure(args.n, args.repeats))
    print(
        f"\nmachine: {os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the start, "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end\n"
    )
    print("| surface | CPU per request, us (median of repeats; min-max) |\n|---|---|")
    for name, values in results.items():
        print(f"| {name} | {statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f}) |")


if __name__ == "__main__":
    main()

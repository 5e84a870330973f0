"""CPU per streamed token when the provider paces its tokens, as real models do (issue 12).

    .venv/bin/python bench/stream_cost.py [--tokens 100] [--gap-ms 2] [-n 60] [--concurrency 1,8]

The co-located bench stack of bench/overhead.py (Envoy, the core process, Redis; the fake upstream)
serves one model whose answer is ``tokens`` words, ``gap-ms`` apart. With a zero-delay upstream the
router reads many events at once and every hop forwards them together, which hides the cost of a
token that travels alone; here each token is its own read, message and write at every hop. For each
concurrency it sends ``n`` streamed OpenAI chat requests per connection (and the same number not
streamed, which the router now asks for whole) and prints the core's and Envoy's CPU per request and
per token, read from /proc, less what the core spends idle over the same time.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx
import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import overhead  # noqa: E402
from bench.cpu_per_request import cpu_seconds  # noqa: E402
from tollway.cli import _create_key  # noqa: E402


async def _one(client: httpx.AsyncClient, url: str, headers: dict[str, str], body: dict, stream: bool) -> int:
    if not stream:
        response = await client.post(url, json=body, headers=headers)
        response.raise_for_status()
        return 1
    events = 0
    async with client.stream("POST", url, json={**body, "stream": True}, headers=headers) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            events += line.startswith("data:")
    return events


async def _measure(url: str, key: str, pids: dict[str, int], args: argparse.Namespace) -> None:
    model = f"fake-gap-{args.gap_ms}-words-{args.tokens}"
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": args.tokens + 50}
    headers = {"authorization": f"Bearer {key}", "x-tollway-cache-mode": "bypass"}
    idle_before = cpu_seconds(pids["core"])
    await asyncio.sleep(3)
    idle_per_s = (cpu_seconds(pids["core"]) - idle_before) / 3
    print(f"{model}; core idle {idle_per_s * 1000:.1f} ms of CPU a second (subtracted below)")
    print("| concurrency | request | requests/s | core CPU ms per request | per token (µs) | Envoy CPU ms |")
    print("|---:|---|---:|---:|---:|---:|")
    limits = httpx.Limits(max_connections=max(args.concurrency) + 4)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        for _ in range(3):
            await _one(client, url, headers, body, True)
        for concurrency in args.concurrency:
            for stream in (True, False):

                async def worker(stream: bool = stream) -> None:
                    for _ in range(args.n):
                        await _one(client, url, headers, body, stream)

                before = {name: cpu_seconds(pid) for name, pid in pids.items()}
                start = time.monotonic()
                await asyncio.gather(*(worker() for _ in range(concurrency)))
                elapsed = time.monotonic() - start
                done = args.n * concurrency
                spent = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
                core_ms = (spent["core"] - idle_per_s * elapsed) * 1000 / done
                print(
                    f"| {concurrency} | {'streamed' if stream else 'whole'} | {done / elapsed:.1f} | {core_ms:.2f} | "
                    f"{core_ms * 1000 / args.tokens:.0f} | {spent['envoy'] * 1000 / done:.2f} |",
                    flush=True,
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--gap-ms", type=int, default=2)
    parser.add_argument("-n", type=int, default=60, help="requests per connection and kind")
    parser.add_argument("--concurrency", default="1,8")
    args = parser.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    run = Path(tempfile.mkdtemp(prefix="tollway-stream-cost-"))
    upstream, port = overhead.start_upstream(run)
    stack = overhead.bench_stack(run / "stack", port, "colocated")
    model = f"fake-gap-{args.gap_ms}-words-{args.tokens}"
    # The bench stack's catalog names the fake's zero-delay model; this one paces its tokens.
    stack.options.catalog.write_text(
        f"providers:\n  upstream: {{wire: openai_compat, base_url: 'http://127.0.0.1:{port}/v1'}}\n"
        f"models:\n  {model}: {{provider: upstream}}\n"
    )
    try:
        stack.start()
        key, _ = asyncio.run(_create_key(stack.redis_url, "bench"))
        pids = {c.name: c.process.pid for c in stack.children if c.name in ("core", "envoy")}
        url = f"http://127.0.0.1:{stack.options.ports['edge']}/v1/chat/completions"
        uvloop.run(_measure(url, key, pids, args))
    finally:
        stack.stop()
        upstream.kill()


if __name__ == "__main__":
    main()

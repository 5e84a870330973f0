"""What asking a provider for a whole answer saves over reading the same answer streamed (issue 12).

    .venv/bin/python bench/whole_vs_stream.py [-n 2000] [--rounds 3] [--model fake-words-20]

The router's OpenAI-compatible adapter against the zero-delay fake upstream of bench/overhead.py, in
this process: ``n`` calls of ``adapter.stream`` (read to its end) and ``n`` of ``adapter.complete``, in
alternating rounds, each timed in this process's CPU (user + system) and wall time per call. The
router's ``Complete`` asks for the second kind; before, it read the first and joined it. The fake's
own CPU is not counted (it runs in its own process).
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import overhead  # noqa: E402
from tollway.common.catalog import Deployment  # noqa: E402
from tollway.common.chat import ChatMessage, ChatRequest  # noqa: E402
from tollway.router.providers.openai_compat import OpenAICompatAdapter  # noqa: E402


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _measure(port: int, args: argparse.Namespace) -> None:
    adapter = OpenAICompatAdapter()
    dep = Deployment(provider="openai", base_url=f"http://127.0.0.1:{port}/v1", upstream_model=args.model)
    request = ChatRequest(
        model="bench", messages=(ChatMessage("user", "Say hello in one short sentence."),), max_tokens=1024
    )

    async def streamed() -> None:
        async with contextlib.aclosing(adapter.stream(request, dep)) as events:
            async for _ in events:
                pass

    async def whole() -> None:
        await adapter.complete(request, dep)

    calls: dict[str, Callable[[], Awaitable[None]]] = {"stream": streamed, "whole": whole}
    for call in calls.values():
        for _ in range(200):
            await call()
    print(f"{args.model}, {args.n} calls per round; per call:")
    for round_ in range(args.rounds):
        for name, call in calls.items():
            cpu, wall = _cpu_s(), time.perf_counter()
            for _ in range(args.n):
                await call()
            cpu_us = (_cpu_s() - cpu) * 1e6 / args.n
            wall_us = (time.perf_counter() - wall) * 1e6 / args.n
            print(f"round {round_} {name:6s} cpu {cpu_us:6.0f} us  wall {wall_us:6.0f} us", flush=True)
    await adapter.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default=overhead.MODEL)
    args = parser.parse_args()
    upstream, port = overhead.start_upstream(Path(tempfile.mkdtemp(prefix="tollway-whole-")))
    try:
        uvloop.run(_measure(port, args))
    finally:
        upstream.kill()


if __name__ == "__main__":
    main()

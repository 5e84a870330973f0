"""What a lone request pays when it alternates between two core processes (issue 12).

    .venv/bin/python bench/core_alternation.py [-n 300] [--rounds 2]

The bench stack of ``bench/overhead.py`` with the co-located group run twice (``colocated2``: every member
``replicas: 2``). Sequential OpenAI-surface requests go straight to each instance's HTTP port (no Envoy),
then to the two in turn, then through Envoy (round robin, so in turn as well); prints the p50 of each. The
gap between "alone" and "in turn" is what a process pays to resume after sitting idle for one request.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import tempfile
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import overhead  # noqa: E402
from bench.httpload import Connection, Endpoint, percentile, sequential  # noqa: E402
from tollway.cli import _create_key  # noqa: E402


async def in_turn(endpoints: list[Endpoint], n: int, warmup: int) -> float:
    """p50 in ms of ``n`` sequential requests sent to ``endpoints`` one after another, in turn."""
    conns = [Connection(e) for e in endpoints]
    for c in conns:
        await c.open()
    totals = []
    try:
        for i in range(warmup + n):
            total, _ = await conns[i % len(conns)].send()
            if i >= warmup:
                totals.append(total)
    finally:
        for c in conns:
            await c.close()
    return percentile(totals, 50) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    run = Path(tempfile.mkdtemp(prefix="tollway-alternation-"))
    upstream, port = overhead.start_upstream(run)
    stack = overhead.bench_stack(run / "stack", port, "colocated2")
    try:
        stack.start()
        key, _ = asyncio.run(_create_key(stack.redis_url, "bench"))
        edge = stack.options.ports["edge"]
        via_envoy = overhead.tollway_endpoints("tollway", "127.0.0.1", edge, key, exact_hits=False)
        endpoint = via_envoy["tollway-openai"]["json"]
        direct = [dataclasses.replace(endpoint, port=e.port) for e in stack.mesh.service("openai_compat").endpoints]
        print("| round | instance 0 alone | instance 1 alone | the two in turn | through Envoy |")
        print("|---|---|---|---|---|")
        for r in range(args.rounds):
            alone = [uvloop.run(sequential(d, args.n, 20))["p50_ms"] for d in direct]
            turn = uvloop.run(in_turn(direct, args.n, 20))
            envoy = uvloop.run(sequential(endpoint, args.n, 20))["p50_ms"]
            print(f"| {r + 1} | {alone[0]:.2f} | {alone[1]:.2f} | {turn:.2f} | {envoy:.2f} |", flush=True)
        print(f"\np50 in ms of {args.n} sequential requests each; load average {os.getloadavg()[0]:.2f}")
    finally:
        stack.stop()
        upstream.terminate()


if __name__ == "__main__":
    main()

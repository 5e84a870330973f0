"""Tollway's OpenAI surface against the Portkey gateway at p50, in short alternating blocks, paired by
round, with a 95 % interval on the difference (issue 12's latency aim).

    .venv/bin/python bench/peer_blocks.py [--rounds 40] [--block 100] [--warmup 300] [--layout colocated]
        [--past-edge] [--no-budget-stack]

bench/overhead.py takes each target's sequential latency in one block of back-to-back requests per
repeat, the targets one after another: on this kind of VM the machine's speed moves a target's p50 by
up to 2 ms between minutes, so three repeats compare phases as much as gateways ("below Portkey in 1 of
3"). Its ``--rounds`` mode hits every target alike but makes each idle while the others answer, which
slows Portkey more than Tollway. Here the three targets (the zero-delay upstream itself, Tollway's
``POST /v1/chat/completions`` through Envoy with the response cache bypassed, and Portkey) each get a
block of ``--block`` back-to-back requests per round, the order rotated every round, so a block keeps
its target busy (each idles for two blocks at most, ~0.3 s) and every target meets every phase. Per
round it takes each block's p50; prints each target's p50 added over the direct upstream's (the median
over the rounds) and the per-round difference Tollway minus Portkey: its median and a 95 % bootstrap
interval over the rounds, and in how many rounds Tollway was below.

Two more targets tell the gap's parts: ``--past-edge`` sends the same requests straight to the HTTP
port of the process that serves them, past Envoy (``tollway-openai-no-edge``); ``--no-budget-stack``
starts a second stack without the budget service (``tollway-openai-no-budget``, bench/budget_overhead.py's
budget-off stack). Each is compared with Portkey the same way.

Starts the fake upstream, the bench stack of bench/overhead.py in ``--layout`` (budgets on, as ``make
run``) and Portkey from ``peers/portkey`` (see bench/overhead.py for installing it). Never run it beside
anything else: it measures the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import overhead  # noqa: E402
from bench.budget_overhead import endpoint, stack_options  # noqa: E402
from bench.httpload import Connection, Endpoint  # noqa: E402
from tollway.cli import _create_key  # noqa: E402
from tollway.launcher.stack import Stack  # noqa: E402

TARGETS = ("direct", "tollway-openai", "portkey")


async def blocks(endpoints: dict[str, Endpoint], rounds: int, block: int, warmup: int) -> dict[str, list[float]]:
    """Each target's block p50 (seconds) per round, round ``i`` at index ``i``."""
    conns = {name: Connection(e) for name, e in endpoints.items()}
    for conn in conns.values():
        await conn.open()
    try:
        for conn in conns.values():
            for _ in range(warmup):
                await conn.send()
        out: dict[str, list[float]] = {name: [] for name in conns}
        names = list(conns)
        for i in range(rounds):
            k = i % len(names)
            for name in names[k:] + names[:k]:
                conn = conns[name]
                times = [(await conn.send())[0] for _ in range(block)]
                out[name].append(statistics.median(times))
        return out
    finally:
        for conn in conns.values():
            await conn.close()


def interval(diffs: list[float], draws: int = 5000, seed: int = 7) -> tuple[float, float]:
    """A 95 % bootstrap interval of the median of ``diffs`` (resampled rounds)."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(diffs, k=len(diffs))) for _ in range(draws))
    return medians[int(0.025 * draws)], medians[int(0.975 * draws) - 1]


def report(p50s: dict[str, list[float]]) -> str:
    direct = p50s["direct"]
    added = {
        name: [(v - d) * 1000 for v, d in zip(values, direct, strict=True)]
        for name, values in p50s.items()
        if name != "direct"
    }
    lines = [
        f"direct upstream p50 {statistics.median(direct) * 1000:.2f} ms\n",
        "| target | p50 added, median over rounds (ms) | range over rounds | minus Portkey, per round: median "
        "| 95 % interval | rounds below Portkey |",
        "|---|---:|---|---:|---|---|",
    ]
    for name, values in added.items():
        cells = f"| {name} | {statistics.median(values):.2f} | {min(values):.2f}-{max(values):.2f} |"
        if name == "portkey":
            lines.append(cells + " | | |")
            continue
        diffs = [t - p for t, p in zip(values, added["portkey"], strict=True)]
        low, high = interval(diffs)
        lines.append(
            f"{cells} {statistics.median(diffs):+.3f} | {low:+.3f} to {high:+.3f} | "
            f"{sum(d < 0 for d in diffs)} of {len(diffs)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--block", type=int, default=100, help="back-to-back requests per target per round")
    parser.add_argument("--warmup", type=int, default=300, help="unrecorded requests per target first")
    parser.add_argument("--layout", choices=("colocated", "colocated2"), default="colocated")
    parser.add_argument("--past-edge", action="store_true", help="also the OpenAI requests past Envoy")
    parser.add_argument("--no-budget-stack", action="store_true", help="also a stack without the budget service")
    args = parser.parse_args()
    run = Path(tempfile.mkdtemp(prefix="tollway-peer-blocks-"))
    upstream, port = overhead.start_upstream(run)
    stack = overhead.bench_stack(run / args.layout, port, args.layout)
    no_budget = Stack(stack_options(run / "no-budget", port, False, "colocated")) if args.no_budget_stack else None
    portkey = None
    try:
        stack.start()
        key = asyncio.run(_create_key(stack.redis_url, "bench"))[0]
        portkey = overhead.start_portkey(run, port)
        if portkey is None:
            raise SystemExit("Portkey is not installed: see bench/overhead.py's docstring")
        targets = overhead.endpoints(port, stack, key, None, exact_hits=False, portkey=portkey, edge_hop=args.past_edge)
        names = [*TARGETS, *(["tollway-openai-no-edge"] if args.past_edge else [])]
        endpoints = {name: targets[name]["json"] for name in names}
        if no_budget is not None:
            no_budget.start()
            endpoints["tollway-openai-no-budget"] = dataclasses.replace(
                endpoint("no-budget", no_budget, "openai"), name="tollway-openai-no-budget", ok_marker=b"w19"
            )
        load_before, started = os.getloadavg(), time.time()
        p50s = uvloop.run(blocks(endpoints, args.rounds, args.block, args.warmup))
        print(
            f"layout {args.layout}; {args.rounds} rounds of {args.block} requests per target; "
            f"{os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; took "
            f"{time.time() - started:.0f}s; load average {' '.join(f'{x:.2f}' for x in load_before)} at the start, "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end\n"
        )
        print(report(p50s))
    finally:
        if portkey is not None:
            portkey[0].stop()
        stack.stop()
        if no_budget is not None:
            no_budget.stop()
        upstream.kill()
        upstream.wait()


if __name__ == "__main__":
    main()

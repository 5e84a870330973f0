"""CPU per request of this checkout against another, measured in alternating blocks on one machine
(issue 12): a change's saving survives a busy machine better this way than in two separate runs.

    .venv/bin/python bench/cpu_ab.py BASELINE_CHECKOUT [--blocks 6] [-n 1000] [--target tollway-openai]

Both stacks are the co-located bench stack of bench/overhead.py (Envoy, the core process, embedding,
Redis; the zero-delay fake upstream shared), each from its own checkout's code: the baseline's is
started by ``bench/checkout_stack.py`` with that checkout's package on the path, as
``overhead.py --baseline`` does. Blocks of ``n`` sequential requests go to one stack then the other
(the order flips every block); for each block it prints the p50 and the user+system CPU per request of
the core process, Redis and Envoy read from /proc, then the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import overhead  # noqa: E402
from bench.cpu_per_request import cpu_seconds  # noqa: E402
from bench.httpload import Endpoint, sequential  # noqa: E402
from tollway.cli import _create_key  # noqa: E402

MEASURED = ("core", "redis", "envoy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("baseline", type=Path)
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--target", default="tollway-openai", choices=["tollway", "tollway-openai"])
    args = parser.parse_args()
    run = Path(tempfile.mkdtemp(prefix="tollway-cpu-ab-"))
    upstream, port = overhead.start_upstream(run)
    stack = overhead.bench_stack(run / "this", port, "colocated")
    baseline: subprocess.Popen[str] | None = None
    try:
        stack.start()
        key, _ = asyncio.run(_create_key(stack.redis_url, "bench"))
        baseline, info = overhead.start_baseline(args.baseline, run, port, layout="colocated")
        mine = overhead.tollway_endpoints("tollway", "127.0.0.1", stack.options.ports["edge"], key, exact_hits=False)
        theirs = overhead.tollway_endpoints("tollway", "127.0.0.1", info["port"], info["key"], exact_hits=False)
        sides: dict[str, tuple[Endpoint, dict[str, int]]] = {
            "this": (mine[args.target]["json"], {c.name: c.process.pid for c in stack.children}),
            "baseline": (theirs[args.target]["json"], info["pids"]),
        }
        for endpoint, _ in sides.values():
            uvloop.run(sequential(endpoint, 200, 10))
        rows: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
        for block in range(args.blocks):
            order = list(sides) if block % 2 == 0 else list(reversed(sides))
            for name in order:
                endpoint, pids = sides[name]
                before = {p: cpu_seconds(pids[p]) for p in MEASURED}
                result = uvloop.run(sequential(endpoint, args.n, 0))
                row = {p: (cpu_seconds(pids[p]) - before[p]) * 1000 / args.n for p in MEASURED}
                row["p50_ms"] = result["p50_ms"]
                rows[name].append(row)
                cells = " ".join(f"{k} {v:.2f}" for k, v in row.items())
                print(f"block {block} {name:8s} {cells}  load {os.getloadavg()[0]:.1f}", flush=True)
        print(f"\nmedians, {args.blocks} blocks of {args.n} sequential requests ({args.target}); CPU ms per request:")
        for name, got in rows.items():
            cells = " ".join(f"{k} {statistics.median(r[k] for r in got):.2f}" for k in (*MEASURED, "p50_ms"))
            print(f"{name:8s} {cells}")
    finally:
        if baseline is not None and baseline.stdin is not None:
            baseline.stdin.close()
            baseline.wait(timeout=60)
        stack.stop()
        upstream.kill()


if __name__ == "__main__":
    main()

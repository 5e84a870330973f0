"""CPU each process spends per request, for each kind of request: where the time goes.

    .venv/bin/python bench/cpu_per_request.py [-n 1000] [--layout colocated|split] [target:kind ...]

Starts the stack as bench/overhead.py does (zero-delay fake upstream, Envoy, gateway, router,
cache, embedding, openai_compat), sends ``n`` sequential requests per target and reads each
process's user+system CPU from /proc before and after. With ``--layout colocated`` (the default,
as ``make run``) the gateway, router, cache, budget and openai_compat are one process, ``core``.
Targets are bench/overhead.py's:
``tollway``, ``tollway-openai``, ``tollway-exact-hit``, ``direct``; kinds ``json`` or ``stream``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import overhead  # noqa: E402
from bench.httpload import sequential  # noqa: E402
from tollway.cli import _create_key  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--layout", choices=["colocated", "split"], default="colocated")
    parser.add_argument("targets", nargs="*", default=["tollway:json", "tollway:stream", "tollway-exact-hit:json"])
    args = parser.parse_args()
    run = Path(tempfile.mkdtemp(prefix="tollway-cpu-"))
    upstream, port = overhead.start_upstream(run)
    stack = overhead.bench_stack(run / args.layout, port, args.layout)
    try:
        stack.start()
        key, _ = asyncio.run(_create_key(stack.redis_url, "bench"))
        targets = overhead.endpoints(port, stack, key, None)
        pids = {c.name: c.process.pid for c in stack.children} | {"upstream": upstream.pid}
        print("| request | p50 ms | " + " | ".join(pids) + " | client |")
        print("|---|---|" + "---|" * (len(pids) + 1))
        for spec in args.targets:
            name, kind = spec.split(":")
            uvloop.run(sequential(targets[name][kind], 100, 10))
            before = {n: cpu_seconds(p) for n, p in pids.items()}
            started = time.process_time()
            result = uvloop.run(sequential(targets[name][kind], args.n, 0))
            client = time.process_time() - started
            after = {n: cpu_seconds(p) for n, p in pids.items()}
            per = [(after[n] - before[n]) * 1000 / args.n for n in pids]
            cells = " | ".join(f"{v:.2f}" for v in per)
            print(f"| {spec} | {result['p50_ms']:.2f} | {cells} | {client * 1000 / args.n:.2f} |")
        print(
            f"\nCPU ms per request, {args.n} sequential requests each; {os.cpu_count()} cores; "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        )
    finally:
        stack.stop()
        upstream.kill()


if __name__ == "__main__":
    main()

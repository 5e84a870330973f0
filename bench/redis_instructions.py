"""Instructions Redis executes per request for the budget, counted by valgrind: the Redis side of a
reserve and commit in a figure the machine's load cannot move (issue 13). Compare two checkouts to
see what a change to the budget's scripts saved.

    .venv/bin/python bench/redis_instructions.py [-n 1000] [--leases 64] [--redis-defaults]
    PYTHONPATH=/path/to/other/checkout/services .venv/bin/python bench/redis_instructions.py

A redis-server of its own (AOF on and ``tollway.mesh.redis.SERVER_SETTINGS``, as the launcher runs it;
``--redis-defaults``: Redis's own settings instead) under ``valgrind --tool=callgrind``
with instrumentation off; the requests go the co-located gateway's way (bench/budget_cpu.py's:
``Budgeting.admit`` and ``settle`` over an in-process channel to the budget's servicer, its domain
object and its store, bench/budget.py's plan of six quotas, a key and a feature on every request).
After a warm-up, instrumentation is switched on (``callgrind_control``) for ``n`` sequential
requests, each settled before the next, and the figure is the count divided by ``n``: everything
Redis did for them (scripts, lease takes and returns, reading and writing the connection, the AOF
buffer). Needs ``valgrind`` (Debian package); about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.budget import PLANS
from bench.budget_cpu import co_located, gateway_request
from tollway.budget import store as budget_store
from tollway.common.chat import Usage
from tollway.gateway.budgeting import Settlement
from tollway.launcher.processes import free_ports
from tollway.mesh.redis import SERVER_SETTINGS


def _control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


async def _requests(url: str, plans: Path, leases: int, n: int, pid: int) -> None:
    async with co_located(url, plans, leases) as (_, budgeting, _):

        async def one(i: int) -> None:
            admission = await budgeting.admit(gateway_request(f"bench-{i}"))
            await budgeting.settle(admission, Settlement(Usage(13, 6)))

        for i in range(300):
            await one(-1 - i)
        _control(pid, "-i", "on")
        for i in range(n):
            await one(i)
        _control(pid, "-i", "off")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=1000, help="requests counted")
    parser.add_argument("--leases", type=int, default=64, help="TOLLWAY_BUDGET_LEASE_REQUESTS (0: no leases)")
    parser.add_argument("--redis-defaults", action="store_true", help="without Tollway's redis-server settings")
    args = parser.parse_args()
    run = Path(tempfile.mkdtemp(prefix="bench-redis-instr-"))
    (run / "budget.yaml").write_text(PLANS)
    (port,) = free_ports(1)
    out = run / "callgrind.out"
    server = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
         "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
         "--dir", str(run), *(() if args.redis_defaults else SERVER_SETTINGS)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        probe = redis.Redis(port=port)
        for _ in range(300):
            try:
                probe.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        asyncio.run(_requests(f"redis://127.0.0.1:{port}/0", run / "budget.yaml", args.leases, args.n, server.pid))
        _control(server.pid, "-d")
    finally:
        server.terminate()
        server.wait()
    totals = sum(
        int(m.group(1))
        for f in run.glob("callgrind.out*")
        if (m := re.search(r"^totals:\s+(\d+)", f.read_text(), re.M))
    )
    print(
        f"{Path(budget_store.__file__).parents[2]} (leases {args.leases}"
        f"{', Redis defaults' if args.redis_defaults else ''}): "
        f"{totals / args.n:,.0f} Redis instructions per request (reserve and commit, {args.n} requests)"
    )


if __name__ == "__main__":
    main()

"""The budget's own cost per request, without gRPC: reserve + commit called on the domain
object in this process against a private redis-server, one at a time.

    .venv/bin/python bench/budget_inprocess.py [--requests 3000]
    PYTHONPATH=/path/to/other/checkout/services .venv/bin/python bench/budget_inprocess.py

The plan is bench/budget.py's load plan (six quotas nobody reaches) and every request names a
key, a feature and a conversation, so every counter applies. Prints wall and CPU microseconds
per reserve+commit (CPU: this process only, i.e. the budget's Python and the Redis client; the
Redis server's work is not in it), the arguments each script call sends to Redis, and the
time Redis spends per script call (``INFO commandstats``, reserve and commit averaged).
Run it with another checkout's ``services`` on PYTHONPATH to compare that code on the same
machine (alternate the two, as the numbers drift with the machine's load).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path

import redis.asyncio as aioredis
from redis.asyncio.connection import Connection

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.budget import PLANS
from tests.support.redis_server import local_redis
from tollway.budget import store as budget_store
from tollway.budget.budget import Budget
from tollway.budget.config import BudgetConfig
from tollway.budget.plans import PlansSource
from tollway.budget.store import BudgetStore
from tollway.budget.types import CommitCommand, Priority, ReserveCommand
from tollway.common.catalog import CatalogSource

ROOT = Path(__file__).resolve().parents[1]


async def run(url: str, plans: Path, n: int) -> None:
    client = aioredis.Redis.from_url(url)
    cfg = BudgetConfig(plans=str(plans), catalog=str(ROOT / "deploy" / "models.yaml"))
    budget = Budget(BudgetStore(client), PlansSource(cfg.plans), CatalogSource(cfg.catalog), cfg)
    await budget.start()
    sent: list[int] = []
    last: dict[int, tuple[object, ...]] = {}
    original = client.execute_command

    async def counting(*args: object, **kwargs: object) -> object:
        if args and args[0] in ("EVALSHA", "EVAL"):
            last[len(sent) % 2] = args
            sent.append(len(args))
        return await original(*args, **kwargs)

    client.execute_command = counting  # type: ignore[method-assign]

    async def one(i: int) -> None:
        granted = await budget.reserve(
            ReserveCommand(
                tenant="warmup",
                model="gpt-4o-mini",
                input_tokens=8,
                max_output_tokens=16,
                api_key_id="key-1",
                feature="chat",
                conversation_id=f"conv-{i % 50}",
                priority=Priority.INTERACTIVE,
            )
        )
        await budget.commit(CommitCommand(name=granted.reservation.name, input_tokens=8, output_tokens=6))

    for i in range(200):
        await one(i)
    sent.clear()
    await client.config_resetstat()
    wall: list[float] = []
    cpu0, t0 = time.process_time(), time.perf_counter()
    for i in range(n):
        start = time.perf_counter()
        await one(i)
        wall.append(time.perf_counter() - start)
    cpu = time.process_time() - cpu0
    total = time.perf_counter() - t0
    reserve_args, commit_args = sent[0::2], sent[1::2]
    evalsha = (await client.info("commandstats")).get("cmdstat_evalsha", {})
    # Encoding one reserve's command for the wire (redis-py's pack_command), best of 5 x 2000:
    # the Python cost that depends on how many arguments the script takes.
    conn = Connection()
    pack_us = min(timeit.repeat(lambda: conn.pack_command(*last[0]), number=2000, repeat=5)) / 2000 * 1e6
    print(
        f"{Path(budget_store.__file__).parents[2]}: {n} reserve+commit, "
        f"wall p50 {statistics.median(wall) * 1e6:.0f} us, mean {total / n * 1e6:.0f} us; "
        f"CPU {cpu / n * 1e6:.0f} us per reserve+commit; "
        f"Redis arguments per reserve {statistics.mean(reserve_args):.0f}, "
        f"per commit {statistics.mean(commit_args):.0f}; "
        f"Redis time per script call {float(evalsha.get('usec_per_call', 0)):.1f} us; "
        f"packing one reserve {pack_us:.1f} us; "
        f"load {os.getloadavg()[0]:.2f}"
    )
    await budget.stop()
    await client.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=3000)
    a = ap.parse_args()
    plans = Path(tempfile.mkdtemp(prefix="bench-budget-inproc-")) / "budget.yaml"
    plans.write_text(PLANS)
    with local_redis(appendonly=True) as server:
        asyncio.run(run(server.url, plans, a.requests))


if __name__ == "__main__":
    main()

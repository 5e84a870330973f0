"""A Redis Cluster master killed under load: what clients see, and whether an acknowledged write is lost.

    .venv/bin/python bench/redis_cluster.py [--writers 8] [--seconds 12] [--kill-after-s 4]

Starts a real cluster (3 masters, 1 replica each, AOF on with `appendfsync always`) and writers
using Tollway's cluster client (`tollway.mesh.redis.connect`, `redis+cluster://`). Each writer
sets its own keys (`{w<n>}:<i>`, one slot per writer) one after another and records every write
the cluster acknowledged. After `--kill-after-s` the master that owns writer 0's slot is SIGKILLed;
its replica is promoted (cluster-node-timeout 1 s). Writers keep going; a failed write is retried
on the next key. At the end the killed node is started again (it rejoins as a replica, from its
AOF) and every acknowledged key is read back.

Two modes, run one after the other on fresh clusters:
- `ack`: a write counts as acknowledged when its master answered OK (Redis replication is
  asynchronous: the replica may not have it yet when the master dies);
- `wait`: after each write, `WAIT 1 500` on the key's master; a write counts only when one replica
  confirmed it (what Tollway would need for the budget's ledger to survive a failover).
Prints one JSON object: per mode, writes acknowledged, errors by type, how many writers wrote again
after the kill and the longest pause between two writes of one writer across it, and acknowledged
writes missing afterwards.

    .venv/bin/python bench/redis_cluster.py --compare [--ops 3000] [--concurrency 16]

instead runs the cache's and the budget's store paths, the same code the services run, against a
single Redis and against a 3-master cluster (AOF on, fsync every second, in both): the cache's
`put` then `get_by_key` of distinct entries, and the budget's reserve + commit for 64 tenants
(each tenant's keys in its own slot), with `--concurrency` callers in this process. Prints ops/s and
latency per path and Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from redis.asyncio.cluster import RedisCluster  # noqa: E402

from bench.budget import PLANS  # noqa: E402
from tests.support.redis_cluster import local_redis_cluster  # noqa: E402
from tests.support.redis_server import local_redis  # noqa: E402
from tollway.budget.budget import Budget  # noqa: E402
from tollway.budget.config import BudgetConfig  # noqa: E402
from tollway.budget.plans import PlansSource  # noqa: E402
from tollway.budget.store import BudgetStore  # noqa: E402
from tollway.budget.types import CommitCommand, Priority, ReserveCommand  # noqa: E402
from tollway.cache.entries import Answer, Entry  # noqa: E402
from tollway.cache.scope import Scope  # noqa: E402
from tollway.cache.store import CacheStore  # noqa: E402
from tollway.common.catalog import CatalogSource  # noqa: E402
from tollway.mesh.redis import connect  # noqa: E402


async def writer(
    client: RedisCluster, n: int, mode: str, stop: asyncio.Event, acked: list[str], errors: Counter[str],
    successes: list[float],
) -> None:
    i = 0
    while not stop.is_set():
        key = f"{{w{n}}}:{i}"
        i += 1
        try:
            await client.set(key, str(i))
            if mode == "wait":
                node = client.get_node_from_key(key)
                replicas = await client.execute_command("WAIT", 1, 500, target_nodes=node)
                if int(replicas) < 1:
                    errors["WAIT: no replica confirmed within 500 ms"] += 1
                    continue
            acked.append(key)
            successes.append(time.monotonic())
        except Exception as exc:  # every kind a client may see during failover is the point
            errors[f"{type(exc).__name__}: {str(exc)[:60]}"] += 1
            await asyncio.sleep(0.05)


async def run_mode(mode: str, writers: int, seconds: float, kill_after_s: float) -> dict[str, object]:
    with local_redis_cluster(masters=3, replicas=1, appendonly=True) as cluster:
        client: RedisCluster = connect(cluster.url)  # type: ignore[assignment]
        stop = asyncio.Event()
        acked: list[list[str]] = [[] for _ in range(writers)]
        errors: Counter[str] = Counter()
        successes: list[list[float]] = [[] for _ in range(writers)]
        tasks = [
            asyncio.create_task(writer(client, n, mode, stop, acked[n], errors, successes[n])) for n in range(writers)
        ]
        await asyncio.sleep(kill_after_s)
        owner = client.get_node_from_key("{w0}:0")
        victim = next(node for node in cluster.nodes if node.port == owner.port)
        killed_at = time.monotonic()
        await asyncio.to_thread(victim.kill)
        await asyncio.sleep(seconds - kill_after_s)
        stop.set()
        await asyncio.gather(*tasks)
        await asyncio.to_thread(victim.start)
        await asyncio.to_thread(cluster.wait_ok, 60.0)
        missing = 0
        total = 0
        for keys in acked:
            for start in range(0, len(keys), 500):
                part = keys[start : start + 500]
                values = await client.mget(part)  # one writer's keys share a slot
                missing += sum(v is None for v in values)
                total += len(part)
        await client.aclose()
        # A writer whose slot lived on the killed master cannot write until its replica is promoted.
        outages = []
        for times in successes:
            before = [t for t in times if t < killed_at]
            after = [t for t in times if t >= killed_at]
            if after:
                outages.append(after[0] - (before[-1] if before else killed_at))
        return {
            "writes_before_kill": sum(1 for times in successes for t in times if t < killed_at),
            "writes_after_kill": sum(1 for times in successes for t in times if t >= killed_at),
            "writers_that_wrote_after_the_kill": f"{len(outages)}/{writers}",
            "longest_pause_between_two_writes_across_the_kill_s": round(max(outages, default=0.0), 2),
            "mode": mode,
            "acknowledged_writes": total,
            "acknowledged_but_missing_after_failover": missing,
            "errors_by_type": dict(errors.most_common()),
            "killed_master_port": victim.port,
            "seconds_after_kill": round(time.monotonic() - killed_at, 1),
        }


async def timed(ops: int, concurrency: int, one: object) -> dict[str, float]:
    latencies: list[float] = []
    next_i = 0

    async def worker() -> None:
        nonlocal next_i
        while next_i < ops:
            i = next_i
            next_i += 1
            t = time.perf_counter()
            await one(i)  # type: ignore[operator]
            latencies.append(time.perf_counter() - t)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "ops_per_s": round(ops / elapsed, 1),
        "p50_ms": round(1000 * latencies[len(latencies) // 2], 2),
        "p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 2),
    }


async def compare_one(url: str, ops: int, concurrency: int, scratch: Path) -> dict[str, object]:
    client = connect(url)
    cache = CacheStore(client, prefix="bench:cache")
    now = int(time.time() * 1000)

    def entry(i: int) -> Entry:
        return Entry(
            entry_id=0, namespace="bench", key=f"k{i}", context="c", scope=Scope.TENANT, tenant_id=f"t{i % 64}",
            user_id="", prompt_template="", prompt_version="", query=f"question {i}", embedding_model="",
            created_ms=now, expires_ms=now + 3_600_000, stale_until_ms=now + 7_200_000, document_ids=(),
            answer=Answer(text="an answer of a few words " * 8, model="m", input_tokens=8, output_tokens=40),
        )

    async def put(i: int) -> None:
        await cache.put(entry(i), max_entries=0, eviction="oldest")

    async def get(i: int) -> None:
        assert await cache.get_by_key(f"k{i}") is not None

    plans = scratch / "budget.yaml"
    plans.write_text(PLANS)
    cfg = BudgetConfig(plans=str(plans), catalog=str(ROOT / "deploy" / "models.yaml"))
    budget = Budget(BudgetStore(client), PlansSource(cfg.plans), CatalogSource(cfg.catalog), cfg)
    await budget.start()

    async def reserve_commit(i: int) -> None:
        granted = await budget.reserve(ReserveCommand(
            tenant=f"tenant-{i % 64}", model="gpt-4o-mini", input_tokens=8, max_output_tokens=16,
            api_key_id="key-1", feature="chat", conversation_id=f"conv-{i % 50}", priority=Priority.INTERACTIVE,
        ))
        await budget.commit(CommitCommand(name=granted.reservation.name, input_tokens=8, output_tokens=6))

    await timed(200, concurrency, reserve_commit)  # warm-up: scripts loaded, connections open
    out = {
        "cache_put": await timed(ops, concurrency, put),
        "cache_get_by_key": await timed(ops, concurrency, get),
        "budget_reserve_commit": await timed(ops, concurrency, reserve_commit),
    }
    await budget.stop()
    await client.aclose()
    return out


def compare(ops: int, concurrency: int) -> dict[str, object]:
    scratch = Path(tempfile.mkdtemp(prefix="tollway-rc-compare-"))
    out: dict[str, object] = {"loadavg_before": os.getloadavg()}
    # Alternated twice, as the machine's load drifts.
    for round_ in (1, 2):
        with local_redis(appendonly=True) as single:
            out[f"single_{round_}"] = asyncio.run(compare_one(single.url, ops, concurrency, scratch))
        with local_redis_cluster(masters=3, replicas=0, appendonly=True, appendfsync="everysec") as cluster:
            out[f"cluster_{round_}"] = asyncio.run(compare_one(cluster.url, ops, concurrency, scratch))
    out["loadavg_after"] = os.getloadavg()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--kill-after-s", type=float, default=4.0)
    parser.add_argument("--modes", default="ack,wait")
    parser.add_argument("--compare", action="store_true", help="cache and budget paths: single Redis vs cluster")
    parser.add_argument("--ops", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    if args.compare:
        print(json.dumps(compare(args.ops, args.concurrency), indent=1))
        return
    load_before = os.getloadavg()
    results = [
        asyncio.run(run_mode(mode, args.writers, args.seconds, args.kill_after_s)) for mode in args.modes.split(",")
    ]
    print(json.dumps({"loadavg_before": load_before, "loadavg_after": os.getloadavg(), "results": results}, indent=1))


if __name__ == "__main__":
    main()

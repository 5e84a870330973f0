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
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from redis.asyncio.cluster import RedisCluster  # noqa: E402

from tests.support.redis_cluster import local_redis_cluster  # noqa: E402
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--kill-after-s", type=float, default=4.0)
    parser.add_argument("--modes", default="ack,wait")
    args = parser.parse_args()
    load_before = os.getloadavg()
    results = [
        asyncio.run(run_mode(mode, args.writers, args.seconds, args.kill_after_s)) for mode in args.modes.split(",")
    ]
    print(json.dumps({"loadavg_before": load_before, "loadavg_after": os.getloadavg(), "results": results}, indent=1))


if __name__ == "__main__":
    main()

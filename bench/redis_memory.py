"""What each request leaves in Redis, and for how long: the figures to size Redis by.

    .venv/bin/python bench/redis_memory.py [-n 5000] [--rate 100]

Starts the bench stack of bench/overhead.py (co-located, as ``make run``: budgets on, call records,
the response cache) on the zero-delay fake upstream, sends ``n`` sequential OpenAI chat completions
with the response cache bypassed, then reads Redis: ``used_memory`` before and after, and every key
grouped by family (its name with ids and days taken out), with ``MEMORY USAGE`` (every key of a
family of up to 2,000, a sample of 2,000 beyond that, scaled), each family's encoding and TTL, and
how many entries a stream holds and where it is capped. Prints bytes per request per family and,
for ``--rate`` requests a second, the memory each family holds once it has reached its steady state:
TTL x rate x bytes for keys that expire, the cap for a capped stream, and growth per day for what
nothing removes.

The fake upstream's answer is 20 words and the prompt ~10 tokens: a longer prompt or answer makes
the call records bigger (their prompt and answer are not kept in Redis unless raw logging is on),
not the budget's records or its ledger.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import inspect
import random
import re
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import redis
import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import overhead  # noqa: E402
from bench.httpload import sequential  # noqa: E402
from tollway.cli import _create_key  # noqa: E402

SAMPLE = 2000
# Ids, hex digests, days and numbers in key names: what varies per request or per day.
_TENANT = re.compile(r"\{[^}]*\}")  # a budget key's hash tag is its tenant
_VARIABLE = re.compile(r"[0-9a-f]{16,}|\d{4}-\d{2}-\d{2}|(?<=[:|])\d+(?=$|[:|])|tw-[A-Za-z0-9]+")


@dataclass
class Family:
    """The keys whose names differ only by an id or a day."""

    keys: list[bytes] = field(default_factory=list)
    kind: str = ""
    encoding: str = ""
    ttl_s: int = -1  # the median TTL of the sample; -1: none
    bytes_total: float = 0.0
    stream_entries: int = 0


def family_name(key: bytes) -> str:
    name = _TENANT.sub("{*}", _VARIABLE.sub("*", key.decode(errors="replace")))
    return re.sub(r"^tollway:calls:tenant:.*", "tollway:calls:tenant:*", name)


def families(client: redis.Redis) -> dict[str, Family]:
    out: dict[str, Family] = collections.defaultdict(Family)
    for key in client.scan_iter(count=5000):
        out[family_name(key)].keys.append(key)
    rng = random.Random(7)
    for fam in out.values():
        sample = fam.keys if len(fam.keys) <= SAMPLE else rng.sample(fam.keys, SAMPLE)
        sizes = [client.memory_usage(k, samples=0) or 0 for k in sample]
        fam.bytes_total = statistics.fmean(sizes) * len(fam.keys)
        fam.kind = client.type(sample[0]).decode()
        fam.encoding = client.object("encoding", sample[0]).decode()
        fam.ttl_s = int(statistics.median(client.ttl(k) for k in sample[:200]))
        if fam.kind == "stream":
            fam.stream_entries = sum(client.xlen(k) for k in fam.keys)
    return out


def stream_caps() -> dict[str, int]:
    """The lengths the gateway trims its call streams to (its defaults), by family name."""
    from tollway.gateway.config import GatewayConfig
    from tollway.gateway.store import CALLS_STREAM, TENANT_CALLS, GatewayStore

    tenant = inspect.signature(GatewayStore.__init__).parameters["tenant_calls_maxlen"].default
    return {CALLS_STREAM: GatewayConfig().call_log_maxlen, TENANT_CALLS + "*": tenant}


def report(before: int, after: int, fams: dict[str, Family], n: int, rate: float) -> str:
    lines = [
        f"used_memory: {before / 2**20:.1f} MiB before, {after / 2**20:.1f} MiB after {n} requests: "
        f"{(after - before) / n:,.0f} bytes per request\n",
        "| family | type, encoding | keys | bytes per request | kept | held at the steady state, "
        f"{rate:g} requests/s |",
        "|---|---|---:|---:|---|---|",
    ]
    caps = stream_caps()
    for name, fam in sorted(fams.items(), key=lambda kv: -kv[1].bytes_total):
        per_request = fam.bytes_total / n
        if per_request < 1:
            continue
        if fam.ttl_s > 0:
            ttl = f"{fam.ttl_s / 86400:.1f} d" if fam.ttl_s >= 86000 else f"{fam.ttl_s} s"
            steady = f"{per_request * rate * fam.ttl_s / 2**30:,.1f} GiB"
        elif fam.kind == "stream":
            per_entry = fam.bytes_total / max(fam.stream_entries, 1)
            cap = caps.get(name)
            if cap is None:
                ttl = "none, no cap"
                steady = f"**{per_request * rate * 86400 / 2**30:,.1f} GiB more every day**"
            else:
                ttl = f"capped at {cap:,} entries"
                hours = cap * per_entry / per_request / rate / 3600
                whose = " (a tenant's)" if name.endswith("*") else ""
                steady = f"{cap * per_entry / 2**30:,.2f} GiB{whose}, reached in {hours:,.1f} h"
        else:
            ttl = "none"
            steady = "—" if len(fam.keys) < n / 100 else f"{per_request * rate * 86400 / 2**30:,.1f} GiB more a day"
        lines.append(
            f"| `{name}` | {fam.kind}, {fam.encoding} | {len(fam.keys):,} | {per_request:,.0f} | {ttl} | {steady} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5000, help="requests sent")
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second to project the steady state for")
    args = parser.parse_args()
    run = Path(tempfile.mkdtemp(prefix="tollway-redis-memory-"))
    upstream, port = overhead.start_upstream(run)
    stack = overhead.bench_stack(run / "colocated", port, "colocated")
    try:
        stack.start()
        key = asyncio.run(_create_key(stack.redis_url, "bench"))[0]
        endpoint = overhead.endpoints(port, stack, key, None, exact_hits=False)["tollway-openai"]["json"]
        client = redis.Redis.from_url(stack.redis_url)
        uvloop.run(sequential(endpoint, 50, 0))  # caches, leases and first records in place
        before = int(client.info("memory")["used_memory"])
        uvloop.run(sequential(endpoint, args.n, 0))
        after = int(client.info("memory")["used_memory"])
        print(report(before, after, families(client), args.n + 50, args.rate))
    finally:
        stack.stop()
        upstream.kill()
        upstream.wait()


if __name__ == "__main__":
    main()

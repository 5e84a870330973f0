"""Issue 17 figures: what the call-log totals cost to keep, and what reading them costs at 100k calls.

    .venv/bin/python bench/console.py [--records 100000] [--rounds 40] [--batch 256] [--queries 100] [--loads 10]

1. **Write-time totals** (a private Redis): batches of synthetic call records (of the last minute,
   as live calls are) written through
   ``CallLog.flush`` with the totals (tenant stream, call index, one usage-script call per
   tenant and day) and without them (the global stream only), alternating batch by batch so
   drift and warm-up favour neither. Prints wall and process-CPU time per record of each and the
   difference: what the gateway's event loop spends per call, off the response path.
2. **100k calls in the stack**: starts Envoy, the gateway, router, cache, budget and prompts on free
   ports, writes
   ``--records`` records spread over 10 tenants, 20 features, 1000 users, 5 models, 12 prompt
   versions, 3 namespaces and the last 7 days through the same ``CallLog`` into the stack's
   Redis, then times ``InsightsService.GetUsage`` per grouping and ``ListCalls`` over gRPC (admin
   key: every tenant, the widest read), p50/p99 of ``--queries`` each.
3. **Dashboard load** in headless Chromium through Envoy: the admin signs in, then ``--loads``
   refreshes of the whole dashboard (six GetUsage, drift, 20 calls, six charts drawn), timed
   from the click to the page's "updated" (first load reported apart).

Prints the machine's load (``uptime``) before and after. Never run it on a machine that serves
anything else: it measures the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import datetime
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402

from bench.httpload import percentile  # noqa: E402
from bench.prompt_ref import uptime  # noqa: E402
from tests.support.redis_server import local_redis  # noqa: E402
from tollway.cli import _create_key  # noqa: E402
from tollway.common.caching import CacheTier  # noqa: E402
from tollway.gateway.calllog import CallLog  # noqa: E402
from tollway.gateway.callrecord import CallRecord  # noqa: E402
from tollway.gateway.store import GatewayStore  # noqa: E402
from tollway.gateway.v1 import insights_pb2, insights_pb2_grpc  # noqa: E402
from tollway.launcher.processes import free_ports  # noqa: E402
from tollway.launcher.stack import Stack, StackOptions  # noqa: E402

TIERS = (CacheTier.MISS, CacheTier.MISS, CacheTier.EXACT, CacheTier.SEMANTIC, CacheTier.NOT_CONSULTED)


def synthetic(rng: random.Random, now: float, spread_s: float = 7 * 86400) -> CallRecord:
    """One plausible call record (values spread like a busy multi-tenant gateway's)."""
    prompt = rng.randrange(13)
    rec = CallRecord.begin(
        uuid.uuid4().hex,
        f"tenant-{rng.randrange(10)}",
        f"feature-{rng.randrange(20)}",
        f"user-{rng.randrange(1000)}",
        f"model-{rng.randrange(5)}",
        uuid.uuid4().hex[:32],
        prompt_template="" if prompt == 12 else f"template-{prompt % 4}",
        prompt_version="" if prompt == 12 else str(prompt // 4 + 1),
    )
    rec.timestamp = round(now - rng.uniform(0, spread_s), 3)
    rec.cache_tier = rng.choice(TIERS)
    rec.cache_namespace = f"ns-{rng.randrange(3)}"
    rec.input_tokens, rec.output_tokens = rng.randrange(20, 2000), rng.randrange(1, 400)
    rec.cost_usd = rng.randrange(1, 5000) / 1e6
    rec.latency_ms, rec.ttft_ms = rng.randrange(100, 4000), rng.randrange(20, 600)
    rec.status = "OK" if rng.random() > 0.01 else "PROVIDER_UNAVAILABLE"
    rec.key_id, rec.max_tokens, rec.response_hash = "tw-abcdef", 256, uuid.uuid4().hex[:32]
    return rec


async def write_cost(rounds: int, batch: int) -> str:
    """Alternating flushes with and without the totals on a private Redis."""
    rng = random.Random(1)
    now = time.time()
    times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    with local_redis() as server:
        client = aioredis.Redis.from_url(server.url)
        store = GatewayStore(client)
        logs = {False: CallLog(store, aggregate=False), True: CallLog(store, aggregate=True)}
        for i in range(rounds * 2 + 4):
            with_totals = bool(i % 2) if (i // 2) % 2 else not bool(i % 2)  # alternate which goes first
            log = logs[with_totals]
            for _ in range(batch):
                # As add() queues, minus the timer; live calls all land on today (the last minute).
                log._waiting.append(synthetic(rng, now, spread_s=60))
            wall, cpu = time.perf_counter(), time.process_time()
            await log.flush()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if i >= 4:  # the first two rounds warm up
                times[with_totals].append((wall, cpu))
        info = await client.info("memory")
        await client.aclose()
    lines = [
        f"### Write-time totals: {rounds} batches of {batch} records each way, alternating",
        "",
        "| flush | wall per record (µs, median batch) | process CPU per record (µs, median batch) |",
        "|---|---|---|",
    ]
    per: dict[bool, tuple[float, float]] = {}
    for with_totals in (False, True):
        w = statistics.median(t[0] for t in times[with_totals]) / batch * 1e6
        c = statistics.median(t[1] for t in times[with_totals]) / batch * 1e6
        per[with_totals] = (w, c)
        name = "records + totals, tenant stream, call index" if with_totals else "records only (before issue 17)"
        lines.append(f"| {name} | {w:.1f} | {c:.1f} |")
    lines += [
        "",
        f"The totals add {per[True][0] - per[False][0]:.1f} µs of wall time and "
        f"{per[True][1] - per[False][1]:.1f} µs of the gateway process's CPU per call, in the batch written "
        f"off the response path. Redis used_memory after the run: {info['used_memory_human']}.",
    ]
    return "\n".join(lines)


async def fill(redis_url: str, records: int, batch: int) -> float:
    """Writes ``records`` synthetic calls through the call log; returns the seconds it took."""
    rng = random.Random(2)
    now = time.time()
    client = aioredis.Redis.from_url(redis_url)
    log = CallLog(GatewayStore(client))
    start = time.perf_counter()
    for done in range(0, records, batch):
        for _ in range(min(batch, records - done)):
            log._waiting.append(synthetic(rng, now))
        await log.flush()
    took = time.perf_counter() - start
    await client.aclose()
    return took


async def query_latency(address: str, key: str, queries: int) -> str:
    since = (datetime.datetime.now(datetime.UTC).date() - datetime.timedelta(days=7)).isoformat()
    meta = (("authorization", f"Bearer {key}"),)
    lines = [
        f"### Reads at this size (gRPC to the gateway, admin key: every tenant; {queries} calls each)",
        "",
        "| RPC | rows | p50 (ms) | p99 (ms) |",
        "|---|---|---|---|",
    ]
    async with grpc.aio.insecure_channel(address) as channel:
        stub = insights_pb2_grpc.InsightsServiceStub(channel)
        groups = ("TENANT", "FEATURE", "USER", "MODEL", "DAY", "PROMPT_VERSION", "CACHE_TIER")
        for group in groups:
            request = insights_pb2.GetUsageRequest(group_by=getattr(insights_pb2, f"USAGE_GROUP_{group}"), since=since)
            samples, rows = [], 0
            for _ in range(queries + 5):
                t = time.perf_counter()
                response = await stub.GetUsage(request, metadata=meta)
                samples.append(time.perf_counter() - t)
                rows = len(response.rows)
            samples = samples[5:]
            lines.append(
                f"| GetUsage by {group.lower()} (8 days) | {rows} | {percentile(samples, 50) * 1e3:.2f} "
                f"| {percentile(samples, 99) * 1e3:.2f} |"
            )
        samples = []
        for _ in range(queries + 5):
            t = time.perf_counter()
            page = await stub.ListCalls(insights_pb2.ListCallsRequest(page_size=50), metadata=meta)
            samples.append(time.perf_counter() - t)
        samples = samples[5:]
        lines.append(
            f"| ListCalls (50 per page) | {len(page.calls)} | {percentile(samples, 50) * 1e3:.2f} "
            f"| {percentile(samples, 99) * 1e3:.2f} |"
        )
    return "\n".join(lines)


def dashboard_load(edge_url: str, key: str, loads: int) -> str:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{edge_url}/ui/#dashboard")
        page.fill("#api-key", key)
        samples = []

        def until_updated() -> None:
            while not page.evaluate("() => document.getElementById('dash-state').textContent.startsWith('updated')"):
                page.wait_for_timeout(5)

        t = time.perf_counter()
        page.click("#signin button[type=submit]")
        until_updated()
        first = time.perf_counter() - t
        for _ in range(loads):
            page.evaluate("() => { document.getElementById('dash-state').textContent = ''; }")
            t = time.perf_counter()
            page.click("#dash-controls button[type=submit]")
            until_updated()
            samples.append(time.perf_counter() - t)
        calls = page.eval_on_selector_all("#calls tbody tr", "rows => rows.length")
        missing = page.inner_text("#overview-state") or "none"
        # Where a refresh's time goes: each API call's duration as the browser saw it.
        api = page.evaluate(
            """() => {
                const by = {};
                for (const e of performance.getEntriesByType('resource')) {
                    const u = new URL(e.name);
                    if (!u.pathname.startsWith('/v1/')) continue;
                    const k = u.pathname + (u.searchParams.get('group_by') ? '?' + u.searchParams.get('group_by') : '');
                    (by[k] = by[k] || []).push(e.duration);
                }
                return by;
            }"""
        )
        browser.close()
    slowest = sorted(((statistics.median(v), k) for k, v in api.items()), reverse=True)[:4]
    breakdown = ", ".join(f"{k} {ms:.0f} ms" for ms, k in slowest)
    return "\n".join([
        f"### Dashboard load (headless Chromium through Envoy, admin key, {loads} refreshes)",
        "",
        f"First load after sign-in (models list, six GetUsage, drift, 20 calls, six charts): {first * 1e3:.0f} ms. "
        f"Refresh: median {statistics.median(samples) * 1e3:.0f} ms, max {max(samples) * 1e3:.0f} ms "
        f"({calls} calls listed; services not answering the overview: {missing}). "
        "Timed with polling every 5 ms, so each figure may be up to 5 ms late. "
        f"Slowest API calls of the page (median duration in the browser, all issued at once): {breakdown}.",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--loads", type=int, default=10)
    parser.add_argument("--skip-write-cost", action="store_true", help="only part 2 and 3")
    parser.add_argument("--write-cost-only", action="store_true", help="only part 1")
    args = parser.parse_args()

    print(f"before: {uptime()}")
    if not args.skip_write_cost:
        print(asyncio.run(write_cost(args.rounds, args.batch)))
        print()
    if args.write_cost_only:
        print(f"after: {uptime()}")
        return
    run = Path(tempfile.mkdtemp(prefix="bench-console-"))
    services = ("gateway", "router", "cache", "budget", "prompts")  # everything the dashboard asks
    names = ["edge", "admin", "mesh", "redis", *services]
    catalog = run / "models.yaml"
    catalog.write_text("providers:\n  none: {wire: openai_compat, base_url: 'http://127.0.0.1:9/v1'}\nmodels:\n"
                       "  model-0: {provider: none}\n")
    options = StackOptions(
        ports=dict(zip(names, free_ports(len(names)), strict=True)),
        run_dir=run,
        catalog=catalog,
        with_model=False,
        services=services,
        env={"TOLLWAY_LOG_LEVEL": "WARNING"},
    )
    with Stack(options) as stack:
        took = asyncio.run(fill(stack.redis_url, args.records, args.batch))
        print(f"### {args.records} calls written through CallLog in {took:.1f} s "
              f"({args.records / took:.0f} records/s with totals)")
        print()
        key, _ = asyncio.run(_create_key(stack.redis_url, "admin"))
        print(asyncio.run(query_latency(stack.address("gateway"), key, args.queries)))
        print()
        # Playwright's sync API wants a thread without an event loop.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            print(pool.submit(dashboard_load, stack.edge_url, key, args.loads).result())
    print()
    print(f"after: {uptime()}")


if __name__ == "__main__":
    main()

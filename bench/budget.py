"""The budget service under load: latency, throughput, Redis round trips and exactness.

Everything runs against real processes: a private redis-server and two ``python -m
tollway.budget`` replicas (sharing it, as replicas behind Envoy would), driven over gRPC
from this process.

* latency: reserve + commit (the gateway's two calls per request) p50 / p99 and requests/s
  at 1, 64 and 512 concurrent callers, spread over the two replicas.
* round trips: Redis commands per request, from ``INFO commandstats`` before and after (every
  command Redis executed, whichever client sent it), EVALSHA calls per request, and Redis reads
  per request (``total_reads_processed``: one per batch of commands a client sent at once, so
  the round trips; a replica sends the scripts called in one turn of its event loop together).
* exactness: the LiteLLM harness's burst (``../shared/notes/recipes/peers-budget``): 200
  concurrent requests of 8 prompt + 6 output tokens on gpt-4o-mini with max_tokens 16,
  against a budget worth 20 such requests: $0.000096 (``max_budget``) or 280 tokens
  (``tpm_limit``). Then bursts again until one admits nothing ("drain"), and the same with
  ``min_output_tokens`` 1 (a request accepts a shorter max_tokens when only that fits).

    .venv/bin/python bench/budget.py [--seconds 5] [--callers 1,64,512] [--baseline DIR] [--no-exactness]

The load tenant's plan has six quotas (requests, tokens per minute and day, dollars per month,
tokens per key per minute, per conversation), like deploy/budget.yaml's, with limits nobody
reaches, and every request names a key, a feature and a conversation: every counter applies.
``--baseline DIR`` also starts replicas from another checkout's code (``DIR/services``, on their
own Redis) and alternates the two at each load level, so both see the same machine.

Never run it on a machine that serves anything else: it measures the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.redis_server import local_redis
from tollway.budget.v1 import budget_pb2, budget_pb2_grpc
from tollway.launcher.processes import free_ports

ROOT = Path(__file__).resolve().parents[1]
PROMPT_TOKENS, OUTPUT_TOKENS, MAX_TOKENS = 8, 6, 16
PER_REQUEST_NANOS = PROMPT_TOKENS * 150 + OUTPUT_TOKENS * 600  # gpt-4o-mini: $0.15 / $0.60 per 1M
PER_REQUEST_TOKENS = PROMPT_TOKENS + OUTPUT_TOKENS
BUDGET_REQUESTS = 20
CALL_S = 0.3  # how long the model takes in the exactness bursts (as the harness's mock upstream did)

RUNS = [
    (plan, min_out, run)
    for plan in ("dollars", "tokens")
    for min_out in (0, 1)
    for run in range(3 if min_out == 0 else 1)
]
TENANTS = "\n".join(f"  exact-{p}-{m}-{r}: {{plan: {p}}}" for p, m, r in RUNS)
# Every tenant is in the file, so both replicas know its plan from the start.
PLANS = f"""
version: 1
default_plan: load
tenants:
{TENANTS}
plans:
  load:
    quotas:
      - {{scope: tenant, window: minute, requests: 1000000000}}
      - {{scope: tenant, window: minute, tokens: 1000000000000}}
      - {{scope: tenant, window: day, tokens: 1000000000000}}
      - {{scope: tenant, window: month, usd: 1000000}}
      - {{scope: key, window: minute, tokens: 1000000000000}}
      - {{scope: conversation, window: conversation, tokens: 1000000000000}}
  dollars:
    quotas:
      - {{scope: tenant, window: month, usd: {BUDGET_REQUESTS * PER_REQUEST_NANOS / 1e9}}}
  tokens:
    quotas:
      - {{scope: tenant, window: minute, tokens: {BUDGET_REQUESTS * PER_REQUEST_TOKENS}}}
"""

# LiteLLM 1.106.2, two proxies on one Redis, from ../shared/notes/recipes/peers-budget/litellm-results.md
# (defaults_cb: the closest to a real deployment; max_tokens 16).
LITELLM = {
    ("dollars", "burst"): "9 (-55 %); the key then reads $9.6e-05 spent, true $4.32e-05, until the callback",
    ("dollars", "drain"): "20 over 6 bursts (9+5+3+2+1+0)",
    ("tokens", "burst"): "11 (-45 %)",
    ("tokens", "drain"): "19 over 5 bursts (11+5+2+1+0)",
    ("dollars", "noreserve"): "193-198 (+865..890 %) with disable_budget_reservation",
}


def start_replicas(
    redis_url: str, plans: Path, count: int, log_dir: Path, code: Path | None = None
) -> tuple[list[subprocess.Popen[bytes]], list[int]]:
    """``count`` budget replicas on ``redis_url``; ``code``: another checkout's ``services`` dir."""
    ports = free_ports(count)
    procs = []
    for port in ports:
        env = {
            **os.environ,
            **({"PYTHONPATH": str(code)} if code else {}),
            "TOLLWAY_REDIS_URL": redis_url,
            "TOLLWAY_BUDGET_PORT": str(port),
            "TOLLWAY_BUDGET_PLANS": str(plans),
            "TOLLWAY_LOG_LEVEL": "WARNING",
        }
        log = (log_dir / f"budget-{port}.log").open("wb")
        procs.append(
            subprocess.Popen([sys.executable, "-m", "tollway.budget"], env=env, stdout=log, stderr=log, cwd=ROOT)
        )
    return procs, ports


async def wait_serving(ports: list[int]) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    for port in ports:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            for _ in range(300):
                try:
                    r = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if r.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError(f"budget replica on {port} did not start")


def round_trips(url: str, stubs: list[budget_pb2_grpc.BudgetServiceStub], loop: asyncio.AbstractEventLoop) -> str:
    """Commands clients sent to Redis per reserve+commit, from MONITOR: commands a Lua script
    runs inside Redis are marked ``lua`` and are not round trips."""
    client = redis.Redis.from_url(url)
    sent: dict[str, int] = {}
    n = 200

    async def requests() -> None:
        for _ in range(n):
            r = await stubs[0].ReserveBudget(reserve_request("monitor", conversation="conv-monitor"))
            await stubs[0].CommitBudget(
                budget_pb2.CommitBudgetRequest(
                    name=r.reservation.name, input_tokens=PROMPT_TOKENS, output_tokens=OUTPUT_TOKENS
                )
            )
        await asyncio.to_thread(redis.Redis.from_url(url).echo, "bench-monitor-end")

    with client.monitor() as monitor:
        future = asyncio.run_coroutine_threadsafe(requests(), loop)
        for event in monitor.listen():
            command = event["command"]
            if "bench-monitor-end" in command:
                break
            if event.get("client_type") == "lua":
                continue
            name = command.split(" ", 1)[0].strip('"').lower()
            sent[name] = sent.get(name, 0) + 1
        future.result()
    client.close()
    detail = ", ".join(f"{k} {v / n:.3f}" for k, v in sorted(sent.items(), key=lambda kv: -kv[1]))
    return f"{sum(sent.values()) / n:.3f} ({detail})"


def commandstats(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def reserve_request(
    tenant: str, request_id: str = "", min_out: int = 0, max_out: int = MAX_TOKENS, conversation: str = ""
) -> budget_pb2.ReserveBudgetRequest:
    """The harness's request; with ``conversation`` it also names a key and a feature (load)."""
    return budget_pb2.ReserveBudgetRequest(
        tenant_id=tenant,
        model="gpt-4o-mini",
        input_tokens=PROMPT_TOKENS,
        max_output_tokens=max_out,
        min_output_tokens=min_out,
        priority=budget_pb2.PRIORITY_INTERACTIVE,
        request_id=request_id,
        api_key_id="key-1" if conversation else "",
        feature="chat" if conversation else "",
        conversation_id=conversation,
    )


async def load(stubs: list[budget_pb2_grpc.BudgetServiceStub], callers: int, seconds: float, tenant: str) -> dict:
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def caller(i: int) -> None:
        stub = stubs[i % len(stubs)]
        n = 0
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            r = await stub.ReserveBudget(reserve_request(tenant, conversation=f"conv-{i}-{n % 50}"))
            await stub.CommitBudget(
                budget_pb2.CommitBudgetRequest(
                    name=r.reservation.name, input_tokens=PROMPT_TOKENS, output_tokens=OUTPUT_TOKENS
                )
            )
            latencies.append(time.perf_counter() - t0)
            n += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(callers)))
    wall = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "rps": len(latencies) / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000 if len(latencies) >= 100 else max(latencies) * 1000,
    }


async def burst(stubs: list[budget_pb2_grpc.BudgetServiceStub], tenant: str, n: int, min_out: int) -> tuple[int, int]:
    """n concurrent reserves released at once; each granted one commits the harness's real usage
    (6 output tokens, or fewer when fewer were granted). Returns (admitted, refused)."""
    go = asyncio.Event()

    async def one(i: int) -> bool:
        stub = stubs[i % len(stubs)]
        await go.wait()
        try:
            r = await stub.ReserveBudget(reserve_request(tenant, min_out=min_out))
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
            return False
        out = min(OUTPUT_TOKENS, r.reservation.granted_output_tokens)
        await asyncio.sleep(CALL_S)  # the model call: every reserve of the burst lands before any commit
        await stub.CommitBudget(
            budget_pb2.CommitBudgetRequest(name=r.reservation.name, input_tokens=PROMPT_TOKENS, output_tokens=out)
        )
        return True

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    await asyncio.sleep(0.2)
    go.set()
    results = await asyncio.gather(*tasks)
    return sum(results), n - sum(results)


async def exactness(stubs: list[budget_pb2_grpc.BudgetServiceStub], plan: str, min_out: int, run: str) -> dict:
    tenant = f"exact-{plan}-{min_out}-{run}"
    first, _ = await burst(stubs, tenant, 200, min_out)
    per_burst = [first]
    while per_burst[-1] and len(per_burst) < 12:
        admitted, _ = await burst(stubs, tenant, 200, min_out)
        per_burst.append(admitted)
    status = await stubs[1].GetBudget(budget_pb2.GetBudgetRequest(tenant_id=tenant))
    used = status.statuses[0].used
    recon = await stubs[0].ReconcileBudget(budget_pb2.ReconcileBudgetRequest(tenant_id=tenant))
    limit = status.statuses[0].quota.limit
    return {
        "plan": plan,
        "min_out": min_out,
        "first": first,
        "per_burst": per_burst,
        "total": sum(per_burst),
        "used": used,
        "limit": limit,
        "balanced": recon.balanced,
        "open": recon.open_reservation_count,
    }


@dataclasses.dataclass
class Side:
    """One set of replicas (this checkout's code, or the baseline's) on its own Redis."""

    label: str
    procs: list[subprocess.Popen[bytes]]
    stubs: list[budget_pb2_grpc.BudgetServiceStub]
    channels: list[grpc.aio.Channel]
    url: str
    rc: redis.Redis


async def start_side(label: str, url: str, plans: Path, replicas: int, work: Path, code: Path | None) -> Side:
    procs, ports = start_replicas(url, plans, replicas, work, code)
    side = Side(label, procs, [], [], url, redis.Redis.from_url(url))
    await wait_serving(ports)
    side.channels = [grpc.aio.insecure_channel(f"127.0.0.1:{p}") for p in ports]
    side.stubs = [budget_pb2_grpc.BudgetServiceStub(c) for c in side.channels]
    await load(side.stubs, 8, 1.0, "warmup")  # scripts loaded, tenant remembered, connections open
    return side


async def stop_side(side: Side) -> None:
    for c in side.channels:
        await c.close()
    side.rc.close()
    for p in side.procs:
        p.terminate()
    for p in side.procs:
        p.wait(10)


def net_stats(client: redis.Redis) -> tuple[int, int]:
    """Bytes Redis received, and the reads it made to receive them: a read per batch of commands
    a client sent at once, i.e. per round trip."""
    stats = client.info("stats")
    return int(stats["total_net_input_bytes"]), int(stats["total_reads_processed"])


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0, help="load per concurrency level")
    ap.add_argument("--callers", default="1,64,512")
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--baseline", type=Path, help="another checkout, measured alternately with this one")
    ap.add_argument("--rounds", type=int, default=1, help="measurements per level and side (alternated)")
    ap.add_argument("--no-exactness", action="store_true", help="skip the LiteLLM harness's bursts")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-budget-"))
    plans = work / "budget.yaml"
    plans.write_text(PLANS)
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs; python {platform.python_version()}; load {os.getloadavg()}")
    with contextlib.ExitStack() as servers:
        sides: list[Side] = []
        try:
            server = servers.enter_context(local_redis(appendonly=True))
            sides.append(await start_side("this", server.url, plans, a.replicas, work, None))
            if a.baseline:
                base = servers.enter_context(local_redis(appendonly=True))
                code = a.baseline.resolve() / "services"
                sides.append(await start_side("baseline", base.url, plans, a.replicas, work, code))
            for side in sides:
                trips = await asyncio.to_thread(round_trips, side.url, side.stubs, asyncio.get_running_loop())
                print(f"\n{side.label}: Redis round trips per reserve+commit (MONITOR, 200 sequential): {trips}")
            print(
                "\n| code | callers | requests | reserve+commit/s | p50 ms | p99 ms | EVALSHA / request "
                "| Redis reads (round trips) / request | bytes to Redis / request |"
            )
            print("|---|---|---|---|---|---|---|---|---|")
            for callers in (int(c) for c in a.callers.split(",")):
                for rnd in range(a.rounds):
                    for side in sides if rnd % 2 == 0 else sides[::-1]:
                        before, (sent, reads) = commandstats(side.rc), net_stats(side.rc)
                        r = await load(side.stubs, callers, a.seconds, "warmup")
                        after, (sent_after, reads_after) = commandstats(side.rc), net_stats(side.rc)
                        # This process's own INFO and commandstats calls are 4 reads.
                        sent, reads = sent_after - sent, reads_after - reads - 4
                        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
                        print(
                            f"| {side.label} | {callers} | {r['requests']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | "
                            f"{r['p99_ms']:.2f} | {delta.get('evalsha', 0) / r['requests']:.2f} | "
                            f"{reads / r['requests']:.2f} | {sent / r['requests']:.0f} |",
                            flush=True,
                        )
            print(f"# load after the latency runs: {os.getloadavg()}")
            if a.no_exactness:
                return
            stubs = sides[0].stubs
            print(
                "\n| budget | min_output_tokens | admitted in burst 1 | bursts until none admitted | total admitted | "
                "counter / limit | reconciled | LiteLLM 1.106.2 |"
            )
            print("|---|---|---|---|---|---|---|---|")
            for plan, min_out, run in RUNS:
                e = await exactness(stubs, plan, min_out, str(run))
                unit = "nano-$" if plan == "dollars" else "tok"
                peer = (
                    LITELLM[(plan, "burst")] + "; drain " + LITELLM[(plan, "drain")]
                    if min_out == 0 and run == 0
                    else ""
                )
                print(
                    f"| {plan} ({BUDGET_REQUESTS} requests) | {min_out} | {e['first']} | "
                    f"{'+'.join(map(str, e['per_burst']))} | {e['total']} | {e['used']}/{e['limit']} {unit} | "
                    f"{'yes' if e['balanced'] and e['open'] == 0 else 'NO'} | {peer} |"
                )
        finally:
            for side in sides:
                await stop_side(side)


if __name__ == "__main__":
    asyncio.run(main())

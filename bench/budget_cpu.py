"""The CPU one reserve + commit costs in Python, as the co-located gateway pays it, against a
private redis-server (AOF on).

    .venv/bin/python bench/budget_cpu.py [--requests 2000] [--path gateway|domain] [--leases 64]
    PYTHONPATH=/path/to/other/checkout/services .venv/bin/python bench/budget_cpu.py

``--path gateway`` (the default) goes the way a request of the co-located core goes: the
gateway's ``Budgeting.admit`` (estimate, reserve through ``BudgetClient``) and ``settle`` (the
commit), over an in-process channel (``inproc:budget``) to the budget's servicer, its domain
object and its store. ``--path domain`` calls ``Budget.reserve`` and ``Budget.commit`` alone.
Either way one request at a time, with bench/budget.py's load plan (six quotas nobody reaches)
and a key, a feature and a conversation on every request, so every counter applies. The gateway
path settles in a task of its own, as the gateway does (off the answer's path); each slice ends
when every settlement has finished, so its CPU is in the slice.

``--leases N`` admits from leases of N estimates (tollway.budget.leases; the co-located core uses
64); a lease covers no conversation, so with it requests name none (``--no-conversations`` gives
the Redis-per-reserve path the same counters, to compare).

Prints, per reserve + commit: CPU of this process (``time.process_time``; the Redis server's
work is not in it), the least and the median over 10 slices of the run (the least is the one the
machine's other load disturbed least), wall p50 (and of the reserve alone: what the request
path waits for; the commit runs after the answer), Python function calls (counted by cProfile on
200 more requests: a figure the machine's load cannot move) and the Redis time per script call
(``INFO commandstats``). Run it against another checkout's ``services`` on PYTHONPATH,
alternating, to compare two versions on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.budget import PLANS
from tests.support.redis_server import local_redis
from tollway.budget import store as budget_store
from tollway.budget.__main__ import build
from tollway.budget.budget import Budget
from tollway.budget.config import BudgetConfig
from tollway.budget.types import CommitCommand, Priority, ReserveCommand
from tollway.common.caching import CachePolicy
from tollway.common.chat import ChatMessage, ChatRequest, Usage
from tollway.gateway.budget_client import BudgetClient
from tollway.gateway.budgeting import Budgeting, Settlement
from tollway.gateway.request import GatewayRequest
from tollway.gateway.store import GatewayStore
from tollway.mesh.config import MeshConfig
from tollway.mesh.inprocess import InProcessChannel, process_registry
from tollway.mesh.server import create_server

ROOT = Path(__file__).resolve().parents[1]
SLICES = 10


def gateway_request(request_id: str, conversation_id: str = "") -> GatewayRequest:
    """The bench's request as the gateway hands it to ``Budgeting.admit``: 16 max tokens on
    gpt-4o-mini, the ``warmup`` tenant of bench/budget.py's plan, a key and a feature."""
    chat = ChatRequest(
        "gpt-4o-mini",
        (ChatMessage("user", "Say hello in one short sentence."),),
        max_tokens=16,
        request_id=request_id,
        tenant="warmup",
    )
    return GatewayRequest(
        chat, "", "chat", CachePolicy(), api_key_id="key-1", priority="interactive", conversation_id=conversation_id
    )


@contextlib.asynccontextmanager
async def co_located(url: str, plans: Path, leases: int) -> AsyncIterator[tuple[Budget, Budgeting, aioredis.Redis]]:
    """The budget service (``leases``: TOLLWAY_BUDGET_LEASE_REQUESTS) registered in-process, and the
    gateway's ``Budgeting`` calling it over an in-process channel, as the co-located core runs them;
    with the gateway's Redis client. Stopped on the way out."""
    spec, budget = build(
        BudgetConfig(plans=str(plans), catalog=str(ROOT / "deploy" / "models.yaml"), lease_requests=leases),
        MeshConfig(redis_url=url),
    )
    server, _, _ = await create_server(spec, "127.0.0.1:0", registry=process_registry())
    gateway_redis = aioredis.Redis.from_url(url)
    try:
        yield budget, Budgeting(BudgetClient(InProcessChannel("budget")), GatewayStore(gateway_redis)), gateway_redis  # type: ignore[arg-type]
    finally:
        await server.stop(None)
        assert spec.on_stop is not None
        await spec.on_stop()
        await gateway_redis.aclose()


async def run(
    url: str, plans: Path, n: int, path: str, leases: int, conversations: bool, profile_out: str = ""
) -> None:
    async with co_located(url, plans, leases) as (budget, budgeting, gateway_redis):
        await _run(budget, budgeting, gateway_redis, n, path, leases, conversations, profile_out)


async def _run(
    budget: Budget,
    budgeting: Budgeting,
    gateway_redis: aioredis.Redis,
    n: int,
    path: str,
    leases: int,
    conversations: bool,
    profile_out: str,
) -> None:

    async def through_gateway(i: int) -> None:
        request = gateway_request(f"bench-{i}", conversation(i))
        t0 = time.perf_counter()
        admission = await budgeting.admit(request)
        reserve_wall.append(time.perf_counter() - t0)  # what the request path waits for
        # Off the path, in a task of its own, as the gateway settles.
        settling.add(asyncio.ensure_future(budgeting.settle(admission, Settlement(Usage(13, 6)))))

    async def domain_only(i: int) -> None:
        t0 = time.perf_counter()
        granted = await budget.reserve(
            ReserveCommand(
                tenant="warmup",
                model="gpt-4o-mini",
                input_tokens=13,
                max_output_tokens=16,
                api_key_id="key-1",
                feature="chat",
                conversation_id=conversation(i),
                priority=Priority.INTERACTIVE,
            )
        )
        reserve_wall.append(time.perf_counter() - t0)
        await budget.commit(CommitCommand(name=granted.reservation.name, input_tokens=13, output_tokens=6))

    def conversation(i: int) -> str:
        # A conversation's counter is reserved in Redis one by one (no lease covers it).
        return f"c{i % 50}" if conversations and not leases else ""

    settling: set[asyncio.Future[None]] = set()

    async def settled() -> None:
        while settling:
            done = set(settling)
            await asyncio.gather(*done)
            settling.difference_update(done)

    reserve_wall: list[float] = []
    one: Callable[[int], Awaitable[None]] = through_gateway if path == "gateway" else domain_only
    for i in range(300):
        await one(-1 - i)
    await settled()
    reserve_wall.clear()
    await gateway_redis.config_resetstat()
    wall: list[float] = []
    cpu: list[float] = []
    size = max(1, n // SLICES)
    for s in range(SLICES):
        c0 = time.process_time()
        for i in range(s * size, (s + 1) * size):
            t0 = time.perf_counter()
            await one(i)
            wall.append(time.perf_counter() - t0)
        await settled()
        cpu.append((time.process_time() - c0) / size)
    evalsha = (await gateway_redis.info("commandstats")).get("cmdstat_evalsha", {})
    profile = cProfile.Profile()
    profile.enable()
    for i in range(200):
        await one(n + i)
    await settled()
    profile.disable()
    reserve_p50 = statistics.median(reserve_wall[: len(wall)])
    calls = pstats.Stats(profile).total_calls / 200  # type: ignore[attr-defined]
    if profile_out:
        profile.dump_stats(profile_out)
    print(
        f"{Path(budget_store.__file__).parents[2]} ({path}, leases {leases}): {SLICES * size} reserve+commit; "
        "CPU per reserve+commit "
        f"least {min(cpu) * 1e6:.0f} us, median {statistics.median(cpu) * 1e6:.0f} us; "
        f"wall p50 {statistics.median(wall) * 1e6:.0f} us (the reserve alone {reserve_p50 * 1e6:.0f} us); "
        f"{calls:.0f} Python calls; "
        f"Redis {float(evalsha.get('usec_per_call', 0)):.1f} us per script call, "
        f"{int(evalsha.get('calls', 0)) / (SLICES * size):.2f} calls per reserve+commit; load {os.getloadavg()[0]:.2f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--path", choices=("gateway", "domain"), default="gateway")
    ap.add_argument(
        "--leases",
        type=int,
        default=0,
        help="TOLLWAY_BUDGET_LEASE_REQUESTS (0: every reserve goes to Redis; the co-located core uses 16). "
        "With leases on, requests name no conversation, whose counter no lease covers",
    )
    ap.add_argument(
        "--no-conversations",
        action="store_true",
        help="requests name no conversation (to compare with --leases on the same counters)",
    )
    ap.add_argument("--profile", default="", help="also write the 200 profiled requests' cProfile stats to this file")
    a = ap.parse_args()
    plans = Path(tempfile.mkdtemp(prefix="bench-budget-cpu-")) / "budget.yaml"
    plans.write_text(PLANS)
    with local_redis(appendonly=True) as server:
        asyncio.run(run(server.url, plans, a.requests, a.path, a.leases, not a.no_conversations, a.profile))


if __name__ == "__main__":
    main()

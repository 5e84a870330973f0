"""A gateway SIGKILLed mid-burst, through the real stack: two gateway processes behind Envoy,
the budget service and the router in their own processes (split layout), or two core processes
whose budgets admit from leases (co-located, the victim's budget dies with it), real Redis, the
wire-exact fake provider answering slowly. The killed gateway's reservations are never
committed or released by it; the budget's sweeper expires them after their TTL and ledgers
each expiry; the surviving gateway's calls are committed once; nothing is charged twice and
the counters equal the ledger."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.support.budget_leases import leases_back
from tests.support.polling import eventually
from tests.support.small_stack import mesh_with_replicas
from tollway.budget.v1 import budget_pb2, budget_pb2_grpc
from tollway.cli import _create_key
from tollway.launcher.processes import free_ports
from tollway.launcher.stack import Stack, StackOptions
from tollway.mesh import clients

pytestmark = pytest.mark.timeout(150)

TENANT = "killed-mid-burst"
MODEL = "fake-slow-2500"  # every answer's head arrives 2.5 s after the request: the kill lands in flight
REQUESTS = 40
TTL_S = 8
LEASE_MAX_AGE_S = 1


CORE = ("gateway", "router", "cache", "budget", "openai_compat")


@pytest.fixture(scope="module", params=["split", "colocated"])
def killable_stack(request: pytest.FixtureRequest, fake_openai: str) -> Iterator[Stack]:
    """Two gateways: two gateway processes beside one budget (split), or two core processes, each
    with its own gateway and its own budget admitting from leases, one of which is killed with
    its budget, its holds and its lease (colocated)."""
    layout = request.param
    run = Path(tempfile.mkdtemp(prefix="budget-kill-", dir=os.environ.get("TOLLWAY_TEST_RUN_DIR") or None))
    catalog = run / "models.yaml"
    catalog.write_text(
        f"providers:\n  fakeai: {{wire: openai_compat, base_url: '{fake_openai}/v1', timeout_s: 10}}\n"
        f"models:\n  {MODEL}: {{provider: fakeai}}\n"
    )
    plans = run / "budget.yaml"
    plans.write_text(
        "version: 1\ndefault_plan: ''\nplans:\n  roomy:\n    default_priority: interactive\n    quotas:\n"
        "      - {scope: tenant, window: day, tokens: 1000000}\n"
        f"tenants:\n  {TENANT}: {{plan: roomy}}\n"
    )
    services = ("gateway", "router", "budget") if layout == "split" else CORE
    names = ["edge", "admin", "mesh", "redis", *services]
    stack = Stack(
        StackOptions(
            mesh_path=mesh_with_replicas(run, dict.fromkeys(("gateway",) if layout == "split" else CORE, 2)),
            ports=dict(zip(names, free_ports(len(names)), strict=True)),
            run_dir=run,
            catalog=catalog,
            with_model=False,
            services=services,
            layout=layout,  # type: ignore[arg-type]
            env={
                "TOLLWAY_LOG_LEVEL": "WARNING",
                "TOLLWAY_BUDGET_PLANS": str(plans),
                "TOLLWAY_BUDGET_RESERVATION_TTL_S": str(TTL_S),
                "TOLLWAY_BUDGET_SWEEP_INTERVAL_S": "0.2",
                # A dead holder's lease expires LEASE_MAX_AGE_S + TTL_S + 2 s after it was taken.
                "TOLLWAY_BUDGET_LEASE_MAX_AGE_S": str(LEASE_MAX_AGE_S),
            },
        )
    )
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def _ledger(redis_url: str) -> list[dict[str, str]]:
    client = redis.Redis.from_url(redis_url)
    try:
        raw = client.xrange(f"tw:budget:{{{TENANT}}}:ledger")
        return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in raw]
    finally:
        client.close()


async def test_a_gateway_killed_mid_burst_leaves_reservations_that_expire_and_are_ledgered(
    killable_stack: Stack,
) -> None:
    stack = killable_stack
    key, _ = await _create_key(stack.redis_url, TENANT)
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
        "max_tokens": 16,
        "cache_policy": {"mode": "CACHE_MODE_BYPASS"},
    }
    limits = httpx.Limits(max_connections=REQUESTS, max_keepalive_connections=REQUESTS)
    async with httpx.AsyncClient(
        base_url=stack.edge_url, headers={"authorization": f"Bearer {key}"}, limits=limits, timeout=30
    ) as http:

        async def one() -> int:
            try:
                return (await http.post("/v1/complete", json=body)).status_code
            except httpx.HTTPError:
                return -1

        tasks = [asyncio.create_task(one()) for _ in range(REQUESTS)]

        # Kill one gateway while the burst holds its reservations (the provider answers 2.5 s
        # after each request): once every request has reserved, or the count has stopped growing
        # for a while past half of them (so both gateways hold some: a cold one can be slow to
        # start, and killing it before it reserved anything proves nothing).
        seen: list[int] = []

        async def reserved_all_it_will() -> bool:
            count = sum(1 for e in _ledger(stack.redis_url) if e["op"] == "reserve")
            seen.append(count)
            steady = len(seen) >= 5 and len(set(seen[-5:])) == 1 and count > REQUESTS // 2
            return steady or count == REQUESTS

        await eventually(reserved_all_it_will, timeout_s=20, interval_s=0.3)
        victim = next(c for c in stack.children if c.name.startswith(("gateway", "core")))
        os.kill(victim.process.pid, signal.SIGKILL)
        statuses = collections.Counter(await asyncio.gather(*tasks))

    served = statuses.get(200, 0)
    assert 0 < served < REQUESTS, statuses  # Envoy spreads the burst over both gateways

    async with clients.channel(stack.address("budget")) as channel:
        stub = budget_pb2_grpc.BudgetServiceStub(channel)

        async def swept() -> bool:
            result = await stub.ReconcileBudget(budget_pb2.ReconcileBudgetRequest(tenant_id=TENANT))
            return result.open_reservation_count == 0

        await eventually(swept, timeout_s=TTL_S + 30)
        # The dead core's lease too: the sweeper gives its block back once it expires.
        await leases_back(stack.redis_url, TENANT, timeout_s=TTL_S + LEASE_MAX_AGE_S + 30)
        result = await stub.ReconcileBudget(budget_pb2.ReconcileBudgetRequest(tenant_id=TENANT))
        assert result.balanced, result.differences  # counters = ledger sums
        status = await stub.GetBudget(budget_pb2.GetBudgetRequest(tenant_id=TENANT))

    entries = _ledger(stack.redis_url)
    if stack.options.layout == "colocated":  # both cores admitted from leases; the dead one's expired
        assert {"lease", "lease_expire"} <= {e["op"] for e in entries}
    ends: dict[str, list[str]] = collections.defaultdict(list)
    for e in entries:
        if e["op"] in ("commit", "release", "expire"):
            ends[e["res"]].append(e["op"])
    reserved = [e["res"] for e in entries if e["op"] == "reserve"]
    assert len(reserved) == len(set(reserved)) >= served, (statuses, len(reserved))
    # Every reservation ended exactly once: nothing left open, nothing settled twice.
    assert sorted(ends) == sorted(reserved)
    assert all(len(ops) == 1 for ops in ends.values()), {r: ops for r, ops in ends.items() if len(ops) > 1}
    outcome = collections.Counter(ops[0] for ops in ends.values())
    # The survivor committed what it served; the killed gateway's reservations expired.
    assert outcome["commit"] == served, (statuses, outcome)
    assert outcome["expire"] >= 1, (statuses, outcome)
    assert outcome["expire"] + outcome["release"] == len(reserved) - served, (statuses, outcome)
    # The tokens charged are the commits' alone: the expiries gave every held estimate back.
    commits = [e for e in entries if e["op"] == "commit"]
    charged = {int(e["in"]) + int(e["out"]) for e in commits}
    assert len(charged) == 1
    [used] = [s.used for s in status.statuses if s.quota.unit == budget_pb2.QUOTA_UNIT_TOKENS]
    assert used == served * charged.pop()

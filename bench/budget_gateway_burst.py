"""The exactness burst through the real request path: 500 concurrent requests through Envoy,
balanced over 3 gateway replicas (the launcher's), against a day token quota that fits only
some of them; then a second burst after the first is settled.

    .venv/bin/python bench/budget_gateway_burst.py [--requests 500] [--fits 100] [--bursts 2]

Starts Redis, the budget service, the router, 3 gateways and Envoy on free ports, with the
wire-exact fake OpenAI server as the only provider. Prints, per burst: admitted (200) and
refused (429) counts, any other status, the tokens charged against the quota after every
reservation settled, and whether ``ReconcileBudget`` finds counters equal to the ledger with
no reservation left open. The claims: tokens charged never exceed the quota, every admitted
request is committed or released, counters equal the ledger, and a later burst reaches the
quota again (no stale reservation holds room).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tollway.budget.v1 import budget_pb2, budget_pb2_grpc  # noqa: E402
from tollway.cli import _create_key  # noqa: E402
from tollway.launcher.processes import free_port, free_ports  # noqa: E402
from tollway.launcher.stack import Stack, StackOptions  # noqa: E402

MODEL = "fake-ok"
PROMPT = "Say hello in one short sentence."
MAX_TOKENS = 16
PER_REQUEST = 13 + MAX_TOKENS  # the estimate: the prompt as counted (o200k_base, chat framing) + max_tokens
TENANT = "burst"


def mesh_with_gateway_replicas(run: Path, replicas: int) -> Path:
    """deploy/mesh.yaml with ``replicas`` gateways (and its relative paths made absolute)."""
    text = (ROOT / "deploy" / "mesh.yaml").read_text()
    text = text.replace("descriptor_set: ../", f"descriptor_set: {ROOT}/")
    text, n = re.subn(
        r"(- name: gateway\n(?:    .*\n)*?    replicas: )1", lambda m: f"{m.group(1)}{replicas}", text, count=1
    )
    assert n == 1, "the gateway entry of deploy/mesh.yaml has no `replicas: 1` line"
    path = run / "mesh.yaml"
    path.write_text(text)
    return path


async def burst(url: str, key: str, n: int) -> collections.Counter[int]:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": MAX_TOKENS,
        "priority": "PRIORITY_INTERACTIVE",
        "cache_policy": {"mode": "CACHE_MODE_BYPASS"},
    }
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {key}"}, limits=limits) as http:
        go = asyncio.Event()

        async def one() -> int:
            await go.wait()
            return (await http.post("/v1/complete", json=body, timeout=60)).status_code

        tasks = [asyncio.create_task(one()) for _ in range(n)]
        await asyncio.sleep(0.2)
        go.set()
        return collections.Counter(await asyncio.gather(*tasks))


async def settle(stub: budget_pb2_grpc.BudgetServiceStub) -> budget_pb2.ReconcileBudgetResponse:
    deadline = time.monotonic() + 30
    while True:
        result = await stub.ReconcileBudget(budget_pb2.ReconcileBudgetRequest(tenant_id=TENANT))
        if result.open_reservation_count == 0 or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.1)


async def charged_tokens(stub: budget_pb2_grpc.BudgetServiceStub) -> int:
    resp = await stub.GetBudget(budget_pb2.GetBudgetRequest(tenant_id=TENANT))
    return next(s.used for s in resp.statuses if s.quota.unit == budget_pb2.QUOTA_UNIT_TOKENS)


async def run_bursts(stack: Stack, args: argparse.Namespace) -> None:
    key, _ = await _create_key(stack.redis_url, TENANT)
    quota = args.fits * PER_REQUEST
    async with grpc.aio.insecure_channel(stack.address("budget")) as channel:
        stub = budget_pb2_grpc.BudgetServiceStub(channel)
        for i in range(args.bursts):
            # Each burst gets a fresh day quota of `fits` estimates on top of what earlier bursts charged.
            base = await charged_tokens(stub) if i else 0
            await stub.SetBudget(
                budget_pb2.SetBudgetRequest(
                    tenant_id=TENANT,
                    plan="burst",
                    quotas=[
                        budget_pb2.Quota(
                            scope=budget_pb2.QUOTA_SCOPE_TENANT,
                            window=budget_pb2.WINDOW_DAY,
                            unit=budget_pb2.QUOTA_UNIT_TOKENS,
                            limit=base + quota,
                        )
                    ],
                )
            )
            await asyncio.sleep(1.5)  # every budget replica polls overrides once a second
            statuses = await burst(stack.edge_url, key, args.requests)
            result = await settle(stub)
            charged = await charged_tokens(stub) - base
            print(
                f"burst {i + 1}: {args.requests} requests, quota {quota} tokens "
                f"({args.fits} estimates of {PER_REQUEST}): "
                f"admitted {statuses.get(200, 0)}, refused {statuses.get(429, 0)}, "
                f"other {dict((s, c) for s, c in statuses.items() if s not in (200, 429)) or 'none'}; "
                f"charged {charged} tokens ({'within' if charged <= quota else 'OVER'} the quota); "
                f"reconcile {'balanced' if result.balanced else 'DIFFERENCES'}, "
                f"{result.ledger_entry_count} ledger entries, {result.open_reservation_count} open"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--fits", type=int, default=100, help="the quota, in request estimates")
    parser.add_argument("--bursts", type=int, default=2)
    parser.add_argument("--replicas", type=int, default=3)
    args = parser.parse_args()
    run = Path(tempfile.mkdtemp(prefix="tollway-burst-"))
    port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.openai", "--port", str(port)], cwd=ROOT, stdout=subprocess.PIPE
    )
    assert upstream.stdout is not None and upstream.stdout.readline().startswith(b"LISTENING")
    catalog = run / "models.yaml"
    catalog.write_text(
        f"providers:\n  upstream: {{wire: openai_compat, base_url: 'http://127.0.0.1:{port}/v1'}}\n"
        f"models:\n  {MODEL}: {{provider: upstream}}\n"
    )
    plans = run / "budget.yaml"
    plans.write_text("version: 1\ndefault_plan: ''\nplans:\n  burst:\n    quotas: []\n")
    services = ("gateway", "router", "budget")
    names = ["edge", "admin", "mesh", "redis", *services]
    stack = Stack(
        StackOptions(
            mesh_path=mesh_with_gateway_replicas(run, args.replicas),
            ports=dict(zip(names, free_ports(len(names)), strict=True)),
            run_dir=run,
            catalog=catalog,
            with_model=False,
            services=services,
            env={"TOLLWAY_LOG_LEVEL": "WARNING", "TOLLWAY_BUDGET_PLANS": str(plans)},
        )
    )
    try:
        stack.start()
        print(f"{args.replicas} gateway replicas behind Envoy at {stack.edge_url}; logs in {run}")
        asyncio.run(run_bursts(stack, args))
    finally:
        stack.stop()
        upstream.kill()


if __name__ == "__main__":
    main()

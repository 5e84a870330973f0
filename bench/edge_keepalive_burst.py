"""Bursts on the OpenAI surface through Envoy, spaced around the upstream keep-alive (issue 13).

    .venv/bin/python bench/edge_keepalive_burst.py [--n 200] [--bursts 6] [--gaps 4.6,4.8,5.0,5.2,5.4]

The launcher's stack as bench/budget_peers.py starts it (Envoy, the OpenAI-compatible surface,
two gateway replicas, router, budget, real Redis) in front of the wire-exact fake OpenAI server.
Fires ``n`` concurrent ``POST /v1/chat/completions`` (a fresh client each burst, as the peers
bench does), then waits each gap in turn before the next burst. A gap near the surface's HTTP
keep-alive is when the server closes idle connections that Envoy's pool still holds: a request
Envoy sends on one of them is answered 503 "upstream connect error or disconnect/reset before
headers. reset reason: connection termination". Prints the statuses of every burst, one sample
body of each non-200 status and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.budget_gateway_burst import mesh_with_gateway_replicas  # noqa: E402
from tests.fakes.procs import FakeProvider  # noqa: E402
from tollway.cli import _create_key  # noqa: E402
from tollway.launcher.processes import free_ports  # noqa: E402
from tollway.launcher.stack import Stack, StackOptions  # noqa: E402

TENANT = "keepalive-bench"


def stack_for(run: Path, upstream: str) -> Stack:
    catalog = run / "models.yaml"
    catalog.write_text(
        f"providers:\n  fakeai: {{wire: openai_compat, base_url: '{upstream}/v1', timeout_s: 30}}\n"
        "models:\n  fake-ok: {provider: fakeai, upstream_model: fake-ok}\n"
    )
    plans = run / "budget.yaml"
    plans.write_text(
        "version: 1\ndefault_plan: ''\nplans:\n  roomy:\n    default_priority: interactive\n    quotas:\n"
        "      - {scope: tenant, window: day, tokens: 1000000000}\n"
        f"tenants:\n  {TENANT}: {{plan: roomy}}\n"
    )
    services = ("gateway", "router", "budget", "openai_compat")
    names = ["edge", "admin", "mesh", "redis", *services]
    return Stack(
        StackOptions(
            mesh_path=mesh_with_gateway_replicas(run, 2),
            ports=dict(zip(names, free_ports(len(names)), strict=True)),
            run_dir=run,
            catalog=catalog,
            with_model=False,
            services=services,
            env={"TOLLWAY_LOG_LEVEL": "WARNING", "TOLLWAY_BUDGET_PLANS": str(plans)},
        )
    )


async def burst(url: str, key: str, n: int, samples: dict[int, str]) -> collections.Counter[int]:
    body = {"model": "fake-ok", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {key}"}, limits=limits, timeout=120) as http:
        go = asyncio.Event()

        async def one() -> int:
            await go.wait()
            try:
                r = await http.post(f"{url}/v1/chat/completions", json=body)
            except httpx.HTTPError as exc:
                samples.setdefault(-1, repr(exc)[:200])
                return -1
            if r.status_code != 200:
                samples.setdefault(r.status_code, r.text[:300])
            return r.status_code

        tasks = [asyncio.create_task(one()) for _ in range(n)]
        await asyncio.sleep(0.2)  # every task at the start line
        go.set()
        return collections.Counter(await asyncio.gather(*tasks))


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


async def run_all(args: argparse.Namespace, stack: Stack) -> None:
    key, _ = await _create_key(stack.redis_url, TENANT)
    gaps = [float(g) for g in args.gaps.split(",")]
    samples: dict[int, str] = {}
    total: collections.Counter[int] = collections.Counter()
    print(f"# {os.cpu_count()} CPUs; load before: {load()}", flush=True)
    warm = await burst(stack.edge_url, key, args.n, samples)  # imports, pools
    print(f"warm-up: {dict(warm)}", flush=True)
    for i in range(args.bursts):
        gap = gaps[i % len(gaps)]
        await asyncio.sleep(gap)  # no request meanwhile: every pooled connection sits idle
        got = await burst(stack.edge_url, key, args.n, samples)
        total.update(got)
        print(f"burst {i + 1} after {gap:.1f} s idle: {dict(got)}", flush=True)
    print(f"# total over {args.bursts} bursts of {args.n}: {dict(total)}; 503s: {total.get(503, 0)}")
    print(f"# load after: {load()}")
    for status, text in samples.items():
        print(f"# first {status} said: {text}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200, help="concurrent requests per burst")
    ap.add_argument("--bursts", type=int, default=6)
    ap.add_argument("--gaps", default="4.6,4.8,5.0,5.2,5.4", help="idle seconds before each burst, cycled")
    args = ap.parse_args()
    run = Path(tempfile.mkdtemp(prefix="edge-keepalive-"))
    fake = FakeProvider("openai", run)
    stack = stack_for(run, fake.url)
    try:
        stack.start()
        asyncio.run(run_all(args, stack))
    finally:
        stack.stop()
        fake.stop()


if __name__ == "__main__":
    main()

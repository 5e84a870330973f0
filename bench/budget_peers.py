"""The budget exactness burst, Tollway and LiteLLM side by side in one run.

    .venv/bin/python bench/budget_peers.py [--n 200] [--budget-requests 20] [--rounds 1]

The burst is the LiteLLM harness's (``../shared/notes/recipes/peers-budget``): two gateway
processes on one Redis, ``n`` concurrent ``POST /v1/chat/completions`` (gpt-4o-mini, "Say hello
in one short sentence.", max_tokens 16) released at once and split over the two, against a
budget worth ``budget-requests`` such requests: $0.000096 (20 x 8 prompt + 6 output tokens at
$0.15 / $0.60 per 1M), or 280 tokens a minute. Then bursts again, 2 s apart, until one admits
nothing (at most 8). Both systems call the same mock upstream (the harness's
``peers-bench/mock_upstream.py``, 8 prompt + 6 output tokens per answer, no delay).

* Tollway: the launcher's stack with two gateway replicas behind Envoy (the OpenAI-compatible
  surface, gateway, router, budget), one tenant per run on a plan with that one quota
  (interactive priority, so the whole quota may be filled). Spent is read from ``GetBudget``
  once every admitted request is settled (``ReconcileBudget`` reports no open reservation),
  with whether counters equal the ledger.
* LiteLLM 1.106.2 (``peers/litellm-venv``, git-ignored; see the recipe's ``setup.sh``): two
  proxies (one uvicorn worker each) on one private Redis, the harness's ``config_defaults_cb``
  (LiteLLM's defaults plus its cost-reconciling callback, the closest to a deployment with a
  database), keys from its ``custom_auth.py``. Spent is the shared Redis counter the proxies
  keep (``spend:key:<hash>``, ``{api_key:<hash>}:tokens``), read 2 s after each burst.

The systems alternate (Tollway, then LiteLLM, per budget kind and round); token-quota drains
start at the top of a minute, since both quotas are per calendar minute. Prints one row per
drain: admitted per burst, the total, over-admission against the budget's worth, and spent
against the budget after each burst, plus the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import os
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.budget_gateway_burst import mesh_with_gateway_replicas  # noqa: E402
from tests.support.redis_server import local_redis  # noqa: E402
from tollway.budget.v1 import budget_pb2, budget_pb2_grpc  # noqa: E402
from tollway.cli import _create_key  # noqa: E402
from tollway.launcher.processes import Child, free_port, free_ports, spawn, wait_until  # noqa: E402
from tollway.launcher.stack import Stack, StackOptions  # noqa: E402

RECIPES = ROOT.parent / "shared" / "notes" / "recipes"
HARNESS = RECIPES / "peers-budget"
MOCK = RECIPES / "peers-bench" / "mock_upstream.py"
LITELLM = ROOT / "peers" / "litellm-venv" / "bin" / "litellm"
PROMPT = "Say hello in one short sentence."
MAX_TOKENS = 16
PROMPT_TOKENS, OUTPUT_TOKENS = 8, 6  # what the mock reports for PROMPT (len // 4) and 6 chunks
IN_USD, OUT_USD = 0.15, 0.60  # gpt-4o-mini, per 1M tokens (LiteLLM's bundled map says the same)
PER_REQUEST_NANOS = PROMPT_TOKENS * 150 + OUTPUT_TOKENS * 600
PER_REQUEST_TOKENS = PROMPT_TOKENS + OUTPUT_TOKENS
MAX_BURSTS = 8
GAP_S = 2.0


@dataclass
class Drain:
    system: str
    kind: str  # "usd" or "tokens"
    budget: float
    per_burst: list[int] = field(default_factory=list)
    spent: list[float] = field(default_factory=list)
    other: collections.Counter[int] = field(default_factory=collections.Counter)
    samples: dict[int, str] = field(default_factory=dict)  # the first body of each other status
    note: str = ""


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


async def burst(urls: list[str], key: str, n: int, samples: dict[int, str] | None = None) -> collections.Counter[int]:
    """``n`` chat completions released at once, alternating over ``urls``; their statuses. The
    first body of each status other than 200 and 429 goes to ``samples``."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": MAX_TOKENS}
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {key}"}, limits=limits, timeout=120) as http:
        go = asyncio.Event()

        async def one(i: int) -> int:
            await go.wait()
            try:
                r = await http.post(f"{urls[i % len(urls)]}/v1/chat/completions", json=body)
            except httpx.HTTPError as exc:
                if samples is not None:
                    samples.setdefault(-1, repr(exc)[:200])
                return -1
            if samples is not None and r.status_code not in (200, 429):
                samples.setdefault(r.status_code, r.text[:300])
            return r.status_code

        tasks = [asyncio.create_task(one(i)) for i in range(n)]
        await asyncio.sleep(0.2)  # every task at the start line
        go.set()
        return collections.Counter(await asyncio.gather(*tasks))


async def top_of_minute() -> None:
    """Waits for second 1 of the next minute unless a drain started now fits in this one."""
    second = time.time() % 60
    if second > 5:
        await asyncio.sleep(61 - second)


async def drain(system: str, kind: str, budget: float, urls: list[str], key: str, n: int, spent: object) -> Drain:
    """Bursts until one admits nothing; ``spent()`` reads what the system recorded after each."""
    d = Drain(system, kind, budget)
    if kind == "tokens":
        await top_of_minute()
    minute = int(time.time() // 60)
    for _ in range(MAX_BURSTS):
        statuses = await burst(urls, key, n, d.samples)
        d.per_burst.append(statuses.get(200, 0))
        d.other.update({s: c for s, c in statuses.items() if s not in (200, 429, 422)})
        d.spent.append(await spent())  # type: ignore[operator]
        if not d.per_burst[-1]:
            break
        if kind == "tokens" and int(time.time() // 60) != minute:
            # A per-minute quota starts afresh: later bursts would measure the next minute.
            d.note = f"stopped: the minute ended after burst {len(d.per_burst)}"
            break
        await asyncio.sleep(GAP_S)
    return d


# -- Tollway -----------------------------------------------------------------------------


def tollway_stack(run: Path, upstream: int, tenants: list[str]) -> Stack:
    run.mkdir(parents=True, exist_ok=True)
    catalog = run / "models.yaml"
    catalog.write_text(
        f"providers:\n  mock: {{wire: openai_compat, base_url: 'http://127.0.0.1:{upstream}/v1'}}\n"
        "models:\n  gpt-4o-mini:\n    provider: mock\n"
        f"    price_per_1m_tokens: {{input: {IN_USD}, output: {OUT_USD}}}\n"
    )
    usd = PER_REQUEST_NANOS * 20 / 1e9
    plans = run / "budget.yaml"
    plans.write_text(
        "version: 1\ndefault_plan: ''\nplans:\n"
        f"  usd:\n    default_priority: interactive\n    quotas:\n"
        f"      - {{scope: tenant, window: month, usd: {usd}}}\n"
        f"  tokens:\n    default_priority: interactive\n    quotas:\n"
        f"      - {{scope: tenant, window: minute, tokens: {PER_REQUEST_TOKENS * 20}}}\n"
        "  roomy:\n    default_priority: interactive\n    quotas:\n"
        "      - {scope: tenant, window: day, tokens: 1000000000}\n"
        "tenants:\n  peers-warmup: {plan: roomy}\n" + "".join(f"  {t}: {{plan: {t.split('-')[1]}}}\n" for t in tenants)
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


async def tollway_drain(stack: Stack, tenant: str, kind: str, n: int) -> Drain:
    key, _ = await _create_key(stack.redis_url, tenant)
    async with grpc.aio.insecure_channel(stack.address("budget")) as channel:
        stub = budget_pb2_grpc.BudgetServiceStub(channel)
        balanced: list[bool] = []

        async def spent() -> float:
            deadline = time.monotonic() + 30
            while True:  # commits run after each response: wait until none is open
                rec = await stub.ReconcileBudget(budget_pb2.ReconcileBudgetRequest(tenant_id=tenant))
                if rec.open_reservation_count == 0 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            balanced.append(rec.balanced and rec.open_reservation_count == 0)
            status = await stub.GetBudget(budget_pb2.GetBudgetRequest(tenant_id=tenant))
            return float(status.statuses[0].used)

        budget = PER_REQUEST_NANOS * 20 if kind == "usd" else PER_REQUEST_TOKENS * 20
        d = await drain("Tollway", kind, budget, [stack.edge_url], key, n, spent)
        ledger = "counters = ledger after every burst" if all(balanced) else "COUNTERS != LEDGER"
        d.note = f"{d.note}; {ledger}" if d.note else ledger
        return d


# -- LiteLLM -----------------------------------------------------------------------------


def litellm_env(redis_port: int, upstream: int) -> dict[str, str]:
    env = {
        k: "True"
        for k in (
            "LITELLM_LOCAL_MODEL_COST_MAP",
            "LITELLM_LOCAL_BLOG_POSTS",
            "LITELLM_LOCAL_POLICY_TEMPLATES",
            "LITELLM_LOCAL_AUTOROUTER_PRESETS",
            "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS",
        )
    }
    return env | {
        "LITELLM_LOG": "ERROR",
        "LITELLM_MODE": "PRODUCTION",
        "LITELLM_MASTER_KEY": "sk-" + secrets.token_hex(16),
        "MOCK_API_BASE": f"http://127.0.0.1:{upstream}/v1",
        "REDIS_HOST": "127.0.0.1",
        "REDIS_PORT": str(redis_port),
        "BENCH_MAX_BUDGET": repr(PER_REQUEST_NANOS * 20 / 1e9),
        "BENCH_TPM_LIMIT": str(PER_REQUEST_TOKENS * 20),
    }


def start_litellm(run: Path, env: dict[str, str]) -> tuple[list[Child], list[str]]:
    children, urls = [], []
    for i in range(2):
        port = free_port()
        argv = [str(LITELLM), "--config", str(HARNESS / "config_defaults_cb.yaml"), "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--num_workers", "1"]
        children.append(spawn(f"litellm-{i}", argv, run / "logs", env, cwd=HARNESS))
        urls.append(f"http://127.0.0.1:{port}")
    for child, url in zip(children, urls, strict=True):
        wait_until(child, lambda url=url: _live(url), 180, "live")
    return children, urls


def _live(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health/liveliness", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


async def litellm_drain(urls: list[str], client: redis.Redis, kind: str, n: int) -> Drain:
    key = f"sk-bench-{'budget' if kind == 'usd' else 'tpm'}-peers-{uuid.uuid4().hex[:12]}"
    token = hashlib.sha256(key.encode()).hexdigest()

    async def spent() -> float:
        await asyncio.sleep(GAP_S)  # the post-call callback updates the counters after the response
        raw = client.get(f"spend:key:{token}" if kind == "usd" else f"{{api_key:{token}}}:tokens")
        value = float(raw) if raw is not None else 0.0
        return value * 1e9 if kind == "usd" else value

    budget = PER_REQUEST_NANOS * 20 if kind == "usd" else PER_REQUEST_TOKENS * 20
    return await drain("LiteLLM 1.106.2", kind, budget, urls, key, n, spent)


# -- the report --------------------------------------------------------------------------


def row(d: Drain, worth: int) -> str:
    total = sum(d.per_burst)
    unit = "nano-$" if d.kind == "usd" else "tok"
    limit = f"${d.budget / 1e9:.6f}" if d.kind == "usd" else f"{int(d.budget)} tok / min"
    over = (total - worth) / worth * 100
    peak = max(d.spent) if d.spent else 0
    spent = ", ".join(f"{s:,.0f}" for s in d.spent)
    return (
        f"| {d.system} | {limit} | {d.per_burst[0]} | {'+'.join(map(str, d.per_burst))} | {total} | "
        f"{over:+.0f} % | {spent} / {d.budget:,.0f} {unit} | {'yes' if peak <= d.budget else 'NO'} | "
        f"{dict(d.other) or '-'} | {d.note} |"
    )


async def run_all(args: argparse.Namespace, run: Path, upstream: int) -> None:
    rounds = range(args.rounds)
    tenants = [f"peers-{kind}-{r}" for kind in ("usd", "tokens") for r in rounds]
    stack = tollway_stack(run / "tollway", upstream, tenants)
    children: list[Child] = []
    with local_redis() as lredis:
        try:
            stack.start()
            children, urls = start_litellm(run / "litellm", litellm_env(lredis.port, upstream))
            client = redis.Redis.from_url(lredis.url)
            # Warm both: imports and connection pools (a throwaway LiteLLM key; a Tollway tenant not
            # measured). A cold gateway opening its Redis connections for 200 requests at once on a
            # loaded machine times some of them out (2 s) and answers 503.
            await burst(urls, f"sk-bench-tpm-warmup-{uuid.uuid4().hex[:8]}", 4)
            warm_key, _ = await _create_key(stack.redis_url, "peers-warmup")
            for _ in range(2):
                await burst([stack.edge_url], warm_key, args.n)
            print(f"# {os.cpu_count()} CPUs; uptime before: {uptime()}", flush=True)
            results: list[Drain] = []
            for r in rounds:
                for kind in ("usd", "tokens"):
                    results.append(await tollway_drain(stack, f"peers-{kind}-{r}", kind, args.n))
                    print(row(results[-1], args.budget_requests), flush=True)
                    results.append(await litellm_drain(urls, client, kind, args.n))
                    print(row(results[-1], args.budget_requests), flush=True)
            print(f"# uptime after: {uptime()}")
            print(
                "\n| system | budget | burst 1 | admitted per burst | total | vs budget's worth | "
                "spent after each burst / budget | never over | other statuses | |"
            )
            print("|---|---|---|---|---|---|---|---|---|---|")
            for d in results:
                print(row(d, args.budget_requests))
            for d in results:
                for status, text in d.samples.items():
                    print(f"# {d.system} ({d.kind}): first {status} said: {text}")
        finally:
            for child in children:
                child.stop()
            stack.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200, help="requests per burst")
    ap.add_argument("--budget-requests", type=int, default=20, help="(fixed at 20 in the plans; for the report)")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    if not LITELLM.exists():
        sys.exit(f"LiteLLM is not installed at {LITELLM} (see {HARNESS / 'setup.sh'})")
    run = Path(tempfile.mkdtemp(prefix="bench-budget-peers-"))
    port = free_port()
    mock = subprocess.Popen(
        [sys.executable, str(MOCK), "--port", str(port), "--chunks", "6", "--gap-ms", "10"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not _live_mock(port) and time.monotonic() < deadline:
            time.sleep(0.1)
        asyncio.run(run_all(args, run, port))
    finally:
        mock.terminate()
        mock.wait(10)


def _live_mock(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main()

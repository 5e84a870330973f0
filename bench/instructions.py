"""Instructions per unit of work on two hot paths, counted by valgrind: a figure the machine's load
cannot move (issue 12). Compare two checkouts to see what a change saved.

    .venv/bin/python bench/instructions.py [--checkout DIR] [router] [call-log]

- ``router``: one request through the router's engine (``Router.generate``) to the zero-delay fake
  OpenAI upstream (tests/fakes/openai.py, ``fake-words-20``: 23 SSE events), no gRPC, no Redis;
- ``call-log``: one call record written by the gateway's ``CallLog`` (the call stream, the tenant's
  stream, the call index, the usage totals) to a real Redis, in batches of 32;
- ``budget``: one request's reserve and commit as the co-located gateway makes them (``Budgeting.admit``
  and ``settle`` over an in-process channel to the budget's servicer, its domain object and its store,
  leases of 64 estimates, bench/budget.py's plan of six quotas), written to Redis 64 at a time.

Each workload runs twice under ``valgrind --tool=callgrind`` with a small and a large count; the
difference in instructions, divided by the difference in count, is the cost of one unit with the
start-up left out. ``--checkout`` runs another checkout's code (its ``services/`` first on the path).
Needs ``valgrind`` (Debian package); each workload takes about a minute.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COUNTS = {"router": (30, 130), "call-log": (64, 320), "budget": (64, 320)}
BATCH = 32


async def _router(port: int, n: int) -> None:
    from tollway.common.catalog import parse_catalog
    from tollway.common.chat import ChatMessage, ChatRequest
    from tollway.router.engine import Router
    from tollway.router.providers.openai_compat import OpenAICompatAdapter

    catalog = parse_catalog(
        {
            "providers": {"oa": {"wire": "openai_compat", "base_url": f"http://127.0.0.1:{port}/v1"}},
            "models": {"m": {"provider": "oa", "upstream_model": "fake-words-20"}},
        },
        env={},
    )
    router = Router(catalog, {"openai_compat": OpenAICompatAdapter()})
    for i in range(n):
        request = ChatRequest("m", (ChatMessage("user", "Say hello in one short sentence."),), request_id=f"r{i}")
        [event async for event in router.generate(request)]


async def _call_log(port: int, n: int) -> None:
    from tollway.common.caching import CacheTier
    from tollway.gateway.calllog import CallLog
    from tollway.gateway.callrecord import CallRecord
    from tollway.gateway.store import GatewayStore
    from tollway.mesh.redis import connect

    client = connect(f"redis://127.0.0.1:{port}/0")
    log = CallLog(GatewayStore(client), interval_s=3600, batch_size=10**9)
    for i in range(n):
        r = CallRecord.begin(f"req-{n:04d}{i:08d}-0123456789abcdef", "bench", "", "", "fake-words-20", "ab" * 16)
        r.provider, r.deployment, r.attempts = "upstream", "upstream/fake-words-20/default", 1
        r.route_method, r.route_reason, r.finish_reason = "named", "the request named fake-words-20", "stop"
        r.input_tokens, r.output_tokens, r.cost_usd, r.latency_ms, r.ttft_ms = 14, 20, 0.00012, 3, 2
        r.response_hash, r.key_id, r.pricing_version, r.max_tokens = "cd" * 16, "tw-key", "v1", 32
        r.cache_tier = CacheTier.NOT_CONSULTED
        log.add(r)
        if (i + 1) % BATCH == 0:
            await log.flush()
    await log.flush()
    await client.aclose()


async def _budget(port: int, n: int) -> None:
    import asyncio

    from bench.budget import PLANS
    from bench.budget_cpu import gateway_request
    from tollway.budget.__main__ import build
    from tollway.budget.config import BudgetConfig
    from tollway.common.chat import Usage
    from tollway.gateway.budget_client import BudgetClient
    from tollway.gateway.budgeting import Budgeting, Settlement
    from tollway.gateway.store import GatewayStore
    from tollway.mesh.config import MeshConfig
    from tollway.mesh.inprocess import InProcessChannel, process_registry
    from tollway.mesh.redis import connect
    from tollway.mesh.server import create_server

    url = f"redis://127.0.0.1:{port}/0"
    plans = Path(tempfile.mkdtemp(prefix="tollway-instr-plans-")) / "budget.yaml"
    plans.write_text(PLANS)
    # Holds and settlements are written when 64 wait (never on the clock), so every run batches alike.
    cfg = BudgetConfig(
        plans=str(plans),
        catalog=str(ROOT / "deploy" / "models.yaml"),
        lease_requests=64,
        lease_record_delay_s=3600,
    )
    spec, _ = build(cfg, MeshConfig(redis_url=url))
    server, _, _ = await create_server(spec, "127.0.0.1:0", registry=process_registry())
    client = connect(url)
    budgeting = Budgeting(BudgetClient(InProcessChannel("budget")), GatewayStore(client))  # type: ignore[arg-type]
    settling = []
    for i in range(n):
        # The two counts run against one Redis: a request id of the first run seen again would take the
        # path of a repeated reserve, not a new one's.
        admission = await budgeting.admit(gateway_request(f"instr-{n}-{i}"))
        settling.append(asyncio.ensure_future(budgeting.settle(admission, Settlement(Usage(13, 6)))))
        if (i + 1) % 64 == 0:
            await asyncio.gather(*settling)
            settling.clear()
    await server.stop(None)
    assert spec.on_stop is not None
    await spec.on_stop()
    await client.aclose()


def _worker(workload: str, port: int, n: int) -> None:
    import uvloop

    run = {"router": _router, "call-log": _call_log, "budget": _budget}[workload]
    uvloop.run(run(port, n))


def _instructions(checkout: Path, workload: str, port: int, n: int) -> int:
    env = {**os.environ, "PYTHONPATH": f"{checkout / 'services'}:{ROOT}"}
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__,
         "--worker", workload, str(port), str(n)],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise SystemExit(f"valgrind printed no count for {workload}:\n{out.stderr[-2000:]}")
    return int(found.group(1))


def _server(workload: str, run: Path) -> tuple[subprocess.Popen[bytes], int]:
    sys.path.insert(0, str(ROOT))
    from tollway.launcher.processes import free_port

    if workload == "router":
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.openai", "--port", "0"], cwd=ROOT, stdout=subprocess.PIPE
        )
        assert proc.stdout is not None
        return proc, int(proc.stdout.readline().split()[-1])
    port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(run)],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    return redis, port


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        _worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, default=ROOT, help="the checkout whose code runs (default: this)")
    parser.add_argument("workloads", nargs="*", help=f"any of {', '.join(COUNTS)} (default: all)")
    args = parser.parse_args()
    for unknown in set(args.workloads) - set(COUNTS):
        parser.error(f"unknown workload {unknown!r}: choose from {', '.join(COUNTS)}")
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    for workload in args.workloads or list(COUNTS):
        run = Path(tempfile.mkdtemp(prefix="tollway-instr-"))
        server, port = _server(workload, run)
        try:
            low, high = COUNTS[workload]
            a = _instructions(args.checkout.resolve(), workload, port, low)
            b = _instructions(args.checkout.resolve(), workload, port, high)
        finally:
            server.kill()
        unit = {"router": "request", "call-log": "record", "budget": "reserve and commit"}[workload]
        print(f"{workload}: {(b - a) / (high - low):,.0f} instructions per {unit} ({args.checkout})", flush=True)


if __name__ == "__main__":
    main()

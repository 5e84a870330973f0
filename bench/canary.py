"""Canary figures (issue 20): split accuracy, and requests dropped while the weight shifts, on promote
and on rollback, under steady load.

    .venv/bin/python bench/canary.py [--requests 2000] [--weights 10,25,50] [--load-s 4]

Starts Redis, a zero-delay fake OpenAI upstream, the router (canary-ready) and Envoy, on free ports.
The router is canaried with `tollway canary` (the CLI, as an operator runs it). Split accuracy:
`RouterService/ListModels` through Envoy's mesh listener, counted per version by Envoy's per-cluster
counters. Drops: four clients call `RouterService/Complete` through the mesh listener without a
pause while the command runs; any status other than OK is a drop. Prints one JSON object.

    .venv/bin/python bench/canary.py --hot-restart [--load-s 4]

instead measures the alternative to the runtime swap: an Envoy hot restart (what a changed static
config would need). Under the same steady load, a second Envoy starts with `--restart-epoch 1` and
the first one's base id, takes the listeners over and the first drains and exits; drops are counted
the same way. The stack is not supervised in this mode (the old epoch's exit is intended).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from bench.overhead import MODEL, start_upstream  # noqa: E402
from tollway.common.v1 import common_pb2  # noqa: E402
from tollway.launcher.canary_envoy import sample_clusters  # noqa: E402
from tollway.launcher.processes import free_ports  # noqa: E402
from tollway.launcher.stack import Stack, StackOptions  # noqa: E402
from tollway.router.v1 import router_pb2, router_pb2_grpc  # noqa: E402

CLUSTERS = ("router", "router_canary")


def cli(stack: Stack, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "tollway.cli", "canary", *args, "--run-dir", str(stack.options.run_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"tollway canary {' '.join(args)} failed: {out.stdout}{out.stderr}")
    return out.stdout


def counts(stack: Stack) -> dict[str, int]:
    return {c: s.requests for c, s in sample_clusters(stack.mesh.edge.admin.address, CLUSTERS).items()}


async def list_models(stack: Stack, total: int, concurrency: int = 8) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    sent = 0
    async with grpc.aio.insecure_channel(stack.mesh.edge.mesh_listen.address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)

        async def worker() -> None:
            nonlocal sent
            while sent < total:
                sent += 1
                try:
                    await stub.ListModels(router_pb2.ListModelsRequest(), timeout=20)
                    outcomes["OK"] += 1
                except grpc.aio.AioRpcError as exc:
                    outcomes[exc.code().name] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes


async def under_load(stack: Stack, command: list[str], settle_s: float, concurrency: int = 4) -> dict[str, object]:
    """Runs a `tollway canary` command while clients call Complete without a pause."""
    outcomes: Counter[str] = Counter()
    stop = asyncio.Event()
    async with grpc.aio.insecure_channel(stack.mesh.edge.mesh_listen.address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)

        async def worker() -> None:
            while not stop.is_set():
                request = router_pb2.CompleteRequest(request=router_pb2.GenerateRequest(
                    model=MODEL, request_id=f"b-{time.monotonic_ns()}",
                    messages=[common_pb2.Message(role="user", content="hello")],
                ))
                try:
                    await stub.Complete(request, timeout=20)
                    outcomes["OK"] += 1
                except grpc.aio.AioRpcError as exc:
                    outcomes[exc.code().name] += 1

        workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
        await asyncio.sleep(settle_s)
        started = time.monotonic()
        await asyncio.to_thread(cli, stack, *command)
        took = time.monotonic() - started
        await asyncio.sleep(settle_s)
        stop.set()
        await asyncio.gather(*workers)
    total = sum(outcomes.values())
    return {"command": " ".join(command), "requests": total, "dropped": total - outcomes["OK"],
            "statuses": dict(outcomes), "command_s": round(took, 2)}


async def hot_restart_under_load(stack: Stack, settle_s: float, concurrency: int = 4) -> dict[str, object]:
    """Hot-restarts Envoy (epoch 1, the same config) while clients call Complete without a pause."""
    old = next(c for c in stack.children if c.name == "envoy")
    base_id = (stack.options.run_dir / "envoy.base_id").read_text().strip()
    argv = [
        str(Path(sys.executable).with_name("envoy")), "-c", str(stack.options.run_dir / "envoy.yaml"),
        "--concurrency", "1", "-l", "warn", "--restart-epoch", "1", "--base-id", base_id,
        "--drain-time-s", "2", "--parent-shutdown-time-s", "4",
    ]
    outcomes: Counter[str] = Counter()
    stop = asyncio.Event()
    log = (stack.options.run_dir / "logs" / "envoy-epoch1.log").open("wb")
    async with grpc.aio.insecure_channel(stack.mesh.edge.mesh_listen.address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)

        async def worker() -> None:
            while not stop.is_set():
                request = router_pb2.CompleteRequest(request=router_pb2.GenerateRequest(
                    model=MODEL, request_id=f"h-{time.monotonic_ns()}",
                    messages=[common_pb2.Message(role="user", content="hello")],
                ))
                try:
                    await stub.Complete(request, timeout=20)
                    outcomes["OK"] += 1
                except grpc.aio.AioRpcError as exc:
                    outcomes[f"{exc.code().name}: {exc.details()[:60]}"] += 1

        workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
        await asyncio.sleep(settle_s)
        started = time.monotonic()
        new = await asyncio.to_thread(
            subprocess.Popen, argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        old_exit = await asyncio.to_thread(old.process.wait, 60)
        took = time.monotonic() - started
        await asyncio.sleep(settle_s)
        stop.set()
        await asyncio.gather(*workers)
    new.terminate()
    new.wait(15)
    log.close()
    total = sum(outcomes.values())
    return {"command": "envoy hot restart (epoch 1)", "requests": total, "dropped": total - outcomes["OK"],
            "statuses": dict(outcomes), "old_epoch_exit_code": old_exit, "until_old_epoch_exited_s": round(took, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--weights", default="10,25,50")
    parser.add_argument("--load-s", type=float, default=4.0, help="steady load before and after each command")
    parser.add_argument("--hot-restart", action="store_true", help="measure an Envoy hot restart instead")
    args = parser.parse_args()
    run = Path(tempfile.mkdtemp(prefix="tollway-canary-bench-"))
    upstream, port = start_upstream(run)
    catalog = run / "models.yaml"
    catalog.write_text(
        f"providers:\n  upstream: {{wire: openai_compat, base_url: 'http://127.0.0.1:{port}/v1'}}\n"
        f"models:\n  {MODEL}: {{provider: upstream}}\n"
    )
    names = ["edge", "admin", "mesh", "redis", "local_model", "router"]
    stack = Stack(StackOptions(
        ports=dict(zip(names, free_ports(len(names)), strict=True)), run_dir=run / "stack", catalog=catalog,
        with_model=False, services=("router",), canary_ready=("router",), layout="split",
        env={"TOLLWAY_LOG_LEVEL": "WARNING"}, supervise=not args.hot_restart,
    ))
    result: dict[str, object] = {"load_before": os.getloadavg()}
    try:
        stack.start()
        if args.hot_restart:
            result["hot_restart"] = asyncio.run(hot_restart_under_load(stack, args.load_s))
            return
        weights = [int(w) for w in args.weights.split(",")]
        splits = []
        cli(stack, "start", "router", "--version", "v2", "--weight", str(weights[0]))
        for weight in weights:
            if weight != weights[0]:
                cli(stack, "weight", "router", str(weight))
            before = counts(stack)
            outcomes = asyncio.run(list_models(stack, args.requests))
            after = counts(stack)
            canary = after["router_canary"] - before["router_canary"]
            stable = after["router"] - before["router"]
            splits.append({
                "weight_percent": weight, "requests": args.requests, "ok": outcomes["OK"], "canary": canary,
                "stable": stable, "canary_percent": round(100 * canary / args.requests, 2),
            })
        result["split"] = splits
        drops = [asyncio.run(under_load(stack, ["weight", "router", "90"], args.load_s))]
        drops.append(asyncio.run(under_load(stack, ["promote", "router"], args.load_s)))
        cli(stack, "start", "router", "--version", "v3", "--weight", "50")
        drops.append(asyncio.run(under_load(stack, ["rollback", "router"], args.load_s)))
        result["drops"] = drops
    finally:
        stack.stop()
        upstream.kill()
        upstream.wait()
        result["load_after"] = os.getloadavg()
        result["cpus"] = os.cpu_count()
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

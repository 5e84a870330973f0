"""Throughput with 1, 2 and 4 replicas of the gateway and the router, and the CPU each service
spends per request (issue 20): what one core serves, and how many pods a target load needs.

    .venv/bin/python bench/replicas.py [--replicas 1,2,4] [--duration-s 15] [--concurrency 16]

Per replica count: a copy of deploy/mesh.yaml with `replicas: N` for gateway and router, the bench
stack of bench/overhead.py (zero-delay fake upstream, Envoy, every service in its own process), and
a closed loop of `POST /v1/complete` (cache bypassed) through Envoy for the duration. CPU per
process is read from /proc before and after (user + system), summed per service over its
replicas, and divided by the requests answered. On this 2-core machine the replicas share the
same two cores: the figures show where the CPU ceiling is, not how a cluster scales. Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.checkout_stack import bench_services  # noqa: E402
from bench.cpu_per_request import cpu_seconds  # noqa: E402
from bench.httpload import closed_loop  # noqa: E402
from bench.overhead import MODEL, start_upstream, tollway_endpoints  # noqa: E402
from tollway.cli import _create_key  # noqa: E402
from tollway.launcher.processes import free_ports  # noqa: E402
from tollway.launcher.stack import Stack, StackOptions  # noqa: E402

SCALED = ("gateway", "router")


def mesh_with_replicas(run: Path, replicas: int) -> Path:
    doc = yaml.safe_load((ROOT / "deploy" / "mesh.yaml").read_text())
    for s in doc["services"]:
        if s["name"] in SCALED:
            s["replicas"] = replicas
    # Relative paths in the mesh file are relative to it: keep the descriptor set where it is.
    doc["edge"]["descriptor_set"] = str((ROOT / "deploy" / doc["edge"]["descriptor_set"]).resolve())
    path = run / "mesh.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def start(run: Path, upstream_port: int, replicas: int) -> Stack:
    services, env = bench_services(ROOT, run)
    names = ["edge", "admin", "mesh", "redis", "local_model", *services]
    names += [f"{s}.{i}" for s in SCALED for i in range(1, replicas)]
    catalog = run / "models.yaml"
    catalog.write_text(
        f"providers:\n  upstream: {{wire: openai_compat, base_url: 'http://127.0.0.1:{upstream_port}/v1'}}\n"
        f"models:\n  {MODEL}: {{provider: upstream}}\n"
    )
    stack = Stack(StackOptions(
        mesh_path=mesh_with_replicas(run, replicas),
        ports=dict(zip(names, free_ports(len(names)), strict=True)),
        run_dir=run, catalog=catalog, with_model=False, services=services,
        env={"TOLLWAY_LOG_LEVEL": "WARNING", **env}, layout="split",
    ))
    return stack.start()


def service_of(child_name: str) -> str:
    return re.sub(r"-\d+$", "", child_name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", default="1,2,4")
    parser.add_argument("--duration-s", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="tollway-replicas-"))
    upstream, port = start_upstream(base)
    results = []
    try:
        for n in (int(x) for x in args.replicas.split(",")):
            run = base / f"r{n}"
            run.mkdir()
            stack = start(run, port, n)
            try:
                key, _ = asyncio.run(_create_key(stack.redis_url, "bench"))
                edge = stack.mesh.edge.listen
                endpoint = tollway_endpoints("tollway", edge.host, edge.port, key, exact_hits=False)["tollway"]["json"]
                asyncio.run(closed_loop(endpoint, args.concurrency, 3.0, 10**9))  # warm-up
                pids = {c.name: c.process.pid for c in stack.children}
                before = {name: cpu_seconds(pid) for name, pid in pids.items()}
                load_before = os.getloadavg()
                stats = asyncio.run(closed_loop(endpoint, args.concurrency, args.duration_s, 10**9))
                cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
                answered = int(stats["requests"])  # successes; failures are counted apart
                per_service: dict[str, float] = {}
                for name, seconds in cpu.items():
                    per_service[service_of(name)] = per_service.get(service_of(name), 0.0) + seconds
                results.append({
                    "replicas": n,
                    "load": stats,
                    "cpu_ms_per_request": {
                        s: round(1000 * v / max(answered, 1), 3) for s, v in sorted(per_service.items())
                    },
                    "cpu_total_percent_of_2_cores": round(100 * sum(cpu.values()) / (args.duration_s * 2), 1),
                    "loadavg_before": load_before,
                    "loadavg_after": os.getloadavg(),
                })
            finally:
                stack.stop()
    finally:
        upstream.kill()
        upstream.wait()
    print(json.dumps({"cpus": os.cpu_count(), "duration_s": args.duration_s, "concurrency": args.concurrency,
                      "results": results}, indent=1))


if __name__ == "__main__":
    main()

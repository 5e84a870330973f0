"""What observability costs on the request path, and what Prometheus costs for the whole mesh.

    .venv/bin/python bench/observability.py [--rounds 5] [--n 200] [--parts tracing,recording,prometheus]

Three parts, each printing a markdown table:

- **tracing**: three stacks as `make run` starts them (co-located layout; gateway, router,
  openai_compat, cache, embedding, budget; a zero-delay fake upstream), identical but for
  `TOLLWAY_OTEL_EXPORTER` / `TOLLWAY_OTEL_SAMPLE_RATIO`: off; OTLP with every trace kept; OTLP with
  1 % kept. Spans go to an OTLP/gRPC receiver in this process (tests/support/otlp.py), which counts
  them, so the export is real. Envoy traces too when the stack does. Requests go one after another
  through Envoy (`POST /v1/complete`, cache bypassed); the stacks take turns in rotated order each
  round, so drift hits all alike; the figures are medians over the rounds of each round's p50/p99.
- **recording**: the calls a finished request makes for its record and its metrics
  (`metrics.observe_request`, `CallLog.add`, and the batched Redis write that `CallLog` makes off the
  response path but on the same event loop, to a real Redis), timed per request against the same loop
  without them, interleaved. Nothing in the services switches recording off, so this measures the
  calls themselves rather than two stacks.
- **prometheus**: one stack with every service in the split layout (one process each: the most
  targets) and Prometheus started by the launcher; after traffic, each target's
  `scrape_duration_seconds` and samples, and Prometheus's own memory (RSS from /proc and its head series).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.checkout_stack import bench_services  # noqa: E402
from bench.httpload import Endpoint, sequential  # noqa: E402
from bench.overhead import MODEL, NO_CACHE, start_upstream  # noqa: E402
from tests.support.otlp import otlp_receiver  # noqa: E402
from tollway.cli import _create_key  # noqa: E402
from tollway.launcher.processes import free_ports, port_free  # noqa: E402
from tollway.launcher.stack import Stack, StackOptions  # noqa: E402

TRACING = {
    "off": {},
    "traced-100%": {"TOLLWAY_OTEL_EXPORTER": "otlp", "TOLLWAY_OTEL_SAMPLE_RATIO": "1"},
    "traced-1%": {"TOLLWAY_OTEL_EXPORTER": "otlp", "TOLLWAY_OTEL_SAMPLE_RATIO": "0.01"},
}


def _stack(run: Path, upstream: int, services: tuple[str, ...], env: dict[str, str], **options: Any) -> Stack:
    run.mkdir(parents=True, exist_ok=True)
    catalog = run / "models.yaml"
    catalog.write_text(
        f"providers:\n  upstream: {{wire: openai_compat, base_url: 'http://127.0.0.1:{upstream}/v1'}}\n"
        f"models:\n  {MODEL}: {{provider: upstream}}\n"
    )
    names = ["edge", "admin", "mesh", "redis", "prometheus", *services]
    offset = 1000
    for _ in range(50):  # metrics ports (port + offset) must be free too when Prometheus runs
        ports = dict(zip(names, free_ports(len(names)), strict=True))
        if all(port_free("127.0.0.1", ports[s] + offset) for s in services):
            break
    return Stack(
        StackOptions(
            ports=ports,
            run_dir=run,
            catalog=catalog,
            with_model=False,
            services=services,
            env={"TOLLWAY_LOG_LEVEL": "WARNING", **env},
            **options,
        )
    )


def _key(stack: Stack) -> str:
    key, _ = asyncio.run(_create_key(stack.redis_url, "bench"))
    return key


def _endpoint(name: str, stack: Stack, key: str) -> Endpoint:
    edge = stack.mesh.edge.listen
    auth = (("authorization", f"Bearer {key}"),)
    return Endpoint(name, edge.host, edge.port, "/v1/complete", NO_CACHE, auth, ok_marker=b"w19")


def _med(values: list[float]) -> float:
    return statistics.median(values)


_TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def _cpu_s(stack: Stack) -> float:
    """CPU seconds (user + system) used so far by every process of ``stack`` (Envoy included)."""
    total = 0.0
    for child in stack.children:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{child.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) * _TICK_S
    return total


# -- tracing -------------------------------------------------------------------------------------


def bench_tracing(args: argparse.Namespace, run: Path, upstream: int) -> None:
    services, extra = bench_services(ROOT, run)
    with otlp_receiver(keep=False) as (receiver, port), contextlib.ExitStack() as stacks:
        targets, running = {}, {}
        for name, env in TRACING.items():
            env = {**extra, **env, "TOLLWAY_OTEL_ENDPOINT": f"127.0.0.1:{port}"} if env else extra
            stack = stacks.enter_context(
                _stack(run / name, upstream, services, env, layout="colocated")  # type: ignore[arg-type]
            )
            targets[name] = _endpoint(name, stack, _key(stack))
            running[name] = stack
        results: dict[str, dict[str, list[float]]] = {n: {"p50": [], "p99": [], "cpu": []} for n in targets}
        names = list(targets)
        for r in range(args.rounds):
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                cpu = _cpu_s(running[name])
                got = asyncio.run(sequential(targets[name], args.n, args.warmup))
                # CPU per request (warm-up included): steadier than latency on a shared machine.
                results[name]["cpu"].append((_cpu_s(running[name]) - cpu) / (args.n + args.warmup) * 1000)
                results[name]["p50"].append(got["p50_ms"])
                results[name]["p99"].append(got["p99_ms"])
            print(f"tracing: round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
        time.sleep(6)  # Envoy and the batch processors send what they hold every 5 s
        spans = receiver.count
    base, base_cpu = _med(results["off"]["p50"]), _med(results["off"]["cpu"])
    print("\n### Tracing: `POST /v1/complete` through Envoy, co-located stack, sequential\n")
    print(f"{args.rounds} rounds x {args.n} requests per stack (after {args.warmup} warm-up); {spans} spans received\n")
    print("| tracing | p50 ms | p99 ms | p50 over off | CPU ms per request (all processes) | CPU over off |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        p50, p99, cpu = _med(r["p50"]), _med(r["p99"]), _med(r["cpu"])
        print(f"| {name} | {p50:.2f} | {p99:.2f} | {p50 - base:+.2f} | {cpu:.2f} | {cpu - base_cpu:+.2f} |")


# -- recording and metrics -------------------------------------------------------------------------


async def _recording(args: argparse.Namespace, redis_url: str) -> dict[str, list[float]]:
    from tollway.common.chat import ChatMessage
    from tollway.gateway import metrics
    from tollway.gateway.calllog import CallLog
    from tollway.gateway.callrecord import CallRecord
    from tollway.gateway.store import GatewayStore
    from tollway.mesh import redis as mesh_redis

    client = mesh_redis.connect(redis_url)
    log = CallLog(GatewayStore(client), interval_s=3600, batch_size=10**9)
    messages = [ChatMessage("user", "Say hello in one short sentence.")]

    def record(i: int) -> CallRecord:
        r = CallRecord.begin(f"req-{i}", "bench", "feature-a", f"user-{i % 50}", MODEL, "h" * 16)
        r.provider, r.input_tokens, r.output_tokens, r.cost_usd = "upstream", 14, 20, 0.00012
        r.latency_ms, r.ttft_ms, r.status = 12, 3, "OK"
        return r

    async def run(mode: str, n: int) -> tuple[float, float]:
        # The same work in every mode (a record built, a yield to the loop per request, as a stream
        # does); "metrics" adds observe_request, "queued" also CallLog.add, "written" also waits for
        # the batched Redis writes those requests cause (off the response path, on the same loop).
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(n):
            r = record(i)
            if mode != "off":
                metrics.observe_request(r)
            if mode in ("queued", "written"):
                log.add(r, messages, "Hello there.")
            await asyncio.sleep(0)
        if mode == "written":
            await log.flush()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if mode == "queued":
            log._waiting.clear()  # this mode measures the enqueue only
            log._raw.clear()
        return wall / n * 1e6, cpu / n * 1e6

    modes = ("off", "metrics", "queued", "written")
    out: dict[str, list[float]] = {f"{m}_{k}": [] for m in modes for k in ("wall", "cpu")}
    await run("written", 500)  # warm-up: Redis scripts loaded, metric children made
    for r in range(args.rounds * 2):
        for mode in modes[r % 4:] + modes[: r % 4]:
            wall, cpu = await run(mode, args.recording_n)
            out[f"{mode}_wall"].append(wall)
            out[f"{mode}_cpu"].append(cpu)
    await client.aclose()
    return out


def bench_recording(args: argparse.Namespace) -> None:
    from tests.support.redis_server import local_redis

    with local_redis() as redis:
        # The enqueue-only mode must not start flushes: a long interval keeps records waiting.
        got = uvloop.run(_recording(args, redis.url))
    off_wall, off_cpu = _med(got["off_wall"]), _med(got["off_cpu"])
    print("\n### Call recording and metrics, per request (in-process, real Redis)\n")
    print(f"{len(got['off_wall'])} rotated runs x {args.recording_n} requests per mode; medians, µs per request\n")
    print("| on the request's path | wall µs | over none | CPU µs | over none |")
    print("|---|---:|---:|---:|---:|")
    labels = {
        "off": "none (record built, loop yield)",
        "metrics": "metrics.observe_request",
        "queued": "+ CallLog.add (queued)",
        "written": "+ its share of the batched Redis write",
    }
    for mode, label in labels.items():
        wall, cpu = _med(got[f"{mode}_wall"]), _med(got[f"{mode}_cpu"])
        print(f"| {label} | {wall:.1f} | {wall - off_wall:+.1f} | {cpu:.1f} | {cpu - off_cpu:+.1f} |")


# -- prometheus ------------------------------------------------------------------------------------


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _query(stack: Stack, promql: str) -> list[dict[str, Any]]:
    import json
    import urllib.parse
    import urllib.request

    url = f"{stack.prometheus_url}/api/v1/query?query={urllib.parse.quote(promql)}"
    with urllib.request.urlopen(url, timeout=10) as reply:
        return list(json.load(reply)["data"]["result"])


def bench_prometheus(args: argparse.Namespace, run: Path, upstream: int) -> None:
    services = ("gateway", "router", "openai_compat", "cache", "embedding", "budget", "prompts", "retrieval")
    _, extra = bench_services(ROOT, run)
    with _stack(
        run / "prometheus", upstream, services, extra, layout="split", with_prometheus=True
    ) as stack:  # type: ignore[arg-type]
        target = _endpoint("split", stack, _key(stack))
        asyncio.run(sequential(target, args.n, 0))
        prom = next(c for c in stack.children if c.name == "prometheus")
        # Ten scrapes of every target (5 s apart) after the traffic.
        time.sleep(args.prometheus_wait_s)
        rows = _query(stack, "avg_over_time(scrape_duration_seconds[1m])")
        up = {r["metric"].get("process", "?"): r["value"][1] for r in _query(stack, "min_over_time(up[1m])")}
        scraped = _query(stack, "scrape_samples_scraped")
        samples = {r["metric"].get("process", "?"): float(r["value"][1]) for r in scraped}
        heap = _query(stack, 'process_resident_memory_bytes{job="prometheus"}')
        series = _query(stack, "prometheus_tsdb_head_series")
        rss = _rss_mib(prom.process.pid)
    print("\n### Prometheus scraping the whole mesh (split layout: 8 services, Envoy, itself)\n")
    print("| target | up every scrape of the last minute | scrape ms (mean over 1 min) | samples per scrape |")
    print("|---|---|---:|---:|")
    total_ms = 0.0
    for r in sorted(rows, key=lambda r: r["metric"].get("process", "")):
        name = r["metric"].get("process", "?")
        ms = float(r["value"][1]) * 1000
        total_ms += ms
        print(f"| {name} | {'yes' if up.get(name) == '1' else 'no'} | {ms:.2f} | {samples.get(name, 0):.0f} |")
    print(f"| **all {len(rows)} targets** | | **{total_ms:.1f}** (sum) | **{sum(samples.values()):.0f}** |")
    heap_mib = float(heap[0]["value"][1]) / 2**20 if heap else float("nan")
    head = float(series[0]["value"][1]) if series else float("nan")
    print(f"\nPrometheus RSS: {rss:.0f} MiB (/proc), {heap_mib:.0f} MiB (its own metric); head series: {head:.0f}")


@contextlib.contextmanager
def _upstream(run: Path) -> Iterator[int]:
    proc, port = start_upstream(run)
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=200, help="requests per stack per round (tracing)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--recording-n", type=int, default=2000, help="requests per run (recording)")
    parser.add_argument("--prometheus-wait-s", type=float, default=65)
    parser.add_argument("--parts", default="tracing,recording,prometheus")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    with tempfile.TemporaryDirectory(prefix="tollway-obs-bench-") as tmp:
        run = Path(tmp)
        with _upstream(run) as upstream:
            if "tracing" in parts:
                bench_tracing(args, run, upstream)
            if "recording" in parts:
                bench_recording(args)
            if "prometheus" in parts:
                bench_prometheus(args, run, upstream)


if __name__ == "__main__":
    main()

"""Provider failover under steady load: the primary provider dies at 20 s and comes back at 40 s.

    .venv/bin/python bench/failover.py                  # through Envoy -> gateway -> router
    .venv/bin/python bench/failover.py --via router     # straight to 2 router replicas over gRPC
    .venv/bin/python bench/failover.py --quick          # 6 s run (kill at 2 s, restore at 4 s)

Everything runs on free loopback ports and is stopped at the end:
- the primary provider: tests/fakes/openai.py in its own process (SIGKILLed, then restarted
  on the same port); the catalog chain is primary -> primary-mini (same provider, so it dies
  too) -> [other: tests/fakes/anthropic.py, with --other-provider] -> selfhosted;
- the self-hosted tier: a second OpenAI-compatible fake ("local"), or with
  ``--self-hosted real`` the real llama.cpp SmolLM2 server (one request at a time: use
  ``--rate 1``);
- ``--via envoy`` (default): the launcher's stack (Redis, router, gateway, Envoy), load as
  HTTP/1.1 POST /v1/generate (Server-Sent Events) with an API key; ``--via router``: a private
  Redis and ``--replicas`` router processes sharing it, load as gRPC Generate.

The load is open-loop and bounded: ``--rate`` requests/s for ``--duration`` s, at most
``--max-in-flight`` at once (a request that would exceed it is counted as shed, not sent).
Prints, per phase (before / during / after the outage): requests, client-visible errors,
p50/p99 latency, and who answered; then when the primary's breaker opened (from the
transitions the routers recorded in Redis) and when traffic came back to the primary.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import redis  # noqa: E402

from tests.fakes.procs import FakeProvider, RedisServer, RouterProcess, free_port  # noqa: E402
from tollway.common.v1 import common_pb2  # noqa: E402
from tollway.router.store import TRANSITIONS  # noqa: E402
from tollway.router.v1 import router_pb2, router_pb2_grpc  # noqa: E402


@dataclasses.dataclass
class Result:
    """One request as the client saw it."""

    start: float  # seconds since the load began
    latency_s: float = 0.0
    ttft_s: float | None = None
    model: str = ""
    error: str = ""  # "" when the answer completed


# -- the system under test -------------------------------------------------------------


def write_catalog(path: Path, args: argparse.Namespace, primary: int, local_url: str, other: int | None) -> None:
    chain = ["primary-mini"] + (["other"] if other else [])
    lines = [
        "providers:",
        f"  openai: {{wire: openai_compat, base_url: 'http://127.0.0.1:{primary}/v1', timeout_s: 10,"
        f" first_token_timeout_s: {args.first_token_timeout_s}}}",
        f"  local: {{wire: openai_compat, base_url: '{local_url}', timeout_s: 60}}",
    ]
    if other:
        lines.append(f"  anthropic: {{wire: anthropic, base_url: 'http://127.0.0.1:{other}', timeout_s: 10}}")
    local_model = "smollm2" if args.self_hosted == "real" else f"fake-ttft-{args.local_ttft_ms}-words-{args.words}"
    lines += [
        "models:",
        f"  primary: {{provider: openai, upstream_model: fake-ttft-{args.ttft_ms}-words-{args.words},"
        f" tier: large, fallbacks: [{', '.join(chain)}]}}",
        f"  primary-mini: {{provider: openai, upstream_model: fake-ttft-{args.ttft_ms}-words-{args.words // 2}}}",
        f"  selfhosted: {{provider: local, upstream_model: {local_model}}}",
    ]
    if other:
        lines.append(f"  other: {{provider: anthropic, upstream_model: fake-ttft-{args.ttft_ms}-words-{args.words}}}")
    # The run measures the whole chain, so requests may be answered by other models.
    lines += ["routing:", "  last_resort: selfhosted", "  model_fallback: true"]
    path.write_text("\n".join(lines) + "\n")


def router_settings(args: argparse.Namespace) -> dict[str, str]:
    """RouterConfig fields (TOLLWAY_ROUTER_<FIELD>) the bench sets."""
    return {
        "breaker_failure_threshold": str(args.breaker_threshold),
        "breaker_cooldown_s": str(args.breaker_cooldown_s),
    }


class Envoy:
    """The launcher's stack: requests go through Envoy to the gateway, then the router."""

    def __init__(self, args: argparse.Namespace, run: Path, catalog: Path) -> None:
        from tollway.cli import _create_key
        from tollway.launcher.processes import free_ports
        from tollway.launcher.stack import Stack, StackOptions

        names = ["edge", "admin", "mesh", "redis", "local_model", "gateway", "router"]
        env = {"TOLLWAY_LOG_LEVEL": "WARNING"}
        env |= {f"TOLLWAY_ROUTER_{k.upper()}": v for k, v in router_settings(args).items()}
        self.stack = Stack(
            StackOptions(
                ports=dict(zip(names, free_ports(len(names)), strict=True)),
                run_dir=run,
                catalog=catalog,
                with_model=args.self_hosted == "real",
                services=("gateway", "router"),
                env=env,
                startup_timeout_s=120,
            )
        )
        self.stack.start()
        self.redis_url = self.stack.redis_url
        try:
            self.key, _ = asyncio.run(_create_key(self.redis_url, "failover-bench"))
        except BaseException:
            self.stack.stop()
            raise
        self.host, self.port = self.stack.mesh.edge.listen.host, self.stack.mesh.edge.listen.port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    def local_url(self) -> str:
        return self.stack.mesh.local_model.base_url

    def processes(self) -> dict[str, int]:
        return {c.name: c.process.pid for c in self.stack.children if c.name != "redis"}

    async def call(self, n: int, max_tokens: int, started: float) -> Result:
        body = json.dumps(
            {
                "model": "primary",
                "messages": [{"role": "user", "content": f"Request {n}: say hello."}],
                "max_tokens": max_tokens,
                "request_id": f"fo-{n}",
            }
        ).encode()
        head = (
            f"POST /v1/generate HTTP/1.1\r\nhost: {self.host}:{self.port}\r\ncontent-type: application/json\r\n"
            f"authorization: Bearer {self.key}\r\ncontent-length: {len(body)}\r\n\r\n"
        ).encode()
        result = Result(start=started)
        t0 = time.perf_counter()
        conn = self._idle.pop() if self._idle else await asyncio.open_connection(self.host, self.port)
        reader, writer = conn
        try:
            writer.write(head + body)
            status_head = await reader.readuntil(b"\r\n\r\n")
            status = int(status_head[9:12])
            data = bytearray()
            if b"transfer-encoding: chunked" in status_head.lower():
                while True:
                    size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
                    chunk = await reader.readexactly(size + 2)
                    if size == 0:
                        break
                    data += chunk[:-2]
                    if result.ttft_s is None and b'"delta"' in data:
                        result.ttft_s = time.perf_counter() - t0
            else:
                length = next(
                    (
                        int(x.split(b":")[1])
                        for x in status_head.lower().split(b"\r\n")
                        if x.startswith(b"content-length")
                    ),
                    0,
                )
                data += await reader.readexactly(length)
            self._idle.append(conn)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            writer.close()
            result.error, result.latency_s = f"connection: {type(exc).__name__}", time.perf_counter() - t0
            return result
        result.latency_s = time.perf_counter() - t0
        if status != 200:
            try:
                reason = json.loads(data).get("message", "")[:60]
            except ValueError:
                reason = bytes(data[:60]).decode(errors="replace")
            result.error = f"HTTP {status}: {reason}"
            return result
        events = [json.loads(b[6:]) for b in bytes(data).split(b"\n\n") if b.startswith(b"data: ")]
        for event in events:
            if "started" in event:
                result.model = event["started"].get("model", "")
            elif "error" in event:
                result.error = f"error event {event['error'].get('reason', '')}"
        if not result.error and not any("completed" in e for e in events):
            result.error = "stream ended without completed"
        return result

    async def aclose(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()

    def stop(self) -> None:
        self.stack.stop()


class Routers:
    """A private Redis and router replicas; requests go straight to them over gRPC."""

    def __init__(self, args: argparse.Namespace, run: Path, catalog: Path) -> None:
        self.redis = RedisServer(run)
        self.redis_url = self.redis.url
        self.routers: list[RouterProcess] = []
        try:
            for i in range(args.replicas):
                self.routers.append(
                    RouterProcess(f"router-{i}", run, catalog, self.redis_url, "WARNING", **router_settings(args))
                )
        except BaseException:
            self.stop()
            raise
        self.stubs: list[router_pb2_grpc.RouterServiceStub] = []
        self.channels: list[grpc.aio.Channel] = []

    def processes(self) -> dict[str, int]:
        return {f"router-{i}": r.proc.pid for i, r in enumerate(self.routers)}

    def connect(self) -> None:
        self.channels = [grpc.aio.insecure_channel(r.address) for r in self.routers]
        self.stubs = [router_pb2_grpc.RouterServiceStub(c) for c in self.channels]

    async def call(self, n: int, max_tokens: int, started: float) -> Result:
        stub = self.stubs[n % len(self.stubs)]
        request = router_pb2.GenerateRequest(
            model="primary",
            request_id=f"fo-{n}",
            max_tokens=max_tokens,
            messages=[common_pb2.Message(role="user", content=f"Request {n}: say hello.")],
        )
        result = Result(start=started)
        t0 = time.perf_counter()
        completed = False
        try:
            async for event in stub.Generate(request, timeout=30):
                kind = event.WhichOneof("event")
                if kind == "started":
                    result.model = event.started.model
                elif kind == "delta" and result.ttft_s is None:
                    result.ttft_s = time.perf_counter() - t0
                elif kind == "error":
                    result.error = f"error event {event.error.reason}"
                elif kind == "completed":
                    completed = True
        except grpc.aio.AioRpcError as exc:
            result.error = f"{exc.code().name}: {(exc.details() or '')[:60]}"
        result.latency_s = time.perf_counter() - t0
        if not result.error and not completed:
            result.error = "stream ended without completed"
        return result

    async def aclose(self) -> None:
        for channel in self.channels:
            await channel.close()

    def stop(self) -> None:
        for r in self.routers:
            r.stop()
        self.redis.stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the load --------------------------------------------------------------------------


async def drive(target: Any, primary: FakeProvider, args: argparse.Namespace) -> tuple[list[Result], dict[str, float]]:
    """Sends the load; kills and restores the primary on schedule. Returns results and event times."""
    results: list[Result] = []
    tasks: set[asyncio.Task[None]] = set()
    shed = 0
    marks: dict[str, float] = {}
    begin = time.perf_counter()
    wall_begin = time.time()
    total = int(args.rate * args.duration)

    async def one(n: int, at: float) -> None:
        results.append(await target.call(n, args.max_tokens, at))

    async def schedule() -> None:
        for name, at in (("kill", args.kill_at), ("restore", args.restore_at)):
            await asyncio.sleep(max(0.0, begin + at - time.perf_counter()))
            if name == "kill":
                # Marked before the signal: failures (and the breaker) may follow within microseconds.
                marks[name], marks[f"{name}_wall"] = time.perf_counter() - begin, time.time()
                await asyncio.to_thread(primary.kill)
            else:
                # Marked once the restarted provider accepts connections.
                await asyncio.to_thread(primary.start)
                marks[name], marks[f"{name}_wall"] = time.perf_counter() - begin, time.time()

    scheduler = asyncio.create_task(schedule())
    for n in range(total):
        at = n / args.rate
        delay = begin + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(tasks) >= args.max_in_flight:
            shed += 1
            continue
        task = asyncio.create_task(one(n, time.perf_counter() - begin))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await scheduler
    if tasks:
        await asyncio.wait(tasks, timeout=60)
    marks["shed"] = shed
    marks["wall_begin"] = wall_begin
    return results, marks


# -- the report ------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def transitions(redis_url: str) -> list[dict[str, str]]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return [fields for _, fields in client.xrange(TRANSITIONS)]
    finally:
        client.close()


def report(results: list[Result], marks: dict[str, float], redis_url: str, args: argparse.Namespace) -> str:
    kill, restore = marks["kill"], marks["restore"]
    phases = [("before", args.warmup_s, kill), ("during", kill, restore), ("after", restore, args.duration)]
    lines = [
        f"load: {args.rate:g} req/s for {args.duration:g} s via {args.via}"
        + (f" ({args.replicas} router replicas)" if args.via == "router" else " (Envoy -> gateway -> router)")
        + f"; primary killed at {kill:.1f} s, restored at {restore:.1f} s; shed by the client: {int(marks['shed'])}",
        f"primary TTFT {args.ttft_ms} ms, self-hosted {'llama.cpp' if args.self_hosted == 'real' else 'fake'}"
        f" TTFT {args.local_ttft_ms} ms, {args.words} words; breaker: {args.breaker_threshold} consecutive"
        f" failures, cooldown {args.breaker_cooldown_s:g} s; first-token timeout {args.first_token_timeout_s:g} s",
        "",
        "| phase | window (s) | requests | client-visible errors | p50 ms | p99 ms | TTFT p50 ms | answered by |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, lo, hi in phases:
        inside = [r for r in results if lo <= r.start < hi]
        ok = [r for r in inside if not r.error]
        errs = len(inside) - len(ok)
        by = collections.Counter(r.model for r in ok)
        share = ", ".join(f"{m} {c / max(1, len(ok)):.1%}" for m, c in by.most_common())
        ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
        lines.append(
            f"| {name} | {lo:.0f}-{hi:.0f} | {len(inside)} | {errs} | {pct([r.latency_s for r in ok], 50) * 1e3:.1f} |"
            f" {pct([r.latency_s for r in ok], 99) * 1e3:.1f} | {pct(ttfts, 50) * 1e3:.1f} | {share} |"
        )
    caught = [r for r in results if r.start < kill < r.start + r.latency_s]
    if caught:
        ok = [r for r in caught if not r.error]
        lines.append(
            f"| in flight at the kill | - | {len(caught)} | {len(caught) - len(ok)} |"
            f" {pct([r.latency_s for r in ok], 50) * 1e3:.1f} | {pct([r.latency_s for r in ok], 100) * 1e3:.1f} (max) |"
            f" - | {', '.join(f'{m} {c}' for m, c in collections.Counter(r.model for r in ok).most_common())} |"
        )
    errors = collections.Counter(r.error for r in results if r.error)
    lines += ["", f"client-visible errors: {sum(errors.values())} of {len(results)}"]
    for error, count in errors.most_common(8):
        start_times = sorted(r.start for r in results if r.error == error)
        lines.append(f"  {count} x {error} (at {start_times[0]:.2f}-{start_times[-1]:.2f} s)")

    kill_ms = marks["kill_wall"] * 1000
    restore_ms = marks["restore_wall"] * 1000
    steps = transitions(redis_url)
    for key in ("openai/primary/default", "openai/primary-mini/default"):
        mine = [t for t in steps if t["breaker"] == key]
        opened = next((t for t in mine if t["to"] == "open" and float(t["at_ms"]) >= kill_ms), None)
        closed = next((t for t in mine if t["to"] == "closed" and float(t["at_ms"]) >= restore_ms), None)
        probes = sum(1 for t in mine if t["to"] == "half_open" and kill_ms <= float(t["at_ms"]) < restore_ms)
        lines.append(
            f"breaker {key}: opened {(float(opened['at_ms']) - kill_ms) / 1000:.3f} s after the kill"
            f" ({opened['reason'][:70]})"
            if opened
            else f"breaker {key}: never opened"
        )
        if closed:
            after_s = (float(closed["at_ms"]) - restore_ms) / 1000
            lines.append(
                f"  failed probes during the outage: {probes}; closed {after_s:.2f} s after the restore"
                f" (replica {closed['replica']})"
            )
    back = sorted(r.start + r.latency_s for r in results if r.model == "primary" and r.start >= restore)
    if back:
        lines.append(f"traffic back to the primary: first answer {back[0] - restore:.2f} s after the restore")
    per_second = collections.defaultdict(list)
    for r in results:
        if r.start >= restore and not r.error:
            per_second[int(r.start - restore)].append(r.model == "primary")
    full = next((s for s in sorted(per_second) if sum(per_second[s]) / len(per_second[s]) >= 0.95), None)
    if full is not None:
        lines.append(f"  >= 95% of answers from the primary from second {full} after the restore on")
    if args.timeline:
        lines += ["", "second: requests, errors, share answered by primary / selfhosted"]
        buckets: dict[int, list[Result]] = collections.defaultdict(list)
        for r in results:
            buckets[int(r.start)].append(r)
        for second in sorted(buckets):
            group = buckets[second]
            ok = [r for r in group if not r.error]
            prim = sum(r.model == "primary" for r in ok) / max(1, len(ok))
            local = sum(r.model == "selfhosted" for r in ok) / max(1, len(ok))
            lines.append(f"  {second:3d}: {len(group):4d} {len(group) - len(ok):3d}  {prim:6.1%} / {local:6.1%}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--via", choices=["envoy", "router"], default="envoy")
    parser.add_argument("--replicas", type=int, default=2, help="router processes with --via router")
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second (open loop)")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--kill-at", type=float, default=20.0)
    parser.add_argument("--restore-at", type=float, default=40.0)
    parser.add_argument("--warmup-s", type=float, default=2.0, help="left out of the 'before' figures")
    parser.add_argument("--max-in-flight", type=int, default=500)
    parser.add_argument("--ttft-ms", type=int, default=100, help="the primary's time to first byte")
    parser.add_argument("--local-ttft-ms", type=int, default=150, help="the fake self-hosted model's")
    parser.add_argument("--words", type=int, default=20, help="answer length in deltas")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--self-hosted", choices=["fake", "real"], default="fake")
    parser.add_argument("--other-provider", action="store_true", help="an Anthropic fake before self-hosted")
    parser.add_argument("--breaker-threshold", type=int, default=5)
    parser.add_argument("--breaker-cooldown-s", type=float, default=10.0)
    parser.add_argument("--first-token-timeout-s", type=float, default=2.0)
    parser.add_argument("--timeline", action="store_true", help="also print a per-second timeline")
    parser.add_argument("--quick", action="store_true", help="a 6 s run at 20 req/s, to check the bench")
    args = parser.parse_args()
    if args.quick:
        args.rate, args.duration, args.kill_at, args.restore_at, args.warmup_s = 20.0, 6.0, 2.0, 4.0, 0.5
        args.breaker_cooldown_s = min(args.breaker_cooldown_s, 1.0)
    if args.self_hosted == "real" and args.via != "envoy":
        parser.error("--self-hosted real needs --via envoy (the launcher starts llama.cpp)")

    run = Path(tempfile.mkdtemp(prefix="tollway-failover-"))
    primary = FakeProvider("openai", run)
    other = FakeProvider("anthropic", run) if args.other_provider else None
    local = FakeProvider("openai", run) if args.self_hosted == "fake" else None
    catalog = run / "models.yaml"
    target: Envoy | Routers | None = None
    try:
        local_url = f"{local.url}/v1" if local else f"http://127.0.0.1:{free_port()}/v1"
        write_catalog(catalog, args, primary.port, local_url, other.port if other else None)
        if args.via == "envoy":
            target = Envoy(args, run, catalog)
            if args.self_hosted == "real":
                write_catalog(catalog, args, primary.port, target.local_url(), other.port if other else None)
                time.sleep(3)  # the routers reload the catalog every 2 s
        else:
            target = Routers(args, run, catalog)

        async def go() -> tuple[list[Result], dict[str, float]]:
            if isinstance(target, Routers):
                target.connect()
            try:
                return await drive(target, primary, args)
            finally:
                await target.aclose()

        print(f"running for {args.duration:g} s (logs in {run}) ...", file=sys.stderr, flush=True)
        load_before = os.getloadavg()[0]
        pids = {**target.processes(), "load generator": os.getpid()}
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        results, marks = asyncio.run(go())
        print(report(results, marks, target.redis_url, args))
        used = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        print(
            "CPU per request (ms): "
            + ", ".join(f"{name} {seconds * 1000 / max(1, len(results)):.2f}" for name, seconds in used.items())
        )
        # The machine is shared: say how busy it was, since latency depends on it.
        print(
            f"load average (1 min) before/after: {load_before:.2f} / {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
        )
    finally:
        if target is not None:
            target.stop()
        for fake in (primary, other, local):
            if fake is not None:
                fake.stop()


if __name__ == "__main__":
    main()

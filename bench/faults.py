"""The stall rows of the fault suite: steady load through Envoy while one part is stopped (SIGSTOP), then continued.

    .venv/bin/python bench/faults.py                 # every row of FAULTS
    .venv/bin/python bench/faults.py --case redis    # the rows whose name contains "redis"
    .venv/bin/python bench/faults.py --quick         # short phases (2 s / 4 s / 4 s)

(The SIGKILL rows, with supervision and restarts, are ``bench/faults_kill.py``.)

Each row starts its own stack on free loopback ports (Redis, router, gateway, openai_compat,
Envoy) with two provider fakes in their own processes (``primary``, and ``spare`` for
fallback), sends an open-loop load of streamed ``POST /v1/chat/completions`` through Envoy,
and after ``--before`` seconds applies the fault; after ``--during`` seconds it undoes it and
measures ``--after`` seconds more. Per row it prints the client-visible outcomes by phase
(ok, HTTP status, in-band error code, refused connection), the time from the fault to the
first request that noticed it (detection), and the time from undoing the fault to the first
good answer from the part that was stopped (recovery).

A row of :data:`FAULTS` is a name, the process it targets, the signal that applies the
fault and the one that undoes it, and the request headers and model of the load: a new
fault is one more row.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.fakes.procs import FakeProvider  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Fault:
    """One row of the fault table.

    Attributes:
        name: What the table calls it.
        target: Whose process is signalled: "primary" (the provider fake), or a stack child
            ("redis", "router", ...).
        apply: The signal that causes the fault.
        undo: The signal that ends it (None: the part must come back by itself).
        headers: Extra request headers of the load (e.g. allowing another model).
        model: The model the load asks for.
        new_key_each_request: Each request brings a key no gateway has seen (made before the
            load), so each must be checked in Redis; otherwise one key, trusted in memory.
    """

    name: str
    target: str
    apply: signal.Signals
    undo: signal.Signals | None
    headers: tuple[tuple[str, str], ...] = ()
    model: str = "primary"
    new_key_each_request: bool = False


FAULTS: tuple[Fault, ...] = (
    Fault("provider SIGSTOP", "primary", signal.SIGSTOP, signal.SIGCONT),
    Fault(
        "provider SIGSTOP, fallback allowed",
        "primary",
        signal.SIGSTOP,
        signal.SIGCONT,
        headers=(("x-tollway-allow-fallback", "true"),),
    ),
    Fault("redis SIGSTOP", "redis", signal.SIGSTOP, signal.SIGCONT),
    Fault("redis SIGSTOP, a new key per request", "redis", signal.SIGSTOP, signal.SIGCONT, new_key_each_request=True),
)


@dataclasses.dataclass
class Outcome:
    """One request as the client saw it (times in seconds since the load began)."""

    start: float
    end: float = 0.0
    result: str = ""  # "ok", "HTTP 503", "in-band provider_stalled", "refused", ...
    model: str = ""
    message: str = ""  # the error message, for a failed request


def write_catalog(path: Path, primary: int, spare: int, args: argparse.Namespace) -> None:
    timeouts = (
        f"timeout_s: 10, connect_timeout_s: 1, first_token_timeout_s: {args.first_token_timeout_s}, "
        f"stall_timeout_s: {args.stall_timeout_s}"
    )
    answer = f"fake-ttft-20-words-{args.words}"
    path.write_text(
        "providers:\n"
        f"  primary: {{wire: openai_compat, base_url: 'http://127.0.0.1:{primary}/v1', {timeouts}}}\n"
        f"  spare: {{wire: openai_compat, base_url: 'http://127.0.0.1:{spare}/v1', {timeouts}}}\n"
        "models:\n"
        f"  primary: {{provider: primary, upstream_model: {answer}, fallbacks: [spare]}}\n"
        f"  spare: {{provider: spare, upstream_model: {answer}}}\n"
    )


class Bench:
    """A stack and its two providers for one row; ``close()`` stops them whatever happened."""

    def __init__(self, args: argparse.Namespace, fault: Fault) -> None:
        from tollway.cli import _create_key
        from tollway.launcher.processes import free_ports
        from tollway.launcher.stack import Stack, StackOptions

        self.run = Path(tempfile.mkdtemp(prefix="faults-stall-"))
        self.primary = FakeProvider("openai", self.run)
        self.spare = FakeProvider("openai", self.run)
        catalog = self.run / "models.yaml"
        write_catalog(catalog, self.primary.port, self.spare.port, args)
        names = ["edge", "admin", "mesh", "redis", "local_model", "gateway", "router", "openai_compat"]
        self.stack = Stack(
            StackOptions(
                ports=dict(zip(names, free_ports(len(names)), strict=True)),
                run_dir=self.run,
                catalog=catalog,
                with_model=False,
                services=("gateway", "router", "openai_compat"),
                env={"TOLLWAY_LOG_LEVEL": "WARNING"},
                startup_timeout_s=120,
            )
        )
        try:
            self.stack.start()
            count = int(args.rate * (args.before + args.during + args.after)) + 10 if fault.new_key_each_request else 1
            self.keys = asyncio.run(self._keys(_create_key, count))
        except BaseException:
            self.close()
            raise

    async def _keys(self, create: Any, count: int) -> list[str]:
        return [(await create(self.stack.redis_url, "faults-bench"))[0] for _ in range(count)]

    def pid(self, target: str) -> int:
        if target == "primary":
            assert self.primary.proc is not None
            return self.primary.proc.pid
        return next(c.process.pid for c in self.stack.children if c.name == target)

    def close(self) -> None:
        for fake in (self.primary, self.spare):
            if fake.proc is not None and fake.proc.process.poll() is None:
                os.kill(fake.proc.pid, signal.SIGCONT)
            fake.stop()
        for child in self.stack.children:
            if child.alive():
                os.kill(child.process.pid, signal.SIGCONT)  # a stopped process ignores SIGTERM
        self.stack.stop()


async def one(client: httpx.AsyncClient, fault: Fault, key: str, n: int, t0: float) -> Outcome:
    """A streamed chat completion; the outcome is what an SDK would report."""
    out = Outcome(start=time.perf_counter() - t0)
    body = {"model": fault.model, "messages": [{"role": "user", "content": f"req {n}"}], "stream": True}
    headers = {**dict(fault.headers), "authorization": f"Bearer {key}"}
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
            out.model = r.headers.get("x-tollway-model", "")
            if r.status_code != 200:
                out.message = json.loads(await r.aread()).get("error", {}).get("message", "")[:120]
                out.result = f"HTTP {r.status_code}"
            else:
                out.result = "stream without [DONE]"
                async for line in r.aiter_lines():
                    if line == "data: [DONE]":
                        out.result = "ok"
                    elif line.startswith('data: {"error"'):
                        out.result = f"in-band {json.loads(line[6:])['error'].get('code')}"
    except httpx.ConnectError:
        out.result = "refused"
    except httpx.HTTPError as exc:
        out.result = type(exc).__name__
    out.end = time.perf_counter() - t0
    return out


async def drive(bench: Bench, fault: Fault, args: argparse.Namespace) -> tuple[list[Outcome], float, float]:
    """Runs the load and the fault; returns the outcomes and when the fault was applied and undone."""
    total = args.before + args.during + args.after
    headers = {"x-tollway-cache-mode": "bypass"}
    limits = httpx.Limits(max_connections=args.max_in_flight, max_keepalive_connections=args.max_in_flight)
    applied = undone = -1.0
    async with httpx.AsyncClient(base_url=bench.stack.edge_url, headers=headers, timeout=120, limits=limits) as c:
        t0 = time.perf_counter()
        tasks: list[asyncio.Task[Outcome]] = []
        n = 0
        while (now := time.perf_counter() - t0) < total:
            if applied < 0 and now >= args.before:
                os.kill(bench.pid(fault.target), fault.apply)
                applied = now
            if fault.undo is not None and undone < 0 and now >= args.before + args.during:
                os.kill(bench.pid(fault.target), fault.undo)
                undone = now
            key = bench.keys[n % len(bench.keys)]
            tasks.append(asyncio.create_task(one(c, fault, key, n, t0)))
            n += 1
            await asyncio.sleep(max(0.0, n / args.rate - (time.perf_counter() - t0)))
        if fault.undo is not None and undone < 0:
            os.kill(bench.pid(fault.target), fault.undo)
            undone = time.perf_counter() - t0
        outcomes = await asyncio.gather(*tasks)
    return list(outcomes), applied, undone


def report(fault: Fault, outcomes: list[Outcome], applied: float, undone: float) -> dict[str, Any]:
    """The row's figures: outcomes per phase, detection and recovery times."""
    phases: dict[str, collections.Counter[str]] = {p: collections.Counter() for p in ("before", "during", "after")}
    latencies: dict[str, list[float]] = {p: [] for p in phases}
    messages: collections.Counter[str] = collections.Counter()
    for o in outcomes:
        phase = "before" if o.start < applied else "during" if undone < 0 or o.start < undone else "after"
        served_by = f" ({o.model})" if o.result == "ok" and o.model and o.model != fault.model else ""
        phases[phase][o.result + served_by] += 1
        latencies[phase].append(o.end - o.start)
        if o.message:
            messages[o.message] += 1
    noticed = [o.end - applied for o in outcomes if o.end >= applied and (o.result != "ok" or o.model != fault.model)]
    # Recovery: the first request sent after the undo that the stopped part answered itself.
    back = [
        o.end - undone
        for o in outcomes
        if undone >= 0 and o.start >= undone and o.result == "ok" and o.model == fault.model
    ]
    return {
        "fault": fault.name,
        "phases": {p: dict(c) for p, c in phases.items()},
        "p99_latency_s": {p: round(sorted(v)[int(len(v) * 0.99)], 2) for p, v in latencies.items() if v},
        "error_messages": dict(messages.most_common(3)),
        "detection_s": round(min(noticed), 2) if noticed else None,
        "recovery_s": round(min(back), 2) if back else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", help="run only rows whose name contains this; repeatable")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second")
    parser.add_argument("--max-in-flight", type=int, default=256)
    parser.add_argument("--before", type=float, default=3.0)
    parser.add_argument("--during", type=float, default=8.0)
    parser.add_argument("--after", type=float, default=15.0)
    parser.add_argument("--words", type=int, default=40, help="words per answer (20 ms before the first)")
    parser.add_argument("--first-token-timeout-s", type=float, default=2.0)
    parser.add_argument("--stall-timeout-s", type=float, default=2.0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true", help="print one JSON object per row")
    args = parser.parse_args()
    if args.quick:
        args.before, args.during, args.after = 2.0, 4.0, 4.0
    rows = [f for f in FAULTS if not args.case or any(c.lower() in f.name.lower() for c in args.case)]
    for fault in rows:
        bench = Bench(args, fault)
        try:
            outcomes, applied, undone = asyncio.run(drive(bench, fault, args))
        finally:
            bench.close()
        row = report(fault, outcomes, applied, undone)
        if args.json:
            print(json.dumps(row))
            continue
        print(f"\n== {row['fault']}  (applied at {applied:.1f} s, undone at {undone:.1f} s)")
        for phase, counts in row["phases"].items():
            p99 = row["p99_latency_s"].get(phase)
            print(f"  {phase:7} " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + f"  (p99 {p99} s)")
        for message, count in row["error_messages"].items():
            print(f"  {count} x {message}")
        print(f"  detection {row['detection_s']} s, recovery {row['recovery_s']} s")


if __name__ == "__main__":
    main()

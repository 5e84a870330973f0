"""The fault suite: one part of a running stack fails under steady light load through Envoy.

    .venv/bin/python bench/faults_kill.py                      # every SIGKILL row (fake provider)
    .venv/bin/python bench/faults_kill.py --with-model         # + the local llama.cpp model's row
    .venv/bin/python bench/faults_kill.py --only redis router  # some rows
    .venv/bin/python bench/faults_kill.py --json out.json      # also write the rows as JSON
    .venv/bin/python bench/faults_kill.py --layout colocated   # as `tollway up` runs by default: the
                                                               # core group (gateway, router, cache,
                                                               # budget, openai_compat) is one process

The stack is the launcher's (``tollway up``'s) on free ports, supervised as in production: Redis,
every service, Envoy, a wire-exact fake OpenAI provider (``tests/fakes/openai.py``) as the hosted
provider and, with ``--with-model``, the local model. The load is open-loop: ``--rate`` requests/s,
alternating ``POST /v1/complete`` (JSON, transcoded to the gateway) and ``POST
/v1/chat/completions`` (openai_compat), each with a fresh prompt and the cache bypassed.

Each row of ``CASES`` is one fault. Per row:

1. load for ``--warm-s``; then three acknowledged writes: a call record (a request whose id is
   then seen in ``tollway:calls``), a cache entry (a request then answered from the exact tier)
   and a key (created, never used, so no gateway trusts it from memory);
2. the fault (``Case.inject``), while the load goes on; a SIGKILL row leaves healing to the
   supervisor, a stall row heals itself (``Case.heal`` after ``Case.hold_s``);
3. load until a good answer follows the part's recovery, then ``--tail-s`` more;
4. the three writes are checked: the key authenticates, the call record is in the stream, the
   cache entry is still a hit.

Printed per row: client-visible errors by status, connections refused at the edge, errors that
do not name the part, the time from the fault to the new process, to its readiness and to the
last failed request, and the recovery (the first good answer after the last error) counted from
the new process's start and from the moment the supervisor saw it ready (what is left once the
part itself is up: reconnects, breakers). The aims (issue 10): 0 refused connections at the edge,
every error a 503 (or an in-band error) naming the part, recovery <= 2 s after a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.fakes.procs import FakeProvider, Proc  # noqa: E402
from tollway.cli import _create_key, _with_store  # noqa: E402
from tollway.launcher.processes import Child, free_ports  # noqa: E402
from tollway.launcher.stack import Stack, StackOptions  # noqa: E402

SERVICES = ("gateway", "router", "cache", "embedding", "openai_compat", "budget")


# -- the cases --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    """One row of the fault table.

    Attributes:
        name: The row's label.
        part: The stack child the fault hits (a name of `Stack.children`: "redis", "router",
            "local-model", "envoy", ...).
        inject: Does the fault; returns the pid it hit.
        heal: Undoes the fault after `hold_s` (a stall's SIGCONT); None when the supervisor heals.
        hold_s: How long the fault lasts before `heal`.
        names: Words of which one must appear in a client-visible error for it to name the part.
        model: The model the load asks for (the local model's row loads the local model).
        needs_model: The row needs the local model (``--with-model``).
        expect_errors: Whether clients are expected to see errors at all (a part with a degraded
            path, such as the cache, should cost none).
        rate: Requests/s for this row, when --rate would be more than the part can serve (the
            local model answers a few short requests per second on 2 cores).
        layouts: The stack layouts the row applies to (a co-located service is killed with its
            group: the group's row stands for it).
        ready: For a part that is not one of the stack's children (the hosted provider): whether it
            serves again; the stack's children are ready when the supervisor says so.
    """

    name: str
    part: str
    inject: Callable[[Bench, Case], int]
    heal: Callable[[Bench, Case, int], None] | None = None
    hold_s: float = 0.0
    names: tuple[str, ...] = ()
    model: str = "fake-ok"
    needs_model: bool = False
    expect_errors: bool = True
    rate: float | None = None
    layouts: tuple[str, ...] = ("split", "colocated")
    ready: Callable[[Bench], bool] | None = None


def sigkill(bench: Bench, case: Case) -> int:
    """SIGKILLs the part's current process (the supervisor restarts it)."""
    pid = bench.child(case.part).process.pid
    os.kill(pid, signal.SIGKILL)
    return pid


def kill_row(part: str, *names: str, expect_errors: bool = True, **extra: Any) -> Case:
    return Case(f"SIGKILL {part}", part, sigkill, names=(part, *names), expect_errors=expect_errors, **extra)


def kill_provider(bench: Bench, case: Case) -> int:
    """SIGKILLs the hosted provider (the fake OpenAI process); returns its pid."""
    proc = bench.provider.proc
    assert proc is not None
    pid = proc.pid
    proc.kill()
    return pid


def restart_provider(bench: Bench, case: Case, pid: int) -> None:
    """Starts the provider again on its port, as its own supervisor would, without waiting for it
    (the load goes on meanwhile; `provider_serves` says when it accepts connections)."""
    p = bench.provider
    argv = [sys.executable, "-m", f"tests.fakes.{p.wire}", "--port", str(p.port)]
    p.proc = Proc(f"fake-{p.wire}-{p.port}-restarted", argv, p.workdir)


def provider_serves(bench: Bench) -> bool:
    try:
        socket.create_connection(("127.0.0.1", bench.provider.port), 0.2).close()
    except OSError:
        return False
    return True


SPLIT = ("split",)

# SIGKILL rows: every service, Redis, the local model and Envoy. (Stall rows: SIGSTOP/SIGCONT of
# a provider or Redis, with `heal` and `hold_s`, go in the same list.)
CASES: list[Case] = [
    kill_row("redis", "REDIS_UNAVAILABLE"),
    kill_row("router", "ROUTER_UNAVAILABLE", layouts=SPLIT),
    kill_row("gateway", layouts=SPLIT),
    kill_row("cache", expect_errors=False, layouts=SPLIT),  # the gateway goes on without the cache
    kill_row("embedding", expect_errors=False),  # ... and without the semantic tier
    kill_row("budget", layouts=SPLIT),
    kill_row("openai_compat", layouts=SPLIT),
    # Co-located (mesh.yaml's `processes`): gateway, router, cache, budget and openai_compat are one
    # process; Envoy names the cluster each surface asked for (gateway, or openai_compat).
    kill_row("core", "gateway", "openai_compat", layouts=("colocated",)),
    # Nothing answers at the edge while Envoy itself restarts: its row shows what that costs.
    kill_row("envoy"),
    kill_row("local-model", "local", "smollm2", model="smollm2", needs_model=True, rate=2.0),
    # The router's own part in recovery, apart from how long a model takes to answer: the hosted
    # provider (a fake answering in milliseconds) dies and is back on its port 1 s later. Its
    # connections are refused meanwhile, so its breaker opens with the short cooldown.
    Case(
        "SIGKILL hosted provider, restarted on its port after 1 s",
        "provider",
        kill_provider,
        heal=restart_provider,
        hold_s=1.0,
        names=("fakeai",),
        ready=provider_serves,
    ),
]


# -- the bench --------------------------------------------------------------------------------


@dataclasses.dataclass
class Sample:
    """One request as the client saw it."""

    sent: float  # monotonic
    done: float
    outcome: str  # "200", "503", ..., "refused", "reset", "timeout"
    body: str = ""


class Bench:
    """The stack under test, its key and its load."""

    def __init__(self, args: argparse.Namespace, run: Path) -> None:
        self.args = args
        self.provider = FakeProvider("openai", run)
        catalog = run / "models.yaml"
        catalog.write_text(
            "providers:\n"
            f"  fakeai: {{wire: openai_compat, base_url: '{self.provider.url}/v1', timeout_s: 10}}\n"
            "  local: {wire: openai_compat, base_url: '${TOLLWAY_LOCAL_MODEL_URL}', timeout_s: 120}\n"
            "models:\n  fake-ok: {provider: fakeai}\n  smollm2: {provider: local, upstream_model: smollm2}\n"
        )
        # A plan without quotas: the load must meet the fault, not the free plan's 60 requests/min.
        plans = run / "budget.yaml"
        plans.write_text("version: 1\ndefault_plan: bench\nplans:\n  bench: {max_tokens_per_request: 0, quotas: []}\n")
        names = ["edge", "admin", "mesh", "redis", "local_model", *SERVICES]
        self.stack = Stack(
            StackOptions(
                ports=dict(zip(names, free_ports(len(names)), strict=True)),
                run_dir=run,
                catalog=catalog,
                with_model=args.with_model,
                services=SERVICES,
                layout=args.layout,
                env={"TOLLWAY_LOG_LEVEL": "WARNING", "TOLLWAY_BUDGET_PLANS": str(plans)},
                startup_timeout_s=120,
            )
        )
        try:
            self.stack.start()
            self.key = self.new_key()
        except BaseException:
            self.close()
            raise
        self.samples: list[Sample] = []

    def close(self) -> None:
        self.stack.stop()
        self.provider.stop()

    def child(self, name: str) -> Child:
        return next(c for c in self.stack.children if c.name == name)

    def state(self, name: str) -> str:
        assert self.stack.supervisor is not None
        return next(c["state"] for c in self.stack.supervisor.status()["children"] if c["name"] == name)

    def new_key(self) -> str:
        return asyncio.run(_create_key(self.stack.redis_url, "faults"))[0]

    # -- requests ---------------------------------------------------------------------------

    def body(self, n: int, model: str, content: str | None = None) -> tuple[str, dict[str, Any]]:
        messages = [{"role": "user", "content": content or f"Fault bench request {n} {uuid.uuid4().hex[:8]}"}]
        if n % 2:
            return "/v1/chat/completions", {"model": model, "messages": messages, "max_tokens": 8}
        body = {"model": model, "messages": messages, "max_tokens": 8, "cache_policy": {"mode": "CACHE_MODE_BYPASS"}}
        return "/v1/complete", body

    async def one(self, client: httpx.AsyncClient, n: int, model: str) -> Sample:
        path, body = self.body(n, model)
        headers = {"authorization": f"Bearer {self.key}", "x-tollway-cache-mode": "bypass"}
        sent = time.monotonic()
        try:
            r = await client.post(path, json=body, headers=headers)
            outcome, text = str(r.status_code), ("" if r.status_code == 200 else r.text[:300])
        except httpx.ConnectError:
            outcome, text = "refused", ""
        except httpx.TimeoutException:
            outcome, text = "timeout", ""
        except httpx.TransportError as exc:
            outcome, text = "reset", repr(exc)[:200]
        return Sample(sent, time.monotonic(), outcome, text)

    async def load(self, until: Callable[[], bool], model: str, rate: float) -> None:
        """Open-loop load at ``rate`` requests/s until ``until()``; at most --max-in-flight at once."""
        period = 1 / rate
        limits = httpx.Limits(max_connections=self.args.max_in_flight, max_keepalive_connections=8)
        async with httpx.AsyncClient(base_url=self.stack.edge_url, timeout=30, limits=limits) as client:
            tasks: set[asyncio.Task[Sample]] = set()
            n, start = 0, time.monotonic()
            while not until():
                if len(tasks) < self.args.max_in_flight:
                    task = asyncio.create_task(self.one(client, n, model))
                    task.add_done_callback(lambda t: self.samples.append(t.result()))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                n += 1
                await asyncio.sleep(max(0.0, start + n * period - time.monotonic()))
            if tasks:
                await asyncio.wait(tasks)

    # -- acknowledged writes ------------------------------------------------------------------

    def acknowledge(self, model: str) -> dict[str, str]:
        """Makes three writes and waits until each is acknowledged; returns what identifies them."""
        headers = {"authorization": f"Bearer {self.key}"}
        question = f"What must survive? {uuid.uuid4()}"
        body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": 8}
        with httpx.Client(base_url=self.stack.edge_url, timeout=60) as client:
            first = client.post("/v1/complete", json=body, headers=headers)
            first.raise_for_status()
            request_id = first.json()["request_id"]
            poll(
                lambda: (
                    client.post("/v1/complete", json=body, headers=headers).json().get("cache_tier")
                    == "CACHE_TIER_EXACT"
                ),
                "the cache entry",
            )
        poll(lambda: self.recorded(request_id), "the call record")
        return {"question": question, "request_id": request_id, "key": self.new_key(), "model": model}

    def verify(self, ack: dict[str, str]) -> dict[str, bool]:
        """Whether each acknowledged write is still there (polled briefly: a client may retry too)."""
        body = {"model": ack["model"], "messages": [{"role": "user", "content": ack["question"]}], "max_tokens": 8}
        with httpx.Client(base_url=self.stack.edge_url, timeout=60) as client:

            def hit() -> bool:
                r = client.post("/v1/complete", json=body, headers={"authorization": f"Bearer {self.key}"})
                return r.status_code == 200 and r.json().get("cache_tier") == "CACHE_TIER_EXACT"

            def key_ok() -> bool:
                # Asked of the fast fake model whatever the row's model: whether a key is known does
                # not depend on it, and a slow local model would time out and read as a lost key.
                r = client.post(
                    "/v1/complete",
                    json={**body, "model": "fake-ok", "cache_policy": {"mode": "CACHE_MODE_BYPASS"}},
                    headers={"authorization": f"Bearer {ack['key']}"},
                )
                if r.status_code == 401:
                    raise LostWrite("the key created before the fault is unknown")
                return r.status_code == 200

            return {
                "key": poll(key_ok, "the key", fail=False),
                "call_record": poll(lambda: self.recorded(ack["request_id"]), "the call record", fail=False),
                "cache_entry": poll(hit, "the cache entry", fail=False),
            }

    def recorded(self, request_id: str) -> bool:
        rows = asyncio.run(_with_store(self.stack.redis_url, lambda store: store.recent_calls(100_000)))
        return any(row.get("request_id") == request_id for row in rows)

    # -- one row ------------------------------------------------------------------------------

    def run(self, case: Case) -> dict[str, Any]:
        self.samples = []
        ack = self.acknowledge(case.model)
        fault: dict[str, Any] = {}
        child = self.child(case.part) if case.ready is None else None

        def serves_again() -> bool:
            if case.ready is not None:
                return "healed" in fault and case.ready(self)
            assert child is not None
            back = child.process.pid != fault["pid"] or (case.heal is not None and "healed" in fault)
            return back and self.state(case.part) == "running"

        def until() -> bool:
            now = time.monotonic()
            if "at" not in fault:
                if now - started >= self.args.warm_s:
                    fault["pid"] = case.inject(self, case)
                    fault["at"] = time.monotonic()
                return False
            if case.heal is not None and "healed" not in fault and now - fault["at"] >= case.hold_s:
                case.heal(self, case, fault["pid"])
                fault["healed"] = time.monotonic()
            if "ready" not in fault and serves_again():
                fault["ready"] = now
            if "ready" in fault and "good" not in fault:
                good = [s for s in self.samples if s.sent >= fault["ready"] and s.outcome == "200"]
                if good:
                    fault["good"] = min(s.done for s in good)
            if "good" in fault:
                return now - fault["good"] >= self.args.tail_s
            return now - fault["at"] >= self.args.max_outage_s

        started = time.monotonic()
        asyncio.run(self.load(until, case.model, case.rate or self.args.rate))
        kept = self.verify(ack)
        return self.summarize(case, fault, child, kept)

    def summarize(
        self, case: Case, fault: dict[str, Any], child: Child | None, kept: dict[str, bool]
    ) -> dict[str, Any]:
        at = fault["at"]
        after = [s for s in self.samples if s.done >= at]
        bad = [s for s in after if s.outcome != "200"]
        errors = Counter(s.outcome for s in bad)
        unnamed = [s for s in bad if not any(w.lower() in s.body.lower() for w in case.names)]
        if child is None:  # a part outside the stack: its restart is the heal
            restart_at = fault.get("healed")
        else:
            restart_at = child.started_monotonic if child.process.pid != fault["pid"] else None
        ready_at = fault.get("ready")
        before = sorted(s.done - s.sent for s in self.samples if s.done < at and s.outcome == "200")
        # When traffic reached the part again: the send time of the first request that got a good
        # answer after the fault. Unlike the recovery, it does not include that answer's own latency
        # (the local model may take seconds per answer on a loaded machine).
        first_served = min((s.sent for s in after if s.outcome == "200" and s.sent >= at), default=None)
        last_bad = max((s.done for s in bad), default=None)
        first_good_after = min(
            (s.done for s in after if s.outcome == "200" and (last_bad is None or s.sent > last_bad)), default=None
        )
        return {
            "case": case.name,
            "requests": len(after),
            "errors": dict(sorted(errors.items())),
            "refused": errors.get("refused", 0),
            "unnamed": len(unnamed),
            "unnamed_example": unnamed[0].body[:160] if unnamed else "",
            "p50_before_s": round(before[len(before) // 2], 2) if before else None,
            "restart_s": _rel(restart_at, at),
            "ready_s": _rel(fault.get("ready"), at),
            "last_error_s": _rel(last_bad, at),
            "first_served_s": _rel(first_served, at),
            # Recovery after the restart: the first good answer after the last error, counted from
            # the new process's start (0 when no request failed).
            "recovery_after_restart_s": (
                0.0 if not bad else _rel(first_good_after, restart_at if restart_at is not None else at)
            ),
            # The same from the moment the part was ready again: what reconnects and breakers add
            # (0 when the first good answer came before the supervisor's poll saw it ready).
            "recovery_after_ready_s": (
                0.0 if not bad else _max0(_rel(first_good_after, ready_at if ready_at is not None else at))
            ),
            "kept": kept,
        }


class LostWrite(AssertionError):
    """An acknowledged write is gone."""


def poll(check: Callable[[], bool], what: str, timeout_s: float = 30.0, fail: bool = True) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return True
        except LostWrite:
            return False
        except (httpx.HTTPError, ValueError, OSError):
            pass
        time.sleep(0.1)
    if fail:
        raise TimeoutError(f"{what} was not acknowledged within {timeout_s} s")
    return False


def _rel(t: float | None, origin: float | None) -> float | None:
    return None if t is None or origin is None else round(t - origin, 2)


# -- output -----------------------------------------------------------------------------------


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| fault | requests | p50 before (s) | client errors (status: count) | refused at edge "
        "| errors not naming the part | new process (s) | ready (s) | first request served, sent at (s) "
        "| last error (s) | recovery after restart (s) | recovery after ready (s) | kept: key, call record, cache |"
    )
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "none"
        kept = ", ".join("yes" if r["kept"][k] else "**LOST**" for k in ("key", "call_record", "cache_entry"))
        lines.append(
            f"| {r['case']} | {r['requests']} | {_f(r['p50_before_s'])} | {errors} | {r['refused']} | {r['unnamed']} "
            f"| {_f(r['restart_s'])} | {_f(r['ready_s'])} | {_f(r['first_served_s'])} "
            f"| {_f(r['last_error_s'])} | {_f(r['recovery_after_restart_s'])} "
            f"| {_f(r['recovery_after_ready_s'])} | {kept} |"
        )
    return "\n".join(lines)


def _max0(v: float | None) -> float | None:
    return None if v is None else max(0.0, v)


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="parts to fault (default: every row that can run)")
    parser.add_argument("--with-model", action="store_true", help="start the local model (adds its row)")
    parser.add_argument("--rate", type=float, default=20.0, help="requests/s (default 20; the local model's row: 2)")
    parser.add_argument(
        "--model-rate", type=float, help="requests/s of the local model's row (default 2; lower it on a loaded machine)"
    )
    parser.add_argument("--max-in-flight", type=int, default=32)
    parser.add_argument("--warm-s", type=float, default=1.0, help="load before the fault")
    parser.add_argument("--tail-s", type=float, default=2.0, help="load after the first good answer")
    parser.add_argument("--max-outage-s", type=float, default=60.0, help="give up on a row after this")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument(
        "--layout",
        choices=["split", "colocated"],
        default="split",
        help="split (default): one process per service; colocated: mesh.yaml's process groups, as `tollway up`",
    )
    args = parser.parse_args()

    cases = [
        dataclasses.replace(c, rate=args.model_rate) if c.needs_model and args.model_rate else c
        for c in CASES
        if (args.with_model or not c.needs_model)
        and (not args.only or c.part in args.only)
        and args.layout in c.layouts
    ]
    run = Path(tempfile.mkdtemp(prefix="faults-"))
    print(f"run dir {run}; {len(cases)} rows at {args.rate:g} requests/s, {args.layout} layout", flush=True)
    bench = Bench(args, run)
    rows = []
    try:
        for case in cases:
            row = bench.run(case)
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        bench.close()
    print()
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
